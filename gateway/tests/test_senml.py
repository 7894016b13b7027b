"""The shared SenML vectors: every valid pack decodes to its reading, every invalid one
gets its code with a countable reason."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import cbor2
import pytest

from machi_gateway.errors import BadReading
from machi_gateway.model import Measurement, Reading
from machi_gateway.senml import MAX_READINGS, decode_pack, decode_readings

RECEIVED = 1795399999.5


def _m(m: Any) -> dict[str, Any]:
    return {k: v for k, v in m.to_wire().items()}


def test_valid_vectors(vectors: Callable[[str], Any]) -> None:
    cases = vectors("senml-readings.json")
    assert len(cases) >= 5
    for case in cases:
        r = decode_pack(bytes.fromhex(case["hex"]), received=RECEIVED, transport="coap")
        want = case["reading"]
        assert (r.device, r.seq) == (want["device"], want["seq"]), case["name"]
        assert r.time == (want["time"] if want["time"] is not None else RECEIVED), case["name"]
        assert r.received == RECEIVED
        assert [_m(m) for m in r.measurements] == want["m"], case["name"]
        # The value types survive: ints stay ints, booleans stay booleans.
        for got, exp in zip(r.measurements, want["m"], strict=True):
            value = exp.get("v", exp.get("vs", exp.get("vb")))
            assert type(got.value) is type(value), (case["name"], got)


def test_invalid_vectors_with_code_400(vectors: Callable[[str], Any]) -> None:
    reasons = {}
    for case in vectors("senml-invalid.json"):
        payload = bytes.fromhex(case["hex"])
        if case["code"] != "4.00":
            continue
        with pytest.raises(BadReading) as exc:
            decode_pack(payload, received=RECEIVED, transport="coap")
        assert exc.value.code == "4.00"
        assert exc.value.detail.startswith(exc.value.reason)
        reasons[case["name"]] = exc.value.reason
    assert reasons == {
        "not-cbor": "cbor", "not-array": "not-a-pack", "empty-pack": "not-a-pack",
        "no-bn": "no-bn", "no-seq": "no-seq", "negative-seq": "bad-seq",
        "float-seq": "bad-seq", "two-values": "value-count", "no-value": "value-count",
        "bad-name": "bad-name", "pack-bad-second": "bad-value",
        "pack-mixed-device": "mixed-device", "pack-too-many": "too-many-readings",
        "pack-bt-carry": "base-carry",
    }


def test_unknown_device_vector_decodes(vectors: Callable[[str], Any]) -> None:
    """4.01 is the registry's answer, so the pack itself must be well formed."""
    case = next(c for c in vectors("senml-invalid.json") if c["name"] == "unknown-device")
    r = decode_pack(bytes.fromhex(case["hex"]), received=RECEIVED, transport="coap")
    assert r.device == "nobody-0001"


def _pack(*records: dict[int, Any]) -> bytes:
    return bytes(cbor2.dumps(list(records)))


META = {0: "seq", 2: 3, -2: "env-0001:"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_pack(META) + b"\x00", "cbor"),
        (cbor2.dumps([[1]]), "not-a-record"),
        (_pack({**META, "x": 1}), "bad-label"),
        (_pack({**META, -2: "Env 1:"}), "bad-bn"),
        (_pack({**META, -2: "env-0001"}), "bad-bn"),
        (_pack({**META, 2: 2**63}), "bad-seq"),
        (_pack({**META, 2: True}), "bad-seq"),
        (_pack({0: "seq", -2: "env-0001:"}), "bad-seq"),
        (_pack({**META, -3: "now"}), "bad-time"),
        (_pack({**META, -1: 99}), "bad-version"),
        (_pack(META, {0: "t", 2: float("nan")}), "bad-value"),
        (_pack(META, {0: "t", 3: 5}), "bad-value"),
        (_pack(META, {0: "t", 4: 1}), "bad-value"),
        (_pack(META, {2: 1}), "bad-name"),
        # a second seq record starts a second reading, which must name its device
        (_pack(META, {0: "seq", 2: 1}), "no-bn"),
        (_pack({**META, -4: "Cel"}, {0: "t", 2: 1}, {**META, 2: 4}), "base-carry"),
        (_pack(META, {0: "t", 2: 1}, {**META, 2: 4, 0: "seq", 3: "x"}), "bad-label"),
        (_pack(META, {0: "t", 1: "", 2: 1}), "bad-unit"),
        (_pack(META, {0: "t", 2: 1, 6: 10}), "record-time"),
        (_pack(META, {0: "t", 2: 1, 5: 1}), "bad-label"),
        (_pack(META, {0: "t", 2: 1, -2: "x:"}), "bad-label"),
        (_pack(META, {0: "t", 2: 1}, {0: "t", 2: 2}), "duplicate-name"),
    ],
)
def test_precise_reasons(payload: bytes, reason: str) -> None:
    with pytest.raises(BadReading) as exc:
        decode_pack(payload, received=RECEIVED, transport="coap")
    assert exc.value.reason == reason


