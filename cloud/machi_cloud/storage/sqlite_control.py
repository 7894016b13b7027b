"""The control plane on SQLite: registry, commands, audit log, aggregation, delivery report.

Plain functions over a `sqlite3.Connection`, called by `SQLiteStorage` on its writer thread
(changes, inside `BEGIN IMMEDIATE`, so the audit entry commits with the change it records)
or on a reader thread (queries). Rules shared with other backends (states, hashing, what
the audit details hold) come from `records` and `machi_cloud.audit`; what surrounds the SQL
(columns, row mappers, filters, derived records) from `rows`. Only the SQL is here.

The audit table refuses UPDATE and DELETE through triggers: the log is append-only for the
application. Someone with the file can drop the triggers; the hash chain is what shows it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .. import audit
from . import rows
from .records import (
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
        f"INSERT INTO audit ({rows.AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows.audit_values(e),
    )
    return e


def audit_log(conn: sqlite3.Connection, after: int, limit: int) -> list[AuditEntry]:
    found = conn.execute(
        f"SELECT {rows.AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, limit),
    )
    return [rows.audit_entry(r) for r in found]


# -- registry ---------------------------------------------------------------------------------


def registry(
    conn: sqlite3.Connection, gateway: str | None, device: str | None
) -> list[RegisteredDevice]:
    p = rows.Params(numbered=False)
    sql = (
        f"SELECT {rows.REG_COLUMNS} FROM registry"
        + p.where(("gateway =", gateway), ("device =", device))
        + " ORDER BY device"
    )
    return [rows.registered_device(r) for r in conn.execute(sql, p.args)]


def put_device(
    conn: sqlite3.Connection, reg: DeviceRegistration, actor: str, now: float
) -> tuple[RegisteredDevice, bool]:
    found = registry(conn, None, reg.device)
    old = found[0] if found else None
    if old is not None and old.gateway == reg.gateway:
        short_id = old.short_id
    else:
        used = conn.execute("SELECT short_id FROM registry WHERE gateway = ?", (reg.gateway,))
        short_id = rows.free_short_id((sid for (sid,) in used), reg.gateway)
    new = rows.declared(reg, old, short_id, now)
    action, details = audit.device_change(old, new)
    if old is not None and not details["changed"]:
        return old, False
    conn.execute(
        f"INSERT OR REPLACE INTO registry ({rows.REG_COLUMNS})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows.device_values(new),
    )
    append_audit(conn, now=now, actor=actor, action=action, subject=new.device, details=details)
    return new, old is None


def set_device_key(
    conn: sqlite3.Connection, device: str, key: bytes | None, actor: str, now: float
) -> RegisteredDevice:
    old = rows.the_device(registry(conn, None, device), device)
    new = replace(old, key=key, revoked=key is None, updated=now)
    conn.execute(
        "UPDATE registry SET key = ?, revoked = ?, updated = ? WHERE device = ?",
        (key, int(new.revoked), now, device),
    )
    action, details = audit.key_change(old, key)
    append_audit(conn, now=now, actor=actor, action=action, subject=device, details=details)
    return new


# -- commands ---------------------------------------------------------------------------------


def add_command(conn: sqlite3.Connection, cmd: Command, actor: str) -> Command:
    conn.execute(
        f"INSERT INTO commands ({rows.CMD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows.command_values(cmd, actor),
    )
    action, details = audit.command_created(cmd)
    append_audit(conn, now=cmd.created, actor=actor, action=action, subject=cmd.id, details=details)
    return replace(cmd, actor=actor)


def commands(conn: sqlite3.Connection, q: CommandQuery) -> list[Command]:
    p = rows.Params(numbered=False)
    pending = q.pending_at is not None
    where = p.where(
        ("id =", q.id),
        ("device =", q.device),
        ("gateway =", q.gateway),
        ("state =", "queued" if pending else None),
        ("expires >", q.pending_at),
    )
    order = "created, id" if pending else "created DESC, id"
    sql = f"SELECT {rows.CMD_COLUMNS} FROM commands{where} ORDER BY {order} LIMIT {p(q.limit)}"
    return [rows.command(r) for r in conn.execute(sql, p.args)]


def advance_command(
    conn: sqlite3.Connection, cmd_id: str, state: str, detail: str, actor: str, now: float
) -> tuple[Command, bool]:
    old = rows.the_command(commands(conn, CommandQuery(id=cmd_id, limit=1)), cmd_id)
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
    due = conn.execute(
        f"SELECT {rows.CMD_COLUMNS} FROM commands WHERE state = 'queued' AND expires <= ?"
        " ORDER BY created, id",
        (now,),
    ).fetchall()
    for row in due:
        old = rows.command(row)
        new = rows.expired(old, now)
        conn.execute(
            "UPDATE commands SET state = ?, detail = ?, updated = ? WHERE id = ?",
            (new.state, new.detail, now, old.id),
        )
        action, details = audit.command_moved(old, new)
        append_audit(
            conn, now=now, actor=audit.SYSTEM_EXPIRY, action=action, subject=old.id, details=details
        )
    return len(due)


# -- reports ----------------------------------------------------------------------------------


def aggregate_sql(q: AggregateQuery) -> tuple[str, list[Any]]:
    """The SQL of `aggregate` and its arguments: the numbers of one metric from `samples`
    and its `m` expanded by `json_each` (the `measurements` view without its text and
    boolean columns, and with the time, which the view would need a join for)."""
    p = rows.Params(numbered=False)
    sql = (
        f"SELECT device, CAST(time / {p(q.bucket_s)} AS INTEGER) * {p(q.bucket_s)} AS start,"
        " count(*), avg(v), min(v), max(v)"
        " FROM (SELECT s.device AS device, s.time AS time, json_extract(j.value, '$[2]') AS v"
        " FROM samples AS s, json_each(s.m) AS j"
        + p.where(
            ("s.device =", q.device),
            ("json_extract(j.value, '$[0]') =", q.metric),
            "json_type(j.value, '$[2]') IN ('integer', 'real')",
            ("s.time >=", q.since),
            ("s.time <", q.until),
        )
        + f") GROUP BY device, start ORDER BY device, start LIMIT {p(q.limit)}"
    )
    return sql, p.args


def aggregate(conn: sqlite3.Connection, q: AggregateQuery) -> list[AggregateRow]:
    sql, args = aggregate_sql(q)
    return [
        AggregateRow(d, int(start), n, float(mean), mn, mx)
        for d, start, n, mean, mn, mx in conn.execute(sql, args)
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
    return rows.delivery_report(device, n, first, last, gaps)
