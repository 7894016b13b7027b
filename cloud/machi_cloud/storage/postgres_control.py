"""The control plane on PostgreSQL: registry, commands, audit log, aggregation, delivery.

The same rules as `sqlite_control.py` (which is the reference: same queries, same answers),
over an asyncpg connection. Changes run inside a transaction that `PostgresStorage` opens
after taking `CONTROL_LOCK` (a transaction-level advisory lock): control-plane changes of
all instances on one database happen one at a time, so the audit chain's next `seq`, a
free LoRa `short_id` and a command's state are read and written without a race. They are
rare (people and gateways acting, not sensors), so serialising them costs nothing.
"""

from __future__ import annotations

import json
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

CONTROL_LOCK = 0x6D61636869 + 1  # next to the migrations' key

_REG_COLUMNS = (
    "device, type, gateway, site, lat, lon, transport, interval_s, personal, short_id, key,"
    " revoked, created, updated"
)
_CMD_COLUMNS = "id, device, gateway, name, args, created, expires, state, updated, detail, actor"

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
        "INSERT INTO audit (seq, time, actor, action, subject, details, prev_hash, hash)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        e.seq,
        e.time,
        e.actor,
        e.action,
        e.subject,
        audit.canonical(e.details).decode(),
        e.prev_hash,
        e.hash,
    )
    return e


async def audit_log(conn: Conn, after: int, limit: int) -> list[AuditEntry]:
    rows = await conn.fetch(
        "SELECT seq, time, actor, action, subject, details, prev_hash, hash FROM audit"
        " WHERE seq > $1 ORDER BY seq LIMIT $2",
        after,
        limit,
    )
    return [
        AuditEntry(seq, t, actor, action, subject, json.loads(details), prev, digest)
        for seq, t, actor, action, subject, details, prev, digest in rows
    ]


# -- registry ---------------------------------------------------------------------------------


def _device(row: Any) -> RegisteredDevice:
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
        personal=personal,
        short_id=short_id,
        key=None if key is None else bytes(key),
        revoked=revoked,
        created=created,
        updated=updated,
    )


async def registry(conn: Conn, gateway: str | None, device: str | None) -> list[RegisteredDevice]:
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("gateway", gateway), ("device", device)):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    sql = f"SELECT {_REG_COLUMNS} FROM registry" + (
        " WHERE " + " AND ".join(where) if where else ""
    )
    return [_device(r) for r in await conn.fetch(sql + " ORDER BY device", *args)]


async def _free_short_id(conn: Conn, gateway: str) -> int:
    rows = await conn.fetch("SELECT short_id FROM registry WHERE gateway = $1", gateway)
    used = {r[0] for r in rows}
    for candidate in range(1, MAX_SHORT_ID + 1):
        if candidate not in used:
            return candidate
    raise ShortIdsExhausted(
        f"gateway {gateway!r} already has {MAX_SHORT_ID} devices (LoRa short ids are 16-bit): "
        "put new devices on another gateway"
    )


async def put_device(
    conn: Conn, reg: DeviceRegistration, actor: str, now: float
) -> tuple[RegisteredDevice, bool]:
    found = await registry(conn, None, reg.device)
    old = found[0] if found else None
    if old is not None and old.gateway == reg.gateway:
        short_id = old.short_id
    else:
        short_id = await _free_short_id(conn, reg.gateway)
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
    await conn.execute(
        f"INSERT INTO registry ({_REG_COLUMNS})"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        " ON CONFLICT (device) DO UPDATE SET type = excluded.type,"
        " gateway = excluded.gateway, site = excluded.site, lat = excluded.lat,"
        " lon = excluded.lon, transport = excluded.transport,"
        " interval_s = excluded.interval_s, personal = excluded.personal,"
        " short_id = excluded.short_id, key = excluded.key, revoked = excluded.revoked,"
        " created = excluded.created, updated = excluded.updated",
        new.device,
        new.type,
        new.gateway,
        new.site,
        new.lat,
        new.lon,
        new.transport,
        new.interval_s,
        new.personal,
        new.short_id,
        new.key,
        new.revoked,
        new.created,
        new.updated,
    )
    await append_audit(
        conn, now=now, actor=actor, action=action, subject=new.device, details=details
    )
    return new, old is None


