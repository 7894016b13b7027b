"""As rows (``[uplink] format = "readings"``) the uplink splices the stored bodies into
the batch: byte for byte the old encoding, and a body damaged on disk goes to dead letters
instead of stopping or poisoning the upload."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import cbor2
import httpx
import pytest

from machi_gateway.model import Measurement, Reading, cbor_head
from machi_gateway.store import Queued, Store
from machi_gateway.uplink import batcher as batcher_module
from machi_gateway.uplink import wire
from machi_gateway.uplink.base import Batch
from machi_gateway.uplink.batcher import BatchPolicy

POLICY = BatchPolicy(batch_max=10, batch_age_s=0, backoff_initial_s=0.01, backoff_max_s=0.02,
                     format="readings")
MIXED = (Measurement("temp", "Cel", 21.5), Measurement("count", None, 7),
         Measurement("big", None, 2**40), Measurement("neg", None, -300),
         Measurement("door", None, True), Measurement("shut", None, False),
         Measurement("state", None, "open"), Measurement("label", "x", "é" * 30))


def _old_encode(batch: Batch, readings: list[Reading]) -> bytes:
    """The encoding before the splice: every reading decoded, then encoded by cbor2."""
    return bytes(cbor2.dumps({"gateway": batch.gateway, "batch_id": batch.batch_id,
                              "readings": [r.to_wire() for r in readings]}))


def _readings(n: int) -> list[Reading]:
    return [Reading(device=f"dev-{i % 7}", seq=i * 997, time=1_700_000_000 + i if i % 2 else
                    1_700_000_000.25 + i, received=1_700_000_001.5 + i,
                    transport="coap" if i % 3 else "lora",
                    measurements=MIXED[: 1 + i % len(MIXED)]) for i in range(n)]


@pytest.mark.parametrize("n", [1, 23, 24, 255, 256, 300])
async def test_splice_is_byte_identical_to_the_old_encoding(store: Store, n: int) -> None:
    """Equivalence (passes on the old code too): array heads of 1, 2 and 3 bytes, text,
    bool, int and float values, through the real queue."""
    readings = _readings(n)
    await store.add_many(readings)
    queued = await store.queued(1000)
    assert [q.key for q in queued] == [r.key for r in readings]
    assert [q.received for q in queued] == [r.received for r in readings]
    batch = Batch(gateway="gw-01", batch_id="gw-01-000000000042", readings=tuple(queued))
    assert wire.encode_batch(batch) == _old_encode(batch, readings)
    without_store = Batch(gateway="gw-01", batch_id="b" * 64,
                          readings=tuple(map(Queued.of, readings)))
    assert wire.encode_batch(without_store) == _old_encode(without_store, readings)


@pytest.mark.parametrize("n", [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32])
def test_array_head_is_cbor2s(n: int) -> None:
    fp = io.BytesIO()
    cbor2.CBOREncoder(fp).encode_length(4, n)
    assert cbor_head(0x80, n) == fp.getvalue()


def test_looks_intact() -> None:
    good = Queued.of(_readings(3)[2])
    assert wire.looks_intact(good) and wire.well_formed(good)
    for body in (b"", b"\xff", cbor2.dumps([1]), good.body[:8],
                 cbor2.dumps({"seq": good.seq, "device": good.device})):
        assert not wire.looks_intact(Queued(good.device, good.seq, good.received, body))
    assert not wire.looks_intact(Queued(good.device, good.seq + 1, good.received, good.body))
    assert not wire.looks_intact(Queued("dev-9", good.seq, good.received, good.body))
    truncated = Queued(good.device, good.seq, good.received, good.body[:-3])
    assert wire.looks_intact(truncated) and not wire.well_formed(truncated)
    trailing = Queued(good.device, good.seq, good.received, good.body + b"\x00")
    assert not wire.well_formed(trailing)


def _strict_cloud(posts: list[bytes]) -> httpx.MockTransport:
    """Acks every reading of a well-formed batch; a body that is not exactly one CBOR map
    of reading maps gets 400, as machi_cloud.batch.parse_batch answers it."""
    def handler(req: httpx.Request) -> httpx.Response:
        posts.append(req.content)
        fp = io.BytesIO(req.content)
        try:
            doc = cbor2.CBORDecoder(fp).decode()
        except (cbor2.CBORDecodeError, ValueError, TypeError):
            return httpx.Response(400, json={"title": "not well-formed CBOR"})
        if fp.tell() != len(req.content) or not all(
                isinstance(r, dict) and "device" in r and "seq" in r for r in doc["readings"]):
            return httpx.Response(400, json={"title": "bad batch"})
        acked = [[r["device"], r["seq"]] for r in doc["readings"]]
        return httpx.Response(200, content=cbor2.dumps({"acked": acked, "rejected": []}))
    return httpx.MockTransport(handler)


@pytest.mark.parametrize("body", [
    b"\xff\x00",                                   # not CBOR
    b"\xa6\x66devi",                               # cut inside the head
    cbor2.dumps([1, 2]),                           # CBOR, not a map
    cbor2.dumps({"device": "env-0001", "seq": 2}),  # a map, not the item's form
    "text, not a blob",                            # the column's type is wrong
])
async def test_a_corrupt_head_is_dead_lettered_and_the_rest_goes_out(
    upload_all: Any, store: Store, make_reading: Callable[..., Reading],
    caplog: pytest.LogCaptureFixture, queue_file: Any, body: Any,
) -> None:
    """Before the splice, such a body made oldest() raise in the upload loop: the uplink
    task died (the daemon with it) and nothing more was sent, after every restart."""
    await store.add_many([make_reading(seq=i) for i in range(5)])
    queue_file.damage(2, body)
    posts: list[bytes] = []
    with caplog.at_level(logging.ERROR, logger="machi_gateway.uplink.batcher"):
        batcher = await upload_all(store, _strict_cloud(posts), POLICY)
    [post] = posts  # checked before sending: one batch, accepted at once
    assert [r["seq"] for r in cbor2.loads(post)["readings"]] == [0, 1, 3, 4]
    assert batcher.sent == 4
    assert queue_file.dead() == [("env-0001", 2, "corrupt queue body")]
    assert store.dead_letters == 1
    assert "queued body of env-0001 seq 2 cannot be sent" in caplog.text


async def test_damage_past_the_head_is_found_when_the_cloud_refuses_the_batch(
    upload_all: Any, store: Store, make_reading: Callable[..., Reading],
    caplog: pytest.LogCaptureFixture, queue_file: Any,
) -> None:
    """A body cut short after its identity passes the cheap check; the cloud refuses the
    batch (400), the full check finds the body, and the rest goes out under a new id."""
    readings = [make_reading(seq=i) for i in range(4)]
    await store.add_many(readings)
    queue_file.damage(1, Queued.of(readings[1]).body[:-5])
    posts: list[bytes] = []
    with caplog.at_level(logging.ERROR, logger="machi_gateway.uplink.batcher"):
        batcher = await upload_all(store, _strict_cloud(posts), POLICY)
    refused, accepted = posts
    assert cbor2.loads(accepted)["batch_id"].encode() not in refused
    assert [r["seq"] for r in cbor2.loads(accepted)["readings"]] == [0, 2, 3]
    assert queue_file.dead() == [("env-0001", 1, "corrupt queue body")]
    assert batcher.sent == 3 and "seq 1 cannot be sent" in caplog.text


async def test_a_400_without_a_corrupt_body_resends_the_same_batch(
    upload_all: Any, store: Store, make_reading: Callable[..., Reading],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 400 that is not caused by a stored body (e.g. a bad gateway id) deletes nothing:
    the same batch, byte for byte, goes again once the cloud takes it; its bodies get the
    full check after the first 400 only."""
    checked: list[Queued] = []

    def counting(item: Queued) -> bool:
        checked.append(item)
        return wire.well_formed(item)
    monkeypatch.setattr(batcher_module, "well_formed", counting)
    await store.add_many([make_reading(seq=i) for i in range(3)])
    posts: list[bytes] = []
    transport = _strict_cloud(posts)
    refusals = [httpx.Response(400, json={"title": "bad gateway id"})] * 2

    async def handler(req: httpx.Request) -> httpx.Response:
        if refusals:
            posts.append(req.content)
            return refusals.pop()
        return await transport.handle_async_request(req)
    batcher = await upload_all(store, httpx.MockTransport(handler), POLICY)
    assert len(posts) == 3 and posts[0] == posts[1] == posts[2]
    assert store.dead_letters == 0 and batcher.sent == 3
    assert sorted(q.seq for q in checked) == [0, 1, 2]


