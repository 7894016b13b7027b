"""Gateway -> cloud over real TLS, real processes: `machi-cloud --tls-cert/--tls-key` and
`machi-gateway` with `[cloud] ca_file` (+ `pin_sha256`).

A gateway that trusts the wrong CA logs the TLS failure and keeps the reading queued; the
same gateway restarted with the right CA and the server's pin delivers it: nothing lost.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiocoap
import httpx

from machi_gateway import tls
from machi_tools.devcerts import make_ca, make_server
from machi_tools.system import Cloud, Gateway, NodeSpec, write_devices_file

VECTORS = Path(__file__).resolve().parents[2] / "tests" / "vectors"


async def _post(uri: str, payload: bytes) -> aiocoap.Message:
    client = await aiocoap.Context.create_client_context()
    try:
        msg = aiocoap.Message(code=aiocoap.POST, uri=uri, payload=payload, content_format=112)
        async with asyncio.timeout(20):
            return await client.request(msg).response
    finally:
        await client.shutdown()


def _wait(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_uplink_over_https_wrong_ca_keeps_the_reading(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki")
    other_ca = make_ca(tmp_path / "pki-other", "other CA")
    server = make_server(tmp_path / "pki", ca)
    pin = tls.pins_of_file(server.cert)[0][0]
    cloud = Cloud(workdir=tmp_path / "sys", tls_cert=server.cert, tls_key=server.key)
    gateway: Gateway | None = None
    try:
        url = cloud.start()
        assert url.startswith("https://127.0.0.1:")
        gateway = Gateway(workdir=tmp_path / "sys", cloud_url=url, token=cloud.token,
                          batch_age_s=0.2, ca_file=other_ca.cert)
        gateway.workdir.mkdir(parents=True, exist_ok=True)
        write_devices_file(gateway.devices_path, [NodeSpec("env-0001", "env")])
        host, port = gateway.start()
        vector = json.loads((VECTORS / "senml-readings.json").read_text())[0]
        resp = asyncio.run(_post(f"coap://{host}:{port}/r", bytes.fromhex(vector["hex"])))
        assert resp.code == aiocoap.CHANGED

        log = tmp_path / "sys" / "logs" / "gateway.log"
        line = f"uplink: TLS handshake with {url}/v1/batches failed: "
        _wait("the TLS failure in the gateway log", lambda: line in log.read_text())
        failure = next(x for x in log.read_text().splitlines() if line in x)
        assert "CERTIFICATE_VERIFY_FAILED" in failure and "[cloud] ca_file" in failure, failure
        health = gateway.health()
        assert health["queue_depth"] == 1 and health["uplink"]["sent"] == 0, health
        assert gateway.stop() == 0

        # the right CA and the server's pin: the queued reading goes out after the restart
        gateway.ca_file, gateway.pins = ca.cert, (pin,)
        gateway.start()
        verify = tls.ssl_context(tls.CloudTls(ca_file=ca.cert))
        with httpx.Client(base_url=url, timeout=10, verify=verify) as client:

            def arrived() -> bool:
                devices = client.get("/v1/devices").json()["devices"]
                return [(d["device"], d["readings"]) for d in devices] == [("env-0001", 1)]

            _wait("the reading in the cloud", arrived)
        _wait("an empty queue", lambda: gateway is not None
              and gateway.health()["queue_depth"] == 0)
    finally:
        if gateway is not None:
            gateway.stop()
        cloud.stop()
