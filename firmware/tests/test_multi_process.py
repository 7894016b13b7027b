"""`micropython firmware/multi.py NODES.json` as a process: exit codes and stop lines.

The scheduling itself is tested under MicroPython (mp/test_multinode.py) and end to end by
the city-200 HIL scenario; this covers what `machi_tools.system.NodeGroup` relies on.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.micropython
MULTI = Path(__file__).resolve().parents[1] / "multi.py"


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port  # closed again: nobody answers there


def _nodes_file(tmp: Path, count: int, n: int = 3) -> Path:
    nodes: list[dict[str, Any]] = [
        {"device_id": f"env-{i:04d}", "state_dir": str(tmp / f"s{i}"), "seed": i}
        for i in range(1, n + 1)]
    path = tmp / "nodes.json"
    path.write_text(json.dumps({
        "defaults": {"type": "env", "gateway": {"host": "127.0.0.1", "port": _closed_udp_port()},
                     "interval_s": 0.2, "count": count, "drain_timeout_s": 1.0,
                     "coap": {"ack_timeout_s": 0.2, "max_retransmit": 1}},
        "nodes": nodes}))
    return path


def _start(mp: str, path: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([mp, "-X", "heapsize=1M", str(MULTI),
                                 str(path)], stdout=out, stderr=subprocess.STDOUT)


def _stops(text: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^I (\S+) stop code=(\d+)", text, re.M)}


def test_sigint_stops_every_node_with_its_stop_line(tmp_path: Path, micropython: str) -> None:
    log = tmp_path / "out.log"
    proc = _start(micropython, _nodes_file(tmp_path, count=0), log)
    try:
        deadline = time.monotonic() + 60
        while log.read_text().count(" rec seq=") < 3:  # every node has taken a reading
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
    text = log.read_text()
    assert re.search(r"^I - multi nodes=3 failed=0 heap=\d+", text, re.M), text
    assert _stops(text) == {"env-0001": 0, "env-0002": 0, "env-0003": 0}, text


def test_exit_code_is_the_worst_node_code(tmp_path: Path, micropython: str) -> None:
    # no gateway: every node takes its readings, cannot drain and stops with code 3
    log = tmp_path / "out.log"
    proc = _start(micropython, _nodes_file(tmp_path, count=1), log)
    assert proc.wait(60) == 3
    text = log.read_text()
    assert _stops(text) == {"env-0001": 3, "env-0002": 3, "env-0003": 3}, text
    assert text.count(" drain left=1") == 3


def test_bad_nodes_file_exits_2_and_starts_nothing(tmp_path: Path, micropython: str) -> None:
    path = tmp_path / "nodes.json"
    path.write_text(json.dumps({"nodes": [{"device_id": "env-0001", "type": "env"}]}))
    log = tmp_path / "out.log"
    assert _start(micropython, path, log).wait(30) == 2
    text = log.read_text()
    assert "E - config nodes[0]: state_dir: required" in text, text
    assert " start " not in text
