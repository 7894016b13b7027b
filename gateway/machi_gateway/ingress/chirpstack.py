"""LoRaWAN through a network server: ChirpStack (v4) MQTT integration, via aiomqtt.

ChirpStack publishes one JSON event per uplink on
``application/<app id>/device/<dev eui>/event/up``::

    {"deviceInfo": {"applicationId": "...", "devEui": "0101...", ...}, "fCnt": 10,
     "fPort": 1, "data": "<base64: our compact frame>",
     "rxInfo": [{"gatewayId": "...", "rssi": -57, "snr": 10.0}, ...], ...}

``data`` is the same compact frame a raw LoRa node sends (the decoder is injected); the
reading's transport is ``lorawan`` and ``meta`` keeps ``dev_eui``, ``fcnt`` and the best
gateway's ``rssi``/``snr``. Commands for the device are enqueued as a downlink on
``application/<app id>/device/<dev eui>/command/down`` (ChirpStack then sends it in the
device's next RX window). The connection is retried forever with capped backoff; a bad
event is counted and logged, never fatal.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace

import aiomqtt

from ..errors import BadReading, ResponseError
from ..model import Value
from .base import Ingress, Sink
from .frames import DownlinkEncoder, FrameDecoder, Lookup, ack_downlink

log = logging.getLogger(__name__)

DOWNLINK_FPORT = 10


def parse_event(body: bytes) -> tuple[bytes, dict[str, Value], str | None]:
    """(frame, meta, application id) from an uplink event; BadReading if unusable."""
    try:
        doc = json.loads(body)
        info = doc["deviceInfo"]
        dev_eui = str(info["devEui"]).lower()
        frame = base64.b64decode(doc["data"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise BadReading("lorawan-event", f"not a ChirpStack uplink event: {exc!r}") from exc
    meta: dict[str, Value] = {"dev_eui": dev_eui}
    if isinstance(doc.get("fCnt"), int):
        meta["fcnt"] = doc["fCnt"]
    rx = [r for r in doc.get("rxInfo") or [] if isinstance(r, dict)
          and isinstance(r.get("rssi"), int | float)]
    if rx:
        best = max(rx, key=lambda r: r["rssi"])
        meta["rssi"] = best["rssi"]
        if isinstance(best.get("snr"), int | float):
            meta["snr"] = best["snr"]
        if isinstance(best.get("gatewayId"), str):
            meta["gateway_eui"] = best["gatewayId"]
    app = info.get("applicationId")
    return frame, meta, app if isinstance(app, str) else None


class ChirpstackIngress(Ingress):
    """Subscribes to uplink events while entered."""

    transport = "lorawan"

    def __init__(self, sink: Sink, *, decode: FrameDecoder, registry_lookup: Lookup,
                 host: str, port: int, username: str = "", password: str = "",
                 topic: str = "application/+/device/+/event/up",
                 downlink: DownlinkEncoder = ack_downlink,
                 reconnect_max_s: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.sink = sink
        self.decode = decode
        self.registry_lookup = registry_lookup
        self.host = host
        self.port = port
        self.username = username or None
        self.password = password or None
        self.topic = topic
        self.encode_downlink = downlink
        self.reconnect_max_s = reconnect_max_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.downlinks = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chirpstack")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            log.info("chirpstack stopped")

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, username=self.username,
                                          password=self.password, keepalive=30,
                                          timeout=10) as client:
                    await client.subscribe(self.topic, qos=1)
                    log.info("chirpstack: subscribed to %s on %s:%d", self.topic, self.host,
                             self.port)
                    failures = 0
                    self.connected.set()
                    async for message in client.messages:
                        await self._event(client, bytes(message.payload)
                                          if isinstance(message.payload, bytes | bytearray)
                                          else str(message.payload).encode())
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                failures += 1
                delay = min(self.reconnect_max_s, 2.0 ** min(failures, 5)) * random.random()
                log.warning("chirpstack: MQTT %s:%d: %s (retry in %.1f s)", self.host,
                            self.port, exc, delay)
                await asyncio.sleep(delay)

    async def _event(self, client: aiomqtt.Client, body: bytes) -> None:
        try:
            frame, meta, app = parse_event(body)
            reading = self.decode(frame, registry_lookup=self.registry_lookup,
                                  received=self._clock(), transport=self.transport)
        except ResponseError as exc:
            self.sink.rejected(self.transport, exc.reason)
            log.warning("chirpstack event: %s", exc.detail)
            return
        reading = replace(reading, meta={**reading.meta, **meta})
        try:
            receipt = await self.sink.accept(reading)
        except ResponseError as exc:
            log.warning("chirpstack %s seq %d: %s", reading.device, reading.seq, exc.detail)
            return
        if receipt.commands and app is not None:
            body = self.encode_downlink(reading.device, receipt)
            dev_eui = str(meta["dev_eui"])
            await client.publish(
                f"application/{app}/device/{dev_eui}/command/down",
                json.dumps({"devEui": dev_eui, "confirmed": False, "fPort": DOWNLINK_FPORT,
                            "data": base64.b64encode(body).decode("ascii")}), qos=1)
            self.downlinks += 1
