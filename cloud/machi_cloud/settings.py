"""Settings of the cloud service: one schema holds every default.

Values come from (lowest first) the defaults below, a TOML file, the environment variable
`MACHI_CLOUD_GATEWAY_TOKENS` and command-line flags. Every validator returns the coerced value
or raises `ConfigError` naming the key, written for the person editing the file.

Gateway tokens are kept only as SHA-256 digests and compared with `hmac.compare_digest`, so a
memory dump or a log of the settings does not reveal them and a comparison does not leak, by
its timing, how much of a guessed token was right.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CloudError

GATEWAY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_HASH_PREFIX = "sha256:"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
TOKENS_ENV = "MACHI_CLOUD_GATEWAY_TOKENS"
DATABASE_URL_ENV = "MACHI_CLOUD_DATABASE_URL"
_DATABASE_SCHEMES = ("postgresql://", "postgres://")
API_TOKENS_ENV = "MACHI_CLOUD_API_TOKENS"
TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class ConfigError(CloudError, ValueError):
    """A setting is missing or has a value we cannot use; the message names the key."""


def hash_token(token: str) -> bytes:
    """The digest we keep instead of the token itself."""
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True)
class GatewayTokens:
    """Which gateway a bearer token belongs to, without keeping the tokens themselves.

    A value written as `sha256:<64 hex digits>` in a config file is taken as the digest of
    the token, so config files need not hold secrets in the clear.
    """

    digests: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for gw, digest in self.digests.items():
            if not GATEWAY_ID.match(gw):
                raise ConfigError(
                    f"gateway_tokens: gateway id {gw!r} must match {GATEWAY_ID.pattern}"
                )
            if len(digest) != 32:
                raise ConfigError(f"gateway_tokens.{gw}: digest must be 32 bytes")

    @classmethod
    def from_mapping(
        cls, tokens: Mapping[str, str], *, key: str = "gateway_tokens"
    ) -> GatewayTokens:
        """Tokens as configured: `{gateway_id: token or "sha256:<hex>"}`."""
        digests: dict[str, bytes] = {}
        for gw, token in tokens.items():
            if not isinstance(token, str) or not token:
                raise ConfigError(f"{key}.{gw}: the token must be a non-empty string")
            if token.startswith(_HASH_PREFIX):
                hexdigest = token[len(_HASH_PREFIX) :].lower()
                if not _HEX64.match(hexdigest):
                    raise ConfigError(f"{key}.{gw}: 'sha256:' must be followed by 64 hex digits")
                digests[gw] = bytes.fromhex(hexdigest)
            else:
                digests[gw] = hash_token(token)
        return cls(digests=digests)

    def merged(self, other: GatewayTokens) -> GatewayTokens:
        """These tokens, overridden per gateway by `other`."""
        return GatewayTokens(digests={**self.digests, **other.digests})

    def gateway_for(self, token: str) -> str | None:
        """The gateway id owning `token`, or None; every digest is compared (no early exit)."""
        presented = hash_token(token)
        found: str | None = None
        for gw, digest in self.digests.items():
            if hmac.compare_digest(presented, digest):
                found = gw
        return found

    def __len__(self) -> int:
        return len(self.digests)


class Role(enum.IntEnum):
    """What a person's token may do; each role may do everything of the roles below it."""

    viewer = 1  # read readings, devices, commands (when reads are not open)
    operator = 2  # + send commands
    admin = 3  # + register devices, issue keys, read the audit log


def _digest_of(value: str, key: str) -> bytes:
    if value.startswith(_HASH_PREFIX):
        hexdigest = value[len(_HASH_PREFIX) :].lower()
        if not _HEX64.match(hexdigest):
            raise ConfigError(f"{key}: 'sha256:' must be followed by 64 hex digits")
        return bytes.fromhex(hexdigest)
    return hash_token(value)


