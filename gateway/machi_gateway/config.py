"""The gateway's configuration: one schema holding every key, its default and its check.

``SCHEMA`` is the single source of truth (docs/gateway.example.toml is tested against
it). Validators take the raw TOML value and return the coerced one or raise ValueError
with a message for the person editing the file; :func:`load` prefixes it with the key,
e.g. ``[coap] port: must be an integer in 0..65535, got "x"``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from . import tls
from .errors import ConfigError

Validator = Callable[[Any], Any]

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
UplinkFormat = Literal["columns", "readings"]
UPLINK_FORMATS: tuple[UplinkFormat, ...] = get_args(UplinkFormat)  # the first is the default


def _int(lo: int, hi: int | None = None) -> Validator:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"must be an integer {rng}, got {v!r}")
        return v

    return check


def _float(lo: float, *, strict: bool = True) -> Validator:
    def check(v: Any) -> float:
        ok = isinstance(v, int | float) and not isinstance(v, bool)
        if not ok or (v <= lo if strict else v < lo):
            raise ValueError(f"must be a number {'>' if strict else '>='} {lo}, got {v!r}")
        return float(v)

    return check


def _str(*, empty: bool = False) -> Validator:
    def check(v: Any) -> str:
        if not isinstance(v, str) or (not empty and not v):
            raise ValueError(f"must be a {'' if empty else 'non-empty '}string, got {v!r}")
        return v

    return check


def _one_of(*choices: str) -> Validator:
    def check(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {v!r}")
        return str(v)

    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {v!r}")
    return v


def _gateway_id(v: Any) -> str:
    if not isinstance(v, str) or not _ID_RE.match(v):
        raise ValueError(
            f"must be lowercase letters, digits and '-', 1-32 chars, starting with a letter "
            f"or digit; got {v!r}"
        )
    return v


def _url(v: Any) -> str:
    if not isinstance(v, str) or not re.match(r"^https?://[^/\s]+", v):
        raise ValueError(f"must be an http:// or https:// URL, got {v!r}")
    return v.rstrip("/")


def _pin_list(v: Any) -> list[str]:
    tls.parse_pins(v)  # ValueError names the bad pin
    return [v] if isinstance(v, str) else list(v)


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key: its default and the validator that coerces it."""

    default: Any
    check: Validator
    doc: str


