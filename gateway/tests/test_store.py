"""The durable queue: commit before return, dedup beyond upload, full queue, dead letters."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

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
