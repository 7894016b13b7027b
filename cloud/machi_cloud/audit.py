"""The hash-chained, append-only audit log: how entries are chained, and how to check a chain.

Every command, command state change and change to a device or its key appends one entry
`{seq, time, actor, action, subject, details, prev_hash, hash}` in the same transaction as
the change itself. `seq` counts from 1 without holes; `prev_hash` is the previous entry's
`hash` (64 zeros for the first); and

    hash = sha256(canonical({"seq", "time", "actor", "action", "subject", "details",
                             "prev_hash"})).hexdigest()

where `canonical` is JSON with sorted keys, no whitespace, UTF-8 (not ASCII-escaped), no
NaN. Editing any field of an entry breaks its hash; deleting or reordering entries breaks
the `seq` sequence and the `prev_hash` links. What a chain alone cannot show is the removal
of its newest entries: keep the head (`seq`, `hash`) that `verify` prints somewhere else
(a ticket, a log shipped off the machine) to detect that too.

Backends build entries only with `chain_entry`, so SQLite and PostgreSQL hash alike; the
device and command helpers below decide what goes into `details` (never a device key:
only its `key_id`, the first 16 hex digits of its SHA-256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .storage.records import AuditEntry, Command, RegisteredDevice

if TYPE_CHECKING:
    from .storage.base import Storage

GENESIS = "0" * 64
SYSTEM_EXPIRY = "system:expiry"


def canonical(obj: Any) -> bytes:
    """The one byte form of a JSON-like value that the hashes are computed over."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def entry_hash(
    *,
    seq: int,
    time: float,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """The hash of one entry (see the module docstring)."""
    body = {
        "seq": seq,
        "time": time,
        "actor": actor,
        "action": action,
        "subject": subject,
        "details": dict(details),
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical(body)).hexdigest()


def chain_entry(
    head: tuple[int, str] | None,
    *,
    time: float,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any],
) -> AuditEntry:
    """The entry that follows `head` = (seq, hash) of the newest entry, None if none yet.

    `time` is rounded to the millisecond and `details` normalised through JSON, so the
    entry read back from any database hashes to the same value.
    """
    seq, prev = (head[0] + 1, head[1]) if head is not None else (1, GENESIS)
    t = round(float(time), 3)
    norm: dict[str, Any] = json.loads(canonical(dict(details)))
    digest = entry_hash(
        seq=seq, time=t, actor=actor, action=action, subject=subject, details=norm, prev_hash=prev
    )
    return AuditEntry(seq, t, actor, action, subject, norm, prev, digest)


def key_id(key: bytes | None) -> str | None:
    """A key's public name: enough to tell keys apart, useless to an attacker."""
    return None if key is None else hashlib.sha256(key).hexdigest()[:16]


def device_change(
    old: RegisteredDevice | None, new: RegisteredDevice
) -> tuple[str, dict[str, Any]]:
    """(action, details) for a registration: every field when created, else what changed."""
    if old is None:
        return "device.create", {**new.fields(), "short_id": new.short_id}
    changed = {k: [v, new.fields()[k]] for k, v in old.fields().items() if v != new.fields()[k]}
    if old.short_id != new.short_id:
        changed["short_id"] = [old.short_id, new.short_id]
    return "device.update", {"changed": changed}


def key_change(old: RegisteredDevice, key: bytes | None) -> tuple[str, dict[str, Any]]:
    """(action, details) for a new key (rotation) or for revocation (`key` None)."""
    if key is None:
        return "device.key.revoke", {"old_key_id": key_id(old.key)}
    return "device.key.issue", {"key_id": key_id(key), "old_key_id": key_id(old.key)}


def command_created(cmd: Command) -> tuple[str, dict[str, Any]]:
    return "command.create", {
        "device": cmd.device,
        "gateway": cmd.gateway,
        "name": cmd.name,
        "args": dict(cmd.args),
        "expires": cmd.expires,
    }


def command_moved(old: Command, new: Command) -> tuple[str, dict[str, Any]]:
    return "command.state", {
        "device": new.device,
        "from": old.state,
        "to": new.state,
        "detail": new.detail,
    }


# -- verification --------------------------------------------------------------------------


def verify_entries(entries: Iterable[AuditEntry]) -> list[str]:
    """Every problem found in a chain given in stored order (empty list: the chain holds)."""
    problems: list[str] = []
    prev: AuditEntry | None = None
    for e in entries:
        expected_seq = 1 if prev is None else prev.seq + 1
        if e.seq != expected_seq:
            problems.append(
                f"entry {e.seq}: expected seq {expected_seq} here; entries were deleted, "
                "inserted or reordered"
            )
        expected_prev = GENESIS if prev is None else prev.hash
        if e.prev_hash != expected_prev:
            problems.append(
                f"entry {e.seq}: prev_hash does not match the hash of the entry before it "
                f"({'none' if prev is None else prev.seq}): the chain is broken there"
            )
        try:
            digest = entry_hash(
                seq=e.seq,
                time=e.time,
                actor=e.actor,
                action=e.action,
                subject=e.subject,
                details=e.details,
                prev_hash=e.prev_hash,
            )
        except (TypeError, ValueError) as exc:
            problems.append(f"entry {e.seq}: cannot be hashed ({exc}): it was edited")
        else:
            if digest != e.hash:
                problems.append(
                    f"entry {e.seq}: its content does not match its hash: it was edited "
                    f"after it was written ({e.action} {e.subject} by {e.actor})"
                )
        prev = e
    return problems


