"""BLE: recorded BTHome v2 advertisements (service data of UUID 0xFCD2) through bthome-ble
into readings with a durable, gateway-made seq; no adapter -> one clear log line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from machi_gateway.core import Core
from machi_gateway.ingress.ble import BleIngress, device_id, parse_bthome
from machi_gateway.registry import Registry
from machi_gateway.stats import IngressStats

MAC = "A4:C1:38:8D:18:B2"
# BTHome v2 examples (bthome.io/format): 0x40 = v2 unencrypted; 00 = packet id;
# 02 = temperature 0.01 °C (int16); 03 = humidity 0.01 % (uint16); 01 = battery %.
TEMP_HUM = bytes.fromhex("40000902ca0903bf13")          # pid 9, 25.06 °C, 50.55 %
TEMP_HUM_NEXT = bytes.fromhex("40000a02cb0903c013")     # pid 10, 25.07 °C, 50.56 %
BATT_PRESSURE = bytes.fromhex("40" "000b" "0161" "04138a01")  # pid 11, 97 %, 1008.83 hPa


class NoAdapter:
    def __init__(self, **kw: Any) -> None:
        pass

    async def start(self) -> None:
        raise FileNotFoundError(2, "No such file or directory: /run/dbus/system_bus_socket")


def test_parse_recorded_advertisements() -> None:
    pid, ms = parse_bthome(MAC, TEMP_HUM, -60)
    assert pid == 9
    assert {(m.name, m.unit, m.value) for m in ms} == {("temperature", "Cel", 25.06),
                                                       ("humidity", "%RH", 50.55)}
    pid, ms = parse_bthome(MAC, BATT_PRESSURE, -70)
    values = {m.name: (m.unit, m.value) for m in ms}
    assert pid == 11 and values["battery"] == ("%", 97)
    assert values["pressure"][0] == "Pa" and values["pressure"][1] == pytest.approx(100883)


async def test_advertisements_become_readings_with_durable_seq(
    tmp_path: Path, store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    dev = device_id(MAC)
    assert dev == "ble-a4c1388d18b2"
    path = tmp_path / "devices.json"
    path.write_text(json.dumps({"devices": [{"id": dev, "type": "ble"}]}))
    reg = Registry(path)
    reg.reload_if_changed()
    stats = IngressStats()
    core = Core(reg, store, stats)
    state = tmp_path / "ble.sqlite3"
    with caplog.at_level("ERROR"):
        async with BleIngress(core, state_file=state, scanner_factory=NoAdapter) as ble:
            assert not ble.scanning
            r1 = await ble.advertisement(MAC, TEMP_HUM, -60)
            assert await ble.advertisement(MAC, TEMP_HUM, -61) is None  # a repeat
            r2 = await ble.advertisement(MAC, TEMP_HUM_NEXT, -59)
            assert await ble.advertisement(MAC, b"\x40\x02", -50) is None  # truncated
    assert [r.message for r in caplog.records if "ble" in r.name] == [
        caplog.records[0].message]  # exactly one line about the missing adapter
    assert "no Bluetooth adapter" in caplog.records[0].message
    assert r1 is not None and r2 is not None
    assert (r1.seq, r2.seq, r1.transport, r1.meta["rssi"]) == (0, 1, "ble", -60)
    # After a restart: the last packet id is remembered, the counter continues.
    async with BleIngress(core, state_file=state, scanner_factory=NoAdapter) as ble:
        assert await ble.advertisement(MAC, TEMP_HUM_NEXT, -59) is None
        r3 = await ble.advertisement(MAC, BATT_PRESSURE, -70)
        assert r3 is not None and r3.seq == 2
    assert store.depth == 3 and stats.rejected["bthome"] == 1
