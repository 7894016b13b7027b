"""OSCORE end to end: real nodes (`micropython firmware/main.py`) against the real gateway
daemon (`machi-gateway`, `[coap] oscore = "required"`), through a UDP relay that records
every datagram the nodes send.

One gateway run covers: readings stored (after the one Echo round trip a fresh gateway
asks for), a plain CoAP request refused with 4.01, a node with a wrong key storing
nothing, a captured protected datagram replayed from another socket refused, and a device
revoked in devices.json refused without a restart. The cloud is unreachable on purpose:
readings stay in the gateway's queue, where the test counts them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest

from .conftest import run_node_main

pytestmark = pytest.mark.micropython
GATEWAY = Path(sys.executable).with_name("machi-gateway")
FAST = {"ack_timeout_s": 0.3, "ack_random_factor": 1.5, "max_retransmit": 3}
TIMEOUT = 60.0
KEY1 = bytes(range(16))
KEY2 = bytes(range(32, 48))


class Relay(asyncio.DatagramProtocol):
    """Node <-> gateway UDP relay; keeps what each node sent (by its source port)."""

    def __init__(self, gateway: tuple[str, int]) -> None:
        self.gateway = gateway
        self.sent: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None
        self._up: dict[tuple[str, int], asyncio.DatagramTransport] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append(data)
        up = self._up.get(addr)
        if up is not None:
            up.sendto(data)
            return
        asyncio.get_running_loop().create_task(self._open(data, addr))

    async def _open(self, data: bytes, addr: tuple[str, int]) -> None:
        relay = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, reply: bytes, _: tuple[str, int]) -> None:
                if relay.transport is not None:
                    relay.transport.sendto(reply, addr)

        up, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Back, remote_addr=self.gateway)
        self._up[addr] = up
        up.sendto(data)

    def close(self) -> None:
        for up in self._up.values():
            up.close()
        if self.transport is not None:
            self.transport.close()


class Gateway:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.devices = tmp / "devices.json"
        self.ready = tmp / "ready.json"
        self.stderr = tmp / "gateway.log"
        self.config = tmp / "gateway.toml"
        self.config.write_text(
            '[gateway]\nid = "gw-test"\ndata_dir = "data"\n'
            '[coap]\nhost = "127.0.0.1"\nport = 0\noscore = "required"\n'
            '[devices]\nfile = "devices.json"\n'
            '[uplink]\nurl = "http://127.0.0.1:9"\ntoken = "t"\ntimeout_s = 1\n'
            "backoff_initial_s = 1\nbackoff_max_s = 5\ndrain_timeout_s = 0\n"
            '[health]\nport = 0\n[log]\nlevel = "info"\nformat = "json"\n')
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    def write_devices(self, revoked: bool = False) -> None:
        doc = {"devices": [
            {"id": "env-0001", "type": "env", "short_id": 1, "key": KEY1.hex(),
             "revoked": revoked},
            {"id": "env-0002", "type": "env", "short_id": 2, "key": KEY2.hex()},
        ]}
        tmp = self.devices.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.devices)

    async def start(self) -> None:
        self.write_devices()
        with self.stderr.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                str(GATEWAY), "--config", str(self.config), "--ready-file", str(self.ready),
                stdout=asyncio.subprocess.DEVNULL, stderr=err)
        async with asyncio.timeout(TIMEOUT):
            while not self.ready.exists():
                assert self.proc.returncode is None, self.log()
                await asyncio.sleep(0.05)
        self.port = json.loads(self.ready.read_text())["coap"][1]

    def log(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def stored(self, device: str) -> list[int]:
        conn = sqlite3.connect(self.tmp / "data" / "queue.sqlite3")
        try:
            return [r[0] for r in conn.execute(
                "SELECT seq FROM queue WHERE device = ? ORDER BY seq", (device,))]
        finally:
            conn.close()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            async with asyncio.timeout(TIMEOUT):
                await self.proc.wait()


async def run_node(micropython: str, tmp: Path, port: int, device: str, short_id: int,
                   key: bytes, count: int, drain_s: float) -> tuple[int, str]:
    cfg = {"device_id": device, "type": "env", "gateway": {"host": "127.0.0.1", "port": port},
           "interval_s": 0.2, "count": count, "drain_timeout_s": drain_s,
           "state_dir": str(tmp / "state" / device), "seed": 1, "coap": dict(FAST),
           "oscore": {"key": key.hex(), "short_id": short_id}}
    path = tmp / f"{device}.json"
    path.write_text(json.dumps(cfg))
    return await run_node_main(micropython, path, TIMEOUT)


def oscore_line(out: str, device: str) -> dict[str, int]:
    for line in out.splitlines():
        if line.startswith(f"I {device} oscore "):
            return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
    raise AssertionError(f"no oscore line in:\n{out}")


def _udp(port: int, data: bytes) -> aiocoap.Message:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(data, ("127.0.0.1", port))
        return aiocoap.Message.decode(s.recv(2048))


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[Gateway, Relay, int]]:
    gw = Gateway(tmp_path)
    relay: Relay | None = None
    ok = False
    try:
        await gw.start()
        relay = Relay(("127.0.0.1", gw.port))
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: relay, local_addr=("127.0.0.1", 0))
        yield gw, relay, transport.get_extra_info("sockname")[1]
        ok = True
    finally:
        if relay is not None:
            relay.close()
        await gw.stop()
        if not ok:
            print(f"--- gateway log\n{gw.log()}")


async def test_oscore_node_to_gateway_end_to_end(
    rig: tuple[Gateway, Relay, int], micropython: str, tmp_path: Path
) -> None:
    gw, relay, relay_port = rig
    # 1. a node with the right key: every reading stored, through the Echo of a fresh gateway
    code, out = await run_node(micropython, tmp_path, relay_port, "env-0001", 1, KEY1,
                               count=3, drain_s=30)
    assert code == 0, out
    assert gw.stored("env-0001") == [0, 1, 2], out
    o = oscore_line(out, "env-0001")
    assert o["echoes"] == 1 and o["dropped"] == 0 and o["unprotected"] >= 3, out
    captured = list(relay.sent)
    assert captured and all(b"env-0001" not in d for d in captured)  # encrypted on the wire
    for d in captured:  # only the OSCORE option in clear: no Uri-Path, no Content-Format
        m = aiocoap.Message.decode(d)
        assert m.opt.oscore is not None and m.opt.uri_path == () and m.opt.content_format is None

    # 2. a plain CoAP request: 4.01, nothing stored
    plain = aiocoap.Message(code=aiocoap.POST, uri_path=("r",), content_format=112,
                            payload=cbor2.dumps([{0: "seq", 2: 9, -2: "env-0001:"},
                                                 {0: "temp", 2: 1}]))
    plain.mid, plain.token, plain.mtype = 0x0101, b"\x07", aiocoap.CON
    r = await asyncio.to_thread(_udp, gw.port, bytes(plain.encode()))
    assert r.code == aiocoap.UNAUTHORIZED
    assert gw.stored("env-0001") == [0, 1, 2]

    # 3. a captured protected datagram sent again from another socket: refused as replay
    r = await asyncio.to_thread(_udp, gw.port, captured[-1])
    assert r.code == aiocoap.UNAUTHORIZED and r.opt.oscore is None, r
    assert r.payload == b"Replay detected"
    assert gw.stored("env-0001") == [0, 1, 2]

    # 4. a node with a wrong key: the gateway's unprotected 4.00 is dropped, nothing stored
    code, out = await run_node(micropython, tmp_path, relay_port, "env-0002", 2, KEY1,
                               count=1, drain_s=2)
    assert code == 3, out  # could not drain: the reading stays on the node
    assert gw.stored("env-0002") == []
    assert oscore_line(out, "env-0002")["dropped"] >= 1, out

    # 5. env-0001 revoked in devices.json: refused at once, no gateway restart
    loads = gw.log().count("device registry loaded")
    gw.write_devices(revoked=True)
    for _ in range(int(TIMEOUT / 0.05)):  # the registry watcher re-reads within ~1 s
        if gw.log().count("device registry loaded") > loads:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the gateway did not reload devices.json")
    code, out = await run_node(micropython, tmp_path, relay_port, "env-0001", 1, KEY1,
                               count=1, drain_s=2)
    assert code == 3, out
    assert gw.stored("env-0001") == [0, 1, 2]
    assert oscore_line(out, "env-0001")["dropped"] >= 1, out
    assert gw.proc is not None and gw.proc.returncode is None  # still the same gateway


def test_node_config_oscore_section_is_checked(run_mp: Any, tmp_path: Path) -> None:
    script = tmp_path / "cfgcheck.py"
    script.write_text(
        "import nodeconfig\n"
        "base = {'device_id': 'env-0001', 'type': 'env', 'gateway': {'host': 'h'},"
        " 'state_dir': '/x'}\n"
        "for o in ({'key': '00' * 16, 'short_id': 1}, {'key': '00' * 15, 'short_id': 1},"
        " {'key': '0g' * 16, 'short_id': 1}, {'key': '00' * 16, 'short_id': 70000},"
        " {'key': '00' * 16}, {'key': '00' * 16, 'short_id': 1, 'kid': 'x'}, 'yes', {}):\n"
        "    c = dict(base)\n"
        "    c['oscore'] = o\n"
        "    try:\n"
        "        print('ok', nodeconfig.check(c)['oscore'])\n"
        "    except nodeconfig.ConfigError as e:\n"
        "        print('err', e)\n")
    res = run_mp(script)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("ok {") and "'short_id': 1" in lines[0]
    assert lines[1] == "err oscore.key: must be 32 hex digits (the 16-byte device key)"
    assert lines[2] == lines[1]
    assert lines[3] == "err oscore.short_id: must be 0..65535"
    assert lines[4] == "err oscore.short_id: required"
    assert lines[5] == "err oscore.kid: unknown key"
    assert lines[6].startswith("err oscore")  # not an object
    assert lines[7] == "ok {}"  # off
