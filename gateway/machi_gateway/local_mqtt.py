"""Publishes new readings to a local MQTT broker, with Home Assistant MQTT discovery.

For each device, one retained JSON state on ``<prefix>/<device>/state``
(``{"<metric>": value, ..., "seq": n, "time": t}``), and, the first time a metric is seen
on a connection, a retained discovery config on
``<discovery_prefix>/<sensor|binary_sensor>/<device>_<metric>/config`` whose
``value_template`` picks that metric out of the state: readings appear in Home Assistant
with units and device classes, without configuration.

This is a local convenience, never a reason to lose or delay an ACK: the core hands
readings over without waiting (:meth:`LocalMqtt.offer`), a bounded queue drops the
oldest when the broker is away, and the connection is retried with capped backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from typing import Any

import aiomqtt

from .model import Reading

log = logging.getLogger(__name__)

_BACKLOG = 1000

# SenML unit -> (Home Assistant unit, device class) for the units our nodes send.
_UNITS: dict[str, tuple[str, str | None]] = {
    "Cel": ("°C", "temperature"), "%RH": ("%", "humidity"), "Pa": ("Pa", "pressure"),
    "hPa": ("hPa", "pressure"), "ug/m3": ("µg/m³", None), "%": ("%", None),
    "lx": ("lx", "illuminance"), "W": ("W", "power"), "V": ("V", "voltage"),
    "A": ("A", "current"), "m": ("m", "distance"), "dB": ("dB", None),
    "dBm": ("dBm", "signal_strength"), "J": ("J", "energy"), "Wh": ("Wh", "energy"),
}
# Metric names whose device class is clear whatever the unit says.
_NAME_CLASSES = {"pm25": "pm25", "pm2.5": "pm25", "pm10": "pm10", "bat": "voltage",
                 "battery": "battery"}


def object_id(device: str, metric: str) -> str:
    """``<node>_<metric>`` with what discovery topics allow (``[a-zA-Z0-9_-]``)."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", f"{device}_{metric}")


def discovery(reading: Reading, index: int, *, prefix: str, discovery_prefix: str
              ) -> tuple[str, dict[str, Any]]:
    """(topic, config) announcing measurement ``index`` of ``reading``."""
    m = reading.measurements[index]
    component = "binary_sensor" if isinstance(m.value, bool) else "sensor"
    oid = object_id(reading.device, m.name)
    config: dict[str, Any] = {
        "name": m.name,
        "unique_id": f"machi_{oid}",
        "object_id": oid,
        "state_topic": f"{prefix}/{reading.device}/state",
        "value_template": f"{{{{ value_json[{json.dumps(m.name)}] }}}}",
        "device": {"identifiers": [f"machi_{reading.device}"], "name": reading.device,
                   "manufacturer": "machi", "model": reading.device.split("-")[0]},
    }
    if component == "binary_sensor":
        # HA's binary_sensor defaults: payload_on "ON", payload_off "OFF".
        config["value_template"] = (
            f"{{{{ 'ON' if value_json[{json.dumps(m.name)}] else 'OFF' }}}}")
    elif isinstance(m.value, int | float):
        config["state_class"] = "measurement"
        unit, dclass = _UNITS.get(m.unit or "", (m.unit, None))
        if unit:
            config["unit_of_measurement"] = unit
        dclass = _NAME_CLASSES.get(m.name.lower(), dclass)
        if dclass == "battery" and m.unit != "%":
            dclass = None
        if dclass:
            config["device_class"] = dclass
    return f"{discovery_prefix}/{component}/{oid}/config", config


def state(reading: Reading) -> dict[str, Any]:
    doc: dict[str, Any] = {m.name: m.value for m in reading.measurements}
    doc.update(seq=reading.seq, time=reading.time, transport=reading.transport)
    for key in ("rssi", "snr"):
        if key in reading.meta:
            doc[key] = reading.meta[key]
    return doc


class LocalMqtt:
    """The publisher; an async context manager running its own connection task."""

    def __init__(self, *, host: str, port: int, username: str = "", password: str = "",
                 prefix: str = "machi", discovery_prefix: str = "homeassistant",
                 reconnect_max_s: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.username = username or None
        self.password = password or None
        self.prefix = prefix
        self.discovery_prefix = discovery_prefix
        self.reconnect_max_s = reconnect_max_s
        self._queue: asyncio.Queue[Reading] = asyncio.Queue(_BACKLOG)
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.dropped = 0
        self.connected = asyncio.Event()

    def offer(self, reading: Reading) -> None:
        """Hand a new reading over (never blocks; drops the oldest when full)."""
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(reading)

    async def __aenter__(self) -> LocalMqtt:
        self._task = asyncio.create_task(self._run(), name="local-mqtt")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            announced: set[str] = set()  # per connection: the broker may have restarted
            try:
                async with aiomqtt.Client(self.host, self.port, username=self.username,
                                          password=self.password, keepalive=30,
                                          timeout=10) as client:
                    failures = 0
                    self.connected.set()
                    log.info("local mqtt: connected to %s:%d", self.host, self.port)
                    while True:
                        reading = await self._queue.get()
                        await self._publish(client, reading, announced)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                failures += 1
                delay = min(self.reconnect_max_s, 2.0 ** min(failures, 5)) * random.random()
                log.warning("local mqtt %s:%d: %s (retry in %.1f s)", self.host, self.port,
                            exc, delay)
                await asyncio.sleep(delay)

    async def _publish(self, client: aiomqtt.Client, reading: Reading,
                       announced: set[str]) -> None:
        for i in range(len(reading.measurements)):
            topic, config = discovery(reading, i, prefix=self.prefix,
                                      discovery_prefix=self.discovery_prefix)
            if topic not in announced:
                await client.publish(topic, json.dumps(config), qos=1, retain=True)
                announced.add(topic)
        await client.publish(f"{self.prefix}/{reading.device}/state",
                             json.dumps(state(reading)), qos=1, retain=True)
        self.published += 1
