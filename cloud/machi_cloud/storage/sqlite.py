"""`Storage` on SQLite: the embedded default for one machine and for the demo.

- WAL mode, so queries read a consistent snapshot while a batch is being written.
- `synchronous=FULL`: the cloud's answer makes the gateway delete its copy, so a batch must
  survive a power cut once answered (with NORMAL, WAL may lose the last commits).
- One writer connection on one dedicated thread (SQLite has one writer anyway) and a small
  pool of reader threads, each with its own connection; the event loop never blocks.
- One transaction (`BEGIN IMMEDIATE` ... `COMMIT`) per batch, or per group of the batches
  that waited for the writer (`group_commit.py`: one fsync for them all), with
  `executemany` inserts.

Schema (`PRAGMA user_version` = 3): `samples` holds one row per reading, key
`(device, seq)`, its measurements in `m` as the JSON text `[[metric, unit, value], ...]`
(`rows.m_text`): one B-tree row per reading rather than one per reading plus one per
measurement, which halves the insert cost (docs/cloud.md, "Where data lives"). The view
`measurements` (device, seq, metric, unit, value_num, value_text, value_bool) shows them
one row each, as the table of version 2 held them. Alongside: `latest` (the newest value
per device and metric, kept on insert so the dashboard never scans history), `devices`
(last seen, last seq, count), `batches` (key `(gateway, batch_id)`, body SHA-256 and the
CBOR answer), and `registry`, `commands` and the append-only `audit` (`sqlite_control.py`).
Value and time columns have no declared type so SQLite keeps ints as ints and floats as
floats (21 stays 21, 21.0 stays 21.0); in `m` a value is the JSON of its Python `repr`.

A version 1 or 2 file (a `measurements` table) is rewritten to version 3 on open, in one
transaction (`_to_v3`); a file of a newer version is refused.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby, islice
from operator import itemgetter
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
from .group_commit import GroupCommit
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
SCHEMA_VERSION = 3

_SAMPLES = """
CREATE TABLE IF NOT EXISTS samples (
    device    TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    time               NOT NULL,
    received,
    gateway   TEXT    NOT NULL,
    transport TEXT    NOT NULL,
    batch_id  TEXT    NOT NULL,
    ingested  REAL    NOT NULL,
    m         TEXT    NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
"""
# the rows of version 2's table, for ad-hoc SQL and reports; `json_extract` gives SQLite's
# value (a JSON integer an INTEGER, a real a REAL; not `->>`, which needs SQLite 3.38 and
# Ubuntu 22.04's Python has 3.37); a text with a NUL character is cut there
# (SQLite's JSON), so `readings()` decodes `m` with Python's `json` instead
_SCHEMA = (
    _SAMPLES
    + """
CREATE VIEW IF NOT EXISTS measurements
    (device, seq, metric, unit, value_num, value_text, value_bool) AS
SELECT s.device, s.seq, json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'),
    CASE WHEN json_type(j.value, '$[2]') IN ('integer', 'real')
        THEN json_extract(j.value, '$[2]') END,
    CASE WHEN json_type(j.value, '$[2]') = 'text' THEN json_extract(j.value, '$[2]') END,
    CASE json_type(j.value, '$[2]') WHEN 'true' THEN 1 WHEN 'false' THEN 0 END
FROM samples AS s, json_each(s.m) AS j;
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
)

_INSERT_SAMPLE = (
    "INSERT INTO samples (device, seq, time, received, transport, gateway, batch_id, ingested,"
    " m) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, seq) DO NOTHING"
)
_HELD = "SELECT 1 FROM samples WHERE device = ? AND seq = ?"
# a sample row with this batch's (gateway, batch_id) was written by this transaction
_MINE = "SELECT 1 FROM samples WHERE device = ? AND seq = ? AND gateway = ? AND batch_id = ?"
_LATEST_UPDATE = """
ON CONFLICT (device, metric) DO UPDATE SET
    seq = excluded.seq, time = excluded.time, unit = excluded.unit,
    value_num = excluded.value_num, value_text = excluded.value_text,
    value_bool = excluded.value_bool
WHERE excluded.seq > latest.seq
"""
_UPSERT_LATEST = (
    "INSERT INTO latest (device, metric, seq, time, unit, value_num, value_text, value_bool)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)" + _LATEST_UPDATE
)
# the column path's values are all numbers: its rows (`SortedColumns.latest_rows`) are
# bound as they are, no tuple made per row to add two NULLs
_UPSERT_LATEST_NUMBER = (
    "INSERT INTO latest (device, metric, seq, time, unit, value_num, value_text, value_bool)"
    " VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)" + _LATEST_UPDATE
)
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


