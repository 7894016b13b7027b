"""LoRa concentrators: the Semtech UDP packet-forwarder protocol, version 2.

The packet forwarder on a LoRa HAT (``lora_pkt_fwd``) is the client; we are its
"network server". Datagrams (all little header + optional JSON):

=========== ===================================== ==========================
PUSH_DATA   ver token 0x00 EUI(8) {"rxpk": [...]} uplinks (and ``stat``)
PUSH_ACK    ver token 0x01                        sent at once for each PUSH_DATA
PULL_DATA   ver token 0x02 EUI(8)                 keep-alive; tells us its downlink address
PULL_ACK    ver token 0x04                        answer to PULL_DATA
PULL_RESP   ver token 0x03 {"txpk": {...}}        a downlink to transmit
TX_ACK      ver token 0x05 EUI(8) {"txpk_ack"...} the forwarder's verdict on a PULL_RESP
=========== ===================================== ==========================

Each ``rxpk`` with a good CRC goes through the compact-frame decoder (injected) and the
sink; RSSI, SNR, frequency, data rate and the concentrator's EUI are kept in
``Reading.meta``. PUSH_ACK only acknowledges the datagram (it is sent before any
decoding); the node learns that its reading is durable only from a downlink, which we
send when commands wait for it: a PULL_RESP scheduled at ``tmst + rx_delay_s`` (the
node's receive window, counted by the concentrator's own microsecond clock), on the
uplink's frequency and data rate, with inverted IQ as nodes expect. If the reading took
too long to commit for that window, the downlink is skipped and its commands ride on the
next uplink. Frames are processed by a few workers from a bounded queue, so a burst
cannot grow memory without bound and concurrent frames share one fsync.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ListenError, ResponseError
from ..lora.commands import TIME_ONLY_LEN
from ..lora.commands import bodies as ack_bodies
from ..lora.commands import extra as compact_extra
from ..model import Reading, Value
from .base import Ingress, Receipt, Sink
from .frames import DownlinkEncoder, FrameDecoder, Lookup, ack_downlink

log = logging.getLogger(__name__)

VERSION = 2
PUSH_DATA, PUSH_ACK, PULL_DATA, PULL_RESP, PULL_ACK, TX_ACK = 0, 1, 2, 3, 4, 5
_HEADER = struct.Struct(">BHB")  # version, token, identifier
_EUI_LEN = 8
_WORKERS = 8
_BACKLOG = 1024
_WINDOW_MARGIN_S = 0.1  # a PULL_RESP must reach the forwarder before the window opens
# the longest downlink within the AS923 400 ms dwell limit, 125 kHz (protocol-lora.md §5)
_DWELL_MAX = {"SF7": 255, "SF8": 138, "SF9": 66, "SF10": 24, "SF11": 0, "SF12": 0}


def _ack_body_room(up: Uplink, seq: int) -> int:
    """Bytes the body of the ack of ``seq`` may have: the largest downlink at the uplink's
    spreading factor (255: unknown, no limit) less the ack's own (lora/frame.py)."""
    from ..lora.frame import ack_overhead  # the frame module only where acks are sent

    return _DWELL_MAX.get(up.datr.split("BW")[0], 255) - ack_overhead(seq)


#: ``(short_id, seq, key, body) -> frame``: machi_gateway.lora.frame.encode_ack
AckEncoder = Callable[[int, int, bytes, bytes], bytes]


@dataclass(frozen=True, slots=True)
class Uplink:
    """One received LoRa frame as the concentrator reported it."""

    eui: str
    payload: bytes
    tmst: int
    freq: float
    datr: str
    codr: str
    rssi: float | None
    snr: float | None
    arrived: float  # our monotonic clock when the PUSH_DATA came in


