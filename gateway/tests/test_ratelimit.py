"""Per-source rate limit (ingress/ratelimit.py): 4.29 + Max-Age, per IP, before anything."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest

from machi_gateway.ingress.ratelimit import MAX_SOURCES, TokenBuckets
from machi_gateway.stats import IngressStats


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_bucket_allows_the_burst_then_the_rate_per_source() -> None:
    clock = Clock()
    b = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [b.allow("10.0.0.1") for _ in range(4)] == [True, True, True, False]
    assert b.wait_s("10.0.0.1") == 1
    assert b.allow("10.0.0.2")  # another source has its own bucket
    clock.t += 0.5  # one token back at 2/s
    assert b.allow("10.0.0.1") and not b.allow("10.0.0.1")
    clock.t += 60  # refilled, but never above the burst
    assert [b.allow("10.0.0.1") for _ in range(4)] == [True, True, True, False]
    with pytest.raises(ValueError):
        TokenBuckets(rate=0, burst=1)


def test_buckets_stay_bounded_under_a_spoofed_source_flood() -> None:
    clock = Clock()
    b = TokenBuckets(rate=1.0, burst=1, clock=clock)
    for i in range(MAX_SOURCES + 5000):
        b.allow(f"src-{i}")
        if i % 1000 == 0:
            clock.t += 0.001
    assert len(b._buckets) <= MAX_SOURCES


def _datagram(mid: int, payload: bytes) -> bytes:
    # CON POST /r, Content-Format 112, token 1 byte
    head = struct.pack("!BBHB", 0x41, 0x02, mid, 0x5A)
    return head + bytes([0xB1]) + b"r" + bytes([0x12, 0x00, 112]) + bytes([0xFF]) + payload


@pytest.fixture
async def limited(serve_coap: Any) -> AsyncIterator[tuple[int, IngressStats]]:
    async with serve_coap(host="::", rate_per_source=0.5, rate_burst=3) as served:
        yield served.port, served.stats


async def _exchange(sock: socket.socket, port: int, data: bytes, host: str) -> bytes:
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, data, (host, port))
    async with asyncio.timeout(30):
        return await loop.sock_recv(sock, 2048)


async def test_a_flooding_source_gets_bare_4_29_while_another_is_served(
        limited: tuple[int, IngressStats], devices_file: Path) -> None:
    port, stats = limited
    pack = cbor2.dumps([{-2: "env-0001:", 0: "seq", 2: 1}, {0: "temp", 1: "Cel", 2: 21}])
    codes = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))
        for mid in range(6):
            req = _datagram(mid, pack)
            raw = await _exchange(s, port, req, "127.0.0.1")
            answer = aiocoap.Message.decode(raw)
            codes.append(answer.code)
            if answer.code == aiocoap.TOO_MANY_REQUESTS:
                assert answer.payload == b"" and len(raw) <= len(req)
                assert answer.opt.max_age is not None and answer.opt.max_age >= 1
    assert codes[:3] == [aiocoap.CHANGED] * 3  # the burst
    assert codes[3:] == [aiocoap.TOO_MANY_REQUESTS] * 3
    assert stats.rejected["rate-limited"] == 3
    # another address (127.0.0.2 is loopback too on Linux) has its own bucket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.bind(("127.0.0.2", 0))
        answer = aiocoap.Message.decode(await _exchange(s, port, _datagram(99, pack),
                                                        "127.0.0.1"))
    assert answer.code == aiocoap.CHANGED  # a duplicate of seq 1: stored once, acked again