def readings_sql(query: ReadingQuery) -> tuple[str, list[Any]]:
    """The SQL of `readings()` and its arguments: the matching `samples` rows with their
    `m`, in key order (the samples key gives it: the rows stream, and the reader stops
    at `limit`). `readings()` decodes each `m` with `json.loads` (exact, and twice as
    fast as expanding it with `json_each` and decoding each triple) and orders and
    filters each reading's few measurements itself; in SQL, ordering by metric would
    sort every matching row before the first one comes out.

    A metric filter is narrowed in SQL to readings whose `m` holds `[<metric as JSON>,`:
    that text starts a triple of that metric and nothing else (inside a JSON string a
    quote is always escaped), so no reading of it is missed. The `after` key bounds the
    samples key (`seq >=` under a filter on its device, else `(device, seq) >=`), so the
    scan starts there."""
    p = rows.Params(numbered=False)
    conditions: list[str | tuple[str, Any]] = []
    if query.metric is not None:  # metric names are ASCII: escaped as `m_text` escapes them
        conditions.append(f"instr(s.m, {p('[' + json.dumps(query.metric) + ',')}) > 0")
    conditions += [
        ("s.device =", query.device),
        ("s.time >=", query.since),
        ("s.time <", query.until),
    ]
    after = query.after
    if after is not None and query.device == after.device:
        conditions.append(("s.seq >=", after.seq))
    elif after is not None:
        conditions.append(("(s.device, s.seq) >=", after[:2]))
    sql = (
        "SELECT s.device, s.seq, s.time, s.received, s.gateway, s.m FROM samples AS s"
        + p.where(*conditions)
        + " ORDER BY s.device, s.seq"
    )
    return sql, p.args


def _measurement_rows(
    samples: Iterable[tuple[Any, ...]], query: ReadingQuery
) -> Iterator[ReadingRow]:
    """The rows of the samples `readings_sql` found: each one's measurements in metric
    order, those of the query's metric and after its `after` key."""
    wanted, after = query.metric, query.after
    for d, q, t, rc, gw, m in samples:
        ms = sorted(json.loads(m), key=_METRIC)
        if after is not None and (d, q) == (after.device, after.seq):
            ms = [x for x in ms if x[0] > after.metric]
        for metric, unit, value in ms:
            if wanted is None or metric == wanted:
                yield ReadingRow(d, q, t, rc, gw, metric, unit, value)


