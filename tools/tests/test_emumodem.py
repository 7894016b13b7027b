"""The emulated NB-IoT modem against the firmware's real AT engine: transports/nbiot.py runs
under the real `micropython`, with the unix board's PtyUart on the modem's pty, and sends
binary datagrams (CR, LF, NUL, "OK" inside) through it to a UDP echo socket and back."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from machi_tools.procs import REPO, executable

pytestmark = pytest.mark.micropython
STOP = b"stop the echo server"

SCRIPT = """
import sys
sys.path.insert(0, "{fw}")
sys.path.insert(0, "{fw}/lib")
from boards.unix_uart import PtyUart
from transports.nbiot import Modem, ModemError, NbiotTransport

m = Modem(PtyUart("{pty}"))
tr = NbiotTransport(m, "127.0.0.1", {port}, "iot.example")
tr.open()
buf = bytearray(1600)
for msg in (bytes(range(256)), b"\\r\\nOK\\r\\n+QIURC: \\"recv\\",0\\r\\n", b"x" * 1152):
    tr.send(msg)
    n = tr.recv_into(buf, 10000)
    print("echo", n, bytes(buf[:n]) == msg)
print("quiet", tr.recv_into(buf, 200))
try:
    m.cmd("AT+NOSUCH")
except ModemError as e:
    print("error", e)
tr.psm(3600, 10)
tr.close()
print("urcs", m.urcs)
"""


@pytest.fixture
def modem(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ready = tmp_path / "m.ready"
    stats = tmp_path / "m.stats"
    proc = subprocess.Popen([sys.executable, "-m", "machi_tools.emumodem", "--register-after",
                             "1", "--ready-file", str(ready), "--stats-file", str(stats)])
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        yield json.loads(ready.read_text())["pty"], stats
    finally:
        proc.terminate()
        proc.wait(10)


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(30)

    def serve() -> None:
        try:
            while True:
                data, addr = s.recvfrom(4096)
                if data == STOP:
                    return
                s.sendto(data, addr)
        except OSError:
            pass  # timed out: the test is over

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return s, t


def test_firmware_at_engine_round_trips_binary_datagrams(
    modem: tuple[str, Path], tmp_path: Path
) -> None:
    pty_path, _stats = modem
    echo, thread = _echo_server()
    try:
        script = tmp_path / "nb.py"
        script.write_text(SCRIPT.format(fw=REPO / "firmware", pty=pty_path,
                                        port=echo.getsockname()[1]))
        result = subprocess.run([executable("micropython"), str(script)], capture_output=True,
                                text=True, timeout=120, check=False)
    finally:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stop:
            stop.sendto(STOP, echo.getsockname())
        thread.join(10)
        echo.close()
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    lines = out.splitlines()
    assert lines[:3] == ["echo 256 True", "echo 24 True", "echo 1152 True"], out
    assert "quiet 0" in lines
    assert any(line.startswith("error AT+NOSUCH: ERROR") for line in lines), out
    # +QIOPEN, then one "recv": the node reads with QIRD until it comes back empty, and
    # only then does the modem announce the next datagram (buffer access mode)
    assert lines[-1] == "urcs 2", out
    assert os.path.exists(pty_path)


def test_bad_usage_is_refused() -> None:
    r = subprocess.run([sys.executable, "-m", "machi_tools.emumodem", "--register-after", "-1"],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 2 and "--register-after" in r.stderr
