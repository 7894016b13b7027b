"""The ingest fast lane (`fastbatch`) gives exactly what the reference parser (`batch`) gives:
the same readings with the same value types, the same rejections, the same errors."""

from __future__ import annotations

from functools import partial
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machi_cloud import batch, fastbatch
from machi_cloud.errors import ProblemError
from machi_tools.fuzzkit import batch_outcome

numbers = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, 1, 1795390000, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**11]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1795390000.5, 1e11, 99999999999.9, -0.0]),
    st.sampled_from([float("inf"), float("-inf"), float("nan")]),
)
edges = st.sampled_from([10**11, 1e11, -1, -0.5, float("nan"), float("inf"), True, None, "1"])
odd = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.binary(max_size=3))
anything = numbers | odd | st.lists(st.integers(), max_size=2)
names = st.sampled_from(["-bad", "t" * 65, "t" * 64, "a.b/c", "temp\n", 5]) | anything
units = st.sampled_from(["", "u" * 33, "u" * 32, 5, b"x"]) | anything


def perturbed(good: Any, wild: dict[str, Any]) -> Any:
    """Mostly valid maps with zero to two keys replaced by odd values or removed."""
    changes = st.dictionaries(st.sampled_from(sorted(wild)), st.none(), max_size=2).flatmap(
        lambda keys: st.fixed_dictionaries({k: wild[k] | st.just(_DROP) for k in keys})
    )
    changes = st.one_of(st.just({}), st.just({}), st.just({}), changes)  # mostly valid
    return st.builds(
        lambda base, over: {k: v for k, v in {**base, **over}.items() if v is not _DROP},
        good,
        changes,
    )


_DROP = object()
good_measurement = st.fixed_dictionaries(
    {"n": st.sampled_from(["temp", "hum", "bat"]), "v": numbers},
    optional={"u": st.sampled_from(["Cel", "%RH", "V"])},
)
measurement = perturbed(
    good_measurement,
    {
        "n": names,
        "u": units,
        "v": numbers | odd,
        "vs": st.text(max_size=3) | st.just("x" * 4097) | anything,
        "vb": st.booleans() | anything,
        "t": anything,
    },
)
good_reading = st.fixed_dictionaries(
    {
        "device": st.sampled_from(["env-0001", "env-0002"]),
        "seq": st.integers(min_value=0, max_value=2**63 - 1),
        "time": st.integers(0, 10**11 - 1) | st.floats(0, 1e11, exclude_max=True),
        "m": st.lists(measurement, max_size=3),
    },
    optional={
        "received": st.integers(0, 10**11 - 1) | st.floats(0, 1e11, exclude_max=True),
        "transport": st.sampled_from(["coap", "lora"]),
    },
)
reading = perturbed(
    good_reading,
    {
        "device": st.sampled_from(["BAD", "env-0001\n", "a" * 33, ""]) | anything,
        "seq": st.sampled_from([2**63, 2**63 - 1, -1, 2**64, True, 1.0])
        | st.integers(min_value=-2, max_value=2**64)
        | anything,
        "time": edges | numbers | odd,
        "received": edges | numbers | odd,
        "transport": st.sampled_from(["", "x" * 33]) | anything,
        "m": st.lists(good_measurement, max_size=2) | anything,
        "extra": anything,
    },
)
body = perturbed(
    st.fixed_dictionaries(
        {
            "gateway": st.just("gw-01"),
            "batch_id": st.just("b-1"),
            "readings": st.lists(reading, max_size=6),
        }
    ),
    {
        "gateway": st.sampled_from(["GW", ""]) | anything,
        "batch_id": st.sampled_from(["", "x" * 65]) | anything,
        "readings": st.lists(reading | anything, max_size=6) | anything,
    },
)


outcome = partial(batch_outcome, refused=ProblemError)


