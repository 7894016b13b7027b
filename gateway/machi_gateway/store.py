"""The durable queue: SQLite in WAL mode with ``synchronous=FULL``.

An acknowledgement to a node is a promise, so :meth:`Store.add` returns only after the
reading's transaction is committed and fsynced (DESIGN.md §1). Adds that arrive while a
commit is running are grouped into the next transaction (group commit: one fsync for
many readings, each caller still waits for its own commit).

Deduplication is on ``(device, seq)`` against the ``seen`` table, which outlives the
queue row by ``dedup_window_s`` so a reading already uploaded is still recognised.
``seen`` is the only index on ``(device, seq)``: a seen row names its queue row
(``qid``), so the queue needs no second one. Each index on that key costs a random
B-tree leaf per reading, i.e. one more 4 KiB page written to the WAL and fsynced per
reading of a group commit (bench/gateway_coap.py: dropping the queue's own
``UNIQUE (device, seq)`` took a quarter off the store's cost per reading). A queue file
made before keeps that index (SQLite cannot drop it) and works as before; its ``seen``
gets the ``qid`` column when opened.

All SQLite work runs on one dedicated thread (one connection, no lock needed, the event
loop never blocks on an fsync).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self, TypeVar

import cbor2

from .errors import QueueFull, StoreError, StoreUnavailable
from .model import Reading, encode_wire

log = logging.getLogger(__name__)

AddResult = Literal["new", "duplicate"]
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a seen row's qid stays unique
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    received REAL NOT NULL,
    body BLOB NOT NULL             -- the CBOR batch item (docs/protocol.md §3)
);
CREATE TABLE IF NOT EXISTS seen (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    qid INTEGER,                   -- queue.id of this reading while it is queued
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_at ON seen (at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('batch_counter', 0);
"""

