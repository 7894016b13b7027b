"""An emulated NB-IoT modem: a pseudo-terminal that answers the Quectel BG95/BG77 AT
commands firmware/transports/nbiot.py uses, and carries the node's datagrams over real UDP.

The node (MicroPython, boards/unix.py) opens the pty's slave side as its UART. On our side
every command line (ending in CR) gets the answer the modem's manuals give ("Quectel
BG95&BG77 TCP/IP AT Commands Manual"): ``AT``, ``ATE0`` (echo is on until then),
``AT+CMEE=1``, ``AT+CPIN?`` (READY), ``AT+CEREG?`` (searching for ``--register-after``
queries, then registered), ``AT+QICSGP``, ``AT+QIACT``, ``AT+QIOPEN=<ctx>,<id>,"UDP",
"<host>",<port>,0,0`` (a UDP socket to that address, then the ``+QIOPEN: <id>,0`` URC),
``AT+QISEND=<id>,<len>`` (the ``> `` prompt, exactly len raw bytes, one datagram,
``SEND OK``), ``AT+QIRD=<id>,<max>`` (``+QIRD: <n>``, n raw bytes, ``OK``; ``+QIRD: 0`` when
nothing waits), ``AT+QICLOSE``, ``AT+CPSMS``. An arriving datagram is announced with the URC
``+QIURC: "recv",<id>`` when nothing was waiting unread, as in buffer access mode. Anything
else is ``ERROR``.

    python -m machi_tools.emumodem --ready-file m.ready --stats-file m.stats

The ready file holds ``{"pty": "/dev/pts/N"}``; the stats file the counters at SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pty
import re
import socket
import sys
import tty
from collections import Counter, deque
from collections.abc import Coroutine
from typing import Any

from .faultproxy import serve_until_signalled

_QIOPEN = re.compile(r'AT\+QIOPEN=(\d+),(\d+),"UDP","([^"]+)",(\d+)(?:,\d+)*$')
_QISEND = re.compile(r"AT\+QISEND=(\d+),(\d+)$")
_QIRD = re.compile(r"AT\+QIRD=(\d+),(\d+)$")
_MAX_SEND = 1460  # BG95: at most 1460 bytes per AT+QISEND
_MAX_LINE = 600


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, modem: EmulatedModem, conn: int) -> None:
        self.modem = modem
        self.conn = conn

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.modem._datagram(self.conn, data)

    def error_received(self, exc: Exception) -> None:
        self.modem.stats["udp_errors"] += 1  # ICMP unreachable: the node's retry decides


class EmulatedModem:
    """The pty and the modem's state: echo, registration, one UDP socket per connect id."""

    def __init__(self, *, register_after: int = 0) -> None:
        self.register_after = register_after
        self.stats: Counter[str] = Counter()
        self.master, self._slave = pty.openpty()
        tty.setraw(self._slave)  # binary data both ways: no echo, no CR/LF translation
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self._buf = bytearray()
        self._sending: tuple[int, int] | None = None  # (connect id, bytes) after the prompt
        self._echo = True
        self._ceregs = 0
        self._socks: dict[int, asyncio.DatagramTransport] = {}
        self._rx: dict[int, deque[bytes]] = {}
        self._announced: set[int] = set()
        self._out = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> EmulatedModem:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.master, self._readable)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self.master)
        self._loop.remove_writer(self.master)
        for t in self._socks.values():
            t.close()
        os.close(self.master)
        os.close(self._slave)

    # ---- the pty ------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Queued and written when the pty takes it (a node that does not read must not
        block the modem)."""
        assert self._loop is not None
        if not self._out:
            self._loop.add_writer(self.master, self._writable)
        self._out += data

    def _writable(self) -> None:
        try:
            n = os.write(self.master, self._out)
        except BlockingIOError:
            return
        del self._out[:n]
        if not self._out:
            assert self._loop is not None
            self._loop.remove_writer(self.master)

    def _line(self, text: str) -> None:
        self._write(b"\r\n" + text.encode() + b"\r\n")

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return
        self._buf += data
        self._process()

    def _process(self) -> None:
        while True:
            if self._sending is not None:
                conn, n = self._sending
                if len(self._buf) < n:
                    return
                payload = bytes(self._buf[:n])
                del self._buf[:n]
                self._sending = None
                sock = self._socks.get(conn)
                if sock is None:
                    self._line("SEND FAIL")
                    continue
                sock.sendto(payload)
                self.stats["sent"] += 1
                self._line("SEND OK")
                continue
            end = self._buf.find(b"\r")
            if end < 0:
                if len(self._buf) > _MAX_LINE:  # garbage without a CR: drop it
                    self._buf.clear()
                return
            raw = bytes(self._buf[:end])
            del self._buf[:end + 1]
            text = raw.decode("ascii", errors="replace").strip()
            if not text:
                continue
            if self._echo:
                self._write(raw + b"\r\n")
            self.stats["commands"] += 1
            self._command(text)

    # ---- AT commands ------------------------------------------------------------------

    def _command(self, cmd: str) -> None:
        if cmd in ("AT", "AT+CMEE=1") or cmd.startswith(("AT+QICSGP=", "AT+CPSMS=")):
            self._line("OK")
        elif cmd == "ATE0":
            self._echo = False
            self._line("OK")
        elif cmd == "AT+CPIN?":
            self._line("+CPIN: READY")
            self._line("OK")
        elif cmd == "AT+CEREG?":
            self._ceregs += 1
            self._line(f"+CEREG: 0,{1 if self._ceregs > self.register_after else 2}")
            self._line("OK")
        elif cmd.startswith("AT+QIACT="):
            self._line("OK")
        elif m := _QIOPEN.match(cmd):
            self._line("OK")
            self._spawn(self._open(int(m[2]), m[3], int(m[4])))
        elif m := _QISEND.match(cmd):
            conn, n = int(m[1]), int(m[2])
            if conn not in self._socks or not 0 < n <= _MAX_SEND:
                self._line("ERROR")
            else:
                self._sending = (conn, n)
                self._write(b"> ")
        elif m := _QIRD.match(cmd):
            self._read_out(int(m[1]), int(m[2]))
        elif cmd.startswith("AT+QICLOSE="):
            conn = int(cmd.split("=", 1)[1].split(",")[0] or 0)
            t = self._socks.pop(conn, None)
            if t is not None:
                t.close()
            self._line("OK")
        else:
            self.stats["unknown"] += 1
            self._line("ERROR")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, conn: int, host: str, port: int) -> None:
        assert self._loop is not None
        old = self._socks.pop(conn, None)
        if old is not None:
            old.close()
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            t, _ = await self._loop.create_datagram_endpoint(
                lambda: _Udp(self, conn), remote_addr=(host, port), family=family)
        except OSError:
            self._line(f"+QIOPEN: {conn},565")  # DNS parse failed / socket error
            return
        self._socks[conn] = t
        self._rx[conn] = deque(maxlen=64)
        self._announced.discard(conn)
        self.stats["opened"] += 1
        self._line(f"+QIOPEN: {conn},0")

    def _datagram(self, conn: int, data: bytes) -> None:
        self.stats["received"] += 1
        self._rx.setdefault(conn, deque(maxlen=64)).append(data)
        if conn not in self._announced:
            self._announced.add(conn)
            self.stats["urcs"] += 1
            self._line(f'+QIURC: "recv",{conn}')

    def _read_out(self, conn: int, most: int) -> None:
        q = self._rx.get(conn)
        if not q:
            self._announced.discard(conn)  # read empty: the next datagram is announced
            self._line("+QIRD: 0")
            self._line("OK")
            return
        data = q.popleft()[:most]  # UDP: a datagram longer than asked for is cut
        self._write(b"\r\n" + f"+QIRD: {len(data)}".encode() + b"\r\n" + data + b"\r\nOK\r\n")


async def _serve(args: argparse.Namespace) -> None:
    modem = EmulatedModem(register_after=args.register_after)
    await serve_until_signalled(modem, lambda m: {"pty": m.path, "pid": os.getpid()}, args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m machi_tools.emumodem", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--register-after", type=int, default=0,
                   help="AT+CEREG? queries answered 'searching' before 'registered'")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--ready-file")
    p.add_argument("--stats-file")
    args = p.parse_args(argv)
    if args.register_after < 0:
        p.error("--register-after must be >= 0")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
