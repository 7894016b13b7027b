"""A virtual LoRa concentrator: the emulated radios' "air" on one side, the Semtech UDP
packet-forwarder protocol (PROTOCOL.TXT v2, as ``lora_pkt_fwd`` speaks it) on the other.

Emulated radios (firmware/transports/lora_radio.py) send the raw bytes of each frame as one
datagram to ``--listen``. Each becomes a PUSH_DATA with one ``rxpk`` (base64 data, tmst of
our microsecond counter, freq, datr, codr, rssi, lsnr) to ``--gateway``; the gateway's
PUSH_ACK is counted. A PULL_DATA keep-alive goes out every ``--keepalive`` seconds from the
downlink socket, so the gateway knows where to send PULL_RESP. A PULL_RESP ``txpk`` is
answered with TX_ACK (``NONE``, or ``TOO_LATE`` / ``TOO_EARLY`` as the real forwarder
does) and transmitted at its ``tmst``: the datagram goes back to the radio whose uplink
opened that receive window (``tmst`` = uplink ``tmst`` + 1..15 s), or to every radio heard
when it names none (``imme``). Like the forwarder, nothing is retransmitted.

The air may lose frames: ``--up-loss`` (uplinks never reach the concentrator) and
``--down-loss`` (downlinks sent but never received), from one seed, so a run repeats.

    python -m machi_tools.vconcentrator --gateway 127.0.0.1:1700 --listen 127.0.0.1:0 \\
        --up-loss 0.1 --down-loss 0.1 --seed 3 --ready-file vc.ready --stats-file vc.stats

The ready file holds ``{"listen": [host, port], "eui": ...}`` once the gateway answered
the first PULL_DATA; the stats file holds the counters on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import os
import random
import struct
import sys
import time
from collections import Counter, OrderedDict
from typing import Any

from .faultproxy import serve_until_signalled

VERSION = 2
PUSH_DATA, PUSH_ACK, PULL_DATA, PULL_RESP, PULL_ACK, TX_ACK = 0, 1, 2, 3, 4, 5
_HEADER = struct.Struct(">BHB")
_RECENT = 4096  # uplinks remembered for matching a downlink's receive window
_TOO_EARLY_US = 30_000_000  # the forwarder's just-in-time queue does not look further


def _addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    try:
        return host, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability is 0..1, not {text}")
    return value


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.handler(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable from a gateway that is down: the keep-alive retries

    def send(self, data: bytes, addr: tuple[str, int] | None = None) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)


class Concentrator:
    """The radios' socket, and the forwarder's up and down sockets to the gateway."""

    def __init__(self, gateway: tuple[str, int], *, listen: tuple[str, int] = ("127.0.0.1", 0),
                 eui: bytes = bytes.fromhex("aa555a0000000001"), freq: float = 923.2,
                 datr: str = "SF10BW125", codr: str = "4/5", rssi: float = -87.0,
                 lsnr: float = 7.5, up_loss: float = 0.0, down_loss: float = 0.0,
                 seed: int = 1, keepalive_s: float = 2.0) -> None:
        if len(eui) != 8:
            raise ValueError("the gateway EUI is 8 bytes")
        for name, p in (("up_loss", up_loss), ("down_loss", down_loss)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], not {p}")
        self.gateway = gateway
        self.listen = listen
        self.eui = eui
        self.freq, self.datr, self.codr, self.rssi, self.lsnr = freq, datr, codr, rssi, lsnr
        self.up_loss, self.down_loss = up_loss, down_loss
        rng = random.Random(seed)
        self._up_rng = random.Random(rng.random())
        self._down_rng = random.Random(rng.random())
        self.keepalive_s = keepalive_s
        self.stats: Counter[str] = Counter()
        self._t0 = time.monotonic()
        self._radio = _Socket(self._from_radio)
        self._up = _Socket(self._from_gateway_up)
        self._down = _Socket(self._from_gateway_down)
        self._recent: OrderedDict[int, tuple[str, int]] = OrderedDict()  # tmst -> radio
        self._radios: dict[tuple[str, int], None] = {}
        self._token = rng.randrange(1 << 16)
        self._pulled = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._keepalive: asyncio.Task[None] | None = None
        self.address: tuple[str, int] = listen

    def tmst(self) -> int:
        """The concentrator's free-running microsecond counter (wraps at 2^32)."""
        return int((time.monotonic() - self._t0) * 1_000_000) & 0xFFFFFFFF

    def _next_token(self) -> int:
        self._token = (self._token + 1) & 0xFFFF
        return self._token

    async def __aenter__(self) -> Concentrator:
        loop = asyncio.get_running_loop()
        radio, _ = await loop.create_datagram_endpoint(lambda: self._radio,
                                                       local_addr=self.listen)
        self._radio.transport = radio
        self._up.transport, _ = await loop.create_datagram_endpoint(
            lambda: self._up, remote_addr=self.gateway)
        self._down.transport, _ = await loop.create_datagram_endpoint(
            lambda: self._down, remote_addr=self.gateway)
        host, port = radio.get_extra_info("sockname")[:2]
        self.address = (str(host), int(port))
        self._keepalive = asyncio.create_task(self._pull_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        for t in list(self._tasks):
            t.cancel()
        for s in (self._radio, self._up, self._down):
            if s.transport is not None:
                s.transport.close()

    async def wait_pulled(self) -> None:
        """Until the gateway answered a PULL_DATA: it knows where downlinks go."""
        await self._pulled.wait()

    async def _pull_loop(self) -> None:
        while True:
            self._down.send(_HEADER.pack(VERSION, self._next_token(), PULL_DATA) + self.eui)
            self.stats["pull"] += 1
            # quickly at first, until the gateway answers; then the keep-alive period
            await asyncio.sleep(self.keepalive_s if self._pulled.is_set() else 0.2)

    # ---- uplinks ----------------------------------------------------------------------

    def _from_radio(self, frame: bytes, addr: tuple[str, int]) -> None:
        self.stats["frames_in"] += 1
        self._radios[addr] = None
        if not 0 < len(frame) <= 255:
            self.stats["frames_bad"] += 1
            return
        if self.up_loss and self._up_rng.random() < self.up_loss:
            self.stats["up_lost"] += 1
            return
        tmst = self.tmst()
        self._recent[tmst] = addr
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        now = datetime.datetime.now(datetime.UTC)
        rxpk = {"time": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "tmst": tmst, "chan": 0,
                "rfch": 0, "freq": self.freq, "stat": 1, "modu": "LORA", "datr": self.datr,
                "codr": self.codr, "rssi": self.rssi, "lsnr": self.lsnr, "size": len(frame),
                "data": base64.b64encode(frame).decode("ascii")}
        body = json.dumps({"rxpk": [rxpk]}, separators=(",", ":")).encode()
        self._up.send(_HEADER.pack(VERSION, self._next_token(), PUSH_DATA) + self.eui + body)
        self.stats["push"] += 1

    def _from_gateway_up(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= 4 and data[0] == VERSION and data[3] == PUSH_ACK:
            self.stats["push_ack"] += 1
        else:
            self.stats["gateway_bad"] += 1

    # ---- downlinks --------------------------------------------------------------------

    def _from_gateway_down(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 4 or data[0] != VERSION:
            self.stats["gateway_bad"] += 1
            return
        _, token, ident = _HEADER.unpack_from(data)
        if ident == PULL_ACK:
            self.stats["pull_ack"] += 1
            self._pulled.set()
        elif ident == PULL_RESP:
            self.stats["pull_resp"] += 1
            error = self._schedule(data[4:])
            self._tx_ack(token, error)
        else:
            self.stats["gateway_bad"] += 1

    def _tx_ack(self, token: int, error: str) -> None:
        body = json.dumps({"txpk_ack": {"error": error}}).encode()
        self._down.send(_HEADER.pack(VERSION, token, TX_ACK) + self.eui + body)
        self.stats["tx_ack_" + error.lower()] += 1

    def _schedule(self, body: bytes) -> str:
        try:
            tx = json.loads(body)["txpk"]
            payload = base64.b64decode(tx["data"], validate=True)
            immediate = bool(tx.get("imme", False))
            when = None if immediate else int(tx["tmst"])
        except (ValueError, KeyError, TypeError):
            return "TX_FREQ"  # the forwarder's answer to a txpk it cannot use (closest code)
        if when is None:
            delay_us = 0
            targets = list(self._radios)
        else:
            delay_us = (when - self.tmst()) & 0xFFFFFFFF
            if delay_us >= 1 << 31:
                return "TOO_LATE"
            if delay_us > _TOO_EARLY_US:
                return "TOO_EARLY"
            targets = self._window_owner(when)
        task = asyncio.create_task(self._transmit(payload, targets, delay_us / 1e6))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return "NONE"

    def _window_owner(self, when: int) -> list[tuple[str, int]]:
        for delay_s in range(1, 16):  # RX1 delays a gateway may use
            radio = self._recent.get((when - delay_s * 1_000_000) & 0xFFFFFFFF)
            if radio is not None:
                return [radio]
        self.stats["down_unmatched"] += 1
        return list(self._radios)  # nobody's window: everyone in range hears it

    async def _transmit(self, payload: bytes, targets: list[tuple[str, int]],
                        delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if self.down_loss and self._down_rng.random() < self.down_loss:
            self.stats["down_lost"] += 1
            return
        for radio in targets:
            self._radio.send(payload, radio)
            self.stats["down_out"] += 1


async def _serve(args: argparse.Namespace) -> None:
    vc = Concentrator(args.gateway, listen=args.listen, eui=bytes.fromhex(args.eui),
                      datr=args.datr, freq=args.freq, up_loss=args.up_loss,
                      down_loss=args.down_loss, seed=args.seed, keepalive_s=args.keepalive)

    class _Ready:
        """Enter = listening and known to the gateway (a PULL_ACK came back)."""

        stats = vc.stats

        async def __aenter__(self) -> _Ready:
            await vc.__aenter__()
            async with asyncio.timeout(args.connect_timeout):
                await vc.wait_pulled()
            return self

        async def __aexit__(self, *exc: object) -> None:
            await vc.__aexit__(*exc)

    await serve_until_signalled(
        _Ready(), lambda _: {"listen": list(vc.address), "eui": vc.eui.hex(),
                             "pid": os.getpid()}, args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m machi_tools.vconcentrator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gateway", required=True, type=_addr,
                   help="HOST:PORT of the gateway's Semtech UDP port (lora_udp)")
    p.add_argument("--listen", default=("127.0.0.1", 0), type=_addr,
                   help="HOST:PORT the emulated radios send to (default 127.0.0.1:0)")
    p.add_argument("--eui", default="aa555a0000000001", help="gateway EUI, 16 hex digits")
    p.add_argument("--freq", type=float, default=923.2, help="MHz reported in rxpk")
    p.add_argument("--datr", default="SF10BW125", help="data rate reported in rxpk")
    p.add_argument("--up-loss", type=_probability, default=0.0,
                   help="share of uplink frames lost on air")
    p.add_argument("--down-loss", type=_probability, default=0.0,
                   help="share of downlinks lost on air")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keepalive", type=float, default=2.0, help="PULL_DATA period, seconds")
    p.add_argument("--connect-timeout", type=float, default=30.0,
                   help="give up if the gateway never answers PULL_DATA")
    p.add_argument("--ready-file")
    p.add_argument("--stats-file")
    args = p.parse_args(argv)
    try:
        bytes.fromhex(args.eui)
        if len(args.eui) != 16:
            raise ValueError
    except ValueError:
        p.error(f"--eui must be 16 hex digits, not {args.eui!r}")
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(_serve(args))
        except TimeoutError:
            print(f"vconcentrator: gateway {args.gateway[0]}:{args.gateway[1]} never "
                  "answered PULL_DATA", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
