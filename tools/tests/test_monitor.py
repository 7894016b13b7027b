"""`machi monitor`: node log lines from a serial port, decoded and coloured."""

from __future__ import annotations

import json
import os
import subprocess
import time
import tty
from collections.abc import Callable

from machi_tools.emuboard import EmuBoard
from machi_tools.monitor import decode, render
from machi_tools.procs import executable

Machi = Callable[..., subprocess.CompletedProcess[str]]

LINES = [
    "I env-0001 start seq=32 type=env board=unix waiting=0",
    "I env-0001 rec seq=32",
    "Traceback (most recent call last):",
    "W env-0001 noanswer seq=32 tries=5 why=timeout",
    "E env-0001 reject seq=33 code=4.00 bad senml",
]


def test_decode_and_render() -> None:
    line = decode("W env-0001 noanswer seq=32 tries=5 why=timeout", now=0)
    assert (line.level, line.device, line.event) == ("W", "env-0001", "noanswer")
    assert line.fields == {"seq": "32", "tries": "5", "why": "timeout"}
    assert "[yellow]W noanswer[/]" in render(line) and "gateway did not answer" in render(line)
    assert decode("I light-0002 cmd cid=3 name=dim result=ok").fields["name"] == "dim"
    plain = decode(">>> ")
    assert plain.level is None and "dim" in render(plain)


def test_monitor_reads_a_serial_port(machi: Machi) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    port = os.ttyname(slave)
    try:
        proc = subprocess.Popen([executable("machi"), "monitor", "--port", port, "--json",
                                 "--lines", "4", "--duration", "60"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        # pyserial empties the input buffer when it opens the port: keep talking until
        # monitor has its lines, like a node logging away
        while proc.poll() is None:
            os.write(master, ("\r\n".join(LINES) + "\r\n").encode())
            time.sleep(0.5)
        stdout, stderr = proc.communicate(timeout=30)
        human = machi("monitor", "--port", port, "--duration", "1")
    finally:
        os.close(slave)
        os.close(master)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert result.returncode == 0, result.stderr
    got = [json.loads(x) for x in result.stdout.splitlines()]
    assert [(g["level"], g["event"]) for g in got] == [
        ("info", "start"), ("info", "rec"), (None, None), ("warning", "noanswer"),
        ("error", "reject")][: len(got)]
    assert sum(g["level"] is not None for g in got) == 4
    assert got[1]["fields"] == {"seq": "32"} and got[2]["raw"].startswith("Traceback")
    assert human.returncode == 0


def test_monitor_shows_the_real_firmware_on_an_emulated_board(emuboard: EmuBoard,
                                                              machi: Machi) -> None:
    result = machi("provision", "--port", emuboard.port, "--type", "env", "--id", "env-0005",
                   "--gateway-addr", "127.0.0.1:9", "--interval", "0.2", "--json")
    assert result.returncode == 0, result.stderr
    cfg_path = emuboard.root / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["coap"] = {"ack_timeout_s": 0.1, "max_retransmit": 1}
    cfg_path.write_text(json.dumps(cfg))
    emuboard.reset(run_main=True)  # power on: the board runs main.py
    proc = subprocess.run([executable("machi"), "monitor", "--port", emuboard.port, "--json",
                           "--duration", "120", "--lines", "6"],
                          capture_output=True, text=True, timeout=180, check=False,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr + emuboard.output()
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    named = [(e["device"], e["event"]) for e in events if e["level"]]
    assert ("env-0005", "start") in named or ("env-0005", "rec") in named, events
    assert ("env-0005", "rec") in named
    # nothing listens on port 9: the node says so
    deadline = time.monotonic() + 60
    while "noanswer" not in emuboard.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "W env-0005 noanswer" in emuboard.output()
