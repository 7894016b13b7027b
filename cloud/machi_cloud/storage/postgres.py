"""`Storage` on PostgreSQL (asyncpg): for several `machi-cloud` instances and for scale.

Everything that must hold across instances is enforced by the database, never by memory:

- `(gateway, batch_id)` is claimed first, by `INSERT .. ON CONFLICT DO NOTHING` into
  `batches`. A concurrent delivery of the same batch waits on that unique key until the
  first transaction ends, then reads its recorded answer (replay) or, with another body
  hash, raises `BatchConflict`; if the first rolled back, the second stores the batch.
- `(device, seq)` is stored once by `INSERT .. ON CONFLICT DO NOTHING RETURNING`: the rows
  returned are the new readings, the rest are duplicates (first stored content wins).
  Only new readings get measurement rows, so those need no conflict handling.
- Rows are inserted in key order (device, seq; device, metric; device), so two batches
  overlapping in any way take their row locks in the same order and cannot deadlock; a
  deadlock or serialization failure anyway (another writer we do not know) is retried.

One transaction per batch (READ COMMITTED), a fixed number of round trips whatever its
size: readings and measurements travel by `COPY` (binary; asyncpg's array encoder costs
dozens of `isinstance` checks per reading), the few `latest` and `devices` rows as arrays
through `unnest()`. The batch is made ready before the transaction (`_prepare`; the
measurement, `latest` and `devices` rows of its new readings inside it, once they are
known): a fast-lane batch (`batch.ReadingColumns`, no key twice) from its columns, as
SQLite does, without building its `Reading`s; any other batch from its `Reading`s; the
same rows either way.
Schema and migrations: `migrations/postgres.py`; the control plane (registry, commands,
audit, reports): `postgres_control.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from operator import itemgetter
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ..batch import Reading, Rejection, Value
from ..errors import StorageUnavailable
from . import postgres_control as control
from . import rows
from .base import (
    BatchResult,
    DeviceSummary,
    LatestValue,
    ReadingQuery,
    ReadingRow,
    Storage,
    StorageStats,
)
from .migrations.postgres import STEPS, SchemaTooNew, migrate
from .records import (
    AggregateQuery,
    AggregateRow,
    AuditEntry,
    Command,
    CommandQuery,
    DeliveryReport,
    DeviceRegistration,
    RegisteredDevice,
)

T = TypeVar("T")
log = logging.getLogger("machi_cloud.storage.postgres")
_RETRIES = 5
# Connection-level failures and server errors; BatchConflict is ours and passes through.
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)

_CLAIM = """
INSERT INTO batches (gateway, batch_id, body_sha256, answer) VALUES ($1, $2, $3, '')
ON CONFLICT (gateway, batch_id) DO NOTHING RETURNING true
"""
_RECORDED = "SELECT body_sha256, answer FROM batches WHERE gateway = $1 AND batch_id = $2"
_HELD = """
SELECT device, seq FROM samples
WHERE (device, seq) IN (SELECT * FROM unnest($1::text[], $2::bigint[]))
"""
# Each connection's own staging table for a batch's readings: COPY into it is the cheapest
# way in, and `INSERT .. SELECT .. ON CONFLICT DO NOTHING RETURNING` from it tells which
# readings are new. Emptied at every commit; created once per connection (pool `init`).
_STAGING = "machi_incoming"
_STAGING_COLUMNS = ("device", "seq", "time", "received", "transport")
_CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS {_STAGING} (
    device text COLLATE "C", seq bigint, time float8, received float8, transport text
) ON COMMIT DELETE ROWS
"""
_INSERT_SAMPLES = f"""
INSERT INTO samples (device, seq, time, received, transport, gateway, batch_id)
SELECT device, seq, time, received, transport, $1, $2 FROM {_STAGING}
ORDER BY device, seq
ON CONFLICT (device, seq) DO NOTHING
RETURNING device, seq
"""
_MEASUREMENT_COLUMNS = (
    "device", "seq", "metric", "time", "unit", "value_int", "value_real", "value_text",
    "value_bool",
)  # fmt: skip
_UPSERT_LATEST = """
INSERT INTO latest (device, metric, seq, time, unit, value_int, value_real, value_text, value_bool)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::float8[], $5::text[],
                     $6::bigint[], $7::float8[], $8::text[], $9::bool[])
    AS u(d, m, s, t, un, vi, vr, vt, vb)
ORDER BY d COLLATE "C", m COLLATE "C"
ON CONFLICT (device, metric) DO UPDATE SET
    seq = excluded.seq, time = excluded.time, unit = excluded.unit,
    value_int = excluded.value_int, value_real = excluded.value_real,
    value_text = excluded.value_text, value_bool = excluded.value_bool
WHERE excluded.seq > latest.seq
"""
_SET_ANSWER = "UPDATE batches SET answer = $3 WHERE gateway = $1 AND batch_id = $2"
_SAMPLE_COLUMNS = ("device", "seq", "time", "received", "transport", "gateway", "batch_id")
# latest, devices and the recorded answer in one statement (one round trip): its parts
# touch different tables, so running them as data-modifying CTEs changes nothing else
_FINISH = f"""
WITH latest_rows AS ({_UPSERT_LATEST}),
device_rows AS (
    INSERT INTO devices (device, first_seen, last_seen, last_seq, readings)
    SELECT * FROM unnest($10::text[], $11::float8[], $12::float8[], $13::bigint[],
                         $14::bigint[]) AS u(d, f, l, s, n)
    ORDER BY d COLLATE "C"
    ON CONFLICT (device) DO UPDATE SET
        last_seen = greatest(devices.last_seen, excluded.last_seen),
        last_seq = greatest(devices.last_seq, excluded.last_seq),
        readings = devices.readings + excluded.readings
)
UPDATE batches SET answer = $17 WHERE gateway = $15 AND batch_id = $16
"""

