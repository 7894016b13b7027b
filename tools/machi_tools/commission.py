"""BLE commissioning, the host's side: send a node its config.json over Bluetooth LE.

For boards without USB access (sealed enclosures). The frame format and the node's side are
in `firmware/lib/commission.py` (MicroPython): BEGIN (length, CRC-32), CHUNKs of up to 16
bytes at explicit offsets, COMMIT; each frame is written to the RX characteristic and answered
by one notification on TX (stop-and-wait, so it works at the default ATT MTU of 23). A lost
answer is recovered by resending: the node answers a chunk it already has with "out of order,
expected N" and the host continues from N.

Links: `BleLink` (bleak, a real adapter; not exercised by the tests, which have no radio) and
`StreamLink` (length-prefixed frames over a pipe: the tests run the node's side under the real
`micropython` behind it).
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Iterator
from typing import Protocol

# The frame types and statuses, as the node's side (firmware/lib/commission.py) has them;
# tools/tests/test_commission.py proves the two copies equal.
BEGIN, CHUNK, COMMIT, ABORT = 1, 2, 3, 4
OK, ORDER, CRC, BADCFG, TOOBIG = 0, 1, 2, 3, 4
CHUNK_MAX = 16

SERVICE_UUID = "6d616368-6901-4000-8000-00000000c0f1"
RX_UUID = "6d616368-6901-4000-8000-00000000c0f2"  # host writes
TX_UUID = "6d616368-6901-4000-8000-00000000c0f3"  # node notifies
STATUS = {OK: "ok", ORDER: "out of order", CRC: "CRC mismatch", BADCFG: "config refused",
          TOOBIG: "too large", 5: "unknown frame"}


class CommissionError(RuntimeError):
    pass


class Link(Protocol):
    async def request(self, frame: bytes, wait_s: float) -> bytes: ...


def begin_frame(doc: bytes) -> bytes:
    return struct.pack(">BHI", BEGIN, len(doc), zlib.crc32(doc) & 0xFFFFFFFF)


def chunk_frames(doc: bytes, start: int = 0) -> Iterator[tuple[int, bytes]]:
    for off in range(start, len(doc), CHUNK_MAX):
        yield off, struct.pack(">BH", CHUNK, off) + doc[off:off + CHUNK_MAX]


def frames(doc: bytes) -> list[bytes]:
    """Every frame of one clean transfer (the shared vectors list them)."""
    return [begin_frame(doc), *(f for _, f in chunk_frames(doc)), bytes([COMMIT])]


async def _ask(link: Link, frame: bytes, wait_s: float, tries: int) -> bytes:
    for _ in range(tries):
        try:
            answer = await link.request(frame, wait_s)
        except TimeoutError:
            continue
        if len(answer) < 2 or answer[0] != 0x80 | frame[0]:
            raise CommissionError(f"unexpected answer {answer.hex()} to {frame[:1].hex()}")
        return answer
    raise CommissionError(f"the node did not answer after {tries} tries: out of range? "
                          "powered? in commissioning mode?")


async def commission(link: Link, doc: bytes, *, wait_s: float = 2.0, tries: int = 4) -> int:
    """Send `doc` and commit it; returns the number of frames the node answered (a resend
    after a lost answer counts once)."""
    if len(doc) > 0xFFFF:
        raise CommissionError("config too large")
    sent = 0
    for _attempt in range(2):  # a CRC mismatch (corrupted chunk) restarts the transfer once
        answer = await _ask(link, begin_frame(doc), wait_s, tries)
        sent += 1
        if answer[1] == TOOBIG:
            raise CommissionError(f"the node takes at most {answer[2:].decode()} bytes")
        off = 0
        while off < len(doc):
            frame = struct.pack(">BH", CHUNK, off) + doc[off:off + CHUNK_MAX]
            answer = await _ask(link, frame, wait_s, tries)
            sent += 1
            if answer[1] not in (OK, ORDER) or len(answer) < 4:
                raise CommissionError(f"chunk at {off}: {STATUS.get(answer[1], answer[1])}")
            off = struct.unpack(">H", answer[2:4])[0]  # where the node wants to go on
        answer = await _ask(link, bytes([COMMIT]), wait_s, tries)
        sent += 1
        if answer[1] == OK:
            return sent
        if answer[1] == BADCFG:
            raise CommissionError(f"the node refused the config: {answer[2:].decode()}")
        if answer[1] != CRC:
            raise CommissionError(f"commit: {STATUS.get(answer[1], answer[1])}")
    await _ask(link, bytes([ABORT]), wait_s, tries)
    raise CommissionError("the config arrived corrupted twice: move closer and retry")


class StreamLink:
    """Frames over a byte stream, each as (length u8, bytes): the emulated radio link."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, frame: bytes, wait_s: float) -> bytes:
        self.writer.write(bytes([len(frame)]) + frame)
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readexactly(1), wait_s)
        return await asyncio.wait_for(self.reader.readexactly(head[0]), wait_s)


class BleLink:
    """A node's commissioning service over Bluetooth LE (bleak)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._answers: asyncio.Queue[bytes] = asyncio.Queue()
        self._client: object | None = None

    async def __aenter__(self) -> BleLink:
        from bleak import BleakClient

        client = BleakClient(self.address)
        await client.connect()
        await client.start_notify(TX_UUID, lambda _c, data: self._answers.put_nowait(
            bytes(data)))
        self._client = client
        return self

    async def __aexit__(self, *exc: object) -> None:
        from bleak import BleakClient

        if isinstance(self._client, BleakClient):
            await self._client.disconnect()

    async def request(self, frame: bytes, wait_s: float) -> bytes:
        from bleak import BleakClient

        assert isinstance(self._client, BleakClient)
        while not self._answers.empty():  # a late answer to an earlier try
            self._answers.get_nowait()
        await self._client.write_gatt_char(RX_UUID, frame, response=True)
        return await asyncio.wait_for(self._answers.get(), wait_s)
