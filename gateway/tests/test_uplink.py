"""Uplink: the batch encoding against the shared vector, the batching policy, and the
retry behaviour against a fake cloud (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest

from machi_gateway.errors import BatchConflict, UplinkRefused, UplinkUnavailable
from machi_gateway.model import Measurement, Reading
from machi_gateway.store import Queued, Store
from machi_gateway.uplink.base import Batch
from machi_gateway.uplink.batcher import CAP_HOLD_S, Batcher, BatchPolicy
from machi_gateway.uplink.http import HttpUplink
from machi_gateway.uplink.wire import decode_answer, encode_batch

FAST = BatchPolicy(batch_max=10, batch_age_s=0.05, backoff_initial_s=0.02, backoff_max_s=0.1)


Keys = Callable[[dict[str, Any]], list[tuple[str, int]]]  # the batch_keys fixture


def _seqs(body: dict[str, Any], keys: Keys) -> list[int]:
    return [seq for _, seq in keys(body)]


def test_encoding_matches_the_cloud_vector(vectors: Callable[[str], Any]) -> None:
    [case] = vectors("cloud-batches.json")
    doc = case["decoded"]
    batch = Batch(gateway=doc["gateway"], batch_id=doc["batch_id"],
                  readings=tuple(Queued.of(Reading.from_wire(r)) for r in doc["readings"]))
    assert encode_batch(batch).hex() == case["hex"]


def test_answer_parsing() -> None:
    answer = decode_answer(cbor2.dumps({
        "batch_id": "b", "stored": 1, "duplicates": 0, "acked": [["env-0001", 1]],
        "rejected": [{"device": "env-0001", "seq": 2, "reason": "bad unit"}]}))
    assert answer.acked == (("env-0001", 1),)
    assert [(d.device, d.seq, d.reason) for d in answer.rejected] == [("env-0001", 2, "bad unit")]
    for bad in (b"\xff", cbor2.dumps([1]), cbor2.dumps({"acked": [["x"]]})):
        with pytest.raises(UplinkUnavailable):
            decode_answer(bad)


def test_backoff_is_capped_full_jitter() -> None:
    p = BatchPolicy(backoff_initial_s=0.5, backoff_max_s=60)
    assert [p.backoff(n, lambda: 1.0) for n in (1, 2, 3, 8, 50)] == [0.5, 1, 2, 60, 60]
    assert p.backoff(5, lambda: 0.0) == 0.0


async def _fill(store: Store, make_reading: Callable[..., Reading], n: int,
                device: str = "env-0001") -> list[Reading]:
    return await _fill_from(store, make_reading, 0, n, device)


async def _fill_from(store: Store, make_reading: Callable[..., Reading], first: int, end: int,
                     device: str = "env-0001") -> list[Reading]:
    rs = [make_reading(device=device, seq=i) for i in range(first, end)]
    for r in rs:
        await store.add(r)
    return rs


# ---- pure batching against httpx.MockTransport ---------------------------------------


async def test_http_uplink_request_shape(
    store: Store, make_reading: Callable[..., Reading]
) -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        body = cbor2.loads(req.content)
        acked = [[r["device"], r["seq"]] for r in body["readings"]]  # no columns: rows
        return httpx.Response(200, content=cbor2.dumps({"acked": acked, "rejected": []}))

    await _fill(store, make_reading, 3)
    async with HttpUplink("http://cloud.test/", token="s3cret", timeout_s=1,
                          transport=httpx.MockTransport(handler)) as up:
        answer = await up.send(Batch(gateway="gw-01", batch_id="gw-01-1",
                                     readings=tuple(await store.queued(10))))
    assert len(answer.acked) == 3
    [req] = seen
    assert req.method == "POST" and str(req.url) == "http://cloud.test/v1/batches"
    assert req.headers["content-type"] == "application/cbor"
    assert req.headers["authorization"] == "Bearer s3cret"
    body = cbor2.loads(req.content)
    assert body["gateway"] == "gw-01" and body["batch_id"] == "gw-01-1"
    assert [r["seq"] for r in body["readings"]] == [0, 1, 2]


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, UplinkUnavailable), (503, UplinkUnavailable), (401, UplinkRefused),
     (403, UplinkRefused), (409, BatchConflict), (413, UplinkRefused)],
)
async def test_http_status_mapping(
    status: int, error: type[Exception], make_reading: Callable[..., Reading]
) -> None:
    transport = httpx.MockTransport(lambda req: httpx.Response(status, json={"title": "x"}))
    async with HttpUplink("http://cloud.test", token="", timeout_s=1, transport=transport) as up:
        with pytest.raises(error):
            await up.send(Batch(gateway="gw-01", batch_id="b",
                                readings=(Queued.of(make_reading()),)))


def _ack_all(req: httpx.Request, keys: Keys) -> httpx.Response:
    """The cloud's answer acknowledging every reading of the batch in ``req``."""
    body = cbor2.loads(req.content)
    return httpx.Response(200, content=cbor2.dumps(
        {"acked": keys(body), "rejected": []}))