def _statements(script: str) -> Iterator[str]:
    """The statements of `script` one by one, for `execute` inside a transaction
    (`executescript` would COMMIT it first)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement at the end of the script: {statement!r}")


_V2_SAMPLES = (
    "SELECT s.device, s.seq, s.time, s.received, s.gateway, s.transport, s.batch_id,"
    " s.ingested, m.metric, m.unit, m.value_num, m.value_text, m.value_bool"
    " FROM samples_v2 AS s LEFT JOIN measurements AS m ON m.device = s.device AND m.seq = s.seq"
    " ORDER BY s.device, s.seq, m.metric"
)
_SAMPLE_KEY = itemgetter(0, 1, 2, 3, 4, 5, 6, 7)
_METRIC = itemgetter(0)


def _to_v3(conn: sqlite3.Connection) -> None:
    """Rewrite a version 1 or 2 file's `samples` and `measurements` tables as version 3's
    `samples`, inside the caller's transaction. The JSON is made in Python (`m_text`):
    SQLite's `json_array` writes a REAL with 15 digits (0.30000000000000004 would become
    0.3), Python's `repr` with as many as it takes. Rows stream in key order; a reading
    without measurements gets `[]`; the measurements in metric order."""
    conn.execute("ALTER TABLE samples RENAME TO samples_v2")
    conn.execute(_SAMPLES)
    m_text = rows.m_text

    def new_rows() -> Iterator[tuple[Any, ...]]:
        for sample, group in groupby(conn.execute(_V2_SAMPLES), _SAMPLE_KEY):
            ms = [(r[8], r[9], _value(*r[10:])) for r in group if r[8] is not None]
            yield (*sample, m_text(ms))

    conn.executemany(
        "INSERT INTO samples (device, seq, time, received, gateway, transport, batch_id,"
        " ingested, m) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        new_rows(),
    )
    conn.execute("DROP TABLE samples_v2")
    conn.execute("DROP TABLE measurements")


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
        self._group: GroupCommit[BatchResult] | None = None
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
        self._group = GroupCommit(
            self._writer.submit, self._writer_connection, name=self.path.name
        )
        try:
            await self._write(self._init_schema)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        writer, readers = self._writer, self._readers
        self._writer = self._readers = None
        self._group = None
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
        """Create what is missing, rewriting a version 1 or 2 file first; one transaction."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageUnavailable(
                f"{self.path} has schema version {version}; this machi-cloud knows "
                f"{SCHEMA_VERSION}: upgrade machi-cloud"
            )
        conn.execute("BEGIN IMMEDIATE")
        old = conn.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'measurements'"
        ).fetchone()
        if old is not None:
            _to_v3(conn)
        for statement in _statements(_SCHEMA + control.SCHEMA):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.commit()

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer is None:
            raise StorageUnavailable("the storage is closed")

        def run() -> T:
            return self._guard(fn, self._writer_connection())

        return await asyncio.get_running_loop().run_in_executor(self._writer, run)

    def _writer_connection(self) -> sqlite3.Connection:
        """The writer's connection, opened on first use (on the writer thread)."""
        if self._wconn is None:
            self._wconn = self._connect()
        return self._wconn

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

        if self._group is None:
            raise StorageUnavailable("the storage is closed")
        return await self._group.run(run)

    def _store(
        self,
        conn: sqlite3.Connection,
        gateway: str,
        batch_id: str,
        body_hash: bytes,
        readings: Sequence[Reading],
        rejected: tuple[Rejection, ...],
    ) -> BatchResult:
        """Inside the transaction of its group (`group_commit`: the batches that waited for
        the writer share one commit), after the batches before it in the group, whose rows
        it sees as a transaction of its own would. Samples go in with
        `ON CONFLICT DO NOTHING`; when the change
        count says every reading was new (the usual case) no lookup is needed, else the
        rows this batch wrote are those carrying its (gateway, batch_id), which no earlier
        batch can have (its `batches` row would exist and this would be a replay).
        A fast-lane batch (`ReadingColumns`, no key twice) is written from its columns, any
        other from its readings: the same rows either way."""
        row = conn.execute(
            "SELECT body_sha256, answer FROM batches WHERE gateway = ? AND batch_id = ?",
            (gateway, batch_id),
        ).fetchone()
        if row is not None:  # nothing written: a replay or a conflict
            doc = rows.recorded(gateway, batch_id, body_hash, row[0], row[1])
            keys = rows.replay_keys(doc, ((r[0], r[1]) for r in readings))
            held = [key for key in keys if conn.execute(_HELD, key).fetchone() is not None]
            return rows.replayed(doc, keys, held)

        now = time.time()
        columns = rows.SortedColumns.of(readings)
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
        conn.execute(
            "INSERT INTO batches (gateway, batch_id, body_sha256, answer, created)"
            " VALUES (?, ?, ?, ?, ?)",
            (gateway, batch_id, body_hash, result.record(), now),
        )
        return result

    @staticmethod
    def _insert_columns(
        conn: sqlite3.Connection, gateway: str, batch_id: str, now: float, c: rows.SortedColumns
    ) -> int:
        """The rows of a batch of plain numbers (its keys distinct) taken from its columns,
        as `_insert_readings` writes them; how many readings were new."""
        before = conn.total_changes
        conn.executemany(_INSERT_SAMPLE, c.sample_rows(gateway, batch_id, now, m=c.m_texts()))
        if conn.total_changes - before != len(c):
            c = c.only(
                key
                for key in zip(c.devices, c.seqs, strict=True)
                if conn.execute(_MINE, (*key, gateway, batch_id)).fetchone() is not None
            )
        conn.executemany(_UPSERT_LATEST_NUMBER, c.latest_rows())
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
        m_text = rows.m_text
        conn.executemany(
            _INSERT_SAMPLE,
            [
                (d, q, t, rc, tr, gateway, batch_id, now, m_text(ms))
                for d, q, t, rc, tr, ms in ordered
            ],
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
        sql, args = readings_sql(query)

        def run(conn: sqlite3.Connection) -> list[ReadingRow]:
            cursor = conn.execute(sql, args)
            try:
                return list(islice(_measurement_rows(cursor, query), query.limit))
            finally:
                cursor.close()  # ends the read snapshot of a scan stopped early

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