SCHEMA: dict[str, dict[str, Key]] = {
    "gateway": {
        "id": Key("gw-01", _gateway_id, "this gateway's id, as the cloud knows it"),
        "data_dir": Key("/var/lib/machi-gateway", _str(), "where the queue database lives"),
    },
    "coap": {
        "host": Key("::", _str(), "address to listen on ('::' = every IPv6 and IPv4 address)"),
        "port": Key(5683, _int(0, 65535), "UDP port; 0 = a free port chosen at start"),
        "max_payload": Key(1024, _int(16, 65000), "larger payloads get 4.13 with Size1"),
        "oscore": Key("optional", _one_of("off", "optional", "required"),
                      "OSCORE (RFC 8613) on /r: off = plain CoAP only; optional = both; "
                      "required = plain requests get 4.01"),
        "rate_per_source": Key(200.0, _float(0.0, strict=False),
                               "requests/s allowed per source IP address, before anything "
                               "else runs (over it: 4.29 + Max-Age); 0 = no limit"),
        "rate_burst": Key(400, _int(1, 10**6), "requests a source may send at once"),
    },
    "devices": {
        "file": Key("devices.json", _str(), "the registry of known devices"),
        "sync": Key(False, _bool, "fetch the registry from the cloud (GET "
                    "/v1/gateways/{id}/devices) and rewrite the file"),
        "sync_interval_s": Key(60.0, _float(0.0), "how often the registry is fetched"),
    },
    "queue": {
        "max_readings": Key(1_000_000, _int(1), "queue size at which nodes get 5.03"),
        "max_bytes": Key(0, _int(0), "disk quota of the queue database in bytes (0 = none); "
                         "over it nodes get 5.03"),
        "retry_after_s": Key(30, _int(1, 2**32 - 1), "Max-Age of the 5.03 answer"),
        "dedup_window_s": Key(86400, _int(1), "how long an uploaded (device, seq) stays known"),
    },
    "uplink": {
        "url": Key("http://127.0.0.1:8080", _url, "cloud base URL; batches go to {url}/v1/batches"),
        "token": Key("", _str(empty=True), "the gateway's bearer token (or use token_file)"),
        "token_file": Key("", _str(empty=True), "file holding the token (first line)"),
        # bench/gateway_pipeline.py: acked/s under load 9.3-11.9k at 500, 12.7-15.5k at 2000
        "batch_max": Key(2000, _int(1, 5000), "send when this many readings wait"),
        "batch_age_s": Key(2.0, _float(0.0), "... or when the oldest has waited this long"),
        "timeout_s": Key(10.0, _float(0.0), "timeout of one upload"),
        "backoff_initial_s": Key(0.5, _float(0.0), "first retry delay after a failure"),
        "backoff_max_s": Key(60.0, _float(0.0), "retry delay cap"),
        "drain_timeout_s": Key(5.0, _float(0.0, strict=False), "last flush bound at shutdown"),
        "format": Key(UPLINK_FORMATS[0], _one_of(*UPLINK_FORMATS),
                      "batch body: columns (smaller, cheaper for the cloud) or readings "
                      "(an array of reading maps, for a cloud older than columnar batches)"),
    },
    "cloud": {
        "ca_file": Key("", _str(empty=True), "trust only this CA / self-signed cert (PEM) for "
                       "the https:// cloud instead of the system store; empty = system store"),
        "pin_sha256": Key([], _pin_list, "base64 SHA-256 SPKI pins (RFC 7469); a connection "
                          "whose verified chain has none of these keys is refused"),
        "allow_plain_http": Key(False, _bool, "allow an http:// [uplink] url to a host that "
                                "is not loopback (the token then travels in clear)"),
    },
    "downlink": {
        "enabled": Key(False, _bool, "long-poll the cloud for commands and deliver them"),
        "wait_s": Key(25, _int(0, 30), "long-poll wait asked of the cloud"),
        "idle_s": Key(5.0, _float(0.0), "pause after a poll that brought nothing new"),
        "per_ack": Key(4, _int(1, 16), "at most this many commands in one ACK"),
        "push": Key(False, _bool, "send new commands at once to always-on nodes (type "
                    "light) as CoAP POST /c, else they wait for the next ACK"),
        "push_ack_timeout_s": Key(2.0, _float(0.0), "ACK_TIMEOUT of a push (RFC 7252)"),
        "push_max_retransmit": Key(4, _int(0, 20), "MAX_RETRANSMIT of a push"),
    },
    "lora_udp": {
        "enabled": Key(False, _bool, "Semtech UDP packet-forwarder server"),
        "host": Key("0.0.0.0", _str(), "address the packet forwarders send to"),
        "port": Key(1700, _int(0, 65535), "UDP port (the forwarder's serv_port_up/down)"),
        "tx_power": Key(14, _int(0, 30), "downlink power in dBm"),
        "rx_delay_s": Key(1, _int(1, 15), "the node's receive window opens this long "
                          "after its uplink ended"),
        "confirm": Key(True, _bool, "ack every durable frame in the node's RX window "
                       "(confirmed delivery, docs/protocol-lora.md §8)"),
    },
    "serial": {
        "enabled": Key(False, _bool, "LoRa modem on a serial port (+RCV lines)"),
        "port": Key("/dev/ttyS0", _str(), "serial device"),
        "baudrate": Key(115200, _int(1200, 4_000_000), "line speed"),
    },
    "chirpstack": {
        "enabled": Key(False, _bool, "ChirpStack MQTT integration (uplink events)"),
        "host": Key("127.0.0.1", _str(), "MQTT broker"),
        "port": Key(1883, _int(1, 65535), "MQTT port"),
        "username": Key("", _str(empty=True), "MQTT user (empty = anonymous)"),
        "password": Key("", _str(empty=True), "MQTT password"),
        "topic": Key("application/+/device/+/event/up", _str(), "uplink event topic filter"),
    },
    "ble": {
        "enabled": Key(False, _bool, "scan for BTHome v2 advertisements (bleak)"),
    },
    "mqtt_local": {
        "enabled": Key(False, _bool, "publish readings to a local broker (Home Assistant)"),
        "host": Key("127.0.0.1", _str(), "MQTT broker"),
        "port": Key(1883, _int(1, 65535), "MQTT port"),
        "username": Key("", _str(empty=True), "MQTT user (empty = anonymous)"),
        "password": Key("", _str(empty=True), "MQTT password"),
        "prefix": Key("machi", _str(), "state topics are <prefix>/<device>/state"),
        "discovery_prefix": Key("homeassistant", _str(), "Home Assistant discovery prefix"),
    },
    "firmware": {
        "dir": Key("", _str(empty=True), "<type>.manifest + <type>.bin from `machi release "
                   "sign`, served as /fw/<type>/manifest and /image; empty = none"),
    },
    "health": {
        "host": Key("127.0.0.1", _str(), "address of the health/metrics HTTP server"),
        "port": Key(8081, _int(0, 65535), "TCP port; 0 = a free port chosen at start"),
    },
    "log": {
        "level": Key("info", _one_of(*LOG_LEVELS), "log level"),
        "format": Key("text", _one_of(*LOG_FORMATS), "text lines or JSON lines, to stderr"),
    },
}