def test_base_unit_and_zero_offset_and_no_measurements() -> None:
    r = decode_pack(_pack({**META, -4: "Cel"}, {0: "a", 2: 1, 6: 0}, {0: "b", 1: "%", 2: 2}),
                    received=RECEIVED, transport="coap")
    assert [(m.name, m.unit) for m in r.measurements] == [("a", "Cel"), ("b", "%")]
    heartbeat = decode_pack(_pack(META), received=RECEIVED, transport="coap")
    assert heartbeat.measurements == () and heartbeat.seq == 3


def test_reading_roundtrips_through_wire_form(vectors: Callable[[str], Any]) -> None:
    for case in vectors("senml-readings.json"):
        r = decode_pack(bytes.fromhex(case["hex"]), received=RECEIVED, transport="coap")
        assert Reading.from_wire(cbor2.loads(cbor2.dumps(r.to_wire()))) == r


def test_multi_reading_vectors(vectors: Callable[[str], Any]) -> None:
    """A pack of several readings (a node's backlog) decodes to each, in order."""
    cases = vectors("senml-readings-multi.json")
    assert {len(c["readings"]) for c in cases} >= {2, 3, MAX_READINGS}
    for case in cases:
        payload = bytes.fromhex(case["hex"])
        got = decode_readings(payload, received=RECEIVED, transport="coap")
        assert len(got) == len(case["readings"]), case["name"]
        for r, want in zip(got, case["readings"], strict=True):
            assert (r.device, r.seq) == (want["device"], want["seq"]), case["name"]
            assert r.time == (want["time"] if want["time"] is not None else RECEIVED)
            assert [_m(m) for m in r.measurements] == want["m"], case["name"]
        # decode_pack is the one-reading form: it refuses a pack of several
        with pytest.raises(BadReading) as exc:
            decode_pack(payload, received=RECEIVED, transport="coap")
        assert exc.value.reason == "several-readings"


def test_single_reading_vectors_are_packs_of_one(vectors: Callable[[str], Any]) -> None:
    for case in vectors("senml-readings.json"):
        [r] = decode_readings(bytes.fromhex(case["hex"]), received=RECEIVED, transport="coap")
        assert r.seq == case["reading"]["seq"]


def test_multi_reading_details() -> None:
    second = {**META, 2: 4}
    # the same seq twice is well formed (the store keeps one); bt may appear late
    timed = {**META, -3: 1795390000}
    rs = decode_readings(_pack(META, {0: "t", 2: 1}, timed, timed),
                         received=RECEIVED, transport="coap")
    assert [(r.seq, r.time) for r in rs] == [(3, RECEIVED), (3, 1795390000), (3, 1795390000)]
    assert [len(r.measurements) for r in rs] == [1, 0, 0]
    # a bad reading is named by its position in the pack
    with pytest.raises(BadReading) as exc:
        decode_readings(_pack(META, second, {0: "t", 2: float("inf")}),
                        received=RECEIVED, transport="coap")
    assert exc.value.reason == "bad-value"
    assert exc.value.detail.startswith("bad-value: reading 2 of 2: t:")
    many = _pack(*[{**META, 2: i} for i in range(MAX_READINGS + 1)])
    with pytest.raises(BadReading) as exc:
        decode_readings(many, received=RECEIVED, transport="coap")
    assert exc.value.reason == "too-many-readings"


