"""UDP fault proxy: sits between nodes and the gateway and misbehaves like a bad radio network.

Every datagram, in each direction, independently may be lost, duplicated, held back and
delivered after a later one (reordering), delayed, or damaged. All randomness comes from one
seed, so a failing run can be repeated exactly (`--seed`). Each client address gets its own
upstream socket, so answers find their way back to the node that asked.

Damage comes in two kinds, because they test different things:
- `drop_corrupt`: the datagram is damaged and the receiver's UDP checksum catches it: it
  never arrives. Counted separately from plain loss.
- `corrupt`: the datagram arrives with flipped bits. Without end-to-end integrity (OSCORE) a
  flipped value that still parses cannot be told from a genuine request; use it to test that
  parsers count and survive garbage, not in exactly-once runs.

Run as a process: `python -m machi_tools.faultproxy --target HOST:PORT --loss 0.2 ...`;
it writes `{"listen": [host, port]}` to `--ready-file` and its counters to `--stats-file` on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast


@dataclass(frozen=True)
class Faults:
    """Probabilities (0..1) per datagram and per direction; delays in seconds."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay_s: float = 0.0
    jitter_s: float = 0.0
    drop_corrupt: float = 0.0
    corrupt: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder", "drop_corrupt", "corrupt"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], not {value}")
        if self.delay_s < 0 or self.jitter_s < 0:
            raise ValueError("delay_s and jitter_s must be >= 0")


class _Direction:
    """Applies the faults to one direction of traffic and counts what it did."""

    def __init__(self, faults: Faults, rng: random.Random, stats: Counter[str], name: str):
        self.faults = faults
        self.rng = rng
        self.stats = stats
        self.name = name
        self.held: tuple[bytes, asyncio.DatagramTransport, tuple[str, int] | None] | None = None

    def _count(self, what: str) -> None:
        self.stats[f"{self.name}_{what}"] += 1

    def forward(
        self, data: bytes, transport: asyncio.DatagramTransport, addr: tuple[str, int] | None
    ) -> None:
        f, rng = self.faults, self.rng
        self._count("in")
        if rng.random() < f.loss:
            self._count("lost")
            return
        if rng.random() < f.drop_corrupt:
            self._count("checksum_dropped")
            return
        if rng.random() < f.corrupt and data:
            buf = bytearray(data)
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
            data = bytes(buf)
            self._count("corrupted")
        copies = 2 if rng.random() < f.duplicate else 1
        if copies == 2:
            self._count("duplicated")
        if self.held is None and rng.random() < f.reorder:
            # hold this one back: it goes out right after the next datagram (or after 0.5 s)
            self.held = (data, transport, addr)
            self._count("reordered")
            asyncio.get_running_loop().call_later(0.5, self._release)
            return
        for _ in range(copies):
            self._send_later(data, transport, addr)
        self._release()

    def _release(self) -> None:
        if self.held is not None:
            data, transport, addr = self.held
            self.held = None
            self._send_later(data, transport, addr)

    def _send_later(
        self, data: bytes, transport: asyncio.DatagramTransport, addr: tuple[str, int] | None
    ) -> None:
        delay = self.faults.delay_s + self.rng.random() * self.faults.jitter_s
        loop = asyncio.get_running_loop()
        if delay > 0:
            loop.call_later(delay, self._send_now, data, transport, addr)
        else:
            self._send_now(data, transport, addr)

    def _send_now(
        self, data: bytes, transport: asyncio.DatagramTransport, addr: tuple[str, int] | None
    ) -> None:
        if transport.is_closing():
            return
        transport.sendto(data, addr)
        self._count("out")