@dataclass(frozen=True, slots=True, kw_only=True)
class CoapConfig:
    host: str
    port: int
    max_payload: int
    oscore: str = "optional"
    rate_per_source: float = 200.0
    rate_burst: int = 400


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    max_readings: int
    retry_after_s: int
    dedup_window_s: int
    max_bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DownlinkConfig:
    enabled: bool = False
    wait_s: int = 25
    idle_s: float = 5.0
    per_ack: int = 4
    push: bool = False
    push_ack_timeout_s: float = 2.0
    push_max_retransmit: int = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class LoraUdpConfig:
    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = 1700
    tx_power: int = 14
    rx_delay_s: int = 1
    confirm: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialConfig:
    enabled: bool = False
    port: str = "/dev/ttyS0"
    baudrate: int = 115200


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = ""
    password: str = ""

    def __repr__(self) -> str:  # never print the password
        return f"{type(self).__name__}(host={self.host!r}, port={self.port})"


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class ChirpstackConfig(MqttConfig):
    topic: str = "application/+/device/+/event/up"


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class LocalMqttConfig(MqttConfig):
    prefix: str = "machi"
    discovery_prefix: str = "homeassistant"


@dataclass(frozen=True, slots=True, kw_only=True)
class BleConfig:
    enabled: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkConfig:
    url: str
    token: str
    batch_max: int
    batch_age_s: float
    timeout_s: float
    backoff_initial_s: float
    backoff_max_s: float
    drain_timeout_s: float
    format: UplinkFormat

    def __post_init__(self) -> None:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError("[uplink] backoff_max_s: must be >= backoff_initial_s")

    def __repr__(self) -> str:  # never print the token
        return f"UplinkConfig(url={self.url!r}, token=<{'set' if self.token else 'empty'}>)"


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    host: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: str
    format: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The validated configuration; paths are absolute."""

    gateway_id: str
    data_dir: Path
    devices_file: Path
    coap: CoapConfig
    queue: QueueConfig
    uplink: UplinkConfig
    health: HealthConfig
    log: LogConfig
    source: Path | None = None
    devices_sync: bool = False
    devices_sync_interval_s: float = 60.0
    downlink: DownlinkConfig = DownlinkConfig()
    lora_udp: LoraUdpConfig = LoraUdpConfig()
    serial: SerialConfig = SerialConfig()
    chirpstack: ChirpstackConfig = ChirpstackConfig()
    ble: BleConfig = BleConfig()
    mqtt_local: LocalMqttConfig = LocalMqttConfig()
    firmware_dir: Path | None = None  # [firmware] dir; None: no /fw resources
    cloud: tls.CloudTls = field(default_factory=tls.CloudTls)  # [cloud]: TLS to the cloud

    @property
    def queue_file(self) -> Path:
        return self.data_dir / "queue.sqlite3"

    @property
    def commands_file(self) -> Path:
        return self.data_dir / "commands.sqlite3"

    @property
    def ble_state_file(self) -> Path:
        return self.data_dir / "ble.sqlite3"

    def summary(self) -> str:
        """A human summary for ``--check-config`` (the token is never shown)."""
        return "\n".join(
            [
                f"config      {self.source or '(defaults)'}",
                f"gateway     {self.gateway_id}",
                f"queue       {self.queue_file} (max {self.queue.max_readings} readings"
                f"{f', {self.queue.max_bytes} bytes' if self.queue.max_bytes else ''})",
                f"devices     {self.devices_file}"
                f"{' (synced from the cloud)' if self.devices_sync else ''}",
                f"coap        {self.coap.host} port {self.coap.port}"
                f" (max payload {self.coap.max_payload} B)",
                f"uplink      {self.uplink.url}/v1/batches"
                f" token {'set' if self.uplink.token else 'EMPTY'}"
                f" (batch {self.uplink.batch_max} / {self.uplink.batch_age_s} s,"
                f" as {self.uplink.format})",
                f"cloud tls   {self.cloud.describe()}",
                f"downlink    {'on' if self.downlink.enabled else 'off'}",
                *(f"{name:<11} {'on' if on else 'off'}" for name, on in (
                    ("lora_udp", self.lora_udp.enabled), ("serial", self.serial.enabled),
                    ("chirpstack", self.chirpstack.enabled), ("ble", self.ble.enabled),
                    ("mqtt_local", self.mqtt_local.enabled))),
                f"health      http://{self.health.host}:{self.health.port}/healthz",
                f"log         {self.log.level} {self.log.format}",
            ]
        )


def _section(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    raw = data.get(name, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}]: must be a table, got {type(raw).__name__}")
    schema = SCHEMA[name]
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise ConfigError(
            f"[{name}] {unknown[0]}: unknown key (known: {', '.join(schema)})"
        )
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        try:
            out[key] = spec.check(raw.get(key, spec.default))
        except ValueError as exc:
            raise ConfigError(f"[{name}] {key}: {exc}") from None
    return out


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _token(up: dict[str, Any], base: Path) -> str:
    if up["token"] and up["token_file"]:
        raise ConfigError("[uplink] token_file: set either token or token_file, not both")
    if not up["token_file"]:
        return str(up["token"])
    path = _resolve(base, up["token_file"])
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"[uplink] token_file: cannot read {path}: {exc.strerror}") from exc
    token = lines[0].strip() if lines else ""
    if not token:
        raise ConfigError(f"[uplink] token_file: {path} is empty")
    return token


def from_mapping(data: Mapping[str, Any], *, base_dir: Path, source: Path | None = None) -> Config:
    """Validate a parsed TOML document; relative paths are relative to ``base_dir``."""
    unknown = sorted(set(data) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"[{unknown[0]}]: unknown section (known: {', '.join(SCHEMA)})")
    s = {name: _section(data, name) for name in SCHEMA}
    up = s["uplink"]
    cl = s["cloud"]
    cloud = tls.CloudTls(
        ca_file=_resolve(base_dir, cl["ca_file"]) if cl["ca_file"] else None,
        pins=tls.parse_pins(cl["pin_sha256"]), allow_plain_http=cl["allow_plain_http"])
    try:
        tls.validate(up["url"], cloud)  # the URL policy; ca_file readable and a certificate
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Config(
        gateway_id=s["gateway"]["id"],
        data_dir=_resolve(base_dir, s["gateway"]["data_dir"]),
        devices_file=_resolve(base_dir, s["devices"]["file"]),
        coap=CoapConfig(**s["coap"]),
        queue=QueueConfig(**s["queue"]),
        uplink=UplinkConfig(
            url=up["url"],
            token=_token(up, base_dir),
            batch_max=up["batch_max"],
            batch_age_s=up["batch_age_s"],
            timeout_s=up["timeout_s"],
            backoff_initial_s=up["backoff_initial_s"],
            backoff_max_s=up["backoff_max_s"],
            drain_timeout_s=up["drain_timeout_s"],
            format=up["format"],
        ),
        health=HealthConfig(**s["health"]),
        log=LogConfig(**s["log"]),
        source=source,
        devices_sync=s["devices"]["sync"],
        devices_sync_interval_s=s["devices"]["sync_interval_s"],
        downlink=DownlinkConfig(**s["downlink"]),
        lora_udp=LoraUdpConfig(**s["lora_udp"]),
        serial=SerialConfig(**s["serial"]),
        chirpstack=ChirpstackConfig(**s["chirpstack"]),
        ble=BleConfig(**s["ble"]),
        mqtt_local=LocalMqttConfig(**s["mqtt_local"]),
        firmware_dir=_resolve(base_dir, s["firmware"]["dir"]) if s["firmware"]["dir"] else None,
        cloud=cloud,
    )


def load(path: Path) -> Config:
    """Read and validate a TOML config file."""
    path = Path(path).expanduser().resolve()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return from_mapping(data, base_dir=path.parent, source=path)