def _float_last() -> Queued:
    """A queued reading whose body ends with its one measurement's float (9 bytes)."""
    r = Reading(device="env-0001", seq=5, time=1_700_000_000.5, received=1_700_000_001.0,
                transport="coap", measurements=(Measurement("temp", "Cel", 21.5),))
    q = Queued.of(r)
    assert q.body[-9] == 0xFB
    return q


def _array_key(body: bytes) -> bytes:
    """The measurement map's key "n" replaced by the array [1]."""
    at = body.rindex(b"\xa3" + cbor2.dumps("n"))
    return body[:at] + b"\xa3\x81\x01" + body[at + 1 + len(cbor2.dumps("n")):]


# Damage that leaves well-formed CBOR which cbor2 decodes with its defaults, but which
# the cloud's decoder (machi_cloud.batch.decode_cbor) refuses, with the whole batch (400)
DECODES_BUT_REFUSED: dict[str, Callable[[bytes], bytes]] = {
    "shared value (tag 28)": lambda b: b[:-9] + b"\xd8\x1c" + b[-9:],
    "shared value and reference (tags 28, 29)": lambda b: b[:-9] + b"\xd8\x1c\x81\xd8\x1d\x00",
    "string reference namespace (tag 256)": lambda b: b[:-9] + b"\xd9\x01\x00" + b[-9:],
    "an array as a map key": _array_key,
    "a bignum over 1024 bytes (tag 2)": lambda b: b[:-9] + cbor2.dumps(1 << 8300),
}


