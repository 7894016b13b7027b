"""ChirpStack MQTT integration against a real Mosquitto: uplink events in, downlinks out."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiomqtt
import cbor2

from machi_gateway.downlink.queue import CloudCommand
from machi_gateway.ingress.chirpstack import ChirpstackIngress

APP = "2f0c3ab0-0000-4000-8000-000000000001"


def event(frame: bytes, dev_eui: str, fcnt: int) -> str:
    """A ChirpStack v4 uplink event, trimmed to the fields ChirpStack always sends."""
    return json.dumps({
        "deduplicationId": "3c4a4b7e-1c9a-4a5f-9d57-5f1c0c6d2a11",
        "time": "2026-11-23T01:00:00.000000+00:00",
        "deviceInfo": {"tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
                       "tenantName": "city", "applicationId": APP,
                       "applicationName": "sensors", "deviceProfileName": "env",
                       "deviceName": "env-0003", "devEui": dev_eui},
        "devAddr": "00189440", "adr": True, "dr": 2, "fCnt": fcnt, "fPort": 1,
        "confirmed": False, "data": base64.b64encode(frame).decode(),
        "rxInfo": [{"gatewayId": "0016c001f153a14c", "uplinkId": 4217106255, "rssi": -104,
                    "snr": -3.5, "channel": 1, "location": {}, "context": "EFwMtA==",
                    "metadata": {"region_name": "as923"}, "crcStatus": "CRC_OK"},
                   {"gatewayId": "0016c001f153a14d", "uplinkId": 1, "rssi": -71,
                    "snr": 9.0, "channel": 1, "crcStatus": "CRC_OK"}],
        "txInfo": {"frequency": 923200000, "modulation": {"lora": {
            "bandwidth": 125000, "spreadingFactor": 10, "codeRate": "CR_4_5"}}},
    })


async def test_uplink_events_reach_the_queue_and_commands_go_down(
    parts: Any, lora: Any, mosquitto: Any, until: Any
) -> None:
    ingress = ChirpstackIngress(parts.core, decode=lora.decode,
                                registry_lookup=parts.registry.by_short_id,
                                host=mosquitto.host, port=mosquitto.port)
    dev_eui = "70b3d57ed0000003"
    await parts.commands.add([CloudCommand(id="c-9", device="env-0003", name="interval",
                                           args={"s": 600})])
    async with ingress, aiomqtt.Client(mosquitto.host, mosquitto.port) as app:
        await app.subscribe(f"application/{APP}/device/+/command/down", qos=1)
        async with asyncio.timeout(15):
            await ingress.connected.wait()
        frame = lora.frame(lora.short_ids["env-0003"], 41, 1234)
        topic = f"application/{APP}/device/{dev_eui}/event/up"
        await app.publish(topic, event(frame, dev_eui, 5), qos=1)
        await app.publish(topic, "{not json", qos=1)
        await app.publish(topic, event(frame, dev_eui, 5), qos=1)  # a replay: duplicate
        async with asyncio.timeout(15):
            msg = await anext(aiter(app.messages))
        assert msg.topic.value == f"application/{APP}/device/{dev_eui}/command/down"
        down = json.loads(msg.payload)
        assert down["devEui"] == dev_eui and down["confirmed"] is False
        cmds = cbor2.loads(base64.b64decode(down["data"]))[2]
        assert [c[:3] for c in cmds] == [[0, "interval", {"s": 600}]]
        await until(lambda: parts.stats.duplicates == 1)
    assert parts.store.depth == 1
    [r] = await parts.store.oldest(1)
    assert (r.device, r.seq, r.transport) == ("env-0003", 41, "lorawan")
    meta = parts.seen[0].meta
    assert (meta["dev_eui"], meta["fcnt"], meta["rssi"], meta["snr"]) == (dev_eui, 5, -71, 9.0)
    assert parts.stats.rejected["lorawan-event"] == 1