def test_decoded_objects_equal_what_the_checking_constructors_make(
    vectors: Callable[[str], Any]
) -> None:
    """The decoder builds Reading/Measurement without their __post_init__ re-checks (it
    checked more strictly): the objects must be exactly what the constructors make."""
    cases = vectors("senml-readings.json") + vectors("senml-readings-multi.json")
    for case in cases:
        for r in decode_readings(bytes.fromhex(case["hex"]), received=RECEIVED,
                                 transport="coap"):
            rebuilt = Reading(device=r.device, seq=r.seq, time=r.time, received=r.received,
                              transport=r.transport, measurements=tuple(
                                  Measurement(m.name, m.unit, m.value) for m in r.measurements))
            assert rebuilt == r and hash(rebuilt) == hash(r) and dict(r.meta) == {}
    # every field of the model is set by the decoder: a new field must be added there too
    assert [f.name for f in dataclasses.fields(Reading)] == [
        "device", "seq", "time", "received", "transport", "measurements", "meta"]
    assert [f.name for f in dataclasses.fields(Measurement)] == ["name", "unit", "value"]
    with pytest.raises(ValueError):
        decode_readings(bytes.fromhex(cases[0]["hex"]), received=float("nan"), transport="coap")


def _outcome(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        got = fn(*args)
    except BadReading as exc:
        return ("rejected", exc.reason, exc.detail)
    if isinstance(got, tuple) and got and isinstance(got[0], Measurement):
        return [(m.name, m.unit, type(m.value), m.value) for m in got]  # True != 1 here
    return got


def test_fast_paths_agree_with_the_full_checks() -> None:
    """The decoder's fast paths for the common records (no set operations, cached names)
    accept and refuse exactly what the field-by-field checks do, with the same reason."""
    import itertools
    import random

    from machi_gateway import senml

    rnd = random.Random(8)
    values = [None, 0, -1, 2**63, -(2**63) - 1, 1.5, float("inf"), float("nan"), "", "x",
              True, False, b"b", [1], {0: 1}]
    names = ["temp", "cmd/3", "seq", "", "bad name", 5, None, "temp"]
    units = [None, "Cel", "", 3, b"u"]
    labels = [senml.N, senml.U, senml.V, senml.VS, senml.VB, senml.T, senml.BN, 77]
    for _ in range(4000):
        keys = rnd.sample(labels, rnd.randrange(0, 5))
        rec: dict[int, Any] = {}
        for k in keys:
            rec[k] = (rnd.choice(names) if k == senml.N else rnd.choice(units)
                      if k == senml.U else rnd.choice([0, 0.0, 1]) if k == senml.T
                      else rnd.choice(values))
        for bu in (None, "V"):
            fast = _outcome(senml._measurements, [{}, rec], bu)
            slow = _outcome(lambda r, b: (senml._measurement_checked(1, r, b),), rec, bu)
            assert fast == slow, (rec, bu)
    metas: list[dict[int, Any]] = [{0: "seq", 2: 5, -2: "env-0001:"}]
    extras: list[dict[int, Any]] = [{}, {-1: 10}, {-1: 11}, {6: 0}, {0: "x"}]
    for bn, seq, bt, bu2, extra in itertools.product(
            ["env-0001:", "env-0001", "Env:", 7, "x" * 40 + ":"], [0, -1, 2**63, 1.0, True],
            [None, 5, 1.5, float("nan"), True, 2**63], [None, "V", "", 3], extras):
        meta: dict[int, Any] = {0: "seq", 2: seq, -2: bn, **extra}
        if bt is not None:
            meta[-3] = bt
        if bu2 is not None:
            meta[-4] = bu2
        metas.append(meta)
    for meta in metas:
        for _ in range(2):  # the second time, the base name may come from the cache
            assert _outcome(senml._meta, meta) == _outcome(senml._meta_checked, meta), meta


@pytest.mark.parametrize(("record0", "record1", "reason"), [
    ({0: "seq", 2: 1, -2: "env-0001\n:"}, {0: "temp", 2: 1.0}, "bad-bn"),
    ({0: "seq", 2: 1, -2: "env-0001:"}, {0: "temp\n", 2: 1.0}, "bad-name"),
])
def test_a_trailing_newline_is_not_part_of_a_valid_id(
        record0: dict[int, Any], record1: dict[int, Any], reason: str) -> None:
    with pytest.raises(BadReading) as exc:
        decode_pack(_pack(record0, record1), received=RECEIVED, transport="coap")
    assert exc.value.reason == reason
    with pytest.raises(ValueError):
        Measurement("temp\n", None, 1.0)
