"""The durable queue: commit before return, dedup beyond upload, full queue, dead letters."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from machi_gateway import store as store_module
from machi_gateway.errors import QueueFull
from machi_gateway.model import Reading
from machi_gateway.store import DeadLetter, Store


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Read with a fresh connection, as another process would after a crash."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_add_is_committed_before_it_returns(
    store: Store, make_reading: Callable[..., Reading]
) -> None:
    assert await store.add(make_reading(seq=7)) == "new"
    assert _rows(store.path, "SELECT device, seq FROM queue") == [("env-0001", 7)]
    assert _rows(store.path, "PRAGMA journal_mode") == [("wal",)]
    assert store.depth == 1


async def test_synchronous_full(store: Store) -> None:
    def level() -> int:
        assert store._conn is not None
        return int(store._conn.execute("PRAGMA synchronous").fetchone()[0])
    assert await store._run(level) == 2  # FULL


async def test_duplicates_are_stored_once(
    store: Store, make_reading: Callable[..., Reading]
) -> None:
    r = make_reading(seq=1)
    assert await store.add(r) == "new"
    assert await store.add(r) == "duplicate"
    assert await store.add(make_reading(seq=1, received=r.received + 5)) == "duplicate"
    assert store.depth == 1
    assert await store.add(make_reading(device="env-0003", seq=1)) == "new"


async def test_duplicate_after_upload_is_recognised(
    store: Store, make_reading: Callable[..., Reading]
) -> None:
    r = make_reading(seq=4)
    await store.add(r)
    assert await store.ack([r.key]) == 1
    assert store.depth == 0
    assert await store.add(r) == "duplicate"
    assert store.depth == 0


async def test_seen_is_pruned_after_the_window(
    tmp_path: Path, make_reading: Callable[..., Reading]
) -> None:
    now = [1000.0]
    async with Store(tmp_path / "q.db", max_readings=10, retry_after_s=5, dedup_window_s=100,
                     clock=lambda: now[0]) as s:
        uploaded, waiting = make_reading(seq=1), make_reading(seq=2)
        await s.add(uploaded)
        await s.add(waiting)
        await s.ack([uploaded.key])
        now[0] += 101
        await s.prune()
        assert await s.add(uploaded) == "new"  # forgotten: outside the window
        assert await s.add(waiting) == "duplicate"  # still queued: never forgotten


async def test_queue_full(tmp_path: Path, make_reading: Callable[..., Reading]) -> None:
    async with Store(tmp_path / "q.db", max_readings=2, retry_after_s=17,
                     dedup_window_s=100) as s:
        await s.add(make_reading(seq=1))
        await s.add(make_reading(seq=2))
        with pytest.raises(QueueFull) as exc:
            await s.add(make_reading(seq=3))
        assert exc.value.code == "5.03" and exc.value.retry_after_s == 17
        assert await s.add(make_reading(seq=2)) == "duplicate"  # still acknowledged
        await s.ack([("env-0001", 1)])
        assert await s.add(make_reading(seq=3)) == "new"
    assert _rows(tmp_path / "q.db", "SELECT seq FROM queue ORDER BY id") == [(2,), (3,)]


async def test_oldest_ack_dead_letter(store: Store, make_reading: Callable[..., Reading]) -> None:
    readings = [make_reading(seq=i) for i in range(5)]
    for r in readings:
        await store.add(r)
    assert await store.oldest(3) == readings[:3]
    assert await store.oldest_received() == readings[0].received
    assert await store.ack([("env-0001", 0), ("env-0001", 99)]) == 1
    assert await store.dead_letter([DeadLetter("env-0001", 1, "bad unit")]) == 1
    assert store.depth == 3 and store.dead_letters == 1
    assert [r.seq for r in await store.oldest(10)] == [2, 3, 4]
    rows = _rows(store.path, "SELECT device, seq, reason FROM dead_letters")
    assert rows == [("env-0001", 1, "bad unit")]
    assert await store.add(readings[1]) == "duplicate"  # dead letters stay known


async def test_concurrent_adds_group_commit(
    store: Store, make_reading: Callable[..., Reading]
) -> None:
    n = 300
    t0 = time.perf_counter()
    results = await asyncio.gather(*(store.add(make_reading(seq=i)) for i in range(n)))
    elapsed = time.perf_counter() - t0
    assert results == ["new"] * n
    assert _rows(store.path, "SELECT COUNT(*) FROM queue") == [(n,)]
    # With group commit 300 concurrent adds need far fewer than 300 fsyncs.
    assert elapsed < 5, elapsed


async def test_state_survives_reopen(tmp_path: Path, make_reading: Callable[..., Reading]) -> None:
    path = tmp_path / "q.db"
    async with Store(path, max_readings=10, retry_after_s=5, dedup_window_s=100) as s:
        await s.add(make_reading(seq=1))
        await s.add(make_reading(seq=2))
        await s.ack([("env-0001", 1)])
        assert await s.next_batch_number() == 1
    assert not (tmp_path / "q.db-wal").exists() or (tmp_path / "q.db-wal").stat().st_size == 0
    async with Store(path, max_readings=10, retry_after_s=5, dedup_window_s=100) as s:
        assert s.depth == 1
        assert await s.add(make_reading(seq=1)) == "duplicate"
        assert await s.next_batch_number() == 2


_OLD_SCHEMA = """
CREATE TABLE queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, seq INTEGER NOT NULL,
    received REAL NOT NULL, body BLOB NOT NULL, UNIQUE (device, seq));