@pytest.mark.parametrize("damage", DECODES_BUT_REFUSED.values(), ids=DECODES_BUT_REFUSED)
def test_the_full_check_refuses_cbor_the_cloud_refuses(damage: Callable[[bytes], bytes]) -> None:
    """Well-formed CBOR is not enough: had the full check passed these, the cloud's 400
    would have found nothing to drop and refused every later batch with this reading."""
    good = _float_last()
    bad = good._replace(body=damage(good.body))
    cbor2.loads(bad.body)  # decodes
    assert wire.looks_intact(bad) and not wire.well_formed(bad)
    assert wire.well_formed(good)


@pytest.mark.parametrize("damage", DECODES_BUT_REFUSED.values(), ids=DECODES_BUT_REFUSED)
def test_the_cloud_refuses_those_batches(damage: Callable[[bytes], bytes]) -> None:
    """The premise of the test above, checked against the cloud's own parser."""
    from machi_cloud import errors, fastbatch
    good = _float_last()
    bad = good._replace(body=damage(good.body))
    batch = Batch(gateway="gw-01", batch_id="gw-01-1", readings=(bad,))
    with pytest.raises(errors.BadBatch):
        fastbatch.parse_batch(wire.encode_batch(batch), max_readings=10)
    fine = Batch(gateway="gw-01", batch_id="gw-01-1", readings=(good,))
    assert len(fastbatch.parse_batch(wire.encode_batch(fine), max_readings=10).readings) == 1