class _Upstream(asyncio.DatagramProtocol):
    """The proxy's socket towards the target, one per client."""

    def __init__(self, proxy: UdpFaultProxy, client: tuple[str, int]) -> None:
        self.proxy = proxy
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.proxy.listener is not None:
            self.proxy.down.forward(data, self.proxy.listener, self.client)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while the target is down: the datagram is simply lost
        self.proxy.stats["up_unreachable"] += 1


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, proxy: UdpFaultProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.proxy.from_client(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.proxy.stats["down_unreachable"] += 1


class UdpFaultProxy:
    """An async context manager: `async with UdpFaultProxy(target, faults, seed) as p:`."""

    def __init__(
        self,
        target: tuple[str, int],
        faults: Faults,
        *,
        seed: int,
        listen: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        self.target = target
        self.listen_addr = listen
        self.stats: Counter[str] = Counter()
        rng = random.Random(seed)
        self.up = _Direction(faults, random.Random(rng.random()), self.stats, "up")
        self.down = _Direction(faults, random.Random(rng.random()), self.stats, "down")
        self.listener: asyncio.DatagramTransport | None = None
        self.upstreams: dict[tuple[str, int], _Upstream] = {}
        self._pending: dict[tuple[str, int], list[bytes]] = {}
        self._opening: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        if self.listener is None:
            raise RuntimeError("proxy not started")
        host, port = self.listener.get_extra_info("sockname")[:2]
        return str(host), int(port)

    async def __aenter__(self) -> UdpFaultProxy:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Listener(self), local_addr=self.listen_addr
        )
        self.listener = transport
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._opening:
            task.cancel()
        for up in self.upstreams.values():
            if up.transport is not None:
                up.transport.close()
        if self.listener is not None:
            self.listener.close()

    def from_client(self, data: bytes, addr: tuple[str, int]) -> None:
        up = self.upstreams.get(addr)
        if up is not None and up.transport is not None:
            self.up.forward(data, up.transport, None)
            return
        # first datagram from this client: open its upstream socket, then send
        self._pending.setdefault(addr, []).append(data)
        if up is None:
            up = _Upstream(self, addr)
            self.upstreams[addr] = up
            task = asyncio.get_running_loop().create_task(self._open_upstream(up))
            self._opening.add(task)  # owned here: cancelled on exit, forgotten when done
            task.add_done_callback(self._opening.discard)

    async def _open_upstream(self, up: _Upstream) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: up, remote_addr=self.target)
        assert up.transport is not None
        for data in self._pending.pop(up.client, []):
            self.up.forward(data, up.transport, None)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def write_json_atomic(path: str, data: object) -> None:
    """Atomically (tmp + rename), so a poller never reads half a file."""
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


async def serve_until_signalled(
    proxy: Any, ready_info: Callable[[Any], dict[str, Any]], args: argparse.Namespace
) -> None:
    """Run an (async context manager) proxy until SIGTERM/SIGINT: announce it in
    `--ready-file`, and leave its counters in `--stats-file` on the way out."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with proxy:
        if args.ready_file:
            write_json_atomic(args.ready_file, {**ready_info(proxy), "seed": args.seed})
        await stop.wait()
        if args.stats_file:
            write_json_atomic(args.stats_file, dict(proxy.stats))


async def _serve(args: argparse.Namespace) -> None:
    faults = Faults(
        loss=args.loss, duplicate=args.duplicate, reorder=args.reorder, delay_s=args.delay,
        jitter_s=args.jitter, drop_corrupt=args.drop_corrupt, corrupt=args.corrupt,
    )
    proxy = UdpFaultProxy(_addr(args.target), faults, seed=args.seed, listen=_addr(args.listen))
    await serve_until_signalled(
        proxy, lambda p: {"listen": list(p.address), "faults": asdict(faults)}, args
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m machi_tools.faultproxy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="HOST:PORT of the gateway's CoAP port")
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--seed", type=int, default=1)
    for name in ("loss", "duplicate", "reorder", "drop-corrupt", "corrupt"):
        p.add_argument(f"--{name}", type=float, default=0.0, help="probability per datagram")
    p.add_argument("--delay", type=float, default=0.0, help="seconds added to every datagram")
    p.add_argument("--jitter", type=float, default=0.0, help="extra random delay, seconds")
    p.add_argument("--ready-file")
    p.add_argument("--stats-file")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
