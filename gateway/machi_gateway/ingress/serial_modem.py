"""A LoRa modem on a serial port (pyserial), speaking a line protocol.

The modem forwards every frame it receives as one line, the way REYAX RYLR896/RYLR998
modules do, except that the payload is hex so any byte survives the line discipline::

    +RCV=<addr>,<len>,<hex payload>,<rssi>,<snr>\\r\\n      e.g. +RCV=0,8,01010000000708...,-87,7

``<addr>`` is the modem-level sender address (kept as meta ``modem_addr``), ``<len>`` the
payload length in bytes (checked against the hex). Other lines (``+OK``, ``+ERR=n``,
``+READY``) are logged at debug level. A downlink (commands waiting for the device) is
written back as ``AT+SEND=<addr>,<len>,<hex>\\r\\n`` right after the reading is durable,
while the node listens (it opens its receive window after sending).

The port is read without a thread: pyserial opens it non-blocking and the event loop
watches its file descriptor (POSIX, which is what a Raspberry Pi runs). Overlong lines
(no newline within 1 KiB) are discarded, so line noise cannot grow memory.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace

import serial

from ..errors import BadReading, ListenError, ResponseError
from ..model import Value
from .base import Ingress, Sink
from .frames import DownlinkEncoder, FrameDecoder, Lookup, ack_downlink

log = logging.getLogger(__name__)

_MAX_LINE = 1024
_BACKLOG = 256


def parse_rcv(line: str) -> tuple[int, bytes, dict[str, Value]]:
    """(modem address, payload, meta) of a ``+RCV=`` line; BadReading otherwise."""
    try:
        fields = line[len("+RCV="):].split(",")
        if not line.startswith("+RCV=") or len(fields) != 5:
            raise ValueError("expected +RCV=<addr>,<len>,<hex>,<rssi>,<snr>")
        addr, length = int(fields[0]), int(fields[1])
        payload = bytes.fromhex(fields[2])
        if len(payload) != length:
            raise ValueError(f"length {length} but {len(payload)} bytes")
        rssi, snr = float(fields[3]), float(fields[4])
        if not (math.isfinite(rssi) and math.isfinite(snr)):  # "nan", "inf" parse as floats
            raise ValueError("rssi and snr must be finite numbers")
        meta: dict[str, Value] = {"modem_addr": addr, "rssi": rssi, "snr": snr}
    except (ValueError, binascii.Error) as exc:
        raise BadReading("serial-line", f"bad modem line {line[:80]!r}: {exc}") from exc
    return addr, payload, meta


class SerialModemIngress(Ingress):
    """Reads ``+RCV`` lines from ``port`` (a device path or a pyserial URL)."""

    transport = "lora"

    def __init__(self, sink: Sink, *, decode: FrameDecoder, registry_lookup: Lookup,
                 port: str, baudrate: int = 115200, downlink: DownlinkEncoder = ack_downlink,
                 clock: Callable[[], float] = time.time) -> None:
        self.sink = sink
        self.decode = decode
        self.registry_lookup = registry_lookup
        self.port = port
        self.baudrate = baudrate
        self.encode_downlink = downlink
        self._clock = clock
        self._serial: serial.Serial | None = None
        self._buf = bytearray()
        self._lines: asyncio.Queue[str] = asyncio.Queue(_BACKLOG)
        self._worker: asyncio.Task[None] | None = None
        self.downlinks = 0

    async def start(self) -> None:
        try:
            self._serial = serial.Serial(self.port, self.baudrate, timeout=0,
                                         write_timeout=2, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ListenError(f"cannot open the LoRa modem on {self.port}: {exc}") from exc
        asyncio.get_running_loop().add_reader(self._serial.fileno(), self._readable)
        self._worker = asyncio.create_task(self._work(), name="serial-modem")
        log.info("serial LoRa modem on %s at %d baud", self.port, self.baudrate)

    async def stop(self) -> None:
        if self._serial is None:
            return
        asyncio.get_running_loop().remove_reader(self._serial.fileno())
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        self._serial.close()
        self._serial = None
        log.info("serial modem closed")

    @property
    def address(self) -> tuple[str, int]:
        return (self.port, self.baudrate)

    def _readable(self) -> None:
        assert self._serial is not None
        try:
            chunk = self._serial.read(max(1, self._serial.in_waiting))
        except (serial.SerialException, OSError) as exc:
            log.error("serial modem %s: read failed: %s", self.port, exc)
            return
        self._buf += chunk
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > _MAX_LINE:
                    self.sink.rejected(self.transport, "serial-overlong")
                    self._buf.clear()
                return
            raw, self._buf = bytes(self._buf[:end]), self._buf[end + 1:]
            if len(raw) > _MAX_LINE:
                self.sink.rejected(self.transport, "serial-overlong")
                continue
            line = raw.decode("ascii", "replace").strip()
            if not line:
                continue
            try:
                self._lines.put_nowait(line)
            except asyncio.QueueFull:
                self.sink.rejected(self.transport, "overload")

    async def _work(self) -> None:
        while True:
            line = await self._lines.get()
            try:
                await self._line(line)
            except Exception:  # one line must never stop the reader
                log.exception("serial modem: line %r failed", line[:80])

    async def _line(self, line: str) -> None:
        if not line.startswith("+RCV="):
            log.debug("serial modem: %s", line[:80])
            return
        try:
            addr, payload, meta = parse_rcv(line)
            reading = self.decode(payload, registry_lookup=self.registry_lookup,
                                  received=self._clock(), transport=self.transport)
        except ResponseError as exc:
            self.sink.rejected(self.transport, exc.reason)
            log.warning("serial modem: %s", exc.detail)
            return
        reading = replace(reading, meta={**reading.meta, **meta})
        try:
            receipt = await self.sink.accept(reading)
        except ResponseError as exc:
            log.warning("serial modem %s seq %d: %s", reading.device, reading.seq, exc.detail)
            return
        if receipt.commands and self._serial is not None:
            body = self.encode_downlink(reading.device, receipt)
            cmd = f"AT+SEND={addr},{len(body)},{body.hex().upper()}\r\n".encode("ascii")
            try:
                await asyncio.to_thread(self._serial.write, cmd)
            except (serial.SerialException, OSError) as exc:
                log.error("serial modem: downlink to %s failed: %s", reading.device, exc)
                return
            self.downlinks += 1
