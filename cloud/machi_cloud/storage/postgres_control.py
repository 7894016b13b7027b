"""The control plane on PostgreSQL: registry, commands, audit log, aggregation, delivery.

The same rules as `sqlite_control.py` (which is the reference: same queries, same answers),
over an asyncpg connection; what surrounds the SQL (columns, row mappers, filters, derived
records) is shared with it through `rows`. Changes run inside a transaction that
`PostgresStorage` opens after taking `CONTROL_LOCK` (a transaction-level advisory lock):
control-plane changes of all instances on one database happen one at a time, so the audit
chain's next `seq`, a free LoRa `short_id` and a command's state are read and written
without a race. They are rare (people and gateways acting, not sensors), so serialising
them costs nothing.
"""

from __future__ import annotations

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

CONTROL_LOCK = 0x6D61636869 + 1  # next to the migrations' key
COMMANDS_CHANNEL = "machi_commands"  # NOTIFY payload: the gateway id of a new command

Conn = Any  # asyncpg.Connection (asyncpg ships no type information)


# -- audit -----------------------------------------------------------------------------------


async def append_audit(
    conn: Conn,
    *,
    now: float,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any],
) -> AuditEntry:
    """Chain one entry after the newest; the caller holds CONTROL_LOCK in its transaction."""
    head = await conn.fetchrow("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
    e = audit.chain_entry(
        None if head is None else (head[0], head[1]),
        time=now,
        actor=actor,
        action=action,
        subject=subject,
        details=details,
    )
    await conn.execute(
        f"INSERT INTO audit ({rows.AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        *rows.audit_values(e),
    )
    return e


async def audit_log(conn: Conn, after: int, limit: int) -> list[AuditEntry]:
    found = await conn.fetch(
        f"SELECT {rows.AUDIT_COLUMNS} FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
        after,
        limit,
    )
    return [rows.audit_entry(r) for r in found]


# -- registry ---------------------------------------------------------------------------------


async def registry(conn: Conn, gateway: str | None, device: str | None) -> list[RegisteredDevice]:
    p = rows.Params(numbered=True)
    sql = (
        f"SELECT {rows.REG_COLUMNS} FROM registry"
        + p.where(("gateway =", gateway), ("device =", device))
        + " ORDER BY device"
    )
    return [rows.registered_device(r) for r in await conn.fetch(sql, *p.args)]


async def put_device(
    conn: Conn, reg: DeviceRegistration, actor: str, now: float
) -> tuple[RegisteredDevice, bool]:
    found = await registry(conn, None, reg.device)
    old = found[0] if found else None
    if old is not None and old.gateway == reg.gateway:
        short_id = old.short_id
    else:
        used = await conn.fetch("SELECT short_id FROM registry WHERE gateway = $1", reg.gateway)
        short_id = rows.free_short_id((r[0] for r in used), reg.gateway)
    new = rows.declared(reg, old, short_id, now)
    action, details = audit.device_change(old, new)
    if old is not None and not details["changed"]:
        return old, False
    await conn.execute(
        f"INSERT INTO registry ({rows.REG_COLUMNS})"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        " ON CONFLICT (device) DO UPDATE SET type = excluded.type,"
        " gateway = excluded.gateway, site = excluded.site, lat = excluded.lat,"
        " lon = excluded.lon, transport = excluded.transport,"
        " interval_s = excluded.interval_s, personal = excluded.personal,"
        " short_id = excluded.short_id, key = excluded.key, revoked = excluded.revoked,"
        " created = excluded.created, updated = excluded.updated",
        *rows.device_values(new),
    )
    await append_audit(
        conn, now=now, actor=actor, action=action, subject=new.device, details=details
    )
    return new, old is None


async def set_device_key(
    conn: Conn, device: str, key: bytes | None, actor: str, now: float
) -> RegisteredDevice:
    old = rows.the_device(await registry(conn, None, device), device)
    new = replace(old, key=key, revoked=key is None, updated=now)
    await conn.execute(
        "UPDATE registry SET key = $1, revoked = $2, updated = $3 WHERE device = $4",
        key,
        new.revoked,
        now,
        device,
    )
    action, details = audit.key_change(old, key)
    await append_audit(conn, now=now, actor=actor, action=action, subject=device, details=details)
    return new


# -- commands ---------------------------------------------------------------------------------


async def add_command(conn: Conn, cmd: Command, actor: str) -> Command:
    await conn.execute(
        f"INSERT INTO commands ({rows.CMD_COLUMNS})"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        *rows.command_values(cmd, actor),
    )
    # delivered at commit to every instance LISTENing (PostgresStorage.watch_commands)
    await conn.execute("SELECT pg_notify($1, $2)", COMMANDS_CHANNEL, cmd.gateway)
    action, details = audit.command_created(cmd)
    await append_audit(
        conn, now=cmd.created, actor=actor, action=action, subject=cmd.id, details=details
    )
    return replace(cmd, actor=actor)


async def commands(conn: Conn, q: CommandQuery) -> list[Command]:
    p = rows.Params(numbered=True)
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
    return [rows.command(r) for r in await conn.fetch(sql, *p.args)]


async def advance_command(
    conn: Conn, cmd_id: str, state: str, detail: str, actor: str, now: float
) -> tuple[Command, bool]:
    old = rows.the_command(await commands(conn, CommandQuery(id=cmd_id, limit=1)), cmd_id)
    if not moves_forward(old.state, state):
        return old, False
    new = replace(old, state=state, detail=detail, updated=now)
    await conn.execute(
        "UPDATE commands SET state = $1, detail = $2, updated = $3 WHERE id = $4",
        state,
        detail,
        now,
        cmd_id,
    )
    action, details = audit.command_moved(old, new)
    await append_audit(conn, now=now, actor=actor, action=action, subject=cmd_id, details=details)
    return new, True


async def expire_commands(conn: Conn, now: float) -> int:
    due = await conn.fetch(
        f"SELECT {rows.CMD_COLUMNS} FROM commands WHERE state = 'queued' AND expires <= $1"
        " ORDER BY created, id",
        now,
    )
    for row in due:
        old = rows.command(row)
        new = rows.expired(old, now)
        await conn.execute(
            "UPDATE commands SET state = $1, detail = $2, updated = $3 WHERE id = $4",
            new.state,
            new.detail,
            now,
            old.id,
        )
        action, details = audit.command_moved(old, new)
        await append_audit(
            conn, now=now, actor=audit.SYSTEM_EXPIRY, action=action, subject=old.id, details=details
        )
    return len(due)


# -- reports ----------------------------------------------------------------------------------


def _pick(a: int | None, b: float | None, lowest: bool) -> float:
    """min/max over an int and a float candidate, keeping the winner's type (as SQLite)."""
    candidates = [v for v in (a, b) if v is not None]
    return min(candidates) if lowest else max(candidates)


async def aggregate(conn: Conn, q: AggregateQuery) -> list[AggregateRow]:
    # integers and floats live in two columns; both count, text and booleans do not
    p = rows.Params(numbered=True)
    bucket = p(q.bucket_s)
    sql = (
        f"SELECT device, floor(time / {bucket})::bigint * {bucket} AS start, count(*),"
        " avg(coalesce(value_real, value_int::float8)),"
        " min(value_int), min(value_real), max(value_int), max(value_real)"
        " FROM measurements"
        + p.where(
            ("metric =", q.metric),
            "(value_int IS NOT NULL OR value_real IS NOT NULL)",
            ("device =", q.device),
            ("time >=", q.since),
            ("time <", q.until),
        )
        + f" GROUP BY device, start ORDER BY device, start LIMIT {p(q.limit)}"
    )
    return [
        AggregateRow(d, int(start), n, float(mean), _pick(ni, nr, True), _pick(xi, xr, False))
        for d, start, n, mean, ni, nr, xi, xr in await conn.fetch(sql, *p.args)
    ]


async def delivery(conn: Conn, device: str, max_gaps: int) -> DeliveryReport:
    n, first, last = await conn.fetchrow(
        "SELECT count(*), min(seq), max(seq) FROM samples WHERE device = $1", device
    )
    gaps = await conn.fetch(
        "SELECT prev + 1, seq - 1 FROM (SELECT seq, lag(seq) OVER (ORDER BY seq) AS prev"
        " FROM samples WHERE device = $1) AS s WHERE prev IS NOT NULL AND seq > prev + 1"
        " ORDER BY seq LIMIT $2",
        device,
        max_gaps,
    )
    return rows.delivery_report(device, n, first, last, gaps)
