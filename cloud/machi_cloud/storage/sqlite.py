"""`Storage` on SQLite: the embedded default for one machine and for the demo.

- WAL mode, so queries read a consistent snapshot while a batch is being written.
- `synchronous=FULL`: the cloud's answer makes the gateway delete its copy, so a batch must
  survive a power cut once answered (with NORMAL, WAL may lose the last commits).
- One writer connection on one dedicated thread (SQLite has one writer anyway) and a small
  pool of reader threads, each with its own connection; the event loop never blocks.
- One transaction per batch (`BEGIN IMMEDIATE` ... `COMMIT`) with `executemany` inserts.

Schema (`PRAGMA user_version` = 2; a version 1 file gains the new tables on open):
`samples` (one row per reading, key `(device, seq)`), `measurements` (key
`(device, seq, metric)`), `latest` (the newest value per device and metric, kept on insert
so the dashboard never scans history), `devices` (last seen, last seq, count) and
`batches` (key `(gateway, batch_id)`, body SHA-256 and the CBOR answer);
version 2 adds `registry`, `commands` and the append-only `audit` (see `sqlite_control.py`).
Value and time columns have no declared type so SQLite keeps ints as ints and floats as
floats (21 stays 21, 21.0 stays 21.0).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from ..batch import Reading, Rejection, Value
from ..errors import StorageUnavailable
from . import rows
from . import sqlite_control as control
from .base import (
    BatchResult,
    DeviceSummary,
    LatestValue,
    ReadingQuery,
    ReadingRow,
    Storage,
    StorageStats,
)
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
SCHEMA_VERSION = 2
_IN_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    device    TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    time               NOT NULL,
    received,
    gateway   TEXT    NOT NULL,
    transport TEXT    NOT NULL,
    batch_id  TEXT    NOT NULL,
    ingested  REAL    NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS measurements (
    device     TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    metric     TEXT    NOT NULL,
    unit       TEXT,
    value_num,
    value_text TEXT,
    value_bool INTEGER,
    PRIMARY KEY (device, seq, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latest (
    device     TEXT    NOT NULL,
    metric     TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    time               NOT NULL,
    unit       TEXT,
    value_num,
    value_text TEXT,
    value_bool INTEGER,
    PRIMARY KEY (device, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
    device     TEXT    PRIMARY KEY,
    first_seen         NOT NULL,
    last_seen          NOT NULL,
    last_seq   INTEGER NOT NULL,
    readings   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    gateway     TEXT NOT NULL,
    batch_id    TEXT NOT NULL,
    body_sha256 BLOB NOT NULL,
    answer      BLOB NOT NULL,
    created     REAL NOT NULL,
    PRIMARY KEY (gateway, batch_id)
) WITHOUT ROWID;
"""

_INSERT_SAMPLE = (
    "INSERT INTO samples (device, seq, time, received, transport, gateway, batch_id, ingested)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, seq) DO NOTHING"
)
# a sample row with this batch's (gateway, batch_id) was written by this transaction
_MINE = "SELECT 1 FROM samples WHERE device = ? AND seq = ? AND gateway = ? AND batch_id = ?"
_INSERT_MEASUREMENT = (
    "INSERT INTO measurements (device, seq, metric, unit, value_num, value_text, value_bool)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_NUMBER = (
    "INSERT INTO measurements (device, seq, metric, unit, value_num) VALUES (?, ?, ?, ?, ?)"
)
_UPSERT_LATEST = """
INSERT INTO latest (device, metric, seq, time, unit, value_num, value_text, value_bool)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (device, metric) DO UPDATE SET
    seq = excluded.seq, time = excluded.time, unit = excluded.unit,
    value_num = excluded.value_num, value_text = excluded.value_text,
    value_bool = excluded.value_bool
WHERE excluded.seq > latest.seq
"""
_UPSERT_DEVICE = """
INSERT INTO devices (device, first_seen, last_seen, last_seq, readings) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (device) DO UPDATE SET
    last_seen = max(last_seen, excluded.last_seen),
    last_seq = max(last_seq, excluded.last_seq),
    readings = readings + excluded.readings
"""


def _columns(value: Value) -> tuple[int | float | None, str | None, int | None]:
    """(value_num, value_text, value_bool) for one value; bool first, it is an int too."""
    if value is True or value is False:
        return None, None, int(value)
    if isinstance(value, str):
        return None, value, None
    return value, None, None


def _value(num: Any, text: str | None, flag: int | None) -> Value:
    if flag is not None:
        return bool(flag)
    if text is not None:
        return text
    return num  # type: ignore[no-any-return]


