"""The daemon as a real process: ready file, CoAP, /healthz, SIGTERM, kill -9 durability."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiocoap
import httpx
import pytest

EXE = Path(sys.executable).with_name("machi-gateway")


class GatewayProcess:
    """One ``machi-gateway`` subprocess; its stderr goes to a file printed on failure."""

    def __init__(self, tmp: Path, cloud_url: str) -> None:
        self.tmp = tmp
        self.config = tmp / "gateway.toml"
        self.ready = tmp / "ready.json"
        self.stderr = tmp / "stderr.log"
        self.config.write_text(
            '[gateway]\nid = "gw-test"\ndata_dir = "data"\n'
            '[coap]\nhost = "127.0.0.1"\nport = 0\n'
            '[devices]\nfile = "devices.json"\n'
            f'[uplink]\nurl = "{cloud_url}"\ntoken = "t"\nbatch_age_s = 0.1\n'
            "timeout_s = 1\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.2\ndrain_timeout_s = 1\n"
            '[health]\nport = 0\n[log]\nlevel = "debug"\nformat = "json"\n'
        )
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}

    async def start(self) -> None:
        self.ready.unlink(missing_ok=True)
        with self.stderr.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                str(EXE), "--config", str(self.config), "--ready-file", str(self.ready),
                stdout=asyncio.subprocess.DEVNULL, stderr=err,
            )
        async with asyncio.timeout(20):
            while not self.ready.exists():
                assert self.proc.returncode is None, self.log()
                await asyncio.sleep(0.05)
        self.info = json.loads(self.ready.read_text())
        assert self.info["pid"] == self.proc.pid

    def log(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    @property
    def coap_uri(self) -> str:
        host, port = self.info["coap"]
        return f"coap://{host}:{port}/r"

    async def healthz(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5) as client:
            resp = await client.get(self.info["health"] + "/healthz")
        assert resp.status_code == 200
        doc: dict[str, Any] = resp.json()
        return doc

    async def stop(self, sig: int = signal.SIGTERM, within: float = 10) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(within):
            return await self.proc.wait()


@pytest.fixture
async def gateway_factory(
    tmp_path: Path, devices_file: Path
) -> AsyncIterator[Callable[[str], GatewayProcess]]:
    made: list[GatewayProcess] = []

    def make(cloud_url: str) -> GatewayProcess:
        g = GatewayProcess(tmp_path, cloud_url)
        made.append(g)
        return g

    try:
        yield make
    except BaseException:
        raise
    finally:
        for g in made:
            if g.proc is not None and g.proc.returncode is None:
                g.proc.kill()
                await g.proc.wait()
            if g.proc is not None:
                print(f"--- gateway stderr ---\n{g.log()}")


async def _post(uri: str, payload: bytes) -> aiocoap.Message:
    client = await aiocoap.Context.create_client_context()
    try:
        msg = aiocoap.Message(code=aiocoap.POST, uri=uri, payload=payload, content_format=112)
        async with asyncio.timeout(20):
            return await client.request(msg).response
    finally:
        await client.shutdown()


async def test_reading_flows_to_the_cloud_and_sigterm_exits_0(
    gateway_factory: Callable[[str], GatewayProcess], fake_cloud: Any,
    vectors: Callable[[str], Any], until: Any,
) -> None:
    gw = gateway_factory(fake_cloud.url)
    await gw.start()
    assert gw.info["coap"][0] == "127.0.0.1"
    assert gw.info["health"].startswith("http://127.0.0.1:")
    resp = await _post(gw.coap_uri, bytes.fromhex(vectors("senml-readings.json")[0]["hex"]))
    assert resp.code == aiocoap.CHANGED
    resp = await _post(gw.coap_uri, b"\xff")
    assert resp.code == aiocoap.BAD_REQUEST
    await until(lambda: ("env-0001", 17) in fake_cloud.stored)

    async def uploaded() -> bool:
        return bool((await gw.healthz())["uplink"]["sent"] >= 1)

    await until(uploaded)
    health = await gw.healthz()
    assert health["status"] == "ok" and health["gateway"] == "gw-test"
    assert health["readings_in"] == 1 and health["queue_depth"] == 0
    assert health["rejected"] == {"cbor": 1}
    assert health["uplink"]["last_ok"] is not None
    async with httpx.AsyncClient(timeout=5) as client:
        metrics = (await client.get(gw.info["health"] + "/metrics")).text
    assert 'machi_gateway_rejected_total{reason="cbor"} 1' in metrics
    assert "machi_gateway_readings_in_total 1" in metrics
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await gw.stop() == 0, gw.log()
    assert loop.time() - t0 < 5
    assert not gw.ready.exists()
    assert '"shutting down' in gw.log()


async def test_kill_9_after_ack_keeps_the_reading(
    gateway_factory: Callable[[str], GatewayProcess], fake_cloud: Any,
    vectors: Callable[[str], Any], until: Any,
) -> None:
    gw = gateway_factory("http://127.0.0.1:9")  # the cloud is unreachable
    await gw.start()
    cases = vectors("senml-readings.json")
    for case in cases:
        assert (await _post(gw.coap_uri, bytes.fromhex(case["hex"]))).code == aiocoap.CHANGED
    assert await gw.stop(signal.SIGKILL) == -signal.SIGKILL
    db = gw.tmp / "data" / "queue.sqlite3"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM queue").fetchone()[0] == len(cases)
    finally:
        conn.close()
    # Restart pointing at the (now reachable) cloud: everything goes up exactly once.
    gw.config.write_text(gw.config.read_text().replace("http://127.0.0.1:9", fake_cloud.url))
    await gw.start()
    assert (await gw.healthz())["queue_depth"] in range(len(cases) + 1)

    async def drained() -> bool:
        return bool((await gw.healthz())["queue_depth"] == 0)

    await until(drained)
    assert len(fake_cloud.stored) == len(cases)
    # A retransmission from a node after the restart is still a duplicate.
    assert (await _post(gw.coap_uri, bytes.fromhex(cases[0]["hex"]))).code == aiocoap.CHANGED
    assert (await gw.healthz())["duplicates"] == 1
    assert await gw.stop() == 0


async def test_sigint_exits_0_and_bad_config_exits_2(
    gateway_factory: Callable[[str], GatewayProcess], tmp_path: Path
) -> None:
    gw = gateway_factory("http://127.0.0.1:9")
    await gw.start()
    assert await gw.stop(signal.SIGINT) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[coap]\nport = 70000\n")
    proc = await asyncio.create_subprocess_exec(
        str(EXE), "--config", str(bad), stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"[coap] port" in err


async def test_busy_port_exits_1(
    gateway_factory: Callable[[str], GatewayProcess], tmp_path: Path
) -> None:
    first = gateway_factory("http://127.0.0.1:9")
    await first.start()
    health_port = int(first.info["health"].rsplit(":", 1)[1])
    other = tmp_path / "other"
    other.mkdir()
    (other / "devices.json").write_text('{"devices": []}')
    cfg = other / "g.toml"
    cfg.write_text(f'[gateway]\ndata_dir = "d"\n[coap]\nport = 0\n[health]\nport = {health_port}\n')
    proc = await asyncio.create_subprocess_exec(
        str(EXE), "--config", str(cfg), stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(20):
        _, err = await proc.communicate()
    assert proc.returncode == 1, err
    assert b"cannot listen for health" in err
    assert (other / "d").is_dir()  # the queue was opened before the bind failed
    assert await first.stop() == 0
