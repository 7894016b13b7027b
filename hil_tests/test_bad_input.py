"""A malformed request to each layer gets its clear error and changes no stored data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import httpx
import pytest

from machi_tools.system import Cloud, Gateway, NodeSpec, write_devices_file

VECTORS = Path(__file__).resolve().parents[1] / "tests" / "vectors"
INVALID = json.loads((VECTORS / "senml-invalid.json").read_text())
VALID = json.loads((VECTORS / "senml-readings.json").read_text())


async def _health(gateway: Gateway) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        data: dict[str, Any] = (await client.get(f"{gateway.health_url}/healthz")).json()
    return data


async def _post(gateway: Gateway, payload: bytes, content_format: int) -> aiocoap.Message:
    ctx = await aiocoap.Context.create_client_context()
    try:
        host, port = gateway.coap
        req = aiocoap.Message(
            code=aiocoap.POST, uri=f"coap://{host}:{port}/r", payload=payload,
            content_format=content_format,
        )
        return await ctx.request(req).response
    finally:
        await ctx.shutdown()


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
async def test_gateway_refuses_bad_reading_with_its_code(
    vector: dict[str, Any], gateway: Gateway, cloud: Cloud
) -> None:
    write_devices_file(gateway.devices_path, [NodeSpec(device_id="env-0001", type="env")])
    before = await _health(gateway)
    resp = await _post(gateway, bytes.fromhex(vector["hex"]), vector["content_format"])
    assert str(resp.code).startswith(vector["code"]), (vector["name"], resp.code, resp.payload)
    assert resp.payload, "an error answer must say what is wrong"
    after = await _health(gateway)
    assert after["queue_depth"] == before["queue_depth"] == 0
    assert after["readings_in"] == before["readings_in"]
    assert sum(after["rejected"].values()) == sum(before["rejected"].values()) + 1
    async with httpx.AsyncClient(timeout=5) as client:
        devices = (await client.get(f"{cloud.url}/v1/devices")).json()["devices"]
    assert devices == []


async def test_gateway_refuses_oversized_payload(gateway: Gateway) -> None:
    write_devices_file(gateway.devices_path, [NodeSpec(device_id="env-0001", type="env")])
    big = cbor2.dumps([{0: "seq", 2: 1, -2: "env-0001:"}] + [{0: "x", 3: "y" * 100}] * 12)
    resp = await _post(gateway, big, 112)
    assert str(resp.code).startswith("4.13")
    assert resp.opt.size1 == 1024
    assert (await _health(gateway))["queue_depth"] == 0


def test_cloud_refuses_malformed_batches(cloud: Cloud) -> None:
    url = f"{cloud.url}/v1/batches"
    good = bytes.fromhex(json.loads((VECTORS / "cloud-batches.json").read_text())[0]["hex"])
    auth = {"Authorization": f"Bearer {cloud.token}", "Content-Type": "application/cbor"}
    cases = [
        ("truncated CBOR", good[:-7], auth, 400),
        ("not a batch", cbor2.dumps([1, 2, 3]), auth, 400),
        ("no token", good, {"Content-Type": "application/cbor"}, 401),
        ("wrong token", good, {**auth, "Authorization": "Bearer nope"}, 401),
        ("JSON body", b'{"gateway": "gw-01"}', {**auth, "Content-Type": "application/json"}, 415),
    ]
    with httpx.Client(timeout=5) as client:
        for what, body, headers, status in cases:
            resp = client.post(url, content=body, headers=headers)
            assert resp.status_code == status, (what, resp.status_code, resp.text)
            assert resp.headers["content-type"].startswith("application/problem+json"), what
            problem = resp.json()
            assert problem["status"] == status and problem["detail"], (what, problem)
        assert client.get(f"{cloud.url}/v1/devices").json()["devices"] == []
        assert client.get(f"{cloud.url}/v1/readings").json()["count"] == 0