_VALUE_COLUMNS = "value_int, value_real, value_text, value_bool"


_VALUE = itemgetter(5)


def _value_columns(value: Value) -> tuple[int | None, float | None, str | None, bool | None]:
    """(value_int, value_real, value_text, value_bool) for one value; bool first (an int)."""
    if value is True or value is False:
        return None, None, None, value
    if isinstance(value, str):
        return None, None, value, None
    if isinstance(value, int):
        return value, None, None, None
    return None, value, None, None


def _value(vi: int | None, vr: float | None, vt: str | None, vb: bool | None) -> Value:
    if vb is not None:
        return vb
    if vt is not None:
        return vt
    if vi is not None:
        return vi
    return vr  # type: ignore[return-value]  # the CHECK constraint makes one non-null


def _time(t: float) -> int | float:
    """Times are stored as double precision; integral ones come back as ints (as sent)."""
    return int(t) if t.is_integer() else t


def redact(dsn: str) -> str:
    """The DSN without its password, fit for logs and error messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresStorage(Storage):
    """Readings in a PostgreSQL database (`postgresql://user:pass@host:port/db`).

    `pool_size` bounds the connections of this instance; several instances may share one
    database. Behind PgBouncer in transaction mode pass `statement_cache_size=0`.
    """

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 10,
        connect_timeout_s: float = 10.0,
        statement_cache_size: int = 100,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.dsn = dsn
        self._pool_size = pool_size
        self._connect_timeout_s = connect_timeout_s
        self._statement_cache_size = statement_cache_size
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._listener: Any = None  # asyncpg.Connection LISTENing for new commands
        self._wakers: set[Callable[[str], None]] = set()

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        async with self._lock:
            if self._pool is not None:
                return
            try:
                pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=1,
                    max_size=self._pool_size,
                    timeout=self._connect_timeout_s,
                    statement_cache_size=self._statement_cache_size,
                    init=_init_connection,
                    reset=_keep_session,
                )
            except (*_DB_ERRORS, ValueError) as exc:
                raise StorageUnavailable(
                    f"cannot connect to PostgreSQL at {redact(self.dsn)}: {exc}"
                ) from exc
            try:
                async with pool.acquire() as conn:
                    before, after = await migrate(conn)
            except SchemaTooNew as exc:
                await pool.close()
                raise StorageUnavailable(
                    f"{redact(self.dsn)} has {exc}: upgrade machi-cloud"
                ) from exc
            except _DB_ERRORS as exc:
                await pool.close()
                raise StorageUnavailable(f"cannot migrate {redact(self.dsn)}: {exc}") from exc
            except BaseException:
                await pool.close()
                raise
            if before != after:
                log.info("migrated %s from schema %d to %d", redact(self.dsn), before, after)
            self._pool = pool

    async def close(self) -> None:
        async with self._lock:
            pool, self._pool = self._pool, None
            listener, self._listener = self._listener, None
            self._wakers.clear()
        if listener is not None and not listener.is_closed():
            try:
                await asyncio.wait_for(listener.close(), timeout=10)
            except (*_DB_ERRORS, TimeoutError):
                listener.terminate()
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=30)
            except TimeoutError:
                pool.terminate()

    async def watch_commands(self, wake: Callable[[str], None]) -> bool:
        """LISTEN on a connection of its own (outside the pool, whose connections must stay
        free of session state): `add_command` NOTIFYs at commit, so a gateway long-polling
        any instance hears at once of a command queued through another one. If that
        connection is lost, False until the next call reconnects (callers poll meanwhile)."""
        async with self._lock:
            if self._pool is None:
                return False
            self._wakers.add(wake)
            if self._listener is not None and not self._listener.is_closed():
                return True
            try:
                conn = await asyncpg.connect(self.dsn, timeout=self._connect_timeout_s)
            except (*_DB_ERRORS, ValueError) as exc:
                log.warning("cannot LISTEN for commands on %s: %s", redact(self.dsn), exc)
                return False
            try:
                conn.add_termination_listener(self._listener_lost)
                await conn.add_listener(control.COMMANDS_CHANNEL, self._notified)
            except _DB_ERRORS as exc:
                log.warning("cannot LISTEN for commands on %s: %s", redact(self.dsn), exc)
                conn.terminate()
                return False
            self._listener = conn
            return True

    def _notified(self, conn: Any, pid: int, channel: str, gateway: str) -> None:
        for wake in list(self._wakers):
            wake(gateway)

    def _listener_lost(self, conn: Any) -> None:
        if self._listener is conn:
            self._listener = None
            log.warning("lost the LISTEN connection to %s; polling meanwhile", redact(self.dsn))

    async def _run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """`fn(connection)`, with database failures as `StorageUnavailable` (503: retry)."""
        pool = self._pool
        if pool is None:
            raise StorageUnavailable("the storage is closed")
        for attempt in range(1, _RETRIES + 1):
            try:
                async with pool.acquire() as conn:
                    return await fn(conn)
            except _RETRYABLE as exc:
                if attempt == _RETRIES:
                    raise StorageUnavailable(f"database busy: {exc}") from exc
                log.info("retrying after %s (attempt %d)", type(exc).__name__, attempt)
                await asyncio.sleep(0.01 * attempt)
            except _DB_ERRORS as exc:
                raise StorageUnavailable(f"database error: {exc}") from exc
        raise AssertionError("unreachable")

    # -- ingest ------------------------------------------------------------------------

    async def store_batch(
        self,
        *,
        gateway: str,
        batch_id: str,
        body_hash: bytes,
        readings: Sequence[Reading],
        rejected: Sequence[Rejection] = (),
    ) -> BatchResult:
        prepared = _prepare(readings)
        rejected_t = tuple(rejected)

        async def run(conn: Any) -> BatchResult:
            async with conn.transaction():
                return await self._store(conn, gateway, batch_id, body_hash, prepared, rejected_t)

        return await self._run(run)

    @staticmethod
    async def _store(
        conn: Any,
        gateway: str,
        batch_id: str,
        body_hash: bytes,
        p: _Prepared | _PreparedColumns,
        rejected: tuple[Rejection, ...],
    ) -> BatchResult:
        if not await conn.fetchval(_CLAIM, gateway, batch_id, body_hash):
            row = await conn.fetchrow(_RECORDED, gateway, batch_id)
            doc = rows.recorded(gateway, batch_id, body_hash, row["body_sha256"], row["answer"])
            keys = rows.replay_keys(doc, p.acked)
            held = await conn.fetch(_HELD, *map(list, zip(*keys, strict=True))) if keys else []
            return rows.replayed(doc, keys, [(r["device"], r["seq"]) for r in held])
        new: Collection[tuple[str, int]] = ()
        if p.acked:
            new = await _insert_samples(conn, gateway, batch_id, p)
        result = BatchResult(
            batch_id=batch_id,
            stored=len(new),
            duplicates=len(p.acked) - len(new) + p.repeated,
            acked=p.acked,
            rejected=rejected,
        )
        answer = result.record()
        if not new:
            await conn.execute(_SET_ANSWER, gateway, batch_id, answer)
            return result
        m_records, l_cols, d_cols = p.derived(None if len(new) == len(p.acked) else new)
        if m_records:
            await conn.copy_records_to_table(
                "measurements", records=m_records, columns=_MEASUREMENT_COLUMNS
            )
        await conn.execute(_FINISH, *l_cols, *d_cols, gateway, batch_id, answer)
        return result

    # -- queries -----------------------------------------------------------------------

    async def readings(self, query: ReadingQuery) -> list[ReadingRow]:
        p = rows.Params(numbered=True)
        since = None if query.since is None else float(query.since)  # float8: no int params
        until = None if query.until is None else float(query.until)
        sql = (
            "SELECT m.device, m.seq, m.time, s.received, s.gateway, m.metric, m.unit,"
            " m.value_int, m.value_real, m.value_text, m.value_bool"
            " FROM measurements AS m JOIN samples AS s ON s.device = m.device AND s.seq = m.seq"
            + p.where(
                ("m.device =", query.device),
                ("m.metric =", query.metric),
                ("m.time >=", since),
                ("m.time <", until),
                ("(m.device, m.seq, m.metric) >", query.after),
            )
            + f" ORDER BY m.device, m.seq, m.metric LIMIT {p(query.limit)}"
        )

        async def run(conn: Any) -> list[ReadingRow]:
            return [
                ReadingRow(
                    d,
                    q,
                    _time(t),
                    None if rc is None else _time(rc),
                    gw,
                    metric,
                    unit,
                    _value(vi, vr, vt, vb),
                )
                for d, q, t, rc, gw, metric, unit, vi, vr, vt, vb in await conn.fetch(sql, *p.args)
            ]

        return await self._run(run)

    async def devices(self) -> list[DeviceSummary]:
        async def run(conn: Any) -> list[DeviceSummary]:
            # one snapshot for both queries
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                rows = await conn.fetch(
                    "SELECT device, last_seen, last_seq, readings FROM devices ORDER BY device"
                )
                latest_rows = await conn.fetch(
                    f"SELECT device, metric, seq, time, unit, {_VALUE_COLUMNS}"
                    " FROM latest ORDER BY device, metric"
                )
            latest: dict[str, dict[str, LatestValue]] = {}
            for device, metric, seq, t, unit, vi, vr, vt, vb in latest_rows:
                latest.setdefault(device, {})[metric] = LatestValue(
                    value=_value(vi, vr, vt, vb), unit=unit, time=_time(t), seq=seq
                )
            return [
                DeviceSummary(
                    device=d, last_seen=_time(ls), last_seq=q, readings=n, latest=latest.get(d, {})
                )
                for d, ls, q, n in rows
            ]

        return await self._run(run)

    async def stats(self) -> StorageStats:
        async def run(conn: Any) -> StorageStats:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM devices), "
                "(SELECT coalesce(sum(readings), 0) FROM devices), "
                "(SELECT count(*) FROM batches)"
            )
            return StorageStats(devices=row[0], readings=int(row[1]), batches=row[2])

        return await self._run(run)

    # -- control plane (registry, commands, audit, reports): postgres_control.py ----------

    async def _change(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """`fn` in one transaction holding the control lock: the change and its audit
        entry, or neither; one control-plane change at a time across all instances."""

        async def run(conn: Any) -> T:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", control.CONTROL_LOCK)
                return await fn(conn)

        return await self._run(run)

    async def put_device(
        self, reg: DeviceRegistration, *, actor: str, now: float
    ) -> tuple[RegisteredDevice, bool]:
        return await self._change(lambda c: control.put_device(c, reg, actor, now))

    async def set_device_key(
        self, device: str, key: bytes | None, *, actor: str, now: float
    ) -> RegisteredDevice:
        return await self._change(lambda c: control.set_device_key(c, device, key, actor, now))

    async def registry(
        self, *, gateway: str | None = None, device: str | None = None
    ) -> list[RegisteredDevice]:
        return await self._run(lambda c: control.registry(c, gateway, device))

    async def add_command(self, cmd: Command, *, actor: str) -> Command:
        return await self._change(lambda c: control.add_command(c, cmd, actor))

    async def commands(self, query: CommandQuery) -> list[Command]:
        return await self._run(lambda c: control.commands(c, query))

    async def advance_command(
        self, cmd_id: str, state: str, *, detail: str, actor: str, now: float
    ) -> tuple[Command, bool]:
        return await self._change(
            lambda c: control.advance_command(c, cmd_id, state, detail, actor, now)
        )

    async def expire_commands(self, now: float) -> int:
        return await self._change(lambda c: control.expire_commands(c, now))

    async def audit_log(self, *, after: int = 0, limit: int = 1000) -> list[AuditEntry]:
        return await self._run(lambda c: control.audit_log(c, after, limit))

    async def aggregate(self, query: AggregateQuery) -> list[AggregateRow]:
        return await self._run(lambda c: control.aggregate(c, query))

    async def delivery(self, device: str, *, max_gaps: int = 1000) -> DeliveryReport:
        return await self._run(lambda c: control.delivery(c, device, max_gaps))

    async def schema_version(self) -> int:
        """The applied schema version (tests, `/healthz` of later versions)."""

        async def run(conn: Any) -> int:
            version: int = await conn.fetchval("SELECT max(version) FROM schema_version")
            return version

        return await self._run(run)


SCHEMA_VERSION = len(STEPS)


async def _insert_samples(
    conn: Any, gateway: str, batch_id: str, p: _Prepared | _PreparedColumns
) -> Collection[tuple[str, int]]:
    """Store the batch's samples; which of its keys are new.

    Usually every reading is new, and a `COPY` straight into `samples` (in key order) is
    the cheapest way in. If one is held already, the unique key fails the `COPY`; then we
    roll back to before it and take the staging path, whose `ON CONFLICT DO NOTHING
    RETURNING` tells the new keys. A concurrent writer of the same key makes the `COPY`
    wait for its end, as the `INSERT` would.
    """
    await conn.execute("SAVEPOINT machi_samples")
    try:
        await conn.copy_records_to_table(
            "samples", records=p.sample_rows(gateway, batch_id), columns=_SAMPLE_COLUMNS
        )
    except asyncpg.UniqueViolationError:
        await conn.execute("ROLLBACK TO SAVEPOINT machi_samples")
    else:
        return p.acked
    await conn.copy_records_to_table(_STAGING, records=p.sample_records(), columns=_STAGING_COLUMNS)
    return {(r[0], r[1]) for r in await conn.fetch(_INSERT_SAMPLES, gateway, batch_id)}


async def _init_connection(conn: Any) -> None:
    await conn.execute(_CREATE_STAGING)


async def _keep_session(conn: Any) -> None:
    """Pool `reset`: nothing to undo. We set no session state, LISTEN, cursors or session
    locks (migrations use a transaction lock), and asyncpg still rolls back an open
    transaction itself; the default `RESET ALL ...` would cost a round trip per call."""


def _prepare(readings: Sequence[Reading]) -> _Prepared | _PreparedColumns:
    """A fast-lane batch (`ReadingColumns`, its keys distinct) from its columns, any other
    from its `Reading`s: the same rows either way (`tests/test_column_path.py`)."""
    columns = rows.SortedColumns.of(readings)
    return _Prepared(readings) if columns is None else _PreparedColumns(columns)


class _Prepared:
    """A batch's readings made ready for the database once, outside any transaction.

    In-batch repeats are dropped here (the first occurrence wins, as in SQLite); what is
    new in the database is only known inside the transaction, so the per-table columns are
    derived there from the set of keys the samples insert returned. Rows go to the
    database in key order, so overlapping batches lock rows in the same order.
    `_PreparedColumns` does the same for a fast-lane batch without building its readings.
    """

    def __init__(self, readings: Sequence[Reading]) -> None:
        first = rows.first_of_each(readings)
        self.repeated = len(readings) - len(first)
        self.acked: tuple[tuple[str, int], ...] = tuple(first)
        self.unique = dict(sorted(first.items()))

    def sample_records(self) -> list[tuple[Any, ...]]:
        return [r[:5] for r in self.unique.values()]  # device, seq, time, received, transport

    def sample_rows(self, gateway: str, batch_id: str) -> list[tuple[Any, ...]]:
        """`_SAMPLE_COLUMNS` of every reading."""
        return [(*r[:5], gateway, batch_id) for r in self.unique.values()]

    def derived(
        self, new: Collection[tuple[str, int]] | None
    ) -> tuple[list[tuple[Any, ...]], tuple[list[Any], ...], tuple[list[Any], ...]]:
        """Measurement records, and latest and devices columns, of the newly stored
        readings (`new`; None: all of them)."""
        ordered = list(self.unique.values())  # in key order
        if new is not None:
            ordered = [r for r in ordered if (r[0], r[1]) in new]
        m = _measurement_records(
            [(d, q, n, t, u, v) for d, q, t, _, _, ms in ordered for n, u, v in ms]
        )
        latest = rows.newest(m)
        devices = rows.device_rows(ordered)
        # latest's columns are (device, metric, seq, ...): measurements' with 2 and 3 swapped
        l_rows = [(d, n, q, *rest) for d, q, n, *rest in latest.values()]
        return m, _columns(l_rows, 9), _columns(devices, 5)


class _PreparedColumns:
    """`_Prepared` of a fast-lane batch whose keys are distinct, from its columns: its
    lazy `Reading`s are never built, and key order, the rows of the new readings, latest
    and devices come from `rows.SortedColumns` (C-level sorts and zips, as SQLite's
    `_insert_columns` takes them) instead of per-reading Python; what is left is one
    comprehension making the `COPY` records of the measurements."""

    repeated = 0  # `SortedColumns.of` takes no batch with a key twice

    def __init__(self, columns: rows.SortedColumns) -> None:
        self.columns = columns
        self.acked = columns.acked

    def sample_records(self) -> list[tuple[Any, ...]]:
        return self.columns.sample_rows()

    def sample_rows(self, gateway: str, batch_id: str) -> list[tuple[Any, ...]]:
        return self.columns.sample_rows(gateway, batch_id)

    def derived(
        self, new: Collection[tuple[str, int]] | None
    ) -> tuple[list[tuple[Any, ...]], tuple[list[Any], ...], tuple[list[Any], ...]]:
        """As `_Prepared.derived`."""
        c = self.columns if new is None else self.columns.only(new)
        m = _measurement_records(c.measurement_rows())
        latest = [(*r[:5], *_value_columns(r[5])) for r in c.latest_rows()]  # a few a device
        return m, _columns(latest, 9), _columns(c.device_rows(), 5)


def _measurement_records(plain: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """`COPY` records of `(device, seq, metric, time, unit, value)` rows."""
    kinds = set(map(type, map(_VALUE, plain)))
    if kinds <= {float}:  # the usual batches: one comprehension, no call per value
        return [(d, q, n, t, u, None, v, None, None) for d, q, n, t, u, v in plain]
    if kinds == {int}:
        return [(d, q, n, t, u, v, None, None, None) for d, q, n, t, u, v in plain]
    return [(d, q, n, t, u, *_value_columns(v)) for d, q, n, t, u, v in plain]


def _columns(table: Sequence[tuple[Any, ...]], width: int) -> tuple[list[Any], ...]:
    """Rows of `width` values as `width` lists, for `unnest()`."""
    return tuple(list(col) for col in zip(*table, strict=True)) or tuple([] for _ in range(width))