class SQLiteStorage(Storage):
    """Readings in one SQLite file (created if missing)."""

    def __init__(self, path: Path | str, *, readers: int = 2, busy_timeout_s: float = 10.0) -> None:
        if readers < 1:
            raise ValueError("readers must be at least 1")
        self.path = Path(path)
        self._readers_n = readers
        self._busy_timeout_s = busy_timeout_s
        self._writer: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._wconn: sqlite3.Connection | None = None
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="machi-sqlite-writer")
        self._readers = ThreadPoolExecutor(
            self._readers_n, thread_name_prefix="machi-sqlite-reader"
        )
        try:
            await self._write(self._init_schema)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        writer, readers = self._writer, self._readers
        self._writer = self._readers = None
        for pool in (writer, readers):
            if pool is not None:
                await asyncio.to_thread(pool.shutdown, wait=True)
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._wconn = None

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # each connection stays on its thread; close() joins
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        except (sqlite3.Error, OSError) as exc:
            raise StorageUnavailable(f"cannot open the database {self.path}: {exc}") from exc
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageUnavailable(
                f"{self.path} has schema version {version}; this machi-cloud knows "
                f"{SCHEMA_VERSION}: upgrade machi-cloud"
            )
        conn.executescript(_SCHEMA + control.SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer is None:
            raise StorageUnavailable("the storage is closed")

        def run() -> T:
            if self._wconn is None:
                self._wconn = self._connect()
            return self._guard(fn, self._wconn)

        return await asyncio.get_running_loop().run_in_executor(self._writer, run)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._readers is None:
            raise StorageUnavailable("the storage is closed")

        def run() -> T:
            conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self._connect()
            return self._guard(fn, conn)

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    def _guard(self, fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.rollback()
            raise StorageUnavailable(f"database error on {self.path.name}: {exc}") from exc
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise

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
        def run(conn: sqlite3.Connection) -> BatchResult:
            return self._store(conn, gateway, batch_id, body_hash, readings, tuple(rejected))

        return await self._write(run)

    def _store(
        self,
        conn: sqlite3.Connection,
        gateway: str,
        batch_id: str,
        body_hash: bytes,
        readings: Sequence[Reading],
        rejected: tuple[Rejection, ...],
    ) -> BatchResult:
        """One transaction. Samples go in with `ON CONFLICT DO NOTHING`; when the change
        count says every reading was new (the usual case) no lookup is needed, else the
        rows this batch wrote are those carrying its (gateway, batch_id), which no earlier
        batch can have (its `batches` row would exist and this would be a replay).
        A fast-lane batch (`ReadingColumns`, no key twice) is written from its columns, any
        other from its readings: the same rows either way."""
        columns = rows.SortedColumns.of(readings)
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(
            "SELECT body_sha256, answer FROM batches WHERE gateway = ? AND batch_id = ?",
            (gateway, batch_id),
        ).fetchone()
        if row is not None:
            conn.rollback()
            return rows.replayed(gateway, batch_id, body_hash, row[0], row[1])

        now = time.time()
        if columns is not None:
            stored = self._insert_columns(conn, gateway, batch_id, now, columns)
            acked = columns.acked
        else:
            stored, acked = self._insert_readings(conn, gateway, batch_id, now, readings)
        result = BatchResult(
            batch_id=batch_id,
            stored=stored,
            duplicates=len(readings) - stored,
            acked=acked,
            rejected=rejected,
        )
        answer = result.encode()
        conn.execute(
            "INSERT INTO batches (gateway, batch_id, body_sha256, answer, created)"
            " VALUES (?, ?, ?, ?, ?)",
            (gateway, batch_id, body_hash, answer, now),
        )
        conn.commit()
        return replace(result, encoded=answer)

    @staticmethod
    def _insert_columns(
        conn: sqlite3.Connection, gateway: str, batch_id: str, now: float, c: rows.SortedColumns
    ) -> int:
        """The rows of a batch of plain numbers (its keys distinct) taken from its columns,
        as `_insert_readings` writes them; how many readings were new."""
        before = conn.total_changes
        conn.executemany(_INSERT_SAMPLE, c.sample_rows(gateway, batch_id, now))
        if conn.total_changes - before != len(c):
            c = c.only(
                key
                for key in zip(c.devices, c.seqs, strict=True)
                if conn.execute(_MINE, (*key, gateway, batch_id)).fetchone() is not None
            )
        conn.executemany(_INSERT_NUMBER, c.measurement_rows())
        conn.executemany(_UPSERT_LATEST, [(*r, None, None) for r in c.latest_rows()])
        conn.executemany(_UPSERT_DEVICE, c.device_rows())
        return len(c)

    @staticmethod
    def _insert_readings(
        conn: sqlite3.Connection,
        gateway: str,
        batch_id: str,
        now: float,
        readings: Sequence[Reading],
    ) -> tuple[int, tuple[tuple[str, int], ...]]:
        """Any batch's rows; (how many readings were new, the acked keys)."""
        unique = rows.first_of_each(readings)
        ordered = rows.in_key_order(unique)
        before = conn.total_changes
        conn.executemany(
            _INSERT_SAMPLE,
            [(d, q, t, rc, tr, gateway, batch_id, now) for d, q, t, rc, tr, _ in ordered],
        )
        new = unique
        if conn.total_changes - before != len(unique):
            new = {
                key: r
                for key, r in unique.items()
                if conn.execute(_MINE, (*key, gateway, batch_id)).fetchone() is not None
            }
        if new is not unique:
            ordered = [r for r in ordered if (r[0], r[1]) in new]
        measurements = [(d, q, n, u, v) for d, q, _, _, _, ms in ordered for n, u, v in ms]
        if rows.all_numbers(measurements):  # the usual batch: the columns it needs only
            conn.executemany(_INSERT_NUMBER, measurements)
        else:
            conn.executemany(_INSERT_MEASUREMENT, [(*m[:4], *_columns(m[4])) for m in measurements])
        conn.executemany(
            _UPSERT_LATEST,
            [
                (d, n, q, new[d, q][2], u, *_columns(v))
                for d, q, n, u, v in rows.newest(measurements).values()
            ],
        )
        conn.executemany(_UPSERT_DEVICE, rows.device_rows(ordered))
        return len(new), tuple(unique)

    # -- queries -----------------------------------------------------------------------

    async def readings(self, query: ReadingQuery) -> list[ReadingRow]:
        p = rows.Params(numbered=False)
        sql = (
            "SELECT m.device, m.seq, s.time, s.received, s.gateway, m.metric, m.unit,"
            " m.value_num, m.value_text, m.value_bool"
            " FROM measurements AS m JOIN samples AS s ON s.device = m.device AND s.seq = m.seq"
            + p.where(
                ("m.device =", query.device),
                ("m.metric =", query.metric),
                ("s.time >=", query.since),
                ("s.time <", query.until),
                ("(m.device, m.seq, m.metric) >", query.after),
            )
            + f" ORDER BY m.device, m.seq, m.metric LIMIT {p(query.limit)}"
        )

        def run(conn: sqlite3.Connection) -> list[ReadingRow]:
            return [
                ReadingRow(d, q, t, rc, gw, metric, unit, _value(num, text, flag))
                for d, q, t, rc, gw, metric, unit, num, text, flag in conn.execute(sql, p.args)
            ]

        return await self._read(run)

    async def devices(self) -> list[DeviceSummary]:
        def run(conn: sqlite3.Connection) -> list[DeviceSummary]:
            conn.execute("BEGIN")  # one snapshot for both queries
            try:
                rows = conn.execute(
                    "SELECT device, last_seen, last_seq, readings FROM devices ORDER BY device"
                ).fetchall()
                latest: dict[str, dict[str, LatestValue]] = {}
                for device, metric, seq, t, unit, num, text, flag in conn.execute(
                    "SELECT device, metric, seq, time, unit, value_num, value_text, value_bool"
                    " FROM latest ORDER BY device, metric"
                ):
                    latest.setdefault(device, {})[metric] = LatestValue(
                        value=_value(num, text, flag), unit=unit, time=t, seq=seq
                    )
            finally:
                conn.commit()
            return [
                DeviceSummary(
                    device=d, last_seen=ls, last_seq=q, readings=n, latest=latest.get(d, {})
                )
                for d, ls, q, n in rows
            ]

        return await self._read(run)

    async def stats(self) -> StorageStats:
        def run(conn: sqlite3.Connection) -> StorageStats:
            devices, readings = conn.execute(
                "SELECT count(*), coalesce(sum(readings), 0) FROM devices"
            ).fetchone()
            (batches,) = conn.execute("SELECT count(*) FROM batches").fetchone()
            return StorageStats(devices=devices, readings=readings, batches=batches)

        return await self._read(run)

    # -- control plane (registry, commands, audit, reports) ------------------------------

    async def _change(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn` inside one write transaction: the change and its audit entry, or neither."""

        def run(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            result = fn(conn)
            conn.commit()
            return result

        return await self._write(run)

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
        return await self._read(lambda c: control.registry(c, gateway, device))

    async def add_command(self, cmd: Command, *, actor: str) -> Command:
        return await self._change(lambda c: control.add_command(c, cmd, actor))

    async def commands(self, query: CommandQuery) -> list[Command]:
        return await self._read(lambda c: control.commands(c, query))

    async def advance_command(
        self, cmd_id: str, state: str, *, detail: str, actor: str, now: float
    ) -> tuple[Command, bool]:
        return await self._change(
            lambda c: control.advance_command(c, cmd_id, state, detail, actor, now)
        )

    async def expire_commands(self, now: float) -> int:
        return await self._change(lambda c: control.expire_commands(c, now))

    async def audit_log(self, *, after: int = 0, limit: int = 1000) -> list[AuditEntry]:
        return await self._read(lambda c: control.audit_log(c, after, limit))

    async def aggregate(self, query: AggregateQuery) -> list[AggregateRow]:
        return await self._read(lambda c: control.aggregate(c, query))

    async def delivery(self, device: str, *, max_gaps: int = 1000) -> DeliveryReport:
        return await self._read(lambda c: control.delivery(c, device, max_gaps))