async def set_device_key(
    conn: Conn, device: str, key: bytes | None, actor: str, now: float
) -> RegisteredDevice:
    found = await registry(conn, None, device)
    if not found:
        raise NotFound(
            f"device {device!r} is not registered: register it first with PUT /v1/devices/{device}"
        )
    old = found[0]
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


def _command(row: Any) -> Command:
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


async def add_command(conn: Conn, cmd: Command, actor: str) -> Command:
    await conn.execute(
        f"INSERT INTO commands ({_CMD_COLUMNS})"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
    )
    action, details = audit.command_created(cmd)
    await append_audit(
        conn, now=cmd.created, actor=actor, action=action, subject=cmd.id, details=details
    )
    return replace(cmd, actor=actor)


async def commands(conn: Conn, q: CommandQuery) -> list[Command]:
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("id", q.id), ("device", q.device), ("gateway", q.gateway)):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    order = "created DESC, id"
    if q.pending_at is not None:
        args.append(q.pending_at)
        where += ["state = 'queued'", f"expires > ${len(args)}"]
        order = "created, id"
    args.append(q.limit)
    sql = (
        f"SELECT {_CMD_COLUMNS} FROM commands"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY {order} LIMIT ${len(args)}"
    )
    return [_command(r) for r in await conn.fetch(sql, *args)]


async def advance_command(
    conn: Conn, cmd_id: str, state: str, detail: str, actor: str, now: float
) -> tuple[Command, bool]:
    found = await commands(conn, CommandQuery(id=cmd_id, limit=1))
    if not found:
        raise NotFound(f"there is no command {cmd_id!r}: use an id returned by the cloud")
    old = found[0]
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
    rows = await conn.fetch(
        f"SELECT {_CMD_COLUMNS} FROM commands WHERE state = 'queued' AND expires <= $1"
        " ORDER BY created, id",
        now,
    )
    for row in rows:
        old = _command(row)
        new = replace(old, state="expired", detail="not fetched before it expired", updated=now)
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
    return len(rows)


# -- reports ----------------------------------------------------------------------------------


def _pick(a: int | None, b: float | None, lowest: bool) -> float:
    """min/max over an int and a float candidate, keeping the winner's type (as SQLite)."""
    candidates = [v for v in (a, b) if v is not None]
    return min(candidates) if lowest else max(candidates)


async def aggregate(conn: Conn, q: AggregateQuery) -> list[AggregateRow]:
    # integers and floats live in two columns; both count, text and booleans do not
    args: list[Any] = [q.bucket_s, q.metric]
    where = ["metric = $2", "(value_int IS NOT NULL OR value_real IS NOT NULL)"]
    for op, value in (("device =", q.device), ("time >=", q.since), ("time <", q.until)):
        if value is not None:
            args.append(value)
            where.append(f"{op} ${len(args)}")
    args.append(q.limit)
    sql = (
        "SELECT device, floor(time / $1)::bigint * $1 AS start, count(*),"
        " avg(coalesce(value_real, value_int::float8)),"
        " min(value_int), min(value_real), max(value_int), max(value_real)"
        " FROM measurements WHERE " + " AND ".join(where) + " GROUP BY device, start"
        f" ORDER BY device, start LIMIT ${len(args)}"
    )
    return [
        AggregateRow(d, int(start), n, float(mean), _pick(ni, nr, True), _pick(xi, xr, False))
        for d, start, n, mean, ni, nr, xi, xr in await conn.fetch(sql, *args)
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
    missing = 0 if n == 0 else (last - first + 1) - n
    return DeliveryReport(
        device=device,
        readings=n,
        first_seq=first,
        last_seq=last,
        missing=missing,
        gaps=tuple((a, b) for a, b in gaps),
    )
