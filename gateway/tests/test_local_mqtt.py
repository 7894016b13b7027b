"""Local MQTT with Home Assistant discovery, against a real Mosquitto (subscribing as
Home Assistant would: discovery configs are retained, so a late subscriber sees them)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiomqtt

from machi_gateway.local_mqtt import LocalMqtt, object_id
from machi_gateway.model import Measurement


async def test_readings_and_discovery_are_published(
    mosquitto: Any, make_reading: Any, until: Any
) -> None:
    pub = LocalMqtt(host=mosquitto.host, port=mosquitto.port)
    reading = make_reading("env-0001", 5, measurements=(
        Measurement("temp", "Cel", 21.5), Measurement("pm2.5", "ug/m3", 12),
        Measurement("tilt", None, False)))
    async with pub:
        pub.offer(reading)
        pub.offer(make_reading("env-0001", 6, measurements=(Measurement("temp", "Cel", 22.0),)))
        await until(lambda: pub.published == 2)
    # Subscribe after the fact: everything that matters is retained.
    got: dict[str, Any] = {}
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as ha:
        await ha.subscribe("homeassistant/#")
        await ha.subscribe("machi/#")
        async with asyncio.timeout(10):
            async for msg in ha.messages:
                got[msg.topic.value] = json.loads(msg.payload)
                if len(got) == 4:
                    break
    temp = got["homeassistant/sensor/env-0001_temp/config"]
    assert temp["unit_of_measurement"] == "°C" and temp["device_class"] == "temperature"
    assert temp["state_topic"] == "machi/env-0001/state"
    assert temp["unique_id"] == "machi_env-0001_temp"
    assert temp["device"]["identifiers"] == ["machi_env-0001"]
    pm = got[f"homeassistant/sensor/{object_id('env-0001', 'pm2.5')}/config"]
    assert pm["device_class"] == "pm25" and pm["unit_of_measurement"] == "µg/m³"
    tilt = got["homeassistant/binary_sensor/env-0001_tilt/config"]
    assert "'ON' if value_json[\"tilt\"]" in tilt["value_template"]
    assert "unit_of_measurement" not in tilt
    st = got["machi/env-0001/state"]
    assert st["temp"] == 22.0 and st["seq"] == 6  # the latest state is retained
