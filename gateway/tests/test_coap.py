"""CoAP end to end: aiocoap's client against the running ingress, for every code."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiocoap
import cbor2
import pytest

from machi_gateway.stats import IngressStats
from machi_gateway.store import Store


@dataclass
class Gw:
    uri: str
    port: int
    store: Store
    stats: IngressStats
    client: aiocoap.Context

    async def post(self, payload: bytes, *, cf: int | None = 112, **kw: Any) -> aiocoap.Message:
        msg = aiocoap.Message(code=aiocoap.POST, uri=self.uri, payload=payload)
        if cf is not None:
            msg.opt.content_format = cf
        return await self.client.request(msg, **kw).response


async def _gateway(serve_coap: Any, max_readings: int) -> AsyncIterator[Gw]:
    async with serve_coap(store_kw={"max_readings": max_readings}) as served:
        port = served.port
        assert served.coap.address[0] == "127.0.0.1" and port > 0
        client = await aiocoap.Context.create_client_context()
        try:
            yield Gw(f"coap://127.0.0.1:{port}/r", port, served.store, served.stats, client)
        finally:
            await client.shutdown()


@pytest.fixture
async def gw(serve_coap: Any) -> AsyncIterator[Gw]:
    async for g in _gateway(serve_coap, 1000):
        yield g


@pytest.fixture
async def small_gw(serve_coap: Any) -> AsyncIterator[Gw]:
    async for g in _gateway(serve_coap, 1):
        yield g


async def test_new_reading_is_changed_and_stored(
    gw: Gw, vectors: Callable[[str], Any]
) -> None:
    for case in vectors("senml-readings.json"):
        resp = await gw.post(bytes.fromhex(case["hex"]))
        assert resp.code == aiocoap.CHANGED, (case["name"], resp.payload)
        # Contract C1: the ACK tells the node the gateway's time, CF 60, a few bytes.
        assert resp.opt.content_format == 60
        before = int(time.time())
        doc = cbor2.loads(resp.payload)
        assert set(doc) == {1} and abs(doc[1] - before) <= 5 and len(resp.payload) <= 7
    assert gw.store.depth == len(vectors("senml-readings.json"))
    assert gw.stats.readings_in == gw.store.depth


async def test_duplicate_is_changed_and_stored_once(
    gw: Gw, vectors: Callable[[str], Any]
) -> None:
    payload = bytes.fromhex(vectors("senml-readings.json")[0]["hex"])
    for _ in range(3):
        assert (await gw.post(payload)).code == aiocoap.CHANGED
    assert gw.store.depth == 1
    assert (gw.stats.readings_in, gw.stats.duplicates) == (1, 2)
    [r] = await gw.store.oldest(10)
    assert (r.device, r.seq, r.transport) == ("env-0001", 17, "coap")


async def test_invalid_vectors_get_their_code(gw: Gw, vectors: Callable[[str], Any]) -> None:
    for case in vectors("senml-invalid.json"):
        resp = await gw.post(bytes.fromhex(case["hex"]), cf=case["content_format"])
        assert str(resp.code).startswith(case["code"]), (case["name"], resp.code)
        if case["code"] == "4.00":
            assert resp.payload, case["name"]  # a UTF-8 diagnostic
            resp.payload.decode("utf-8")
    assert gw.store.depth == 0
    assert gw.stats.rejected["unknown-device"] == 1
    assert gw.stats.rejected["wrong-format"] == 1
    assert gw.stats.rejected["value-count"] == 2
    assert gw.stats.rejected["not-a-pack"] == 2


async def test_bad_request_diagnostic(gw: Gw) -> None:
    resp = await gw.post(b"\x9f\x01")
    assert resp.code == aiocoap.BAD_REQUEST
    assert resp.payload.decode().startswith("cbor:")


def _datagram_size(msg: aiocoap.Message) -> int:
    """RFC 7252 §3: header, token, options, payload marker and payload."""
    body = 1 + len(msg.payload) if msg.payload else 0
    return 4 + len(msg.token) + len(msg.opt.encode()) + body


async def test_error_answers_are_never_larger_than_the_request(
    gw: Gw, vectors: Callable[[str], Any]
) -> None:
    payloads = [bytes.fromhex(c["hex"]) for c in vectors("senml-invalid.json")]
    payloads += [b"", b"\x9f", b"\xff" * 3, bytes.fromhex("a1006373657101")]
    for payload in payloads:
        request = aiocoap.Message(code=aiocoap.POST, uri=gw.uri, payload=payload,
                                  content_format=112)
        resp = await gw.client.request(request).response
        assert resp.code.is_successful() is False
        assert _datagram_size(resp) <= _datagram_size(request), (payload.hex(), resp.payload)


async def test_missing_content_format_is_415(gw: Gw, vectors: Callable[[str], Any]) -> None:
    resp = await gw.post(bytes.fromhex(vectors("senml-readings.json")[0]["hex"]), cf=None)
    assert resp.code == aiocoap.UNSUPPORTED_CONTENT_FORMAT


async def test_too_large_is_413_with_size1(gw: Gw) -> None:
    resp = await gw.post(b"\x00" * 1025, handle_blockwise=False)
    assert resp.code == aiocoap.REQUEST_ENTITY_TOO_LARGE
    assert resp.opt.size1 == 1024
    # Checked before the Content-Format: a huge JSON payload also gets 4.13.
    resp = await gw.post(b"\x00" * 1500, cf=110, handle_blockwise=False)
    assert resp.code == aiocoap.REQUEST_ENTITY_TOO_LARGE
    assert gw.stats.rejected["too-large"] == 2


async def test_blockwise_upload_is_413(gw: Gw) -> None:
    resp = await gw.post(b"\x00" * 3000)  # aiocoap's client sends Block1 transfers
    assert resp.code == aiocoap.REQUEST_ENTITY_TOO_LARGE
    assert resp.opt.size1 == 1024


async def test_other_methods_are_405(gw: Gw) -> None:
    for code in (aiocoap.GET, aiocoap.PUT, aiocoap.DELETE):
        resp = await gw.client.request(aiocoap.Message(code=code, uri=gw.uri)).response
        assert resp.code == aiocoap.METHOD_NOT_ALLOWED


async def test_full_queue_is_503_with_max_age(
    small_gw: Gw, vectors: Callable[[str], Any]
) -> None:
    first, second = (bytes.fromhex(c["hex"]) for c in vectors("senml-readings.json")[:2])
    assert (await small_gw.post(first)).code == aiocoap.CHANGED
    resp = await small_gw.post(second)
    assert resp.code == aiocoap.SERVICE_UNAVAILABLE
    assert resp.opt.max_age == 30
    assert (await small_gw.post(first)).code == aiocoap.CHANGED  # a duplicate is still fine
    assert small_gw.stats.rejected["queue-full"] == 1


async def test_garbage_datagrams_do_not_stop_the_server(
    gw: Gw, vectors: Callable[[str], Any]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (b"", b"\xff", b"\x40\x02", bytes(range(256))):
            s.sendto(junk, ("127.0.0.1", gw.port))
    resp = await gw.post(bytes.fromhex(vectors("senml-readings.json")[0]["hex"]))
    assert resp.code == aiocoap.CHANGED


async def test_disk_quota_is_503_with_max_age(serve_coap: Any) -> None:
    """A queue over its byte quota answers 5.03 + Max-Age and stores nothing more;
    duplicates of stored readings still get their 2.04."""
    big = "x" * 400
    quota = {"max_readings": 10**6, "retry_after_s": 17, "max_bytes": 96 * 1024}
    async with serve_coap(store_kw=quota) as served:
        store, stats, coap = served.store, served.stats, served.coap
        client = await aiocoap.Context.create_client_context()
        try:
            async def post(seq: int) -> aiocoap.Message:
                payload = cbor2.dumps([{0: "seq", 2: seq, -2: "env-0001:"},
                                       {0: "note", 3: big}])
                msg = aiocoap.Message(code=aiocoap.POST, payload=payload,
                                      uri=f"coap://127.0.0.1:{coap.address[1]}/r")
                msg.opt.content_format = 112
                return await client.request(msg).response

            seq = 0
            while True:
                seq += 1
                resp = await post(seq)
                if resp.code != aiocoap.CHANGED:
                    break
                assert seq < 2000, "the quota never applied"
            assert resp.code == aiocoap.SERVICE_UNAVAILABLE
            assert resp.opt.max_age == 17
            assert store.depth == seq - 1 and stats.rejected["disk-quota"] == 1
            assert (await post(1)).code == aiocoap.CHANGED  # a duplicate
            # Uploads free pages: the node gets in again.
            await store.ack([("env-0001", s) for s in range(1, seq)])
            assert (await post(seq)).code == aiocoap.CHANGED
        finally:
            await client.shutdown()


async def test_other_paths_are_404(gw: Gw) -> None:
    for path in ("x", ".well-known/core", "r/r"):
        uri = gw.uri.removesuffix("/r") + "/" + path
        resp = await gw.client.request(aiocoap.Message(code=aiocoap.POST, uri=uri)).response
        assert resp.code == aiocoap.NOT_FOUND, path


async def test_multi_reading_packs_take_one_commit_each(
    gw: Gw, vectors: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack of several readings: one transaction (one fsync) before its one 2.04, every
    reading stored; a reading already stored inside a pack is a duplicate, not an error."""
    groups: list[int] = []
    real = gw.store._add_group

    def counting(readings: Any) -> Any:
        groups.append(len(readings))
        return real(readings)

    monkeypatch.setattr(gw.store, "_add_group", counting)
    cases = vectors("senml-readings-multi.json")
    for case in cases:
        resp = await gw.post(bytes.fromhex(case["hex"]))
        assert resp.code == aiocoap.CHANGED, (case["name"], resp.payload)
        assert set(cbor2.loads(resp.payload)) == {1}
    total = sum(len(c["readings"]) for c in cases)
    assert groups == [len(c["readings"]) for c in cases]
    assert gw.store.depth == gw.stats.readings_in == total
    stored = {(r.device, r.seq) for r in await gw.store.oldest(100)}
    assert stored == {(r["device"], r["seq"]) for c in cases for r in c["readings"]}
    # seq 18 again and a new seq 21: both acknowledged, 21 stored once, 18 not twice
    again = cbor2.dumps([{0: "seq", 2: 18, -2: "env-0001:"}, {0: "t", 2: 1},
                         {0: "seq", 2: 21, -2: "env-0001:"}, {0: "t", 2: 2}])
    assert (await gw.post(again)).code == aiocoap.CHANGED
    assert gw.store.depth == total + 1 and gw.stats.duplicates == 1


async def test_multi_reading_pack_refusals(
    small_gw: Gw, vectors: Callable[[str], Any]
) -> None:
    unknown = cbor2.dumps([{0: "seq", 2: 1, -2: "nobody-0001:"},
                           {0: "seq", 2: 2, -2: "nobody-0001:"}])
    assert (await small_gw.post(unknown)).code == aiocoap.UNAUTHORIZED
    # the queue holds one reading: the pack is not acknowledged (5.03), the node resends it
    # all later and finds the one stored now as a duplicate
    backlog = bytes.fromhex(vectors("senml-readings-multi.json")[0]["hex"])
    resp = await small_gw.post(backlog)
    assert resp.code == aiocoap.SERVICE_UNAVAILABLE and resp.opt.max_age == 30
    assert small_gw.store.depth == 1
    assert small_gw.stats.rejected["unknown-device"] == 1
    assert small_gw.stats.rejected["queue-full"] == 1
