"""`storage.group_commit.GroupCommit`: jobs queued behind a busy writer share one commit,
a failing job is undone alone, a failing commit fails the whole group and stores nothing."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from machi_cloud.batch import Measurement, Reading
from machi_cloud.errors import BatchConflict, StorageUnavailable
from machi_cloud.storage.base import ReadingQuery
from machi_cloud.storage.group_commit import GroupCommit
from machi_cloud.storage.sqlite import SQLiteStorage


class Writer:
    """A one-thread executor with its connection, as `SQLiteStorage` has, and a gate that
    holds the writer thread busy so that jobs pile up behind it."""

    def __init__(self, path: Path, max_group: int = 32) -> None:
        self.pool = ThreadPoolExecutor(1)
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self.commits = 0
        self.group: GroupCommit[Any] = GroupCommit(
            self.pool.submit, self.connection, name=path.name, max_group=max_group
        )

    def connection(self) -> sqlite3.Connection:
        if self.conn is None:
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(
                "CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY);"
                "CREATE TABLE IF NOT EXISTS p (id INTEGER PRIMARY KEY);"
                "CREATE TABLE IF NOT EXISTS c (pid INTEGER REFERENCES p (id)"
                " DEFERRABLE INITIALLY DEFERRED);"
            )
            self.conn.set_trace_callback(self._count)
        return self.conn

    def _count(self, sql: str) -> None:
        self.commits += sql.strip().upper() == "COMMIT"

    def hold(self) -> threading.Event:
        """Block the writer thread until the returned event is set."""
        gate = threading.Event()
        self.pool.submit(gate.wait, 10)
        return gate

    def keys(self) -> list[int]:
        with sqlite3.connect(self.path) as conn:
            return [k for (k,) in conn.execute("SELECT k FROM t ORDER BY k")]


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    w = Writer(tmp_path / "g.sqlite")
    w.pool.submit(w.connection).result()
    yield w
    w.pool.shutdown(wait=True)
    if w.conn is not None:
        w.conn.close()


def insert(k: int) -> Callable[[sqlite3.Connection], int]:
    def job(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (k) VALUES (?)", (k,))
        return k

    return job


async def queued_behind_a_busy_writer(
    writer: Writer, jobs: list[Callable[[sqlite3.Connection], Any]]
) -> list[Any]:
    gate = writer.hold()
    try:
        tasks = [asyncio.ensure_future(writer.group.run(job)) for job in jobs]
        await asyncio.sleep(0)  # each task runs up to its await: every job is queued
    finally:
        gate.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_jobs_waiting_for_the_writer_share_one_commit(writer: Writer) -> None:
    before = writer.commits
    assert await queued_behind_a_busy_writer(writer, [insert(k) for k in range(6)]) == list(
        range(6)
    )
    assert writer.group.sizes[-1] == 6
    assert writer.commits - before == 1
    assert writer.keys() == list(range(6))


async def test_a_lone_job_is_committed_at_once(writer: Writer) -> None:
    assert await writer.group.run(insert(1)) == 1
    assert await writer.group.run(insert(2)) == 2
    assert writer.group.sizes[-2:] == [1, 1]
    assert writer.keys() == [1, 2]


async def test_a_failing_job_is_undone_alone(writer: Writer) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (k) VALUES (100)")  # undone: the others run again
        raise ValueError("this job's own answer")

    def duplicate(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (k) VALUES (1)")  # the key job 0 wrote: a sqlite3 error

    out = await queued_behind_a_busy_writer(
        writer, [insert(1), half_then_fail, insert(2), duplicate, insert(3)]
    )
    assert out[0] == 1 and out[2] == 2 and out[4] == 3
    assert isinstance(out[1], ValueError) and str(out[1]) == "this job's own answer"
    assert isinstance(out[3], StorageUnavailable) and "UNIQUE" in str(out[3])
    assert writer.keys() == [1, 2, 3]


async def test_a_failed_commit_fails_the_whole_group_and_stores_nothing(writer: Writer) -> None:
    def breaks_the_commit(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO c (pid) VALUES (42)")  # a deferred key: checked at COMMIT

    out = await queued_behind_a_busy_writer(writer, [insert(1), breaks_the_commit, insert(2)])
    assert all(isinstance(o, StorageUnavailable) and "FOREIGN KEY" in str(o) for o in out)
    assert writer.keys() == []
    assert await writer.group.run(insert(3)) == 3  # the writer goes on afterwards
    assert writer.keys() == [3]


async def test_groups_are_at_most_max_group(tmp_path: Path) -> None:
    w = Writer(tmp_path / "m.sqlite", max_group=4)
    try:
        out = await queued_behind_a_busy_writer(w, [insert(k) for k in range(10)])
        assert out == list(range(10))
        assert w.group.sizes == [4, 4, 2]
        assert w.keys() == list(range(10))
    finally:
        w.pool.shutdown(wait=True)
        if w.conn is not None:
            w.conn.close()


async def test_a_job_failing_before_it_writes_costs_the_others_nothing(writer: Writer) -> None:
    """A 409 is found before anything is written: the others are not run a second time."""
    runs: list[int] = []

    def counted(k: int) -> Callable[[sqlite3.Connection], int]:
        def job(conn: sqlite3.Connection) -> int:
            runs.append(k)
            return insert(k)(conn)

        return job

    def refuse(conn: sqlite3.Connection) -> None:
        conn.execute("SELECT count(*) FROM t").fetchone()
        raise ValueError("conflict")

    out = await queued_behind_a_busy_writer(writer, [counted(1), refuse, counted(2)])
    assert out[0] == 1 and isinstance(out[1], ValueError) and out[2] == 2
    assert runs == [1, 2]
    assert writer.keys() == [1, 2]


async def test_a_close_stores_every_queued_job_first(tmp_path: Path) -> None:
    """More jobs than one group waiting when the executor shuts down: the running drain
    takes group after group, so none is refused for want of a new drain."""
    w = Writer(tmp_path / "c.sqlite", max_group=4)
    gate = w.hold()
    try:
        tasks = [asyncio.ensure_future(w.group.run(insert(k))) for k in range(10)]
        await asyncio.sleep(0)
    finally:
        gate.set()
    await asyncio.to_thread(w.pool.shutdown, wait=True)
    assert await asyncio.gather(*tasks) == list(range(10))
    assert w.keys() == list(range(10))
    if w.conn is not None:
        w.conn.close()


async def test_a_broken_writer_answers_every_job_and_recovers(writer: Writer) -> None:
    """An error outside any job (here the connection getter) fails the group with 503s
    instead of leaving its callers waiting; a transaction left open is rolled back."""
    good = writer.connection

    def broken() -> sqlite3.Connection:
        raise RuntimeError("the writer's connection is gone")

    writer.group._connection = broken
    out = await queued_behind_a_busy_writer(writer, [insert(1), insert(2)])
    assert all(isinstance(o, StorageUnavailable) and "gone" in str(o) for o in out)

    def left_open() -> sqlite3.Connection:
        conn = good()
        if not conn.in_transaction:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t (k) VALUES (99)")  # never committed
        return conn

    writer.group._connection = left_open
    assert await writer.group.run(insert(3)) == 3
    assert writer.keys() == [3]


async def test_a_closed_writer_answers_unavailable(writer: Writer) -> None:
    writer.pool.shutdown(wait=True)
    with pytest.raises(StorageUnavailable, match="closed"):
        await writer.group.run(insert(1))


def test_max_group_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_group"):
        GroupCommit(lambda fn: None, lambda: sqlite3.connect(":memory:"), name="x", max_group=0)


# -- through SQLiteStorage ---------------------------------------------------------------


def reading(device: str, seq: int, value: float) -> Reading:
    return Reading(device, seq, 1795390000 + seq, None, "coap",
                   (Measurement("temp", "Cel", value),))


async def test_batches_in_one_group_answer_as_if_stored_one_after_another(
    tmp_path: Path,
) -> None:
    """Overlapping keys, a replay and a conflicting reuse of a batch id, all queued behind
    a busy writer: one group, one commit, and each answer what it would be alone."""
    a = (reading("env-0001", 1, 20.0), reading("env-0001", 2, 21.0))
    b = (reading("env-0001", 2, 99.0), reading("env-0001", 3, 22.0))  # seq 2 is a's
    async with SQLiteStorage(tmp_path / "s.sqlite") as storage:
        assert storage._writer is not None and storage._group is not None
        gate = threading.Event()
        storage._writer.submit(gate.wait, 10)

        def store(batch_id: str, body: bytes, readings: tuple[Reading, ...]) -> object:
            return asyncio.ensure_future(storage.store_batch(
                gateway="gw-01", batch_id=batch_id, body_hash=body, readings=readings))

        try:
            tasks = [store("a", b"A" * 32, a), store("b", b"B" * 32, b),
                     store("a", b"A" * 32, a), store("a", b"X" * 32, a)]
            await asyncio.sleep(0)  # each reaches the writer's queue
        finally:
            gate.set()
        first, second, replay, conflict = await asyncio.gather(
            *tasks, return_exceptions=True)  # type: ignore[call-overload]
        assert storage._group.sizes[-1] == 4
        assert (first.stored, first.duplicates, first.acked) == (
            2, 0, (("env-0001", 1), ("env-0001", 2)))
        assert (second.stored, second.duplicates) == (1, 1)
        assert replay.replayed and replay.answer() == first.answer()
        assert isinstance(conflict, BatchConflict)
        rows = await storage.readings(ReadingQuery(device="env-0001", limit=10))
        assert [(r.seq, r.value) for r in rows] == [(1, 20.0), (2, 21.0), (3, 22.0)]


async def test_a_full_disk_in_one_job_never_acks_the_others_unstored(writer: Writer) -> None:
    """SQLite rolls the whole transaction back itself on a full disk, and the row count
    does not move: the jobs before it must run again, not be answered from the lost
    transaction (the gateway would delete readings that were never stored)."""
    conn = writer.connection()
    conn.execute("CREATE TABLE IF NOT EXISTS blobs (x BLOB)")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 3}")  # room for a few rows, no blob

    def big(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO blobs (x) VALUES (?)", (b"x" * 1_000_000,))

    out = await queued_behind_a_busy_writer(writer, [insert(1), insert(2), big, insert(3)])
    assert out[0] == 1 and out[1] == 2 and out[3] == 3
    assert isinstance(out[2], StorageUnavailable) and "full" in str(out[2])
    assert writer.keys() == [1, 2, 3]


async def test_other_writer_work_gets_its_turn_between_groups(tmp_path: Path) -> None:
    """A device change or a command queued on the writer while a group commits runs
    before the next group: a steady ingest never starves it."""
    w = Writer(tmp_path / "f.sqlite", max_group=2)
    order: list[object] = []

    def job(k: int) -> Callable[[sqlite3.Connection], int]:
        def run(conn: sqlite3.Connection) -> int:
            if k == 0:
                w.pool.submit(order.append, "control")
            order.append(k)
            return k

        return run

    try:
        assert await queued_behind_a_busy_writer(w, [job(k) for k in range(6)]) == list(range(6))
        assert order == [0, 1, "control", 2, 3, 4, 5]
    finally:
        w.pool.shutdown(wait=True)
        if w.conn is not None:
            w.conn.close()


async def test_a_full_disk_answers_503_and_every_acked_reading_is_stored(tmp_path: Path) -> None:
    """The cloud's disk fills under a group of batches: each is either answered (and then
    all its readings are stored) or refused with a 503 (and none is); once there is room
    again the refused ones go in on retry."""
    batches = {
        f"b{n}": tuple(reading(f"env-{n:04d}", seq, 20.0 + seq) for seq in range(300))
        for n in range(6)
    }
    async with SQLiteStorage(tmp_path / "full.sqlite") as storage:
        assert storage._writer is not None
        pages = await storage._write(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await storage._write(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 12}"))
        gate = threading.Event()
        storage._writer.submit(gate.wait, 10)
        try:
            tasks = {
                bid: asyncio.ensure_future(storage.store_batch(
                    gateway="gw-01", batch_id=bid, body_hash=bid.encode() * 8, readings=rs))
                for bid, rs in batches.items()
            }
            await asyncio.sleep(0)
        finally:
            gate.set()
        answers = dict(zip(tasks, await asyncio.gather(*tasks.values(), return_exceptions=True),
                           strict=True))
        refused = [bid for bid, a in answers.items() if isinstance(a, StorageUnavailable)]
        assert refused and len(refused) < len(batches)  # the disk filled part way
        for bid, answer in answers.items():
            stored = await storage.readings(ReadingQuery(device=batches[bid][0].device))
            if bid in refused:
                assert stored == []
            else:
                assert answer.stored == 300 and len(stored) == 300  # type: ignore[union-attr]

        await storage._write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
        for bid in refused:
            again = await storage.store_batch(gateway="gw-01", batch_id=bid,
                                              body_hash=bid.encode() * 8, readings=batches[bid])
            assert again.stored == 300
        assert (await storage.stats()).readings == 6 * 300
