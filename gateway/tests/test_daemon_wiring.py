"""The daemon wires the optional parts from the config: registry sync, downlink, local
MQTT, BLE (no adapter here: it degrades), and the new metrics."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import httpx

from machi_gateway import config as config_mod
from machi_gateway import daemon


async def test_daemon_with_downlink_sync_mqtt_and_metrics(
    tmp_path: Path, control_cloud: Any, mosquitto: Any, until: Any
) -> None:
    control_cloud.devices = [{"id": "env-0001", "type": "env", "short_id": 1, "key": None,
                              "revoked": False, "lat": None, "lon": None}]
    control_cloud.add(id="c-1", device="env-0001", name="on", args={}, created=time.time(),
                      expires=time.time() + 600)
    cfg = config_mod.from_mapping({
        "gateway": {"id": "gw-01", "data_dir": "data"},
        "coap": {"host": "127.0.0.1", "port": 0},
        "devices": {"file": "devices.json", "sync": True, "sync_interval_s": 0.2},
        "uplink": {"url": control_cloud.url, "token": control_cloud.token,
                   "batch_age_s": 3600.0},
        "downlink": {"enabled": True, "wait_s": 1, "idle_s": 0.1},
        "ble": {"enabled": True},
        "mqtt_local": {"enabled": True, "host": mosquitto.host, "port": mosquitto.port},
        "health": {"port": 0},
    }, base_dir=tmp_path)
    ready = tmp_path / "ready.json"
    stop = asyncio.Event()
    run = asyncio.create_task(daemon.run(cfg, ready_file=ready, stop=stop))
    client = await aiocoap.Context.create_client_context()
    try:
        await until(lambda: ready.exists() and (tmp_path / "devices.json").exists(), within=20)
        info = json.loads(ready.read_text())
        await until(lambda: json.loads((tmp_path / "devices.json").read_text())["devices"])
        msg = aiocoap.Message(code=aiocoap.POST, uri=f"coap://127.0.0.1:{info['coap'][1]}/r",
                              payload=cbor2.dumps([{0: "seq", 2: 1, -2: "env-0001:"},
                                                   {0: "temp", 1: "Cel", 2: 20.0}]))
        msg.opt.content_format = 112

        # The registry follows the synced file within a second (until then: 4.01), the
        # command is fetched: it rides in the ACK.
        async def has_command() -> bool:
            resp = await client.request(msg).response
            if resp.code == aiocoap.UNAUTHORIZED:
                return False
            assert resp.code == aiocoap.CHANGED, resp.payload
            return 2 in cbor2.loads(resp.payload)
        await until(has_command, within=20, every=0.2)
        await until(lambda: control_cloud.state("c-1") == "sent")
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(info["health"] + "/metrics")).text
            health = (await http.get(info["health"] + "/healthz")).json()
        assert 'machi_gateway_device_last_seen_timestamp_seconds{device="env-0001"}' in metrics
        assert "machi_gateway_uplink_lag_seconds" in metrics
        assert 'machi_gateway_readings_by_transport_total{transport="coap"}' in metrics
        assert health["commands"]["open"] == 1 and "env-0001" in health["last_seen"]
        assert health["uplink"]["lag_s"] >= 0
    finally:
        stop.set()
        assert await asyncio.wait_for(run, 30) == 0
        await client.shutdown()