_PRUNE_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A reading the cloud rejected for good, and why."""

    device: str
    seq: int
    reason: str


class Queued(NamedTuple):
    """A queued reading as stored: its identity, when it arrived, and ``body``, its CBOR
    batch item, which the uplink decodes into a columnar batch or, as rows
    (``[uplink] format = "readings"``), splices into a batch as is (no decoding, no
    re-encoding).

    A NamedTuple rather than a frozen dataclass on purpose: as immutable, and made from a
    row three times cheaper (0.2 instead of 0.6 µs; up to 2000 of them per batch on the Pi).
    """

    device: str
    seq: int
    received: float
    body: bytes

    @property
    def key(self) -> tuple[str, int]:
        return (self.device, self.seq)

    @classmethod
    def of(cls, reading: Reading) -> Queued:
        """What the queue holds for ``reading`` once added (as ``_add_all`` writes it),
        for batches built without a store (tests, benches)."""
        return cls(reading.device, reading.seq, reading.received, encode_wire(reading))


class Store:
    """The gateway's durable reading queue (an async context manager)."""

    def __init__(
        self,
        path: Path,
        *,
        max_readings: int,
        retry_after_s: int,
        dedup_window_s: float,
        max_bytes: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_readings = max_readings
        self.max_bytes = max_bytes  # 0 = no disk quota
        self.retry_after_s = retry_after_s
        self.dedup_window_s = dedup_window_s
        self._clock = clock
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._depth = 0
        self._dead = 0
        self._last_prune = 0.0
        self._next_id = 0  # the next queue.id (0: read it from the database first)
        # readings waiting for the next commit, with the future their caller awaits
        self._pending: list[tuple[Sequence[Reading], asyncio.Future[list[AddResult]]]] = []
        self._inflight: asyncio.Future[list[AddResult | Exception]] | None = None
        self._idle: asyncio.Event | None = None
        self.changed = asyncio.Event()  # set after every commit that queued a new reading

    # ---- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="machi-store"
        )
        self._idle = asyncio.Event()
        self._idle.set()
        try:
            await self._run(self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Wait for commits in flight, checkpoint the WAL and close the database."""
        if self._executor is None:
            return
        assert self._idle is not None
        await self._idle.wait()
        try:
            await self._run(self._close)
        finally:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{self.path}: cannot use WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(SCHEMA)
            _link_seen_to_queue(conn)
            self._depth = conn.execute("SELECT COUNT(*) FROM queue").fetchone()[0]
            self._dead = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open queue {self.path}: {exc}") from exc
        self._conn = conn
        log.info("queue %s opened: %d readings waiting, %d dead letters",
                 self.path, self._depth, self._dead)

    def _close(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("queue checkpoint failed: %s", exc)
        finally:
            self._conn.close()
            self._conn = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError("the queue is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the queue is closed")
        return self._conn

    # ---- add (group commit) -------------------------------------------------------

    @property
    def depth(self) -> int:
        """Readings waiting for upload."""
        return self._depth

    @property
    def dead_letters(self) -> int:
        return self._dead

    async def add(self, reading: Reading) -> AddResult:
        """Queue ``reading`` durably; returns after its commit.

        Raises QueueFull (the queue holds max_readings) or StoreUnavailable (disk full,
        I/O error): both mean "not stored, try later".
        """
        return (await self.add_many((reading,)))[0]

    async def add_many(self, readings: Sequence[Reading]) -> list[AddResult]:
        """Queue several readings in one transaction (one fsync); returns after its commit.

        All of them join the same group (one future for all: a pack of readings costs one
        commit and one wake-up). Raises like :meth:`add` if any could not be queued (the
        others may be stored: a retry finds them as duplicates).
        """
        if self._executor is None:
            raise StoreUnavailable("closed", "the queue is closed",
                                   retry_after_s=self.retry_after_s)
        fut: asyncio.Future[list[AddResult]] = asyncio.get_running_loop().create_future()
        self._pending.append((readings, fut))
        self._kick()
        return await fut

    def _kick(self) -> None:
        if self._inflight is not None or not self._pending or self._executor is None:
            return
        assert self._idle is not None
        group, self._pending = self._pending, []
        self._idle.clear()
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._executor, self._add_group,
                                   [r for rs, _ in group for r in rs])
        self._inflight = job

        def settle(done: asyncio.Future[list[AddResult | Exception]]) -> None:
            self._inflight = None
            failure: BaseException | None = None
            if done.cancelled():
                failure = StoreUnavailable("cancelled", retry_after_s=self.retry_after_s)
            elif done.exception() is not None:
                failure = done.exception()
            results = [] if failure is not None else done.result()
            at = 0
            for rs, fut in group:
                mine = results[at:at + len(rs)]
                at += len(rs)
                if fut.done():  # the caller gave up (its task was cancelled)
                    continue
                error = failure or next(
                    (r for r in mine if isinstance(r, BaseException)), None)
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result([r for r in mine if not isinstance(r, BaseException)])
            if any(r == "new" for r in results):
                self.changed.set()
            self._kick()
            if self._inflight is None:
                assert self._idle is not None
                self._idle.set()

        job.add_done_callback(settle)

    def _add_group(self, readings: Sequence[Reading]) -> list[AddResult | Exception]:
        """One transaction for a group of readings (runs on the store thread)."""
        db = self._db
        now = self._clock()
        depth = self._depth
        results: list[AddResult | Exception] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                qid = self._next_id or _next_queue_id(db)
                over = self._over_quota(db)
                room = self.max_readings if over is None else 0
                rows: list[tuple[Any, ...]] = []  # queue rows, inserted at once after the loop
                rest: Sequence[Reading] = readings  # those left for the loop below
                if _GROUP_INSERT and depth + len(readings) <= room:
                    # Room for all (the common case): one statement for the group's
                    # identities instead of one per reading (_INSERT_SEEN_ALL).
                    rows, results = self._add_all(db, readings, now, qid)
                    qid += len(readings)
                    depth += len(rows)
                    rest = ()
                execute = db.execute
                for r in rest:
                    if depth < room:
                        # room: one statement tells new from duplicate (rowcount 0)
                        device, seq = r.device, r.seq
                        if not execute(_INSERT_SEEN, (device, seq, now, qid)).rowcount:
                            results.append("duplicate")
                            continue
                        rows.append((qid, device, seq, r.received, encode_wire(r)))
                        qid += 1
                        depth += 1
                        results.append("new")
                        continue
                    if db.execute(
                        "SELECT 1 FROM seen WHERE device = ? AND seq = ?", r.key
                    ).fetchone():
                        results.append("duplicate")
                        continue
                    if over is not None:
                        results.append(QueueFull(
                            "disk-quota", f"the queue uses {over} bytes on disk "
                            f"(quota {self.max_bytes})", retry_after_s=self.retry_after_s))
                        continue
                    results.append(QueueFull(
                        "queue-full", f"the queue holds {depth} readings",
                        retry_after_s=self.retry_after_s,
                    ))
                if rows:
                    db.executemany(
                        "INSERT INTO queue (id, device, seq, received, body) "
                        "VALUES (?, ?, ?, ?, ?)", rows)
                if now - self._last_prune >= _PRUNE_EVERY_S:
                    self._prune(now)
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                self._next_id = 0  # read again from the database
                raise
        except sqlite3.Error as exc:
            reason = "disk-full" if _disk_full(exc) else "store-error"
            log.error("queue commit failed (%s): %s", reason, exc)
            raise StoreUnavailable(reason, str(exc), retry_after_s=self.retry_after_s) from exc
        self._depth = depth
        self._next_id = qid
        return results

    @staticmethod
    def _add_all(db: sqlite3.Connection, readings: Sequence[Reading], now: float,
                 qid: int) -> tuple[list[tuple[Any, ...]], list[AddResult | Exception]]:
        """The seen rows of all ``readings`` in one statement: reading k gets queue id
        ``qid + k`` (a duplicate's id is left unused), and the statement returns the k of
        those it inserted; returns the new ones' queue rows and every reading's result.
        Saves a Python call and a cursor per reading (store alone, 16 packs of 10 per
        group: ~1 µs of CPU per reading, bench/gateway_coap.py)."""
        keys = json.dumps([[r.device, r.seq] for r in readings])
        inserted = sorted(k for (k,) in db.execute(_INSERT_SEEN_ALL, (now, qid, keys)))
        results: list[AddResult | Exception] = ["duplicate"] * len(readings)
        rows = []
        for k in inserted:
            r = readings[k]
            rows.append((qid + k, r.device, r.seq, r.received, encode_wire(r)))
            results[k] = "new"
        return rows, results

    def _over_quota(self, db: sqlite3.Connection) -> int | None:
        """Bytes in use (the database's live pages) if over ``max_bytes``.

        Pages freed by uploads are reused before the file grows, so live pages, not the
        file size, say how full the queue is. The logical page count includes what still
        sits in the WAL; the WAL file itself is bounded by SQLite's auto-checkpoint
        (1000 pages, about 4 MB) and comes on top. The check runs once per group commit,
        so one group may overshoot the quota by its own size.
        """
        if not self.max_bytes:
            return None
        used = self.bytes_used(db)
        return used if used >= self.max_bytes else None

    def bytes_used(self, db: sqlite3.Connection | None = None) -> int:
        db = db or self._db
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def _prune(self, now: float) -> None:
        cut = now - self.dedup_window_s
        n = self._db.execute(
            "DELETE FROM seen WHERE at < ? AND NOT EXISTS "
            "(SELECT 1 FROM queue q WHERE q.id = seen.qid)",
            (cut,),
        ).rowcount
        self._last_prune = now
        if n:
            log.debug("pruned %d identities older than the dedup window", n)

    async def prune(self) -> None:
        """Forget uploaded identities older than the dedup window now (normally automatic)."""
        def job() -> None:
            with self._tx():
                self._prune(self._clock())
        await self._run(job)

    # ---- read / ack / dead-letter (used by the uplink) -----------------------------

    def _tx(self) -> _Tx:
        return _Tx(self._db)

    async def oldest(self, n: int) -> list[Reading]:
        """The ``n`` oldest queued readings, decoded, oldest first (for tests and tools: the
        uplink takes :meth:`queued`, whose bodies it never decodes)."""
        return [Reading.from_wire(cbor2.loads(q.body)) for q in await self.queued(n)]

    async def queued(self, n: int) -> list[Queued]:
        """The ``n`` oldest queued readings as stored, oldest first; their bodies are not
        checked here (the uplink does, see :func:`machi_gateway.uplink.wire.looks_intact`)."""
        def job() -> list[Queued]:
            try:
                rows = self._db.execute(
                    "SELECT device, seq, received, body FROM queue ORDER BY id LIMIT ?", (n,)
                ).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"queue read failed: {exc}") from exc
            return list(map(Queued._make, rows))
        return await self._run(job)

    async def oldest_received(self) -> float | None:
        """When the oldest queued reading was received, or None if the queue is empty."""
        def job() -> float | None:
            row = self._db.execute("SELECT received FROM queue ORDER BY id LIMIT 1").fetchone()
            return None if row is None else float(row[0])
        return await self._run(job)

    async def ack(self, keys: Iterable[tuple[str, int]]) -> int:
        """Delete the readings the cloud acknowledged; returns how many were queued."""
        keys = list(keys)

        def job() -> int:
            with self._tx() as db:
                # one executemany (its rowcount is the total), not a cursor per key
                n = db.executemany(_DELETE_QUEUED, [(*k, *k) for k in keys]).rowcount
            self._depth -= n
            return n
        return await self._run(job) if keys else 0

    async def dead_letter(self, items: Iterable[DeadLetter]) -> int:
        """Move readings the cloud rejected for good out of the queue, keeping them."""
        items = list(items)

        def job() -> int:
            now = self._clock()
            n = 0
            with self._tx() as db:
                for d in items:
                    n += db.execute(
                        "INSERT INTO dead_letters (device, seq, body, reason, at) "
                        "SELECT device, seq, body, ?, ? FROM queue WHERE " + _QUEUED,
                        (d.reason, now, d.device, d.seq, d.device, d.seq),
                    ).rowcount
                    db.execute(_DELETE_QUEUED, (d.device, d.seq, d.device, d.seq))
            self._depth -= n
            self._dead += n
            return n
        return await self._run(job) if items else 0

    async def next_batch_number(self) -> int:
        """A batch counter that never repeats, even across restarts."""
        def job() -> int:
            with self._tx() as db:
                db.execute("UPDATE meta SET value = value + 1 WHERE key = 'batch_counter'")
                return int(db.execute(
                    "SELECT value FROM meta WHERE key = 'batch_counter'").fetchone()[0])
        return await self._run(job)


# RETURNING needs SQLite 3.35 and ->> 3.38 (Debian bookworm has 3.40; bullseye, still on
# many Raspberry Pis, 3.34): older libraries take the per-reading path.
_GROUP_INSERT = sqlite3.sqlite_version_info >= (3, 38, 0)
_INSERT_SEEN = "INSERT OR IGNORE INTO seen (device, seq, at, qid) VALUES (?, ?, ?, ?)"
# A group's identities from one JSON array of [device, seq] (json_each's key is the
# index k): INSERT OR IGNORE inserts a key already seen, or twice in the array, at most
# once (the first time), and RETURNING lists only the rows it inserted.
_INSERT_SEEN_ALL = ("INSERT OR IGNORE INTO seen (device, seq, at, qid) "
                    "SELECT value ->> 0, value ->> 1, ?1, ?2 + key FROM json_each(?3) "
                    "WHERE true RETURNING qid - ?2")
# The queue row of (device, seq), found through its seen row (the queue has no index on
# the key, see the module docstring); the key is checked on the row too.
_QUEUED = ("id = (SELECT qid FROM seen WHERE device = ? AND seq = ?) "
           "AND device = ? AND seq = ?")
_DELETE_QUEUED = "DELETE FROM queue WHERE " + _QUEUED


def _next_queue_id(db: sqlite3.Connection) -> int:
    """The id AUTOINCREMENT would give the next queue row: ids are assigned here, so a
    reading's seen row can name its queue row in the same statement that dedups it."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'queue'").fetchone()
    top = db.execute("SELECT MAX(id) FROM queue").fetchone()[0]
    return max(row[0] if row else 0, top or 0) + 1


def _link_seen_to_queue(db: sqlite3.Connection) -> None:
    """Make every queued reading's seen row name its queue row (run at open).

    A queue file from before ``qid`` gets the column; and a queued reading whose seen row
    lacks it or names another row (written by an older gateway, e.g. after a downgrade)
    is linked again, else its upload could never be acknowledged. One pass over the
    queue, which the uplink normally keeps short.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        if not any(col[1] == "qid" for col in db.execute("PRAGMA table_info(seen)")):
            db.execute("ALTER TABLE seen ADD COLUMN qid INTEGER")
            log.info("queue: seen rows now name their queue rows (qid)")
        db.execute(
            "INSERT INTO seen (device, seq, at, qid) SELECT device, seq, received, id "
            "FROM queue WHERE true ON CONFLICT (device, seq) DO UPDATE SET qid = excluded.qid "
            "WHERE seen.qid IS NOT excluded.qid")
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


def _disk_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: the filesystem (or the database's size limit) is full."""
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or (
        isinstance(exc, sqlite3.OperationalError) and "full" in str(exc))


def _rollback(db: sqlite3.Connection) -> None:
    """End a failed transaction. On SQLITE_FULL (a real full disk) SQLite may have rolled it
    back already: a second ROLLBACK would fail with "no transaction is active" and hide the
    real error; and a COMMIT that failed may leave it open, which would make every later
    BEGIN fail even once space is freed."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("queue rollback failed: %s", exc)


class _Tx:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` / ``ROLLBACK``, with SQLite errors wrapped."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"queue transaction failed: {exc}") from exc
        return self.db

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is not None:
            _rollback(self.db)
        else:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(self.db)  # a COMMIT that failed (disk full) may leave it open
                raise StoreError(f"queue transaction failed: {exc}") from exc
        if isinstance(e, sqlite3.Error):
            raise StoreError(f"queue transaction failed: {e}") from e
