"""The virtual concentrator (machi_tools.vconcentrator) as a process, against a plain socket
playing the network server: the Semtech UDP v2 bytes both ways. End to end with real nodes
and gateway: tools/tests/test_fleet_transports.py and hil_tests/scenarios/lora-district."""

from __future__ import annotations

import base64
import json
import socket
import struct
import time
from pathlib import Path
from typing import Any


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_concentrator_speaks_semtech_udp(tmp_path: Path) -> None:
    """The concentrator's PUSH_DATA/PULL_DATA/TX_ACK bytes against a plain socket playing
    the network server: rxpk carries the frame, a PULL_RESP comes back to the radio."""
    import subprocess
    import sys

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(20)
    ready = tmp_path / "vc.ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "machi_tools.vconcentrator", "--gateway",
         f"127.0.0.1:{server.getsockname()[1]}", "--ready-file", str(ready),
         "--stats-file", str(tmp_path / "vc.stats")])
    radio = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    radio.bind(("127.0.0.1", 0))
    radio.settimeout(20)
    try:
        data, down = server.recvfrom(4096)
        ver, token, ident = struct.unpack_from(">BHB", data)
        assert (ver, ident, len(data)) == (2, 2, 12)  # PULL_DATA + EUI
        server.sendto(struct.pack(">BHB", 2, token, 4), down)  # PULL_ACK
        _wait(ready.exists, 20, "the ready file")
        listen = tuple(json.loads(ready.read_text())["listen"])
        radio.sendto(b"\x01\x01\x01hello", listen)
        while True:
            data, up = server.recvfrom(4096)
            if data[3] == 0:
                break
        ver, token, ident = struct.unpack_from(">BHB", data)
        server.sendto(struct.pack(">BHB", 2, token, 1), up)  # PUSH_ACK
        pk = json.loads(data[12:])["rxpk"][0]
        assert base64.b64decode(pk["data"]) == b"\x01\x01\x01hello"
        assert pk["size"] == 8 and pk["stat"] == 1 and pk["modu"] == "LORA"
        txpk = {"txpk": {"imme": False, "tmst": (pk["tmst"] + 1_000_000) & 0xFFFFFFFF,
                         "freq": 923.2, "rfch": 0, "powe": 14, "modu": "LORA",
                         "datr": "SF10BW125", "codr": "4/5", "ipol": True, "size": 3,
                         "data": base64.b64encode(b"ack").decode()}}
        server.sendto(struct.pack(">BHB", 2, 77, 3) + json.dumps(txpk).encode(), down)
        while True:
            data, _ = server.recvfrom(4096)
            if data[3] == 5:
                break
        assert struct.unpack_from(">H", data, 1)[0] == 77
        assert json.loads(data[12:]) == {"txpk_ack": {"error": "NONE"}}
        assert radio.recv(64) == b"ack"  # in the window of the radio that sent the uplink
        late = {"txpk": {**txpk["txpk"], "tmst": pk["tmst"]}}  # already past
        server.sendto(struct.pack(">BHB", 2, 78, 3) + json.dumps(late).encode(), down)
        while True:
            data, _ = server.recvfrom(4096)
            if data[3] == 5:
                break
        assert json.loads(data[12:]) == {"txpk_ack": {"error": "TOO_LATE"}}
    finally:
        proc.terminate()
        proc.wait(10)
        server.close()
        radio.close()
    stats = json.loads((tmp_path / "vc.stats").read_text())
    assert stats["push"] == 1 and stats["push_ack"] == 1 and stats["tx_ack_too_late"] == 1
