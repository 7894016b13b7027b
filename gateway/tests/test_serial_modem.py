"""Serial LoRa modem on a pseudo-terminal: a scripted modem writes +RCV lines to the
master side, the gateway reads the slave side with pyserial; downlinks come back as
AT+SEND lines."""

from __future__ import annotations

import asyncio
import os
import tty
from typing import Any

import cbor2
import pytest

from machi_gateway.downlink.queue import CloudCommand
from machi_gateway.errors import BadReading
from machi_gateway.ingress.serial_modem import SerialModemIngress, parse_rcv


async def read_line(fd: int) -> bytes:
    buf = b""
    async with asyncio.timeout(10):
        while not buf.endswith(b"\r\n"):
            try:
                buf += os.read(fd, 4096)
            except BlockingIOError:
                await asyncio.sleep(0.01)
    return buf


async def test_modem_lines_become_readings_and_downlinks(
    parts: Any, lora: Any, until: Any
) -> None:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    os.set_blocking(master, False)
    ingress = SerialModemIngress(parts.core, decode=lora.decode,
                                 registry_lookup=parts.registry.by_short_id,
                                 port=os.ttyname(slave), baudrate=115200)
    await parts.commands.add([CloudCommand(id="c-1", device="bin-0002", name="off")])
    try:
        async with ingress:
            frame = lora.frame(lora.short_ids["env-0001"], 3, 1999)
            os.write(master, b"+READY\r\n")
            os.write(master, f"+RCV=5,{len(frame)},{frame.hex()},-97,-2.5\r\n".encode())
            os.write(master, b"+RCV=5,3,zz,-1,0\r\n")  # line noise
            os.write(master, b"x" * 3000 + b"\r\n")   # an overlong line
            # Split across writes, like a slow UART delivers it.
            frame = lora.frame(lora.short_ids["bin-0002"], 8, 0)
            line = f"+RCV=12,{len(frame)},{frame.hex()},-60,9\r\n".encode()
            os.write(master, line[:10])
            await asyncio.sleep(0.05)
            os.write(master, line[10:])
            down = await read_line(master)
            assert down.startswith(b"AT+SEND=12,")
            _addr, length, hexdata = down.decode().strip()[len("AT+SEND="):].split(",")
            body = bytes.fromhex(hexdata)
            assert int(length) == len(body)
            assert [c[:3] for c in cbor2.loads(body)[2]] == [[0, "off", {}]]
            await until(lambda: parts.store.depth == 2)
    finally:
        os.close(master)
        os.close(slave)
    assert {r.device: r.seq for r in await parts.store.oldest(10)} == \
        {"env-0001": 3, "bin-0002": 8}
    assert parts.seen[0].meta == {"modem_addr": 5, "rssi": -97.0, "snr": -2.5}
    assert parts.stats.rejected["serial-line"] == 1
    assert parts.stats.rejected["serial-overlong"] == 1


def test_parse_rcv() -> None:
    assert parse_rcv("+RCV=1,2,0aff,-10,3")[1] == b"\x0a\xff"
    for bad in ("+RCV=1,3,0aff,-10,3", "+RCV=1,2,0aff,-10", "+RCV=a,2,0aff,1,1"):
        with pytest.raises(BadReading):
            parse_rcv(bad)