@dataclass(frozen=True)
class ApiTokens:
    """People's bearer tokens: `{name: (role, SHA-256 digest)}`; tokens themselves are not kept.

    Configured as `name = "ROLE:TOKEN"` (TOKEN may be `sha256:<hex>`); the name and role
    become the actor recorded in the audit log (`admin:alice`).
    """

    entries: Mapping[str, tuple[Role, bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, (role, digest) in self.entries.items():
            if not TOKEN_NAME.match(name):
                raise ConfigError(f"api_tokens: name {name!r} must match {TOKEN_NAME.pattern}")
            if not isinstance(role, Role) or len(digest) != 32:
                raise ConfigError(f"api_tokens.{name}: needs a role and a 32-byte digest")

    @classmethod
    def from_mapping(cls, tokens: Mapping[str, str], *, key: str = "api_tokens") -> ApiTokens:
        """`{name: "ROLE:TOKEN"}` as configured."""
        entries: dict[str, tuple[Role, bytes]] = {}
        for name, value in tokens.items():
            if not isinstance(value, str) or ":" not in value:
                raise ConfigError(
                    f"{key}.{name}: must be 'ROLE:TOKEN' with ROLE one of "
                    f"{', '.join(r.name for r in Role)}"
                )
            role_name, _, token = value.partition(":")
            if role_name not in Role.__members__:
                raise ConfigError(
                    f"{key}.{name}: unknown role {role_name!r} "
                    f"(known: {', '.join(r.name for r in Role)})"
                )
            if not token:
                raise ConfigError(f"{key}.{name}: the token after '{role_name}:' is empty")
            entries[name] = (Role[role_name], _digest_of(token, f"{key}.{name}"))
        return cls(entries=entries)

    def merged(self, other: ApiTokens) -> ApiTokens:
        return ApiTokens(entries={**self.entries, **other.entries})

    def lookup(self, token: str) -> tuple[str, Role] | None:
        """(name, role) owning `token`, or None; every digest is compared (no early exit)."""
        presented = hash_token(token)
        found: tuple[str, Role] | None = None
        for name, (role, digest) in self.entries.items():
            if hmac.compare_digest(presented, digest):
                found = (name, role)
        return found

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True)
class Limits:
    """What one request may carry (docs/protocol.md §3)."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_batch_readings: int = 5000

    def __post_init__(self) -> None:
        for key in ("max_body_bytes", "max_batch_readings"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"limits.{key}: must be a positive integer, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything `create_app` and the CLI need; validated on construction."""

    db: Path = Path("machi-cloud.sqlite")
    database_url: str | None = None  # PostgreSQL; when set, `db` is not used
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    access_log: bool = False
    gateway_tokens: GatewayTokens = field(default_factory=GatewayTokens)
    api_tokens: ApiTokens = field(default_factory=ApiTokens)
    open_reads: bool = True  # False: reading endpoints need a viewer (or higher) token
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not isinstance(self.db, Path):
            object.__setattr__(self, "db", Path(self.db))
        if self.database_url is not None and (
            not isinstance(self.database_url, str)
            or not self.database_url.startswith(_DATABASE_SCHEMES)
        ):
            raise ConfigError(
                "database_url: must be a PostgreSQL URL "
                "postgresql://user[:password]@host[:port]/database"
            )
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host: must be a host name or address, got {self.host!r}")
        if (
            not isinstance(self.port, int)
            or isinstance(self.port, bool)
            or not 0 <= self.port <= 65535
        ):
            raise ConfigError(
                f"port: must be an integer 0..65535 (0 = any free port), got {self.port!r}"
            )
        if not isinstance(self.open_reads, bool):
            raise ConfigError(f"open_reads: must be true or false, got {self.open_reads!r}")
        if self.log_level not in _LOG_LEVELS:
            raise ConfigError(
                f"log_level: must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}"
            )


def _name_value_list(text: str, *, key: str, expected: str) -> dict[str, str]:
    """`"a=x,b=y"` -> {"a": "x", "b": "y"}; empty items are skipped, names stripped.
    The error names `key` and the `expected` form, and never echoes a value (a secret)."""
    pairs: dict[str, str] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value:
            raise ConfigError(f"{key}: expected {expected}, got {name!r}=...")
        pairs[name.strip()] = value
    return pairs


def parse_api_token_list(text: str, *, key: str) -> ApiTokens:
    """`"alice=admin:secret,bob=operator:sha256:<hex>"` -> tokens."""
    pairs = _name_value_list(text, key=key, expected="NAME=ROLE:TOKEN")
    return ApiTokens.from_mapping(pairs, key=key)


def parse_token_list(text: str, *, key: str) -> GatewayTokens:
    """`"gw-01=secret,gw-02=other"` (as in the environment variable) -> tokens."""
    pairs = _name_value_list(text, key=key, expected="GATEWAY=TOKEN")
    return GatewayTokens.from_mapping(pairs, key=key)


_TOP_KEYS = {
    "db",
    "database_url",
    "host",
    "port",
    "log_level",
    "access_log",
    "gateway_tokens",
    "api_tokens",
    "open_reads",
    "limits",
}
_LIMIT_KEYS = {"max_body_bytes", "max_batch_readings"}


def _check_type(key: str, value: Any, kind: type | tuple[type, ...], what: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: must be {what}, got {value!r}")


def _take(data: dict[str, Any], values: dict[str, Any], key: str, kind: type, what: str) -> None:
    """Copy `data[key]`, when given, into `values` once it has the right type."""
    if key in data:
        _check_type(key, data[key], kind, what)
        values[key] = data[key]


def settings_from_toml(path: Path, *, base: Settings | None = None) -> Settings:
    """Read a TOML file (top-level keys as in `Settings`); unknown keys are errors (typos)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})") from exc
    try:
        return _settings_from_dict(data, base=base or Settings(), relative_to=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc


def _settings_from_dict(data: dict[str, Any], *, base: Settings, relative_to: Path) -> Settings:
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    values: dict[str, Any] = {}
    if "db" in data:
        _check_type("db", data["db"], str, "a path string")
        db = Path(data["db"])
        values["db"] = db if db.is_absolute() else relative_to / db
    _take(data, values, "database_url", str, "a postgresql:// URL string")
    _take(data, values, "host", str, "a string")
    _take(data, values, "port", int, "an integer")
    _take(data, values, "log_level", str, "a string")
    _take(data, values, "access_log", bool, "true or false")
    if "gateway_tokens" in data:
        _check_type("gateway_tokens", data["gateway_tokens"], dict, "a table gateway = token")
        tokens = GatewayTokens.from_mapping(data["gateway_tokens"])
        values["gateway_tokens"] = base.gateway_tokens.merged(tokens)
    if "api_tokens" in data:
        _check_type("api_tokens", data["api_tokens"], dict, 'a table name = "ROLE:TOKEN"')
        values["api_tokens"] = base.api_tokens.merged(ApiTokens.from_mapping(data["api_tokens"]))
    _take(data, values, "open_reads", bool, "true or false")
    if "limits" in data:
        limits = data["limits"]
        _check_type("limits", limits, dict, "a table")
        bad = sorted(set(limits) - _LIMIT_KEYS)
        if bad:
            raise ConfigError(
                f"unknown key 'limits.{bad[0]}' (known: {', '.join(sorted(_LIMIT_KEYS))})"
            )
        values["limits"] = Limits(
            max_body_bytes=limits.get("max_body_bytes", base.limits.max_body_bytes),
            max_batch_readings=limits.get("max_batch_readings", base.limits.max_batch_readings),
        )
    return _replace(base, values)


def _replace(base: Settings, values: dict[str, Any]) -> Settings:
    return dataclasses.replace(base, **values)  # runs __post_init__ again


def with_overrides(base: Settings, **values: Any) -> Settings:
    """`base` with the given fields replaced (None means "not given") and validated again."""
    return _replace(base, {k: v for k, v in values.items() if v is not None})
