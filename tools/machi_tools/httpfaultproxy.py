"""HTTP fault proxy: sits between the gateway and the cloud and fails like a bad uplink.

Per request (seeded, repeatable) it may answer an error itself without forwarding, hang
until the client gives up, or - the nastiest case - forward the request, let the cloud
commit it, and then lose the answer, so the gateway must retry something the cloud already
has. Outage windows (seconds since start) refuse every request, like a dead mobile link.

Run as a process: `python -m machi_tools.httpfaultproxy --target http://127.0.0.1:8080
--error 0.1 --lose-response 0.1 --outage 5:15 --ready-file F --stats-file S`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import httpx

from .faultproxy import serve_until_signalled

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass(frozen=True)
class HttpFaults:
    """Probabilities per request, and outage windows as (start_s, end_s) since start."""

    error: float = 0.0
    hang: float = 0.0
    lose_response: float = 0.0
    hang_s: float = 30.0
    outages: tuple[tuple[float, float], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in ("error", "hang", "lose_response"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]")
        for start, end in self.outages:
            if not 0 <= start < end:
                raise ValueError(f"outage window {start}:{end} must have 0 <= start < end")


class HttpFaultProxy:
    """An async context manager serving the proxy on `address`."""

    def __init__(self, target: str, faults: HttpFaults, *, seed: int,
                 listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.target = target.rstrip("/")
        self.faults = faults
        self.rng = random.Random(seed)
        self.listen = listen
        self.stats: Counter[str] = Counter()
        self.started = time.monotonic()
        self.server: asyncio.Server | None = None
        self.client: httpx.AsyncClient | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def __aenter__(self) -> HttpFaultProxy:
        self.client = httpx.AsyncClient(base_url=self.target, timeout=60)
        self.server = await asyncio.start_server(self._connection, *self.listen)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self.client is not None:
            await self.client.aclose()

    def _in_outage(self) -> bool:
        now = time.monotonic() - self.started
        return any(start <= now < end for start, end in self.faults.outages)

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            self.stats["broken_connections"] += 1
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> bool:
        line = await reader.readline()
        if not line:
            return False
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.stats["requests"] += 1
        f = self.faults
        if self._in_outage():
            self.stats["outage_refused"] += 1
            return False  # connection closed without an answer
        roll = self.rng.random()
        if roll < f.error:
            self.stats["errors_injected"] += 1
            await self._answer(writer, 503, b'{"title": "injected fault"}',
                               {"content-type": "application/json"})
            return True
        if roll < f.error + f.hang:
            self.stats["hangs_injected"] += 1
            await asyncio.sleep(f.hang_s)
            return False
        assert self.client is not None
        fwd = {k: v for k, v in headers.items() if k not in _HOP_BY_HOP}
        resp = await self.client.request(method, path, content=body, headers=fwd)
        if roll < f.error + f.hang + f.lose_response:
            self.stats["responses_lost"] += 1
            return False  # the cloud has committed; the gateway never hears of it
        self.stats["forwarded"] += 1
        out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP}
        await self._answer(writer, resp.status_code, resp.content, out)
        return True

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, status: int, body: bytes,
                      headers: dict[str, str]) -> None:
        head = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()


def _outage(text: str) -> tuple[float, float]:
    start, _, end = text.partition(":")
    return float(start), float(end)


async def _serve(args: argparse.Namespace) -> None:
    faults = HttpFaults(error=args.error, hang=args.hang, lose_response=args.lose_response,
                        hang_s=args.hang_s, outages=tuple(args.outage))
    proxy = HttpFaultProxy(args.target, faults, seed=args.seed)

    def ready(p: HttpFaultProxy) -> dict[str, object]:
        host, port = p.address
        return {"url": f"http://{host}:{port}", "faults": asdict(faults)}

    await serve_until_signalled(proxy, ready, args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m machi_tools.httpfaultproxy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="the cloud's base URL")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--error", type=float, default=0.0, help="P(answer 503 without forwarding)")
    p.add_argument("--hang", type=float, default=0.0, help="P(never answer)")
    p.add_argument("--lose-response", type=float, default=0.0,
                   help="P(forward, then drop the cloud's answer)")
    p.add_argument("--hang-s", type=float, default=30.0)
    p.add_argument("--outage", type=_outage, action="append", default=[],
                   metavar="START:END", help="seconds since start with every request refused")
    p.add_argument("--ready-file")
    p.add_argument("--stats-file")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