@settings(max_examples=500, deadline=None)
@given(body, st.integers(min_value=0, max_value=8) | st.just(10))
def test_fast_lane_agrees_with_the_reference(obj: dict[str, Any], limit: int) -> None:
    data = cbor2.dumps(obj)
    assert outcome(fastbatch.parse_batch, data, limit) == outcome(batch.parse_batch, data, limit)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xa1", cbor2.dumps({}) + b"\x00", cbor2.dumps([1]), cbor2.dumps("x")],
)
def test_fast_lane_raises_the_reference_errors(data: bytes) -> None:
    assert outcome(fastbatch.parse_batch, data, 10) == outcome(batch.parse_batch, data, 10)
    assert outcome(fastbatch.parse_batch, data, 10)[0] == "error"


def test_fast_lane_takes_the_common_shape_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain batch never reaches the reference validator (else there is no fast lane)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the reference parser was used")

    monkeypatch.setattr(batch, "parse_batch", refuse)
    items = [
        {
            "device": f"env-{i % 3:04d}",
            "seq": i,
            "time": 1795390000 + i,
            "received": 1795390000.5 + i,
            "transport": "coap",
            "m": [
                {"n": "temp", "u": "Cel", "v": 20.5},
                {"n": "n", "v": i},
                {"n": "ok", "vb": True},
                {"n": "fw", "vs": "1.2.0"},
            ],
        }
        for i in range(5)
    ]
    got = fastbatch.parse_batch(
        cbor2.dumps({"gateway": "gw-01", "batch_id": "b", "readings": items}), max_readings=10
    )
    assert [r.seq for r in got.readings] == [0, 1, 2, 3, 4] and got.rejected == ()
    assert got.readings[1].measurements[1] == batch.Measurement("n", None, 1)


_EDGES: list[Any] = [
    None, True, False, 0, 1, -1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**11,
    10**11 - 1, 0.0, -0.0, -0.5, 1e11, 99999999999.9, float("inf"), float("-inf"),
    float("nan"), "", "x", "x" * 32, "x" * 33, "x" * 64, "x" * 65, "x" * 4096, "x" * 4097,
    "ENV", "env-0001\n", "-bad", "a.b/c", b"x", [], [1], {}, {"n": "t"},
]  # fmt: skip
_DROP_KEY = object()


def test_fast_lane_agrees_on_every_single_field_edge() -> None:
    """Each field of a valid reading, and of each kind of measurement, replaced by each
    edge value (or removed): the fast lane and the reference agree on all of them."""
    base_m = [{"n": "temp", "u": "Cel", "v": 20.5}, {"n": "ok", "vb": True}, {"n": "fw", "vs": "1"}]
    base = {"device": "env-0001", "seq": 7, "time": 1795390000, "received": 1795390000.5,
            "transport": "coap", "m": base_m}  # fmt: skip
    variants: list[dict[str, Any]] = []
    for key in [*base, "extra"]:
        for value in [*_EDGES, _DROP_KEY]:
            r = {k: v for k, v in {**base, key: value}.items() if v is not _DROP_KEY}
            variants.append(r)
    for i, m in enumerate(base_m):
        for key in ["n", "u", "v", "vs", "vb", "t"]:
            for value in [*_EDGES, _DROP_KEY]:
                changed = {k: v for k, v in {**m, key: value}.items() if v is not _DROP_KEY}
                variants.append({**base, "m": [*base_m[:i], changed, *base_m[i + 1 :]]})
    variants.append({**base, "m": [*base_m, {"n": "temp", "v": 1}]})  # a metric twice
    for r in variants:
        data = cbor2.dumps({"gateway": "gw-01", "batch_id": "b", "readings": [r]})
        assert outcome(fastbatch.parse_batch, data, 5) == outcome(batch.parse_batch, data, 5), r