CREATE TABLE seen (device TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (device, seq)) WITHOUT ROWID;
CREATE INDEX seen_at ON seen (at);
"""


async def test_a_queue_file_from_before_qid_keeps_working(
    tmp_path: Path, make_reading: Callable[..., Reading]
) -> None:
    """A queue written by the previous schema (no seen.qid, the queue's own UNIQUE index):
    its queued readings are still acknowledged, dead-lettered, recognised and kept."""
    import cbor2

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(_OLD_SCHEMA)
    queued = [make_reading(seq=s) for s in (1, 2, 3)]
    for r in queued:
        conn.execute("INSERT INTO queue (device, seq, received, body) VALUES (?, ?, ?, ?)",
                     (r.device, r.seq, r.received, cbor2.dumps(r.to_wire())))
    conn.execute("INSERT INTO seen VALUES ('env-0001', 0, 1.0)")  # uploaded long ago
    conn.executemany("INSERT INTO seen VALUES (?, ?, ?)", [(*r.key, 2.0) for r in queued])
    conn.commit()
    conn.close()
    async with Store(path, max_readings=10, retry_after_s=5, dedup_window_s=100) as s:
        assert s.depth == 3
        assert await s.oldest(10) == queued
        assert await s.add(make_reading(seq=0)) == "duplicate"
        assert await s.add(queued[0]) == "duplicate"
        assert await s.add(make_reading(seq=4)) == "new"
        assert await s.ack([queued[0].key]) == 1
        assert await s.dead_letter([DeadLetter("env-0001", 2, "bad")]) == 1
        await s.prune()  # everything is older than the window; queued ones stay known
        assert [r.seq for r in await s.oldest(10)] == [3, 4]
        assert await s.add(queued[2]) == "duplicate"
        assert await s.ack([queued[2].key, ("env-0001", 4)]) == 2
        assert s.depth == 0
    assert _rows(path, "SELECT COUNT(*) FROM queue") == [(0,)]


async def test_a_new_queue_has_one_index_on_the_key(store: Store) -> None:
    """seen's primary key is the only (device, seq) index: the queue has none of its own
    (each would cost a B-tree page per reading in every commit)."""
    assert _rows(store.path, "PRAGMA index_list(queue)") == []


async def test_ack_matches_the_key_not_just_the_seen_row(
    store: Store, make_reading: Callable[..., Reading]
) -> None:
    """A seen row whose qid names another reading's queue row (never made by the store,
    forced here) does not let an ack delete that other reading."""
    a, b = make_reading(seq=1), make_reading(seq=2)
    await store.add(a)
    await store.add(b)

    def point_a_at_b() -> None:
        store._db.execute("UPDATE seen SET qid = (SELECT qid FROM seen WHERE seq = 2) "
                          "WHERE seq = 1")
    await store._run(point_a_at_b)
    assert await store.ack([a.key]) == 0
    assert await store.oldest(10) == [a, b]


async def test_a_stale_id_counter_costs_one_retry_not_a_reading(
    store: Store, make_reading: Callable[..., Reading]
) -> None:
    from machi_gateway.errors import StoreUnavailable

    await store.add(make_reading(seq=1))
    store._next_id = 1  # as if another writer had taken the id
    with pytest.raises(StoreUnavailable):
        await store.add(make_reading(seq=2))
    assert await store.add(make_reading(seq=2)) == "new"  # the counter is read again
    assert [r.seq for r in await store.oldest(10)] == [1, 2]
    assert store.depth == 2


async def test_queued_readings_written_by_an_older_gateway_are_linked_at_open(
    tmp_path: Path, make_reading: Callable[..., Reading]
) -> None:
    """An older gateway on this file (a downgrade) writes seen rows without qid: opened
    again, those queued readings can still be acknowledged, and stay known until then."""
    path = tmp_path / "q.db"
    async with Store(path, max_readings=10, retry_after_s=5, dedup_window_s=100) as s:
        for seq in (1, 2, 3):
            await s.add(make_reading(seq=seq))
    conn = sqlite3.connect(path)
    conn.execute("UPDATE seen SET qid = NULL WHERE seq = 1")  # as the older code wrote it
    conn.execute("UPDATE seen SET qid = 99 WHERE seq = 2")
    conn.execute("DELETE FROM seen WHERE seq = 3")
    conn.commit()
    conn.close()
    async with Store(path, max_readings=10, retry_after_s=5, dedup_window_s=100) as s:
        await s.prune()
        for seq in (1, 2, 3):
            assert await s.add(make_reading(seq=seq)) == "duplicate"
        assert await s.ack([("env-0001", 1), ("env-0001", 2), ("env-0001", 3)]) == 3
        assert s.depth == 0


@pytest.mark.parametrize("group_insert", [True, False], ids=["one-statement", "per-reading"])
async def test_a_group_with_duplicates_inside_and_across(
    store: Store, make_reading: Callable[..., Reading], group_insert: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One group (the batched seen insert, or the per-reading path SQLite < 3.38 takes):
    a key already stored and a key twice in the group are duplicates, the first
    occurrence new; every new seen row names its queue row, and the ids stay unique and
    increasing across groups (a duplicate's id unused)."""
    if group_insert and not store_module._GROUP_INSERT:
        pytest.skip(f"SQLite {sqlite3.sqlite_version} < 3.38 has no one-statement path")
    monkeypatch.setattr(store_module, "_GROUP_INSERT", group_insert)
    await store.add(make_reading(seq=2))
    big = 2**63 - 1  # the largest seq: through JSON and back without loss
    group = [make_reading(seq=1), make_reading(seq=2), make_reading(seq=3),
             make_reading(seq=1, received=1.0), make_reading(device="bin-0002", seq=big)]
    assert await store.add_many(group) == ["new", "duplicate", "new", "duplicate", "new"]
    assert await store.add_many([make_reading(seq=4), make_reading(seq=3)]) == [
        "new", "duplicate"]
    assert store.depth == 5
    queued = _rows(store.path, "SELECT id, device, seq FROM queue ORDER BY id")
    assert [(d, s) for _, d, s in queued] == [
        ("env-0001", 2), ("env-0001", 1), ("env-0001", 3), ("bin-0002", big), ("env-0001", 4)]
    ids = [i for i, _, _ in queued]
    assert ids == sorted(set(ids))
    linked = _rows(store.path, "SELECT s.device, s.seq, s.qid FROM seen s "
                               "JOIN queue q ON q.id = s.qid AND q.device = s.device "
                               "AND q.seq = s.seq")
    assert len(linked) == 5
    assert [r.key for r in await store.oldest(10)] == [(d, s) for _, d, s in queued]
    assert await store.ack([("bin-0002", big), ("env-0001", 1)]) == 2
    assert store.depth == 3


async def test_a_group_that_does_not_fit_is_taken_reading_by_reading(
    tmp_path: Path, make_reading: Callable[..., Reading]
) -> None:
    async with Store(tmp_path / "q.db", max_readings=3, retry_after_s=5,
                     dedup_window_s=100) as s:
        assert await s.add_many([make_reading(seq=1), make_reading(seq=2)]) == ["new", "new"]
        with pytest.raises(QueueFull):  # 2 + 3 > 3: what fits is stored, then full
            await s.add_many([make_reading(seq=2), make_reading(seq=3), make_reading(seq=4)])
        assert s.depth == 3
        assert [r.seq for r in await s.oldest(10)] == [1, 2, 3]
        assert await s.add_many([make_reading(seq=3)]) == ["duplicate"]
