"""BLE battery sensors advertising BTHome v2: scanned with bleak, decoded by ``bthome-ble``
(Home Assistant's parser: we do not write our own).

Identity. A BTHome sensor has no seq of its own that survives its battery change, only
an 8-bit *packet id* that changes when the measurement changes (the same advertisement is
repeated many times). The gateway makes the ``(device, seq)`` identity itself:

- ``device`` is ``ble-<MAC without colons, lowercase>`` (register it like any device);
- ``seq`` is a per-device counter kept in ``ble.sqlite3`` next to the queue. A new packet
  id (or, for sensors without one, a new payload) advances it; repeats of the last packet
  id are dropped. The counter and the last packet id are committed (``synchronous=FULL``)
  *before* the reading goes to the queue, so a seq is never handed out twice, not even
  across a crash, and repeats heard after a restart are still recognised. A crash between
  the two commits only skips a number (gaps are allowed, reuse is not).
- Two gateways hearing the same sensor would number it independently: give each BLE
  sensor to one gateway (its registry).

Values: bthome-ble's sensor keys become measurement names (``temperature``, ``humidity``,
``battery``, ...; ``_<n>`` suffixed for multi-channel devices), Home Assistant units
become SenML ones (°C -> Cel, humidity % -> %RH, hPa/mbar -> Pa x100). RSSI goes to meta.
Encrypted BTHome (bind keys) is not supported yet.

Where there is no adapter or no D-Bus (a container, a CI runner), the scanner logs one
clear line and the gateway runs without BLE.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bleak.backends.device import BLEDevice
from bthome_ble import BTHomeBluetoothDeviceData
from habluetooth import BluetoothServiceInfoBleak

from ..errors import ResponseError
from ..model import Measurement, Reading, Value
from .base import Ingress, Sink

log = logging.getLogger(__name__)

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
_BACKLOG = 256
_SKIP = frozenset({"packet_id", "signal_strength"})

# (HA unit, device class) -> (SenML unit, factor)
_UNITS: dict[tuple[str | None, str | None], tuple[str | None, float]] = {
    ("°C", "temperature"): ("Cel", 1.0), ("%", "humidity"): ("%RH", 1.0),
    ("%", "moisture"): ("%RH", 1.0), ("hPa", "pressure"): ("Pa", 100.0),
    ("mbar", "pressure"): ("Pa", 100.0),
    ("%", "battery"): ("%", 1.0), ("lx", "illuminance"): ("lx", 1.0),
    ("V", "voltage"): ("V", 1.0), ("W", "power"): ("W", 1.0), ("A", "current"): ("A", 1.0),
    ("µg/m³", "pm25"): ("ug/m3", 1.0), ("µg/m³", "pm10"): ("ug/m3", 1.0),
}


def device_id(address: str) -> str:
    return "ble-" + re.sub(r"[^0-9a-f]", "", address.lower())


def _info(address: str, service_data: Mapping[str, bytes], rssi: int) -> Any:
    return BluetoothServiceInfoBleak(
        name=address, address=address, rssi=rssi, manufacturer_data={},
        service_data=dict(service_data), service_uuids=list(service_data), source="machi",
        device=BLEDevice(address, None, None), advertisement=None, connectable=False,
        time=time.monotonic(), tx_power=None)


def parse_bthome(address: str, payload: bytes, rssi: int
                 ) -> tuple[int | None, tuple[Measurement, ...]]:
    """(packet id or None, measurements) of one BTHome service-data payload.

    A fresh parser per advertisement: bthome-ble's own duplicate filter is per parser and
    in memory; ours (above) is durable.
    """
    parser = BTHomeBluetoothDeviceData()
    update = parser.update(_info(address, {BTHOME_UUID: payload}, rssi))
    out: list[Measurement] = []
    packet_id: int | None = None
    for key, value in update.entity_values.items():
        if key.key == "packet_id":
            raw_pid = value.native_value
            packet_id = int(raw_pid) if isinstance(raw_pid, int | float) else None
        if key.key in _SKIP or value.native_value is None:
            continue
        desc = update.entity_descriptions.get(key)
        dclass = getattr(getattr(desc, "device_class", None), "value", None)
        ha_unit = getattr(desc, "native_unit_of_measurement", None)
        unit, factor = _UNITS.get((str(ha_unit) if ha_unit else None, dclass),
                                  (str(ha_unit) if ha_unit else None, 1.0))
        raw = value.native_value
        v: Value
        if isinstance(raw, bool):
            v = raw
        elif isinstance(raw, int | float):
            v = raw * factor if factor != 1.0 else raw
        else:
            v = str(raw)
        name = key.key if key.device_id is None else f"{key.key}_{key.device_id}"
        out.append(Measurement(name=re.sub(r"[^-_:./A-Za-z0-9]", "_", name), unit=unit,
                               value=v))
    return packet_id, tuple(sorted(out, key=lambda m: m.name))


class SeqBook:
    """The durable per-device counters (a tiny SQLite file; blocking calls)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS ble_seq (device TEXT PRIMARY KEY, "
                         "seq INTEGER NOT NULL, marker BLOB NOT NULL)")

    def next(self, device: str, marker: bytes) -> int | None:
        """The new seq for this advertisement, or None if ``marker`` repeats the last."""
        row = self._db.execute("SELECT seq, marker FROM ble_seq WHERE device = ?",
                               (device,)).fetchone()
        if row is not None and bytes(row[1]) == marker:
            return None
        seq = 0 if row is None else int(row[0]) + 1
        self._db.execute("INSERT INTO ble_seq (device, seq, marker) VALUES (?, ?, ?) "
                         "ON CONFLICT (device) DO UPDATE SET seq = excluded.seq, "
                         "marker = excluded.marker", (device, seq, marker))
        return seq

    def close(self) -> None:
        self._db.close()


