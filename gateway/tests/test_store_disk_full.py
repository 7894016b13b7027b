"""A full disk: SQLITE_FULL is answered 5.03 `disk-full` and leaves no transaction open, the
uplink survives a queue that cannot record the cloud's answer, and an OSCORE sequence mark
that cannot be written is not trusted (hil_tests/test_full_disk.py: a real filesystem)."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from machi_gateway.errors import StoreError, StoreUnavailable
from machi_gateway.ingress import oscore_ctx
from machi_gateway.ingress.oscore_ctx import SenderSequence
from machi_gateway.model import Reading
from machi_gateway.store import Store
from machi_gateway.uplink.batcher import Batcher, BatchPolicy
from machi_gateway.uplink.http import HttpUplink


async def _pragma(store: Store, sql: str) -> Any:
    def job() -> Any:
        assert store._conn is not None
        return store._conn.execute(sql).fetchone()
    return await store._run(job)


async def test_sqlite_full_is_disk_full_and_recovers(
    store: Store, make_reading: Callable[..., Reading]
) -> None:
    await store.add(make_reading(seq=0))
    pages = (await _pragma(store, "PRAGMA page_count"))[0]
    await _pragma(store, f"PRAGMA max_page_count = {pages}")  # the "disk" is full now
    with pytest.raises(StoreUnavailable) as exc:
        for seq in range(1, 2000):  # a few pages' worth of readings
            await store.add(make_reading(seq=seq))
    assert exc.value.reason == "disk-full" and exc.value.code == "5.03"
    assert exc.value.retry_after_s == 30
    assert not (await store._run(lambda: store._db.in_transaction))
    await _pragma(store, "PRAGMA max_page_count = 1073741823")  # the operator frees space
    depth = store.depth
    assert await store.add(make_reading(seq=5000)) == "new"
    assert store.depth == depth + 1
    assert await store.add(make_reading(seq=0)) == "duplicate"


async def test_uplink_survives_a_queue_that_cannot_record_the_answer(
    until: Any, store: Store, make_reading: Callable[..., Reading], fake_cloud: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for seq in range(3):
        await store.add(make_reading(seq=seq))
    real_ack = store.ack
    failures = [StoreError("queue transaction failed: database or disk is full")] * 2

    async def ack(keys: Any) -> int:
        if failures:
            raise failures.pop()
        return await real_ack(keys)

    monkeypatch.setattr(store, "ack", ack)
    policy = BatchPolicy(batch_max=10, batch_age_s=0.05, backoff_initial_s=0.02,
                         backoff_max_s=0.1)
    async with HttpUplink(fake_cloud.url, token="tok", timeout_s=2) as up:
        batcher = Batcher(store, up, gateway="gw-01", policy=policy)
        task = asyncio.create_task(batcher.run())
        try:
            await until(lambda: store.depth == 0)
            assert not task.done(), "the upload loop died on a store error"
        finally:
            task.cancel()
    ids = [p.body["batch_id"] for p in fake_cloud.posts]
    assert len(ids) == 3 and len(set(ids)) == 1  # the same batch again until recorded
    assert fake_cloud.stored == {("env-0001", i) for i in range(3)}
    assert "disk is full" in (batcher.last_error or "")


def test_oscore_sequence_mark_counts_only_once_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "seq.json"
    seq = SenderSequence(path, block=4)
    seq.reserve("a", 1)  # mark 5 on disk

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(oscore_ctx.os, "write", full)
    with pytest.raises(OSError):
        seq.reserve("a", 6)  # the disk is full: aiocoap gets the error, sends nothing
    assert SenderSequence(path).start("a") == 5 and seq.start("a") == 5  # not raised in memory
    assert [p.name for p in tmp_path.iterdir()] == ["seq.json"]  # no temporary file left
    with pytest.raises(OSError):
        seq.reserve("a", 7)  # tried again, not skipped as covered
    monkeypatch.undo()
    seq.reserve("a", 8)  # space again
    assert SenderSequence(path).start("a") == 12
