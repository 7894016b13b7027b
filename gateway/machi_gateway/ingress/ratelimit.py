"""Per-source rate limit in front of the whole CoAP site (docs/security.md §1.3).

A token bucket per source IP address (not per port: a flooder picks ports freely) is
checked before anything else runs, OSCORE decryption included, so a flood costs one dict
lookup per datagram. Over the limit a request gets 4.29 Too Many Requests (RFC 8516) with
Max-Age = the seconds until a token is back: no payload, so never larger than the request.
The node treats it like 5.03 (keep the reading, wait Max-Age): nothing is lost.

Caveat for operators: NB-IoT nodes may all arrive from one carrier-grade NAT address, so
the rate must cover the whole fleet behind one address (docs/gateway.md ``[coap]``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code

MAX_SOURCES = 100_000  # buckets kept; beyond it the idle ones are forgotten first


class TokenBuckets:
    """``allow(source)``: True while ``source`` stays within ``rate``/s with ``burst``."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, when)

    def allow(self, source: str) -> bool:
        now = self._clock()
        tokens, when = self._buckets.get(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        ok = tokens >= 1
        if ok:
            tokens -= 1
        if source not in self._buckets and len(self._buckets) >= MAX_SOURCES:
            self._forget_full(now)
        self._buckets[source] = (tokens, now)
        return ok

    def wait_s(self, source: str) -> int:
        """Whole seconds until ``source`` has a token again (for Max-Age)."""
        tokens, _ = self._buckets.get(source, (self.burst, 0.0))
        return max(1, math.ceil((1 - tokens) / self.rate))

    def _forget_full(self, now: float) -> None:
        # a bucket that has refilled holds no information: dropping it changes nothing
        full = [s for s, (t, w) in self._buckets.items()
                if t + (now - w) * self.rate >= self.burst]
        for s in full:
            del self._buckets[s]
        if len(self._buckets) >= MAX_SOURCES:  # still full of active sources: the oldest go
            for s in sorted(self._buckets, key=lambda s: self._buckets[s][1])[:MAX_SOURCES // 10]:
                del self._buckets[s]


def source_of(request: aiocoap.Message) -> str:
    """The sender's IP address without the port (IPv4-mapped IPv6 as the IPv4 text)."""
    remote = request.remote
    sockaddr = getattr(remote, "sockaddr", None)
    host = str(sockaddr[0]) if sockaddr else str(remote.hostinfo).rsplit(":", 1)[0]
    return host.removeprefix("::ffff:")


class RateLimitedSite:
    """Wraps the server's site: over-limit requests never reach it."""

    def __init__(self, inner: Any, buckets: TokenBuckets,
                 rejected: Callable[[str], None]) -> None:
        self.inner = inner
        self.buckets = buckets
        self.rejected = rejected

    async def render_to_pipe(self, pipe: Any) -> None:
        source = source_of(pipe.request)
        if self.buckets.allow(source):
            await self.inner.render_to_pipe(pipe)
            return
        self.rejected("rate-limited")
        pipe.add_response(aiocoap.Message(code=Code.TOO_MANY_REQUESTS,
                                          max_age=self.buckets.wait_s(source)), is_last=True)

    # the rest of aiocoap's site interface, for completeness
    async def needs_blockwise_assembly(self, request: Any) -> bool:
        result: bool = await self.inner.needs_blockwise_assembly(request)
        return result

    async def render(self, request: Any) -> Any:
        return await self.inner.render(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