def parse_datagram(data: bytes) -> tuple[int, int, bytes, bytes]:
    """(identifier, token, EUI or b"", rest); ValueError for anything malformed."""
    if len(data) < _HEADER.size:
        raise ValueError(f"datagram of {len(data)} bytes")
    version, token, ident = _HEADER.unpack_from(data)
    if version != VERSION:
        raise ValueError(f"protocol version {version}, not {VERSION}")
    rest = data[_HEADER.size:]
    if ident in (PUSH_DATA, PULL_DATA, TX_ACK):
        if len(rest) < _EUI_LEN:
            raise ValueError("no gateway EUI")
        return ident, token, rest[:_EUI_LEN], rest[_EUI_LEN:]
    return ident, token, b"", rest


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    try:
        v = float(x)
    except OverflowError:  # JSON numbers are unbounded ints
        return None
    return v if math.isfinite(v) else None


def parse_rxpk(eui: bytes, body: bytes, arrived: float) -> tuple[list[Uplink], int]:
    """The CRC-good ``rxpk`` entries of a PUSH_DATA body, and how many were dropped."""
    try:
        doc = json.loads(body) if body else {}
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # [[[[... nests
        raise ValueError(f"PUSH_DATA JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("PUSH_DATA JSON is not an object")
    rxpk = doc.get("rxpk") or []
    if not isinstance(rxpk, list):
        raise ValueError("PUSH_DATA rxpk is not an array")
    out: list[Uplink] = []
    dropped = 0
    for pk in rxpk:
        try:
            if (not isinstance(pk, dict) or pk.get("stat", 1) == -1
                    or pk.get("modu", "LORA") != "LORA"):
                raise ValueError("bad CRC or not LoRa")
            payload = base64.b64decode(pk["data"], validate=True)
            freq = float(pk["freq"])
            if not math.isfinite(freq):
                raise ValueError("freq is not finite")
            out.append(Uplink(eui=eui.hex(), payload=payload, tmst=int(pk["tmst"]),
                              freq=freq, datr=str(pk["datr"]),
                              codr=str(pk.get("codr", "4/5")), rssi=_num(pk.get("rssi")),
                              snr=_num(pk.get("lsnr")), arrived=arrived))
        # OverflowError: int(Infinity), float(10**400); RecursionError: str() of nesting
        except (KeyError, TypeError, ValueError, OverflowError, RecursionError,
                binascii.Error):
            dropped += 1
    return out, dropped


def txpk(up: Uplink, payload: bytes, *, rx_delay_s: int, power: int) -> dict[str, Any]:
    """A downlink in the node's RX window: same channel and data rate, inverted IQ."""
    return {"txpk": {
        "imme": False, "tmst": (up.tmst + rx_delay_s * 1_000_000) & 0xFFFFFFFF,
        "freq": up.freq, "rfch": 0, "powe": power, "modu": "LORA", "datr": up.datr,
        "codr": up.codr, "ipol": True, "ncrc": True, "size": len(payload),
        "data": base64.b64encode(payload).decode("ascii"),
    }}


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: SemtechIngress) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.owner._datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.warning("lora-udp socket error: %r", exc)


