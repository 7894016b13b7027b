"""The control plane on SQLite: registry, commands, audit log, aggregation, delivery report.

Plain functions over a `sqlite3.Connection`, called by `SQLiteStorage` on its writer thread
(changes, inside `BEGIN IMMEDIATE`, so the audit entry commits with the change it records)
or on a reader thread (queries). Rules shared with other backends (states, hashing, what
the audit details hold) come from `records` and `machi_cloud.audit`.

The audit table refuses UPDATE and DELETE through triggers: the log is append-only for the
application. Someone with the file can drop the triggers; the hash chain is what shows it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .. import audit
from ..errors import NotFound, ShortIdsExhausted
from .records import (
    MAX_SHORT_ID,
    AggregateQuery,
    AggregateRow,
    AuditEntry,
    Command,
    CommandQuery,
    DeliveryReport,
    DeviceRegistration,
    RegisteredDevice,
    moves_forward,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS registry (
    device     TEXT    PRIMARY KEY,
    type       TEXT    NOT NULL,
    gateway    TEXT    NOT NULL,
    site       TEXT,
    lat        REAL,
    lon        REAL,
    transport  TEXT    NOT NULL,
    interval_s INTEGER,
    personal   INTEGER NOT NULL DEFAULT 0,
    short_id   INTEGER NOT NULL,
    key        BLOB,
    revoked    INTEGER NOT NULL DEFAULT 0,
    created    REAL    NOT NULL,
    updated    REAL    NOT NULL,
    UNIQUE (gateway, short_id)
);
CREATE TABLE IF NOT EXISTS commands (
    id      TEXT PRIMARY KEY,
    device  TEXT NOT NULL,
    gateway TEXT NOT NULL,
    name    TEXT NOT NULL,
    args    TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    state   TEXT NOT NULL,
    updated REAL NOT NULL,
    detail  TEXT NOT NULL,
    actor   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_by_gateway ON commands (gateway, state, created);
CREATE INDEX IF NOT EXISTS commands_by_device ON commands (device, created);
CREATE TABLE IF NOT EXISTS audit (
    seq       INTEGER PRIMARY KEY,
    time      REAL NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

_REG_COLUMNS = (
    "device, type, gateway, site, lat, lon, transport, interval_s, personal, short_id, key,"
    " revoked, created, updated"
)
_CMD_COLUMNS = "id, device, gateway, name, args, created, expires, state, updated, detail, actor"


# -- audit -----------------------------------------------------------------------------------


def append_audit(
    conn: sqlite3.Connection,
    *,
    now: float,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any],
) -> AuditEntry:
    """Chain one entry after the newest; the caller holds the write transaction."""
    head = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    e = audit.chain_entry(
        None if head is None else (head[0], head[1]),
        time=now,
        actor=actor,
        action=action,
        subject=subject,
        details=details,
    )
    conn.execute(
        "INSERT INTO audit (seq, time, actor, action, subject, details, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            e.seq,
            e.time,
            e.actor,
            e.action,
            e.subject,
            audit.canonical(e.details).decode(),
            e.prev_hash,
            e.hash,
        ),
    )
    return e


def audit_log(conn: sqlite3.Connection, after: int, limit: int) -> list[AuditEntry]:
    rows = conn.execute(
        "SELECT seq, time, actor, action, subject, details, prev_hash, hash FROM audit"
        " WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, limit),
    )
    return [
        AuditEntry(seq, t, actor, action, subject, json.loads(details), prev, digest)
        for seq, t, actor, action, subject, details, prev, digest in rows
    ]


# -- registry ---------------------------------------------------------------------------------


def _device(row: tuple[Any, ...]) -> RegisteredDevice:
    (device, type_, gw, site, lat, lon, transport, interval_s, personal, short_id, key,
     revoked, created, updated) = row  # fmt: skip
    return RegisteredDevice(
        device=device,
        type=type_,
        gateway=gw,
        site=site,
        lat=lat,
        lon=lon,
        transport=transport,
        interval_s=interval_s,
        personal=bool(personal),
        short_id=short_id,
        key=None if key is None else bytes(key),
        revoked=bool(revoked),
        created=created,
        updated=updated,
    )


def registry(
    conn: sqlite3.Connection, gateway: str | None, device: str | None
) -> list[RegisteredDevice]:
    where, args = [], []
    if gateway is not None:
        where.append("gateway = ?")
        args.append(gateway)
    if device is not None:
        where.append("device = ?")
        args.append(device)
    sql = f"SELECT {_REG_COLUMNS} FROM registry" + (
        " WHERE " + " AND ".join(where) if where else ""
    )
    return [_device(r) for r in conn.execute(sql + " ORDER BY device", args)]


def _free_short_id(conn: sqlite3.Connection, gateway: str) -> int:
    used = {
        sid
        for (sid,) in conn.execute("SELECT short_id FROM registry WHERE gateway = ?", (gateway,))
    }
    for candidate in range(1, MAX_SHORT_ID + 1):
        if candidate not in used:
            return candidate
    raise ShortIdsExhausted(
        f"gateway {gateway!r} already has {MAX_SHORT_ID} devices (LoRa short ids are 16-bit): "
        "put new devices on another gateway"
    )


def put_device(
    conn: sqlite3.Connection, reg: DeviceRegistration, actor: str, now: float
) -> tuple[RegisteredDevice, bool]:
    found = registry(conn, None, reg.device)
    old = found[0] if found else None
    if old is not None and old.gateway == reg.gateway:
        short_id = old.short_id
    else:
        short_id = _free_short_id(conn, reg.gateway)
    new = RegisteredDevice(
        **{**reg.fields(), "device": reg.device},
        short_id=short_id,
        key=old.key if old else None,
        revoked=old.revoked if old else False,
        created=old.created if old else now,
        updated=now,
    )
    action, details = audit.device_change(old, new)
    if old is not None and not details["changed"]:
        return old, False
    conn.execute(
        f"INSERT OR REPLACE INTO registry ({_REG_COLUMNS})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            new.device,
            new.type,
            new.gateway,
            new.site,
            new.lat,
            new.lon,
            new.transport,
            new.interval_s,
            int(new.personal),
            new.short_id,
            new.key,
            int(new.revoked),
            new.created,
            new.updated,
        ),
    )
    append_audit(conn, now=now, actor=actor, action=action, subject=new.device, details=details)
    return new, old is None


def set_device_key(
    conn: sqlite3.Connection, device: str, key: bytes | None, actor: str, now: float
) -> RegisteredDevice:
    found = registry(conn, None, device)
    if not found:
        raise NotFound(
            f"device {device!r} is not registered: register it first with PUT /v1/devices/{device}"
        )
    old = found[0]
    new = replace(old, key=key, revoked=key is None, updated=now)
    conn.execute(
        "UPDATE registry SET key = ?, revoked = ?, updated = ? WHERE device = ?",
        (key, int(new.revoked), now, device),
    )
    action, details = audit.key_change(old, key)
    append_audit(conn, now=now, actor=actor, action=action, subject=device, details=details)
    return new


# -- commands ---------------------------------------------------------------------------------


def _command(row: tuple[Any, ...]) -> Command:
    cid, device, gw, name, args, created, expires, state, updated, detail, actor = row
    return Command(
        id=cid,
        device=device,
        gateway=gw,
        name=name,
        args=json.loads(args),
        created=created,
        expires=expires,
        state=state,
        updated=updated,
        detail=detail,
        actor=actor,
    )


def add_command(conn: sqlite3.Connection, cmd: Command, actor: str) -> Command:
    conn.execute(
        f"INSERT INTO commands ({_CMD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            cmd.id,
            cmd.device,
            cmd.gateway,
            cmd.name,
            audit.canonical(dict(cmd.args)).decode(),
            cmd.created,
            cmd.expires,
            cmd.state,
            cmd.updated,
            cmd.detail,
            actor,
        ),
    )
    action, details = audit.command_created(cmd)
    append_audit(conn, now=cmd.created, actor=actor, action=action, subject=cmd.id, details=details)
    return replace(cmd, actor=actor)


def commands(conn: sqlite3.Connection, q: CommandQuery) -> list[Command]:
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("id", q.id), ("device", q.device), ("gateway", q.gateway)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    order = "created DESC, id"
    if q.pending_at is not None:
        where += ["state = 'queued'", "expires > ?"]
        args.append(q.pending_at)
        order = "created, id"
    sql = (
        f"SELECT {_CMD_COLUMNS} FROM commands"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY {order} LIMIT ?"
    )
    return [_command(r) for r in conn.execute(sql, (*args, q.limit))]


def advance_command(
    conn: sqlite3.Connection, cmd_id: str, state: str, detail: str, actor: str, now: float
) -> tuple[Command, bool]:
    found = commands(conn, CommandQuery(id=cmd_id, limit=1))
    if not found:
        raise NotFound(f"there is no command {cmd_id!r}: use an id returned by the cloud")
    old = found[0]
    if not moves_forward(old.state, state):
        return old, False
    new = replace(old, state=state, detail=detail, updated=now)
    conn.execute(
        "UPDATE commands SET state = ?, detail = ?, updated = ? WHERE id = ?",
        (state, detail, now, cmd_id),
    )
    action, details = audit.command_moved(old, new)
    append_audit(conn, now=now, actor=actor, action=action, subject=cmd_id, details=details)
    return new, True


def expire_commands(conn: sqlite3.Connection, now: float) -> int:
    rows = conn.execute(
        f"SELECT {_CMD_COLUMNS} FROM commands WHERE state = 'queued' AND expires <= ?"
        " ORDER BY created, id",
        (now,),
    ).fetchall()
    for row in rows:
        old = _command(row)
        new = replace(old, state="expired", detail="not fetched before it expired", updated=now)
        conn.execute(
            "UPDATE commands SET state = ?, detail = ?, updated = ? WHERE id = ?",
            (new.state, new.detail, now, old.id),
        )
        action, details = audit.command_moved(old, new)
        append_audit(
            conn, now=now, actor=audit.SYSTEM_EXPIRY, action=action, subject=old.id, details=details
        )
    return len(rows)


# -- reports ----------------------------------------------------------------------------------


def aggregate(conn: sqlite3.Connection, q: AggregateQuery) -> list[AggregateRow]:
    where = ["m.metric = ?", "m.value_num IS NOT NULL"]
    args: list[Any] = [q.bucket_s, q.bucket_s, q.metric]
    if q.device is not None:
        where.append("m.device = ?")
        args.append(q.device)
    if q.since is not None:
        where.append("s.time >= ?")
        args.append(q.since)
    if q.until is not None:
        where.append("s.time < ?")
        args.append(q.until)
    sql = (
        "SELECT m.device, CAST(s.time / ? AS INTEGER) * ? AS start, count(*),"
        " avg(m.value_num), min(m.value_num), max(m.value_num)"
        " FROM measurements AS m JOIN samples AS s ON s.device = m.device AND s.seq = m.seq"
        " WHERE " + " AND ".join(where) + " GROUP BY m.device, start"
        " ORDER BY m.device, start LIMIT ?"
    )
    return [
        AggregateRow(d, int(start), n, float(mean), mn, mx)
        for d, start, n, mean, mn, mx in conn.execute(sql, (*args, q.limit))
    ]


def delivery(conn: sqlite3.Connection, device: str, max_gaps: int) -> DeliveryReport:
    n, first, last = conn.execute(
        "SELECT count(*), min(seq), max(seq) FROM samples WHERE device = ?", (device,)
    ).fetchone()
    gaps = conn.execute(
        "SELECT prev + 1, seq - 1 FROM (SELECT seq, LAG(seq) OVER (ORDER BY seq) AS prev"
        " FROM samples WHERE device = ?) WHERE prev IS NOT NULL AND seq > prev + 1"
        " ORDER BY seq LIMIT ?",
        (device, max_gaps),
    ).fetchall()
    missing = 0 if n == 0 else (last - first + 1) - n
    return DeliveryReport(
        device=device,
        readings=n,
        first_seq=first,
        last_seq=last,
        missing=missing,
        gaps=tuple((a, b) for a, b in gaps),
    )
