"""The LoRa compact-frame decoder (contract C6) against tests/vectors/lora-frames.json,
garbage (hypothesis), and the firmware's copy of the profile table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machi_gateway.errors import BadReading, UnknownDevice
from machi_gateway.lora import frame, profiles
from machi_gateway.registry import Device, parse_devices

REPO = Path(__file__).resolve().parents[2]
VECTORS = json.loads((REPO / "tests" / "vectors" / "lora-frames.json").read_text())
DEVICES = parse_devices(json.dumps({"devices": VECTORS["devices"]}))
BY_SHORT = {d.short_id: d for d in DEVICES.values() if d.short_id is not None}
RECEIVED = 1795390000.5


def lookup(short_id: int) -> Device | None:
    return BY_SHORT.get(short_id)


def _firmware_lorawire() -> Any:
    """firmware/lib/lorawire.py under CPython (it imports the firmware's cbor module)."""
    import sys
    lib = str(REPO / "firmware" / "lib")
    sys.path.insert(0, lib)
    try:
        spec = importlib.util.spec_from_file_location("fw_lorawire", Path(lib) / "lorawire.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(lib)


@pytest.mark.parametrize("vec", VECTORS["frames"], ids=[v["name"] for v in VECTORS["frames"]])
def test_frame_vectors_decode(vec: dict[str, Any]) -> None:
    r = frame.decode(bytes.fromhex(vec["hex"]), registry_lookup=lookup, received=RECEIVED,
                     transport="lora")
    want = vec["reading"]
    assert (r.device, r.seq, r.transport) == (want["device"], want["seq"], "lora")
    assert r.time == RECEIVED - want["age_s"]
    assert r.received == RECEIVED
    assert [m.to_wire() for m in r.measurements] == want["m"]
    # ints stay ints, exactly as the CoAP path gives integral values
    for m, w in zip(r.measurements, want["m"], strict=True):
        assert type(m.value) is type(w.get("v", w.get("vs", w.get("vb"))))
    assert r.meta["profile"] == vec["profile"]


@pytest.mark.parametrize("vec", VECTORS["frames"], ids=[v["name"] for v in VECTORS["frames"]])
def test_gateway_encoder_matches_vectors(vec: dict[str, Any]) -> None:
    dev = DEVICES[vec["device"]]
    assert dev.short_id is not None and dev.key is not None
    values = {n: v for n, _u, v in vec["input"]}
    out = frame.encode(profiles.by_name(vec["profile"]), dev.short_id, vec["seq"], dev.key,
                       values, age_s=vec["age_s"],
                       command_results={int(c): r for c, r in vec["results"].items()})
    assert out.hex() == vec["hex"]


@pytest.mark.parametrize("vec", VECTORS["invalid"], ids=[v["name"] for v in VECTORS["invalid"]])
def test_invalid_vectors_refused_with_reason(vec: dict[str, Any]) -> None:
    exc_type = {"BadReading": BadReading, "UnknownDevice": UnknownDevice}[vec["error"]]
    with pytest.raises(exc_type) as info:
        frame.decode(bytes.fromhex(vec["hex"]), registry_lookup=lookup, received=RECEIVED,
                     transport="lora")
    assert type(info.value) is exc_type
    assert info.value.reason == vec["reason"]


def test_unknown_device_is_a_401() -> None:
    assert UnknownDevice.code == "4.01" and BadReading.code == "4.00"


def test_transport_is_the_callers() -> None:
    vec = VECTORS["frames"][0]
    r = frame.decode(bytes.fromhex(vec["hex"]), registry_lookup=lookup, received=1.0,
                     transport="lorawan")
    assert r.transport == "lorawan"


def test_firmware_profile_table_is_the_gateway_table() -> None:
    fw = _firmware_lorawire()
    gw = profiles.table()
    assert [p[0] for p in fw.PROFILES] == sorted(gw)
    for pid, name, metrics in fw.PROFILES:
        prof = gw[pid]
        assert prof.name == name
        assert [(m.name, m.unit, m.kind, m.step, m.offset, m.values or None, m.optional)
                for m in prof.metrics] == [tuple(m) for m in metrics]


def test_firmware_result_codes_are_the_gateway_table() -> None:
    fw = _firmware_lorawire()
    assert fw.RESULTS == profiles.results() and fw.TEXT_MAX == frame.TEXT_MAX
    assert profiles.results()[0] == "ok"  # code 0 = ok: one byte for the usual answer


def test_command_results_become_the_coap_paths_cmd_measurements() -> None:
    vec = next(v for v in VECTORS["frames"] if v["name"] == "light-cmd-failed")
    r = frame.decode(bytes.fromhex(vec["hex"]), registry_lookup=lookup, received=RECEIVED,
                     transport="lora")
    cmds = [(m.name, m.unit, m.value) for m in r.measurements if m.name.startswith("cmd/")]
    assert cmds == [("cmd/200", None, "err:level"), ("cmd/201", None, "ok")]
    # the core strips them into {cid: result} exactly as for a SenML pack
    from machi_gateway.core import split_command_results
    kept, results = split_command_results(r)
    assert results == {200: "err:level", 201: "ok"}
    assert not any(m.name.startswith("cmd/") for m in kept.measurements)


def test_a_typical_light_reading_with_a_result_fits_sf10() -> None:
    vec = next(v for v in VECTORS["frames"] if v["name"] == "light-cmd-ok")
    assert vec["bytes"] <= 24  # SF10's dwell limit (docs/protocol-lora.md §5)


def test_gateway_encoder_refuses_a_result_text_too_long() -> None:
    assert KEYED.short_id is not None and KEYED.key is not None
    with pytest.raises(ValueError):
        frame.encode(profiles.by_name("env"), KEYED.short_id, 1, KEYED.key, {},
                     command_results={1: "err:" + "x" * 21})


def test_firmware_encoder_under_cpython_agrees() -> None:
    fw = _firmware_lorawire()
    for vec in VECTORS["frames"]:
        dev = DEVICES[vec["device"]]
        enc = fw.FrameEncoder(vec["profile"], dev.short_id, dev.key)
        out = enc.encode(vec["seq"], [tuple(m) for m in vec["input"]], vec["age_s"])
        assert bytes(out).hex() == vec["hex"], vec["name"]


def test_decoded_values_are_rounded_to_the_step() -> None:
    bat = profiles.by_name("env").metrics[-1]
    assert bat.name == "bat" and bat.decode(15) == 4 and bat.decode(13) == 3.96
    assert bat.decode(-1) == 3.68


def test_profile_json_is_validated() -> None:
    with pytest.raises(ValueError):
        profiles.parse({"profiles": [{"id": 0, "name": "x", "metrics": []}]})
    with pytest.raises(ValueError):
        profiles.parse({"profiles": [{"id": 5, "name": "x", "metrics": [
            {"n": "a", "kind": "enum"}]}]})


# ---- garbage: only BadReading / UnknownDevice, ever ----------------------------------------

KEYED = DEVICES["env-0001"]


def _decode_ok_or_refused(data: bytes) -> None:
    try:
        r = frame.decode(data, registry_lookup=lookup, received=RECEIVED, transport="lora")
    except (BadReading, UnknownDevice):
        return
    assert r.device in DEVICES


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    _decode_ok_or_refused(data)


@settings(max_examples=500, deadline=None)
@given(profile=st.sampled_from([1, 2, 3, 0, 200]), body=st.binary(max_size=40))
def test_garbage_with_a_valid_mic_never_raises_anything_else(profile: int, body: bytes) -> None:
    # past the MIC check: the parser itself meets the garbage
    assert KEYED.short_id is not None and KEYED.key is not None
    head = bytes([profile]) + KEYED.short_id.to_bytes(2, "big") + body
    _decode_ok_or_refused(head + frame.mic(KEYED.key, head))


LIGHT = DEVICES["light-0003"]


@settings(max_examples=400, deadline=None)
@given(tail=st.binary(max_size=40), head=st.sampled_from([0xA0, 0xA1, 0xA2, 0xB7, 0xB8, 0xBB]))
def test_garbage_results_maps_behind_a_valid_mic(tail: bytes, head: int) -> None:
    # a good light reading whose last item is a hostile map: refused with a reason, or
    # cmd/<cid> measurements the core can take (cid <= 65535, text results)
    assert LIGHT.short_id is not None and LIGHT.key is not None
    body = bytes([3]) + LIGHT.short_id.to_bytes(2, "big") + b"\x01" + \
        bytes([0x87, 1, 0, 3, 4, 0, 1, head]) + tail
    try:
        r = frame.decode(body + frame.mic(LIGHT.key, body), registry_lookup=lookup,
                         received=RECEIVED, transport="lora")
    except (BadReading, UnknownDevice) as exc:
        assert exc.reason in ("bad-cbor", "bad-values"), exc.reason
        return
    for m in r.measurements[6:]:
        assert m.name.startswith("cmd/") and int(m.name[4:]) <= 0xFFFF
        assert isinstance(m.value, str) and len(m.value.encode()) <= frame.TEXT_MAX


RESULT = st.one_of(st.sampled_from(profiles.results()),
                   st.text(max_size=24).filter(lambda t: len(t.encode()) <= 24))


@settings(max_examples=200, deadline=None)
@given(seq=st.integers(0, 2**63 - 1), age=st.integers(0, 10**6),
       temp=st.floats(-40, 80), lux=st.integers(0, 2**20),
       failed=st.sets(st.sampled_from(["temp", "hum", "pres", "pm25", "pm10", "lux", "bat"])),
       results=st.dictionaries(st.integers(0, 0xFFFF), RESULT, max_size=8))
def test_encode_decode_round_trip(seq: int, age: int, temp: float, lux: int,
                                  failed: set[str], results: dict[int, str]) -> None:
    assert KEYED.short_id is not None and KEYED.key is not None
    values = {"temp": temp, "hum": 40, "pres": 95000, "pm25": 8, "pm10": 15, "lux": lux,
              "bat": 3.7}
    for name in failed:
        del values[name]
    data = frame.encode(profiles.by_name("env"), KEYED.short_id, seq, KEYED.key, values,
                        age_s=age, command_results=results)
    r = frame.decode(data, registry_lookup=lookup, received=RECEIVED, transport="lora")
    assert r.seq == seq and r.time == RECEIVED - age
    got = {m.name: m.value for m in r.measurements}
    for cid, result in results.items():
        assert got.pop(f"cmd/{cid}") == result
    if failed:
        order = [m.name for m in profiles.by_name("env").metrics]
        assert got.pop("err") == ",".join(n for n in order if n in failed)
    assert set(got) == set(values)
    if "temp" in values:
        assert abs(float(got["temp"]) - temp) <= 0.125 + 1e-9
    if "lux" in values:
        assert got["lux"] == lux