class SemtechIngress(Ingress):
    """The packet-forwarder server; ``port=0`` binds a free port."""

    transport = "lora"

    def __init__(self, sink: Sink, *, decode: FrameDecoder, registry_lookup: Lookup,
                 host: str = "0.0.0.0", port: int = 1700, rx_delay_s: int = 1,
                 tx_power: int = 14, downlink: DownlinkEncoder = ack_downlink,
                 clock: Callable[[], float] = time.time, confirm: bool = False,
                 ack_encoder: AckEncoder | None = None) -> None:
        self.sink = sink
        self.decode = decode
        self.registry_lookup = registry_lookup
        self.host = host
        self.port = port
        self.rx_delay_s = rx_delay_s
        self.tx_power = tx_power
        self.encode_downlink = downlink
        self._clock = clock
        self.confirm = confirm  # ack every durable frame (docs/protocol-lora.md §8)
        self.encode_ack = ack_encoder
        self._transport: asyncio.DatagramTransport | None = None
        self._bound: tuple[str, int] | None = None
        self._queue: asyncio.Queue[Uplink] = asyncio.Queue(_BACKLOG)
        self._workers: list[asyncio.Task[None]] = []
        self._pull_addr: dict[str, tuple[str, int]] = {}  # EUI -> where PULL_DATA came from
        self._tx_pending: dict[int, str] = {}  # PULL_RESP token -> device
        self.counters: dict[str, int] = {"push": 0, "pull": 0, "rxpk": 0, "downlinks": 0,
                                         "tx_ok": 0, "tx_error": 0, "missed_window": 0,
                                         "acks": 0, "ack_trimmed": 0}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self), local_addr=(self.host, self.port))
        except OSError as exc:
            raise ListenError(f"cannot listen for LoRa UDP on {self.host}:{self.port}: {exc}"
                              ) from exc
        self._transport = transport
        sock = transport.get_extra_info("sockname")
        self._bound = (self.host, int(sock[1]))
        self._workers = [asyncio.create_task(self._work(), name=f"lora-udp-{i}")
                         for i in range(_WORKERS)]
        log.info("lora-udp (Semtech packet forwarder) listening on %s:%d", *self._bound)

    async def stop(self) -> None:
        if self._transport is None:
            return
        self._transport.close()
        self._transport = None
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        log.info("lora-udp stopped")

    @property
    def address(self) -> tuple[str, int]:
        if self._bound is None:
            raise RuntimeError("lora-udp ingress not started")
        return self._bound

    # ---- datagrams (synchronous: nothing here may block or raise) ----------------

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._transport is not None:
            self._transport.sendto(data, addr)

    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            ident, token, eui, rest = parse_datagram(data)
        except ValueError as exc:
            self.sink.rejected("lora", "udp-malformed")
            log.warning("lora-udp from %s:%d: %s", addr[0], addr[1], exc)
            return
        if ident == PUSH_DATA:
            self.counters["push"] += 1
            self._send(_HEADER.pack(VERSION, token, PUSH_ACK), addr)
            try:
                ups, dropped = parse_rxpk(eui, rest, time.monotonic())
            except ValueError as exc:
                self.sink.rejected("lora", "udp-malformed")
                log.warning("lora-udp from %s:%d (%s): %s", addr[0], addr[1], eui.hex(), exc)
                return
            for _ in range(dropped):
                self.sink.rejected("lora", "rxpk-dropped")
            for up in ups:
                self.counters["rxpk"] += 1
                try:
                    self._queue.put_nowait(up)
                except asyncio.QueueFull:
                    self.sink.rejected("lora", "overload")
        elif ident == PULL_DATA:
            self.counters["pull"] += 1
            self._pull_addr[eui.hex()] = addr
            self._send(_HEADER.pack(VERSION, token, PULL_ACK), addr)
        elif ident == TX_ACK:
            self._tx_ack(token, eui, rest)
        else:
            log.debug("lora-udp: ignoring identifier %d from %s", ident, addr)

    def _tx_ack(self, token: int, eui: bytes, body: bytes) -> None:
        device = self._tx_pending.pop(token, "?")
        error = "NONE"
        if body:
            try:
                doc = json.loads(body)
                error = str(doc.get("txpk_ack", {}).get("error", "NONE"))
            except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
                error = "unparsable TX_ACK"
        if error == "NONE":
            self.counters["tx_ok"] += 1
        else:
            self.counters["tx_error"] += 1
            log.warning("lora-udp: concentrator %s refused the downlink to %s: %s",
                        eui.hex(), device, error)

    # ---- frames -------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            up = await self._queue.get()
            try:
                await self._frame(up)
            except Exception:  # one frame must never stop a worker
                log.exception("lora-udp: frame from %s failed", up.eui)

    async def _frame(self, up: Uplink) -> None:
        try:
            reading = self.decode(up.payload, registry_lookup=self.registry_lookup,
                                  received=self._clock(), transport=self.transport)
        except ResponseError as exc:
            self.sink.rejected("lora", exc.reason)
            log.warning("lora-udp frame via %s (rssi %s): %s", up.eui, up.rssi, exc.detail)
            return
        meta: dict[str, Value] = {"gateway_eui": up.eui, "freq": up.freq, "datr": up.datr,
                                  "tmst": up.tmst}
        if up.rssi is not None:
            meta["rssi"] = up.rssi
        if up.snr is not None:
            meta["snr"] = up.snr
        reading = replace(reading, meta={**reading.meta, **meta})
        try:
            if self.confirm:  # commands only as far as the ack stays within the dwell limit
                # room beyond a time-only body (a 4-byte time, as every time until 2106);
                # commands are counted in the ack's smallest form, the one _send_ack falls
                # back to when nothing larger fits (lora/commands.py: extra), so what is
                # counted in goes on air
                room = max(0, _ack_body_room(up, reading.seq) - TIME_ONLY_LEN)
                receipt = await self.sink.accept(
                    reading, fits=lambda commands: compact_extra(commands) <= room)
            else:
                receipt = await self.sink.accept(reading)
        except ResponseError as exc:
            log.warning("lora-udp %s seq %d: %s", reading.device, reading.seq, exc.detail)
            return
        if self.confirm:
            self._send_ack(up, reading, receipt)
            return
        if not receipt.commands:
            return
        addr = self._pull_addr.get(up.eui)
        if addr is None:
            log.warning("lora-udp: commands for %s but concentrator %s never sent PULL_DATA",
                        reading.device, up.eui)
            return
        if time.monotonic() - up.arrived > self.rx_delay_s - _WINDOW_MARGIN_S:
            self.counters["missed_window"] += 1
            log.warning("lora-udp: RX window of %s missed; commands wait for its next uplink",
                        reading.device)
            return
        body = self.encode_downlink(reading.device, receipt)
        token = int.from_bytes(os.urandom(2), "big")
        self._tx_pending[token] = reading.device
        if len(self._tx_pending) > 256:  # forwarders that never TX_ACK (old versions)
            self._tx_pending.pop(next(iter(self._tx_pending)))
        doc = txpk(up, body, rx_delay_s=self.rx_delay_s, power=self.tx_power)
        self._send(_HEADER.pack(VERSION, token, PULL_RESP) + json.dumps(doc).encode(), addr)
        self.counters["downlinks"] += 1
        log.info("lora-udp: downlink of %d bytes to %s (%d commands) via %s", len(body),
                 reading.device, len(receipt.commands), up.eui)

    # ---- confirmed delivery (docs/protocol-lora.md §8) ------------------------------

    def _send_ack(self, up: Uplink, reading: Reading, receipt: Receipt) -> None:
        """The MIC'd ack of a durable frame (new or a repeat) in the node's RX window; its
        body is the 2.04 payload, or, when that breaks the dwell limit, the commands in
        their compact form (lora/commands.py: with the time if it fits); without the
        commands only as a guard (the queue counted them in the compact form)."""
        device, seq = reading.device, reading.seq
        addr = self._pull_addr.get(up.eui)
        sid = reading.meta.get("short_id")  # the decoder's; else the frame's bytes 1..2
        short_id = sid if isinstance(sid, int) else int.from_bytes(up.payload[1:3], "big")
        dev = self.registry_lookup(short_id)
        key = getattr(dev, "key", None)
        if addr is None or not key:
            log.warning("lora-udp: cannot ack %s seq %d (%s)", device, seq,
                        f"no PULL_DATA from {up.eui}" if addr is None else "no key")
            return
        if time.monotonic() - up.arrived > self.rx_delay_s - _WINDOW_MARGIN_S:
            self.counters["missed_window"] += 1
            log.warning("lora-udp: RX window of %s seq %d missed; its retry is acked", device,
                        seq)
            return
        if self.encode_ack is None:
            from ..lora.frame import encode_ack
            self.encode_ack = encode_ack
        room = _ack_body_room(up, seq)
        for payload in ack_bodies(receipt.time, receipt.commands):  # the first that fits
            if len(payload) <= room:
                break
        else:
            if receipt.commands:
                self.counters["ack_trimmed"] += 1
                payload = replace(receipt, commands=()).payload()
        body = self.encode_ack(short_id, seq, key, payload)
        token = int.from_bytes(os.urandom(2), "big")
        self._tx_pending[token] = device
        if len(self._tx_pending) > 256:
            self._tx_pending.pop(next(iter(self._tx_pending)))
        doc = txpk(up, body, rx_delay_s=self.rx_delay_s, power=self.tx_power)
        self._send(_HEADER.pack(VERSION, token, PULL_RESP) + json.dumps(doc).encode(), addr)
        self.counters["acks"] += 1
        self.counters["downlinks"] += 1