class BleIngress(Ingress):
    """Scans while entered; :meth:`advertisement` is the whole path for one frame."""

    transport = "ble"

    def __init__(self, sink: Sink, *, state_file: Path,
                 clock: Callable[[], float] = time.time,
                 scanner_factory: Callable[..., Any] | None = None) -> None:
        self.sink = sink
        self.state_file = state_file
        self._clock = clock
        self._scanner_factory = scanner_factory
        self._scanner: Any = None
        self._book: SeqBook | None = None
        self._queue: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue(_BACKLOG)
        self._worker: asyncio.Task[None] | None = None
        self.scanning = False
        self.repeats = 0

    async def start(self) -> None:
        self._book = await asyncio.to_thread(SeqBook, self.state_file)
        self._worker = asyncio.create_task(self._work(), name="ble")
        try:
            factory = self._scanner_factory
            if factory is None:
                from bleak import BleakScanner
                factory = BleakScanner
            self._scanner = factory(detection_callback=self._detected,
                                    service_uuids=[BTHOME_UUID])
            await self._scanner.start()
            self.scanning = True
            log.info("ble: scanning for BTHome v2 advertisements")
        except Exception as exc:  # bleak raises BleakError, DBus errors, OSError, ...
            self._scanner = None
            log.error("ble: no Bluetooth adapter or D-Bus here (%s: %s); BLE ingress off",
                      type(exc).__name__, exc)

    async def stop(self) -> None:
        if self._scanner is not None:
            try:
                await self._scanner.stop()
            except Exception as exc:
                log.warning("ble: stopping the scanner: %r", exc)
            self._scanner = None
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self._book is not None:
            self._book.close()
            self._book = None

    @property
    def address(self) -> tuple[str, int]:
        return ("ble", 0)

    def _detected(self, device: Any, adv: Any) -> None:
        payload = (getattr(adv, "service_data", None) or {}).get(BTHOME_UUID)
        if payload is None:
            return
        try:
            self._queue.put_nowait((str(device.address), bytes(payload), int(adv.rssi)))
        except asyncio.QueueFull:
            self.sink.rejected(self.transport, "overload")

    async def _work(self) -> None:
        while True:
            address, payload, rssi = await self._queue.get()
            try:
                await self.advertisement(address, payload, rssi)
            except Exception:
                log.exception("ble: advertisement from %s failed", address)

    async def advertisement(self, address: str, payload: bytes, rssi: int) -> Reading | None:
        """Decode, number and deliver one BTHome payload; None if a repeat or refused."""
        assert self._book is not None, "start() first"
        try:
            packet_id, measurements = parse_bthome(address, payload, rssi)
        except Exception as exc:  # the parser's errors are not a documented hierarchy
            self.sink.rejected(self.transport, "bthome")
            log.warning("ble %s: not a BTHome v2 payload (%r)", address, exc)
            return None
        if not measurements:
            self.sink.rejected(self.transport, "bthome")
            return None
        dev = device_id(address)
        marker = bytes([packet_id]) if packet_id is not None else b"p" + payload
        seq = await asyncio.to_thread(self._book.next, dev, marker)
        if seq is None:
            self.repeats += 1
            return None
        now = self._clock()
        reading = Reading(device=dev, seq=seq, time=now, received=now,
                          transport=self.transport, measurements=measurements,
                          meta={"rssi": rssi, "mac": address.upper()})
        try:
            await self.sink.accept(reading)
        except ResponseError as exc:
            log.warning("ble %s seq %d: %s", dev, seq, exc.detail)
            return None
        return reading