def _quick(batch_max: int, batch_age_s: float = 0, **kw: Any) -> BatchPolicy:
    """A policy whose retries come at once."""
    return BatchPolicy(batch_max=batch_max, batch_age_s=batch_age_s, backoff_initial_s=0.01,
                       backoff_max_s=0.01, **kw)


async def test_batches_by_size_oldest_first(
    until: Any, store: Store, make_reading: Callable[..., Reading], batch_keys: Keys,
) -> None:
    sizes: list[list[int]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        sizes.append(_seqs(cbor2.loads(req.content), batch_keys))
        return _ack_all(req, batch_keys)

    await _fill(store, make_reading, 25)
    policy = _quick(10, batch_age_s=3600)
    async with HttpUplink("http://c", token="t", timeout_s=1,
                          transport=httpx.MockTransport(handler)) as up:
        batcher = Batcher(store, up, gateway="gw-01", policy=policy)
        task = asyncio.create_task(batcher.run())
        try:
            await until(lambda: store.depth == 5)
            await asyncio.sleep(0.1)  # 5 left, younger than batch_age_s: they wait
            assert store.depth == 5
        finally:
            task.cancel()
    assert sizes == [list(range(10)), list(range(10, 20))]
    assert batcher.sent == 20 and batcher.batches == 2


async def test_batches_stay_under_the_byte_budget(
    upload_all: Any, store: Store, make_reading: Callable[..., Reading], batch_keys: Keys,
) -> None:
    """Large readings go out fewer per batch: ``batch_max`` of them would pass the cloud's
    body limit (413 for the same batch for ever); one larger than the budget still leaves."""
    bodies: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        bodies.append(len(req.content))
        return _ack_all(req, batch_keys)

    big = tuple(Measurement(f"m{i}", "u" * 32, 1.5) for i in range(100))  # ~5 KB a body
    for seq in range(10):
        await store.add(make_reading(seq=seq, measurements=big))
    size = len((await store.queued(1))[0].body)
    batcher = await upload_all(store, httpx.MockTransport(handler),
                                _quick(10, batch_max_bytes=3 * size + 1))
    assert batcher.batches == 4 and batcher.sent == 10  # 3 + 3 + 3 + 1
    assert all(b < 3 * size + 200 for b in bodies)
    await store.add(make_reading(seq=10, measurements=big))
    tiny = BatchPolicy(batch_max=10, batch_max_bytes=1, batch_age_s=0)
    async with HttpUplink("http://c", token="t", timeout_s=1,
                          transport=httpx.MockTransport(handler)) as up:
        await Batcher(store, up, gateway="gw-01", policy=tiny).drain(2)
    assert store.depth == 0


def _limited_cloud(most: int, too_big: set[int], sizes: list[list[int]],
                   keys: Keys) -> httpx.MockTransport:
    """A cloud whose `[limits]` take at most `most` readings a batch and refuse the
    readings with a seq in `too_big` (413, as machi-cloud answers both)."""
    def handler(req: httpx.Request) -> httpx.Response:
        body = cbor2.loads(req.content)
        seqs = _seqs(body, keys)
        sizes.append(seqs)
        if len(seqs) > most or too_big & set(seqs):
            return httpx.Response(413, json={"title": "Payload Too Large"})
        return _ack_all(req, keys)
    return httpx.MockTransport(handler)


async def test_413_halves_the_batches_and_loses_nothing(
    upload_all: Any, store: Store, make_reading: Callable[..., Reading], batch_keys: Keys,
) -> None:
    """A cloud taking fewer readings per batch than `batch_max` (413 for each batch as it
    was): the same readings go out in batches half as long, and stay that short."""
    await _fill(store, make_reading, 20)
    sizes: list[list[int]] = []
    batcher = await upload_all(store, _limited_cloud(5, set(), sizes, batch_keys), _quick(16))
    assert [len(s) for s in sizes] == [16, 8, 4, 4, 4, 4, 4]
    assert sorted(q for s in sizes[2:] for q in s) == list(range(20))
    assert store.dead_letters == 0 and batcher.sent == 20


async def test_after_a_413_a_batch_as_long_as_the_cloud_takes_leaves_at_once(
    upload_all: Any, store: Store, make_reading: Callable[..., Reading], batch_keys: Keys,
) -> None:
    """Once halved, a batch is full at the new length: the readings left behind (fewer than
    `batch_max`, all fresh) do not wait `batch_age_s` for an age trigger."""
    await _fill(store, make_reading, 20)
    sizes: list[list[int]] = []
    await upload_all(store, _limited_cloud(5, set(), sizes, batch_keys),
                      _quick(16, batch_age_s=3600), within=5)
    assert [len(s) for s in sizes] == [16, 8, 4, 4, 4, 4, 4]


async def test_after_a_413_full_batches_are_tried_again_later(
    until: Any, store: Store, make_reading: Callable[..., Reading], batch_keys: Keys,
) -> None:
    """The shorter batches last CAP_HOLD_S: then the cloud's limits may have been raised."""
    ahead = [0.0]  # the batcher's clock runs this far ahead of the real one
    sizes: list[list[int]] = []
    async with HttpUplink("http://c", token="t", timeout_s=1,
                          transport=_limited_cloud(5, set(), sizes, batch_keys)) as up:
        batcher = Batcher(store, up, gateway="gw-01", policy=_quick(8),
                          clock=lambda: time.time() + ahead[0])
        task = asyncio.create_task(batcher.run())
        try:
            await store.add_many([make_reading(seq=i) for i in range(8)])
            await until(lambda: store.depth == 0)
            assert [len(s) for s in sizes] == [8, 4, 4]
            ahead[0] = CAP_HOLD_S - 1
            await store.add_many([make_reading(seq=i) for i in range(8, 16)])
            await until(lambda: store.depth == 0)
            assert [len(s) for s in sizes[3:]] == [4, 4]  # still held
            ahead[0] = CAP_HOLD_S
            await store.add_many([make_reading(seq=i) for i in range(16, 24)])
            await until(lambda: store.depth == 0)
        finally:
            task.cancel()
    assert [len(s) for s in sizes[5:]] == [8, 4, 4]  # tried whole again, refused, halved
    assert store.dead_letters == 0 and batcher.sent == 24


async def test_413_for_a_reading_smaller_than_batches_taken_keeps_it(
    until: Any, store: Store, make_reading: Callable[..., Reading], batch_keys: Keys,
) -> None:
    """A lone reading refused as too large, though the cloud took more bytes in one batch
    before, means a limit lowered since (a configuration problem): it stays queued and is
    retried, and goes once the limit is back; nothing is dead-lettered."""
    await _fill(store, make_reading, 4)
    sizes: list[list[int]] = []
    limit = [100]
    inner = _limited_cloud(100, set(), sizes, batch_keys)

    async def handler(req: httpx.Request) -> httpx.Response:
        if len(batch_keys(cbor2.loads(req.content))) > limit[0]:
            sizes.append([])
            return httpx.Response(413, json={"title": "Payload Too Large"})
        return await inner.handle_async_request(req)
    async with HttpUplink("http://c", token="t", timeout_s=1,
                          transport=httpx.MockTransport(handler)) as up:
        batcher = Batcher(store, up, gateway="gw-01", policy=_quick(4))
        await batcher.drain(2)  # taken whole: the cloud has seen 4 readings in a batch
        await _fill_from(store, make_reading, 4, 6)
        limit[0] = 0  # a proxy in front of the cloud now refuses every body
        task = asyncio.create_task(batcher.run())
        try:
            await until(lambda: len(sizes) >= 6)
            assert store.depth == 2 and store.dead_letters == 0
            limit[0] = 100
            await until(lambda: store.depth == 0)
        finally:
            task.cancel()
    assert store.dead_letters == 0 and batcher.sent == 6


async def test_413_for_one_reading_alone_dead_letters_it(
    upload_all: Any, store: Store, make_reading: Callable[..., Reading], batch_keys: Keys,
) -> None:
    """A reading the cloud refuses as too large even alone cannot hold back the queue: it
    moves to dead letters, the others are delivered, in full batches again."""
    await _fill(store, make_reading, 4)
    sizes: list[list[int]] = []
    batcher = await upload_all(store, _limited_cloud(100, {0}, sizes, batch_keys), _quick(4))
    assert sizes[:3] == [[0, 1, 2, 3], [0, 1], [0]]
    assert store.dead_letters == 1 and batcher.sent == 3
    assert sizes[3:] == [[1, 2, 3]]


async def test_batches_by_age(
    until: Any, store: Store, make_reading: Callable[..., Reading], batch_keys: Keys,
) -> None:
    sent_at: list[float] = []

    def handler(req: httpx.Request) -> httpx.Response:
        sent_at.append(time.monotonic())
        return _ack_all(req, batch_keys)

    policy = _quick(100, batch_age_s=0.3)
    async with HttpUplink("http://c", token="t", timeout_s=1,
                          transport=httpx.MockTransport(handler)) as up:
        batcher = Batcher(store, up, gateway="gw-01", policy=policy)
        task = asyncio.create_task(batcher.run())
        try:
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            await _fill(store, make_reading, 3)
            await until(lambda: store.depth == 0)
        finally:
            task.cancel()
    assert len(sent_at) == 1
    assert 0.2 <= sent_at[0] - t0 < 1.5


# ---- against a real HTTP fake cloud ----------------------------------------------------


async def _run_batcher(store: Store, url: str, timeout_s: float = 2) -> tuple[Batcher, Any]:
    up = HttpUplink(url, token="tok", timeout_s=timeout_s)
    batcher = Batcher(store, up, gateway="gw-01", policy=FAST)
    return batcher, up


async def test_acked_deleted_rejected_dead_lettered(
    until: Any, store: Store, make_reading: Callable[..., Reading], fake_cloud: Any
) -> None:
    await _fill(store, make_reading, 4)
    fake_cloud.reject[("env-0001", 2)] = "unit not allowed"
    batcher, up = await _run_batcher(store, fake_cloud.url)
    async with up, asyncio.TaskGroup() as tg:
        task = tg.create_task(batcher.run())
        await until(lambda: store.depth == 0)
        task.cancel()
    assert fake_cloud.stored == {("env-0001", i) for i in (0, 1, 3)}
    assert store.dead_letters == 1
    assert fake_cloud.posts[0].headers["authorization"] == "Bearer tok"
    assert batcher.last_ok is not None and batcher.sent == 3


async def test_503_then_success_resends_the_same_batch(
    until: Any, store: Store, make_reading: Callable[..., Reading], fake_cloud: Any
) -> None:
    await _fill(store, make_reading, 3)
    fake_cloud.script = [lambda p: (503, {"title": "busy"}), lambda p: (500, {"title": "oops"})]
    batcher, up = await _run_batcher(store, fake_cloud.url)
    async with up, asyncio.TaskGroup() as tg:
        task = tg.create_task(batcher.run())
        await until(lambda: store.depth == 0)
        task.cancel()
    ids = [p.body["batch_id"] for p in fake_cloud.posts]
    assert len(ids) == 3 and len(set(ids)) == 1
    assert fake_cloud.posts[0].body == fake_cloud.posts[2].body
    assert fake_cloud.stored == {("env-0001", i) for i in range(3)}
    assert batcher.failures == 0 and "500" in (batcher.last_error or "")


async def test_timeout_is_retried(
    until: Any, store: Store, make_reading: Callable[..., Reading], fake_cloud: Any
) -> None:
    await _fill(store, make_reading, 2)
    fake_cloud.script = [lambda p: (0, None)]  # hang: the gateway times out
    batcher, up = await _run_batcher(store, fake_cloud.url, timeout_s=0.3)
    async with up, asyncio.TaskGroup() as tg:
        task = tg.create_task(batcher.run())
        await until(lambda: store.depth == 0)
        task.cancel()
    assert len(fake_cloud.posts) == 2
    assert fake_cloud.posts[0].body["batch_id"] == fake_cloud.posts[1].body["batch_id"]
    assert "timeout" in (batcher.last_error or "")


async def test_4xx_backs_off_and_never_deletes(
    until: Any, store: Store, make_reading: Callable[..., Reading], fake_cloud: Any
) -> None:
    await _fill(store, make_reading, 2)
    fake_cloud.script = [lambda p: (401, {"title": "bad token"})] * 3
    batcher, up = await _run_batcher(store, fake_cloud.url)
    async with up, asyncio.TaskGroup() as tg:
        task = tg.create_task(batcher.run())
        await until(lambda: store.depth == 0)  # token "fixed" after 3 refusals
        task.cancel()
    # Nothing was deleted while refused: the same batch went out four times.
    assert len(fake_cloud.posts) == 4
    assert all(p.body == fake_cloud.posts[0].body for p in fake_cloud.posts)
    assert "401" in (batcher.last_error or "")
    assert fake_cloud.stored == {("env-0001", 0), ("env-0001", 1)}


async def test_409_resends_under_a_new_batch_id(
    until: Any, store: Store, make_reading: Callable[..., Reading], fake_cloud: Any
) -> None:
    await _fill(store, make_reading, 2)
    fake_cloud.script = [lambda p: (409, {"title": "conflict"})]
    batcher, up = await _run_batcher(store, fake_cloud.url)
    async with up, asyncio.TaskGroup() as tg:
        task = tg.create_task(batcher.run())
        await until(lambda: store.depth == 0)
        task.cancel()
    a, b = (p.body for p in fake_cloud.posts)
    assert a["batch_id"] != b["batch_id"] and a["columns"] == b["columns"]


async def test_outage_then_resume_loses_nothing(
    until: Any, tmp_path: Path, make_reading: Callable[..., Reading], fake_cloud: Any,
    batch_keys: Keys,
) -> None:
    """The cloud is down (connection refused) while readings pile up, then comes back."""
    with_port = fake_cloud.url
    dead = "http://127.0.0.1:9"  # discard port: connection refused
    async with Store(tmp_path / "q.db", max_readings=1000, retry_after_s=5,
                     dedup_window_s=100) as store:
        up = HttpUplink(dead, token="t", timeout_s=1)
        batcher = Batcher(store, up, gateway="gw-01", policy=FAST)
        async with up, asyncio.TaskGroup() as tg:
            task = tg.create_task(batcher.run())
            await _fill(store, make_reading, 25)
            await until(lambda: batcher.failures >= 2)
            assert store.depth == 25
            task.cancel()
        # the gateway restarts later, the cloud is back
        up = HttpUplink(with_port, token="t", timeout_s=1)
        batcher = Batcher(store, up, gateway="gw-01", policy=FAST)
        async with up, asyncio.TaskGroup() as tg:
            task = tg.create_task(batcher.run())
            await until(lambda: store.depth == 0)
            task.cancel()
    assert fake_cloud.stored == {("env-0001", i) for i in range(25)}
    assert [len(batch_keys(p.body)) for p in fake_cloud.posts] == [10, 10, 5]


async def test_drain_is_bounded(
    store: Store, make_reading: Callable[..., Reading], fake_cloud: Any
) -> None:
    await _fill(store, make_reading, 3)
    fake_cloud.script = [lambda p: (0, None)]
    batcher, up = await _run_batcher(store, fake_cloud.url, timeout_s=30)
    async with up:
        t0 = time.monotonic()
        await batcher.drain(0.3)
        assert time.monotonic() - t0 < 2
        assert store.depth == 3
        await batcher.drain(2)  # the cloud answers now: the same batch goes through
    assert store.depth == 0
    assert fake_cloud.posts[0].body["batch_id"] == fake_cloud.posts[1].body["batch_id"]
