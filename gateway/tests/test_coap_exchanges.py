"""The CoAP ingress's message and token layers (ingress/coap.py ``_MessageManager``,
``_TokenManager``): a retransmitted request gets the very answer of the first, for as long
as aiocoap's EXCHANGE_LIFETIME and no longer, and a served request leaves no cyclic
garbage behind."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiocoap
import cbor2
import pytest
from aiocoap.numbers.codes import Code
from aiocoap.numbers.constants import TransportTuning

from machi_gateway.ingress.coap import _MessageManager


def message_manager(gw: Any) -> Any:
    """The compact message layer serving ``gw`` (a conftest ``ServedCoap``)."""
    ctx = gw.coap.context
    assert ctx is not None
    [mman] = [t.token_interface for t in ctx.request_interfaces]
    assert isinstance(mman, _MessageManager)
    return mman


@pytest.fixture
async def gw(serve_coap: Any) -> AsyncIterator[Any]:
    async with serve_coap() as served:
        yield served


def con_post(mid: int, token: bytes, seqs: list[int]) -> bytes:
    """A raw CON POST /r (Content-Format 112) of one reading per seq of env-0001."""
    records: list[dict[int, Any]] = []
    for seq in seqs:
        records += [{0: "seq", 2: seq, -2: "env-0001:"}, {0: "temp", 1: "Cel", 2: 21.5}]
    head = struct.pack(">BBH", 0x40 | len(token), 0x02, mid) + token
    return head + b"\xb1r\x11\x70\xff" + cbor2.dumps(records)


async def exchange(port: int, datagrams: list[bytes], answers: int,
                   sock: socket.socket | None = None) -> list[bytes]:
    """Send ``datagrams`` from one UDP socket, return the first ``answers`` datagrams back."""
    own = sock is None
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        for d in datagrams:
            await loop.sock_sendto(s, d, ("127.0.0.1", port))
        return [await asyncio.wait_for(loop.sock_recv(s, 2048), 5) for _ in range(answers)]
    finally:
        if own:
            s.close()


async def test_retransmission_gets_the_same_answer_without_the_store(gw: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = con_post(0x1234, b"\x01\x02\x03\x04", [5, 6])
        [first] = await exchange(gw.port, [request], 1, s)
        assert first[0] == 0x64 and first[1] == 0x44  # ACK, TKL 4, 2.04
        assert first[2:8] == request[2:8]  # piggybacked: its message id and token
        await asyncio.sleep(1.1)  # the answer carries the time: a new one would differ
        [again] = await exchange(gw.port, [request], 1, s)
        assert again == first
        assert gw.store.depth == 2 and gw.stats.readings_in == 2
        assert gw.stats.duplicates == 0  # answered by the message layer, not re-processed
        # the same readings under a new message id: a new request, a duplicate in the store
        [other] = await exchange(gw.port, [con_post(0x1235, b"\x09", [5, 6])], 1, s)
        assert other[1] == 0x44 and other[2:4] == b"\x12\x35"
        assert gw.store.depth == 2 and gw.stats.duplicates == 2


async def test_same_message_id_from_another_endpoint_is_a_new_request(gw: Any) -> None:
    request = con_post(0x0042, b"\xaa", [7])
    [a] = await exchange(gw.port, [request], 1)
    [b] = await exchange(gw.port, [request], 1)  # another socket: another source port
    assert a[1] == b[1] == 0x44
    assert gw.stats.readings_in == 1 and gw.stats.duplicates == 1


async def test_retransmission_while_the_first_is_in_progress_gets_one_answer(
        gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    release = asyncio.Event()
    calls = 0
    real = gw.store.add

    async def slow_add(reading: Any) -> Any:
        nonlocal calls
        calls += 1
        await release.wait()
        return await real(reading)

    monkeypatch.setattr(gw.store, "add", slow_add)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        loop = asyncio.get_running_loop()

        async def received(quiet: float) -> list[bytes]:
            out = []
            with contextlib.suppress(TimeoutError):
                while True:
                    out.append(await asyncio.wait_for(loop.sock_recv(s, 2048), quiet))
            return out

        request = con_post(0x0100, b"\x10", [8])
        for _ in range(3):
            await loop.sock_sendto(s, request, ("127.0.0.1", gw.port))
        # no answer is ready: after aiocoap's EMPTY_ACK_DELAY, an empty ACK (once)
        [ack] = await received(0.5)
        assert ack == b"\x60\x00\x01\x00"  # ACK, 0.00, message id 0x0100
        await loop.sock_sendto(s, request, ("127.0.0.1", gw.port))
        assert await received(0.3) == [ack]  # a retransmission now: that ACK again
        release.set()
        [answer] = await received(0.5)  # then the 2.04, as a separate CON response
        assert answer[0] >> 4 == 0x4 and answer[1] == 0x44 and answer[4:5] == b"\x10"
    assert calls == 1 and gw.stats.readings_in == 1 and gw.stats.duplicates == 0


async def test_entries_expire_after_the_exchange_lifetime(
        gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    mman = message_manager(gw)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = con_post(0x0200, b"\x20", [9])
        await exchange(gw.port, [request], 1, s)
        assert len(mman._recent_messages) == len(mman._expiry) == 1
        # every entry's deadline has passed once the loop's clock is a lifetime further
        lifetime = TransportTuning().EXCHANGE_LIFETIME
        now = mman._clock
        monkeypatch.setattr(mman, "_clock", lambda: now() + lifetime + 1)
        [again] = await exchange(gw.port, [request], 1, s)
        assert again[1] == 0x44
        # the old entry is gone, the retransmission was a new request: the store said dup
        assert gw.stats.readings_in == 1 and gw.stats.duplicates == 1
        assert len(mman._recent_messages) == len(mman._expiry) == 1
        # entries hold the answer's bytes, no message object
        assert all(v is None or type(v) is bytes for v in mman._recent_messages.values())


async def test_a_push_with_a_recent_request_id_leaves_its_answer_alone(gw: Any) -> None:
    """The gateway's own CON to a node (a downlink push) may draw the message id of that
    node's last request: a retransmission of the request still gets the request's answer,
    not the push (only ACK/RST answers are kept for duplicates)."""
    ctx = gw.coap.context
    assert ctx is not None
    mman = message_manager(gw)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        request = con_post(0x0777, b"\x01", [1])
        [first] = await exchange(gw.port, [request], 1, s)
        mman.message_id = 0x0777  # the next id the gateway draws for its own messages
        push = ctx.request(aiocoap.Message(
            code=Code.POST, uri=f"coap://127.0.0.1:{s.getsockname()[1]}/c", payload=b"cmd"),
            handle_blockwise=False)
        try:
            pushed = await asyncio.wait_for(loop.sock_recv(s, 2048), 5)
            assert pushed[0] >> 4 == 0x4 and pushed[2:4] == b"\x07\x77"  # CON, that id
            [again] = await exchange(gw.port, [request], 1, s)
            assert again == first
        finally:
            push.response.cancel()


async def test_served_requests_leave_no_cyclic_garbage(gw: Any) -> None:
    n = 60
    await exchange(gw.port, [con_post(1, b"\x01", [1])], 1)  # warm-up: caches, first use
    gc.collect()
    gc.disable()
    try:
        for i in range(n):
            await exchange(gw.port, [con_post(i + 2, b"\x02", [i + 100, i + 1000])], 1)
        found = gc.collect()
    finally:
        gc.enable()
    assert gw.stats.readings_in == 2 * n + 1
    # aiocoap's own token layer left ~20 objects per request in a cycle (> 1,000 here)
    assert found < n, found