def _numeric_batch(k: int) -> Any:
    """Batches whose readings all hold k plainly numeric measurements (names may repeat),
    some perturbed: what the whole-batch lane (`fastbatch._whole_batch`) takes or refuses."""
    m = perturbed(
        st.fixed_dictionaries(
            {"n": st.sampled_from(["temp", "hum", "bat", "t" * 64]), "v": numbers},
            optional={"u": st.sampled_from(["Cel", "%RH", "u" * 32]) | st.none()},
        ),
        {"n": names, "u": units, "v": numbers | odd, "vs": anything, "vb": anything},
    )
    r = perturbed(
        st.fixed_dictionaries(
            {
                "device": st.sampled_from(["env-0001", "env-0002", "a" * 32]),
                "seq": st.integers(min_value=0, max_value=2**63 - 1),
                "time": st.integers(0, 10**11 - 1) | st.floats(0, 1e11, exclude_max=True),
                "m": st.lists(m, min_size=k, max_size=k),
            },
            optional={
                "received": st.none()
                | st.integers(0, 10**11 - 1)
                | st.floats(0, 1e11, exclude_max=True),
                "transport": st.sampled_from(["coap", "x" * 32]),
            },
        ),
        {"device": anything, "seq": numbers | odd, "time": edges | numbers,
         "received": edges | numbers, "transport": anything, "m": anything},
    )  # fmt: skip
    return st.lists(r, max_size=6).map(
        lambda rs: {"gateway": "gw-01", "batch_id": "b-1", "readings": rs}
    )


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=4).flatmap(_numeric_batch))
def test_whole_batch_lane_agrees_with_the_reference(obj: dict[str, Any]) -> None:
    data = cbor2.dumps(obj)
    assert outcome(fastbatch.parse_batch, data, 10) == outcome(batch.parse_batch, data, 10)


def test_numeric_batches_take_the_whole_batch_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of plain numeric readings is validated without the per-reading loop."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the reading by reading lane was used")

    monkeypatch.setattr(fastbatch, "_fast_reading", refuse)
    monkeypatch.setattr(batch, "parse_batch", refuse)
    for k in range(4):
        items = [
            {
                "device": f"env-{i % 3:04d}",
                "seq": i,
                "time": 1795390000 + i,
                **({"received": 1795390000.5 + i} if i % 2 else {}),
                "transport": "coap",
                "m": [{"n": f"m{j}", "u": "V", "v": i + j / 2} for j in range(k)],
            }
            for i in range(5)
        ]
        body = cbor2.dumps({"gateway": "gw-01", "batch_id": "b", "readings": items})
        got = fastbatch.parse_batch(body, max_readings=10)
        assert type(got.readings) is batch.ReadingColumns  # kept as its columns
        assert got.readings.values == [i + j / 2 for i in range(5) for j in range(k)]
        assert [r.seq for r in got.readings] == [0, 1, 2, 3, 4] and got.rejected == ()
        assert [len(r.measurements) for r in got.readings] == [k] * 5
        if k:
            assert got.readings[3].measurements[-1] == batch.Measurement(
                f"m{k - 1}", "V", 3 + (k - 1) / 2
            )
            assert type(got.readings[3].measurements[0]) is batch.Measurement
        assert type(got.readings[0]) is batch.Reading and got.readings[0].received is None


def test_whole_batch_lane_agrees_on_every_single_field_edge() -> None:
    """As above, on a reading with numeric measurements only (the whole-batch lane's
    shape), beside a valid one so the batch has more than one reading."""
    base_m = [{"n": "temp", "u": "Cel", "v": 20.5}, {"n": "hum", "v": 40}]
    base = {"device": "env-0001", "seq": 7, "time": 1795390000, "received": 1795390000.5,
            "transport": "coap", "m": base_m}  # fmt: skip
    variants: list[dict[str, Any]] = []
    for key in [*base, "extra"]:
        for value in [*_EDGES, _DROP_KEY]:
            variants.append({k: v for k, v in {**base, key: value}.items() if v is not _DROP_KEY})
    for i, m in enumerate(base_m):
        for key in ["n", "u", "v", "vs", "vb", "t"]:
            for value in [*_EDGES, _DROP_KEY]:
                changed = {k: v for k, v in {**m, key: value}.items() if v is not _DROP_KEY}
                variants.append({**base, "m": [*base_m[:i], changed, *base_m[i + 1 :]]})
    variants.append({**base, "m": [base_m[0], {"n": "temp", "v": 1}]})  # a metric twice
    for r in variants:
        readings = [{**base, "seq": 1}, r]
        data = cbor2.dumps({"gateway": "gw-01", "batch_id": "b", "readings": readings})
        assert outcome(fastbatch.parse_batch, data, 5) == outcome(batch.parse_batch, data, 5), r