def _row_entry(row: Sequence[Any]) -> AuditEntry:
    seq, t, actor, action, subject, details, prev_hash, digest = row
    try:
        parsed = json.loads(details)
    except (TypeError, ValueError):
        parsed = {"unparsable": str(details)}
    if not isinstance(parsed, dict):
        parsed = {"not-an-object": parsed}
    return AuditEntry(seq, t, actor, action, subject, parsed, prev_hash, digest)


AUDIT_SELECT = (
    "SELECT seq, time, actor, action, subject, details, prev_hash, hash FROM audit ORDER BY seq"
)


def read_sqlite(path: Path | str) -> list[AuditEntry]:
    """The audit entries of a machi-cloud SQLite file in seq order, opened read-only.

    Raises FileNotFoundError or sqlite3.Error.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(str(p))
    conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return [_row_entry(row) for row in conn.execute(AUDIT_SELECT)]
    finally:
        conn.close()


def verify(source: Path | str | Iterable[AuditEntry]) -> list[str]:
    """Problems in the audit chain of a SQLite file (path) or of entries in stored order."""
    if isinstance(source, (str, Path)):
        return verify_entries(read_sqlite(source))
    return verify_entries(source)


async def verify_storage(storage: Storage, *, page: int = 1000) -> list[str]:
    """Problems in the audit chain of an open storage (any backend), read page by page."""
    entries: list[AuditEntry] = []
    after = 0
    while True:
        got = await storage.audit_log(after=after, limit=page)
        entries += got
        if len(got) < page:
            break
        after = got[-1].seq
    return verify_entries(entries)


async def read_postgres(dsn: str) -> list[AuditEntry]:
    """The audit entries of a machi-cloud PostgreSQL database in seq order, read in one
    read-only snapshot. Raises `StorageUnavailable` (unreachable, no audit table)."""
    import asyncpg

    from .errors import StorageUnavailable
    from .storage.postgres import redact

    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError) as exc:
        raise StorageUnavailable(f"cannot connect to {redact(dsn)}: {exc}") from exc
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(AUDIT_SELECT)
    except asyncpg.PostgresError as exc:
        raise StorageUnavailable(f"{redact(dsn)}: cannot read the audit table ({exc})") from exc
    finally:
        await conn.close()
    return [_row_entry(tuple(r)) for r in rows]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """`machi-cloud audit-verify --db PATH | --database-url URL`: exit 0 when the chain
    holds, 1 if not, 2 when the log cannot be read."""
    import asyncio
    import os

    from .errors import StorageUnavailable
    from .settings import DATABASE_URL_ENV

    env = os.environ if environ is None else environ
    p = argparse.ArgumentParser(
        prog="machi-cloud audit-verify",
        description="Check the hash chain of the cloud's audit log (detects edited, deleted "
        "and reordered entries). Read-only; works while the service runs.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--db", type=Path, help="the machi-cloud SQLite file")
    where.add_argument(
        "--database-url",
        metavar="URL",
        help=f"the machi-cloud PostgreSQL database (or {DATABASE_URL_ENV})",
    )
    args = p.parse_args(argv)
    url = args.database_url or (None if args.db else env.get(DATABASE_URL_ENV) or None)
    if args.db is None and url is None:
        p.error(f"give --db PATH (SQLite) or --database-url URL (or set {DATABASE_URL_ENV})")
    try:
        if url is not None:
            from .storage.postgres import redact

            name = redact(url)
            entries = asyncio.run(read_postgres(url))
        else:
            name = str(args.db)
            entries = read_sqlite(args.db)
    except FileNotFoundError:
        print(f"audit-verify: {args.db}: no such file", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"audit-verify: {args.db}: cannot read the audit table ({exc})", file=sys.stderr)
        return 2
    except StorageUnavailable as exc:
        print(f"audit-verify: {exc.detail}", file=sys.stderr)
        return 2
    problems = verify_entries(entries)
    for problem in problems:
        print(f"TAMPERED {problem}")
    if problems:
        print(f"audit log of {name}: {len(problems)} problem(s) in {len(entries)} entries")
        return 1
    head = f"head seq {entries[-1].seq} hash {entries[-1].hash}" if entries else "empty"
    print(f"audit log of {name}: OK, {len(entries)} entries, {head}")
    return 0
