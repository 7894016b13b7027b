"""The columnar batch form (docs/protocol.md §3): a columnar batch means exactly the row
batch it expands to, through the reference parser (`batch`) and the fast lane
(`fastbatch` + `columnar`) alike; every whole-batch shape error is a 400 naming the column
or series; the usual shapes take the fast lane; the shared vectors agree."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machi_cloud import batch, columnar, fastbatch
from machi_cloud.errors import BadBatch, ProblemError, TooLarge
from machi_tools.fuzzkit import HOSTILE_CBOR_HEADS, batch_outcome, bounded_alloc, fuzz, typed

VECTORS = Path(__file__).resolve().parents[2] / "tests" / "vectors"
PARSERS = [batch.parse_batch, fastbatch.parse_batch]


def to_columns(obj: dict[str, Any], *, sparse: bool = False) -> dict[str, Any] | None:
    """The columnar batch meaning the row batch `obj`, keeping each reading's measurement
    order: one series per (position in m, kind, n, u), dense when it names every reading
    (unless `sparse`). None if the rows cannot be written as columns (a reading or
    measurement that is not a map, an m that is not an array, a measurement without
    exactly one of v, vs, vb: the columnar form has no way to say these)."""
    items = obj.get("readings")
    if not isinstance(items, list) or not all(isinstance(r, dict) for r in items):
        return None
    series: dict[tuple[Any, ...], dict[str, Any]] = {}
    for k, r in enumerate(items):
        ms = r.get("m")
        if not isinstance(ms, list) or not all(isinstance(m, dict) for m in ms):
            return None
        for j, m in enumerate(ms):
            kinds = [key for key in ("v", "vs", "vb") if key in m]
            if len(kinds) != 1:
                return None
            named = tuple((key in m, cbor2.dumps(m.get(key))) for key in ("n", "u"))
            s = series.setdefault(
                (j, kinds[0], named),
                {**{key: m[key] for key in ("n", "u") if key in m}, kinds[0]: [], "i": []},
            )
            s[kinds[0]].append(m[kinds[0]])
            s["i"].append(k)
    for s in series.values():
        if len(s["i"]) == len(items) and not sparse:
            del s["i"]
    cols: dict[str, Any] = {
        "device": [r.get("device") for r in items],
        "seq": [r.get("seq") for r in items],
        "time": [r.get("time") for r in items],
    }
    if any("received" in r for r in items):
        cols["received"] = [r.get("received") for r in items]
    if any("transport" in r for r in items):
        cols["transport"] = [r.get("transport", "unknown") for r in items]
    cols["m"] = [series[key] for key in sorted(series, key=lambda key: key[0])]
    return {**{k: v for k, v in obj.items() if k != "readings"}, "columns": cols}


outcome = partial(batch_outcome, refused=ProblemError)


def same_meaning(rows: Any, cols: Any) -> bool:
    """A row batch's outcome and its columnar twin's: equal, but for the wording of a
    whole-batch error about a reading's identity (it names a column, not a reading map)."""
    if rows[0] == "error" and rows[1] == "BadBatch" and "has no identity" in rows[2]:
        return cols[:2] == rows[:2] and "has no identity" in cols[2]
    return bool(rows == cols)


# ---- random batches --------------------------------------------------------------------

_DROP = object()
numbers = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**11]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1795390000.5, 1e11, 99999999999.9, -0.0, float("nan")]),
)
odd = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.binary(max_size=3),
                st.lists(st.integers(), max_size=2))  # fmt: skip
times = st.integers(0, 10**11 - 1) | st.floats(0, 1e11, exclude_max=True)


def sometimes(good: Any, bad: Any, rare: Any = None, *, percent: int = 20) -> Any:
    """`good`, but `percent` % of the time: `bad` (half of them), `rare` (a quarter; else
    `bad`) or a missing key (a quarter)."""

    def pick(x: int) -> Any:  # x in 0..399: 4 * percent of them not good
        x = 399 - x  # hypothesis draws 0 (the simplest) more often than the others
        if x >= 4 * percent:
            return good
        if x >= percent:
            return bad if rare is None or x >= 2 * percent else rare
        return st.just(_DROP)

    return st.integers(0, 399).flatmap(pick)


def drop(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not _DROP}


@st.composite
def measurement(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["v", "v", "v", "vs", "vb"]))
    value = {
        "v": sometimes(numbers, odd),
        "vs": sometimes(st.text(max_size=3), st.just("x" * 4097) | numbers | odd),
        "vb": sometimes(st.booleans(), numbers | odd),
    }[kind]
    n = sometimes(st.sampled_from(["temp", "hum", "bat"]),
                  st.sampled_from(["-bad", "t" * 65, "t" * 64, "a.b/c", 5, None]))  # fmt: skip
    u = st.sampled_from(["Cel", "%RH", "V", _DROP, _DROP]) | st.sampled_from(
        ["", "u" * 33, "u" * 32, 5, b"x", None]
    )
    m = drop({"n": draw(n), "u": draw(u)})
    v = draw(value)
    m[kind] = None if v is _DROP else v
    return m


reading = st.builds(
    lambda **kw: drop(kw),
    # a device or seq of the wrong type (or none) makes the whole batch a 400: rare
    device=sometimes(st.sampled_from(["env-0001", "env-0002", "bin-7"]),
                     st.sampled_from(["BAD", "a" * 33, ""]), numbers | odd, percent=3),
    seq=sometimes(st.integers(0, 2**63 - 1), st.sampled_from([2**63, -1, 2**64]),
                  st.sampled_from([True, 1.0]) | odd, percent=3),
    time=sometimes(times, numbers | odd),
    received=sometimes(times | st.none(), numbers | odd),
    transport=sometimes(st.sampled_from(["coap", "lora"]), st.sampled_from(["", "x" * 33]) | odd),
    m=st.lists(measurement(), max_size=3),
)  # fmt: skip
row_batch = st.builds(
    lambda readings, gateway, batch_id: drop(
        {"gateway": gateway, "batch_id": batch_id, "readings": readings}
    ),
    st.lists(reading, max_size=6),
    sometimes(st.just("gw-01"), st.just("gw-01"), st.sampled_from(["GW", ""]) | odd, percent=3),
    sometimes(st.just("b-1"), st.just("b-1"), st.sampled_from(["", "x" * 65]) | odd, percent=3),
)


@settings(max_examples=400, deadline=None)
@given(row_batch, st.booleans(), st.integers(min_value=0, max_value=7))
def test_columns_mean_the_row_batch_they_expand_from(
    obj: dict[str, Any], sparse: bool, limit: int
) -> None:
    """Random row batches (valid and invalid readings) written as columns give the same
    readings, rejections and errors, through both parsers."""
    cols = to_columns(obj, sparse=sparse)
    assert cols is not None  # the strategy only makes batches that columns can express
    rows = outcome(batch.parse_batch, cbor2.dumps(obj), limit)
    data = cbor2.dumps(cols)
    ref = outcome(batch.parse_batch, data, limit)
    assert same_meaning(rows, ref), (rows, ref)
    assert outcome(fastbatch.parse_batch, data, limit) == ref


@st.composite
def plain_columns(draw: Any) -> dict[str, Any]:
    """Plainly valid columnar batches (the fast lane's shape: dense, sparse and mixed
    series, mostly numbers, shared names on disjoint readings), then 0..2 entries made odd."""
    n = draw(st.integers(0, 6))
    cols: dict[str, Any] = {
        "device": draw(st.lists(st.sampled_from(["env-0001", "env-0002", "a" * 32]),
                                min_size=n, max_size=n)),
        "seq": draw(st.lists(st.integers(0, 2**63 - 1), min_size=n, max_size=n)),
        "time": draw(st.lists(times, min_size=n, max_size=n)),
    }  # fmt: skip
    if draw(st.booleans()):
        cols["received"] = draw(st.lists(times | st.none(), min_size=n, max_size=n))
    if draw(st.booleans()):
        cols["transport"] = draw(st.lists(st.sampled_from(["coap", "x" * 32]), min_size=n,
                                          max_size=n))  # fmt: skip
    series = []
    for name in draw(st.lists(st.sampled_from(["temp", "hum", "t" * 64]), max_size=4)):
        s: dict[str, Any] = {"n": name}
        if draw(st.booleans()):
            s["u"] = draw(st.sampled_from(["Cel", "u" * 32, None]))
        if draw(st.booleans()):  # sparse
            s["i"] = sorted(draw(st.sets(st.integers(0, max(n - 1, 0)), max_size=n)))
        kind, value = draw(st.sampled_from([
            ("v", numbers.filter(lambda v: v == v and abs(v) < 2**63)),
            ("v", numbers.filter(lambda v: v == v and abs(v) < 2**63)),
            ("vs", st.text(max_size=3) | st.just("x" * 4096)),
            ("vb", st.booleans()),
        ]))  # fmt: skip
        size = len(s.get("i", range(n)))
        s[kind] = draw(st.lists(value, min_size=size, max_size=size))
        series.append(s)
    cols["m"] = series
    for _ in range(draw(st.integers(0, 2))):
        _perturb(draw, cols)
    return {"gateway": "gw-01", "batch_id": "b-1", "columns": cols}


_ODD_ENTRIES: list[Any] = [
    None, True, -1, 2**63, 2**64, 1e11, float("nan"), float("inf"), "", "x" * 33, "ENV", b"x",
    [1], {},
]  # fmt: skip


def _perturb(draw: Any, cols: dict[str, Any]) -> None:
    """One odd change: an entry of a column or series replaced, a key dropped or added,
    an array shortened, an index moved."""
    where = draw(st.sampled_from(["device", "seq", "time", "received", "transport", "m"]))
    col = cols.get(where)
    if where == "m" and isinstance(col, list) and col:
        s = draw(st.sampled_from(col))
        if not isinstance(s, dict):
            return
        key = draw(st.sampled_from(["n", "u", "v", "vs", "vb", "i"]))
        if key in s and isinstance(s[key], list) and s[key] and draw(st.booleans()):
            at = draw(st.integers(0, len(s[key]) - 1))
            s[key][at] = draw(st.sampled_from([*_ODD_ENTRIES, "x" * 4097]) | st.integers(-1, 7))
        elif key in s and draw(st.booleans()):
            del s[key]
        else:
            s[key] = draw(st.sampled_from([*_ODD_ENTRIES, "temp", [0], [1, 0], [0, 0]]))
    elif isinstance(col, list) and col and draw(st.booleans()):
        col[draw(st.integers(0, len(col) - 1))] = draw(st.sampled_from(_ODD_ENTRIES))
    elif isinstance(col, list) and col and draw(st.booleans()):
        col.pop()
    else:
        cols[where] = draw(st.sampled_from([*_ODD_ENTRIES, _DROP]))
        if cols[where] is _DROP:
            del cols[where]


@settings(max_examples=500, deadline=None)
@given(plain_columns(), st.integers(min_value=0, max_value=8))
def test_fast_lane_agrees_with_the_reference_on_columns(obj: dict[str, Any], limit: int) -> None:
    data = cbor2.dumps(obj)
    assert outcome(fastbatch.parse_batch, data, limit) == outcome(batch.parse_batch, data, limit)


@settings(max_examples=200, deadline=None)
@given(plain_columns().filter(lambda o: columnar.parse_columns(o["columns"], 10) is not None))
def test_what_the_fast_lane_takes_it_keeps_as_columns(obj: dict[str, Any]) -> None:
    """Batches the fast lane accepts come back as `ReadingColumns` when every series holds
    numbers (else as a tuple), equal to the reference's readings (with no rejection)."""
    data = cbor2.dumps(obj)
    got = fastbatch.parse_batch(data, max_readings=10)
    numbers_only = all("v" in s for s in obj["columns"]["m"])
    assert type(got.readings) is (batch.ReadingColumns if numbers_only else tuple)
    assert got.rejected == ()
    assert typed(tuple(got.readings)) == typed(batch.parse_batch(data, max_readings=10).readings)


# ---- the usual shapes take the fast lane -----------------------------------------------


def _env_columns(n: int, *, sparse: bool) -> dict[str, Any]:
    series = [{"n": "temp", "u": "Cel", "v": [20 + i / 8 for i in range(n)]},
              {"n": "hum", "u": "%RH", "v": [40 + i for i in range(n)]}]  # fmt: skip
    if sparse:  # hum on every other reading; a third metric on the rest, without a unit
        series[1] = {"n": "hum", "u": "%RH", "v": list(range(0, n, 2)), "i": list(range(0, n, 2))}
        series.append({"n": "bat", "v": [3.3] * (n // 2), "i": list(range(1, n, 2))})
    return {
        "gateway": "gw-01",
        "batch_id": "b-1",
        "columns": {
            "device": [f"env-{i % 3:04d}" for i in range(n)],
            "seq": [i // 3 for i in range(n)],
            "time": [1795390000 + i for i in range(n)],
            "received": [None if i % 4 else 1795390000.5 + i for i in range(n)],
            "transport": ["coap"] * n,
            "m": series,
        },
    }


@pytest.mark.parametrize("sparse", [False, True])
def test_usual_columns_take_the_fast_lane(monkeypatch: pytest.MonkeyPatch, sparse: bool) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the reference parser was used")

    obj = _env_columns(8, sparse=sparse)
    expected = batch.parse_batch(cbor2.dumps(obj), max_readings=10)
    monkeypatch.setattr(batch, "parse_batch", refuse)
    got = fastbatch.parse_batch(cbor2.dumps(obj), max_readings=10)
    assert type(got.readings) is batch.ReadingColumns
    assert got.readings == expected.readings and got.rejected == ()
    c = got.readings
    assert c.lens == [2] * 8
    if sparse:  # reading after reading, in series order
        assert c.names[:4] == ["temp", "hum", "temp", "bat"]
        assert c.units[:4] == ["Cel", "%RH", "Cel", None]
        assert c.values[:4] == [20.0, 0, 20.125, 3.3]
    else:
        assert c.names == ["temp", "hum"] * 8 and c.values[:4] == [20.0, 40, 20.125, 41]
    assert c.received[:2] == [1795390000.5, None] and c.transports == ["coap"] * 8


def test_texts_and_booleans_take_the_fast_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mixed fleet's batch (vs, vb series) is checked column-wise too, and comes back as
    `Reading`s (`ReadingColumns` holds numbers only)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the reference parser was used")

    extras: list[dict[str, Any]] = [
        {"n": "ok", "vb": [True, False]},
        {"n": "fw", "vs": ["1.2", "x" * 4096]},
        {"n": "fw", "vs": ["on"], "i": [1]},
    ]
    for extra in extras:
        obj = _env_columns(2, sparse=False)
        obj["columns"]["m"].append(extra)
        expected = batch.parse_batch(cbor2.dumps(obj), max_readings=10)
        with monkeypatch.context() as patch:
            patch.setattr(batch, "parse_batch", refuse)
            got = fastbatch.parse_batch(cbor2.dumps(obj), max_readings=10)
        assert type(got.readings) is tuple and got.rejected == ()
        assert typed(got.readings) == typed(expected.readings)
        value = next(v for k, v in extra.items() if k in ("vs", "vb"))[-1]
        assert got.readings[1].measurements[-1] == batch.Measurement(extra["n"], None, value)


# ---- whole-batch errors ----------------------------------------------------------------


def _good() -> dict[str, Any]:
    return _env_columns(3, sparse=True)


def _with(change: Any) -> dict[str, Any]:
    obj = _good()
    change(obj, obj["columns"])
    return obj


WHOLE_BATCH = {
    "both readings and columns": (lambda o, c: o.update(readings=[]), "not both"),
    "neither": (lambda o, c: o.pop("columns"), "not neither"),
    "columns not a map": (lambda o, c: o.update(columns=[1]), '"columns" must be a map'),
    "device missing": (lambda o, c: c.pop("device"), '"columns.device" must be an array'),
    "device not an array": (lambda o, c: c.update(device="env-0001"), '"columns.device"'),
    "device entry not a text": (lambda o, c: c["device"].__setitem__(1, 7),
                                "columns.device[1] must be a text string"),
    "seq missing": (lambda o, c: c.pop("seq"), '"columns.seq" must be an array'),
    "seq too short": (lambda o, c: c["seq"].pop(), '"columns.seq" must be an array of one entry'),
    "seq entry not an integer": (lambda o, c: c["seq"].__setitem__(2, 1.0), "columns.seq[2]"),
    "seq entry a boolean": (lambda o, c: c["seq"].__setitem__(0, True), "columns.seq[0]"),
    "time missing": (lambda o, c: c.pop("time"), '"columns.time" must be an array'),
    "time too long": (lambda o, c: c["time"].append(1), '"columns.time"'),
    "received not an array": (lambda o, c: c.update(received=None), '"columns.received"'),
    "received too short": (lambda o, c: c["received"].pop(), '"columns.received"'),
    "transport not an array": (lambda o, c: c.update(transport="coap"), '"columns.transport"'),
    "transport too long": (lambda o, c: c["transport"].append("coap"), '"columns.transport"'),
    "m missing": (lambda o, c: c.pop("m"), '"columns.m" must be an array of series'),
    "m not an array": (lambda o, c: c.update(m={}), '"columns.m" must be an array'),
    "series not a map": (lambda o, c: c["m"].append([]), "columns.m[3] must be a series map"),
    "series without values": (lambda o, c: c["m"][0].pop("v"),
                              "columns.m[0] (temp) must have exactly one value array"),
    "series with two value arrays": (lambda o, c: c["m"][1].update(vs=["a", "b"]),
                                     "columns.m[1] (hum) must have exactly one value array"),
    "values not an array": (lambda o, c: c["m"][0].update(v=21.5), "columns.m[0] (temp).v must"),
    "dense values too few": (lambda o, c: c["m"][0]["v"].pop(),
                             'columns.m[0] (temp).v has 2 values for 3 readings: without "i"'),
    "dense values too many": (lambda o, c: c["m"][0]["v"].append(1), "has 4 values for 3"),
    "i not an array": (lambda o, c: c["m"][1].update(i=0), "columns.m[1] (hum).i must be"),
    "i null": (lambda o, c: c["m"][1].update(i=None), "columns.m[1] (hum).i must be"),
    "i not integers": (lambda o, c: c["m"][1].update(i=[0, 2.0]), "strictly increasing"),
    "i a boolean": (lambda o, c: c["m"][1].update(i=[True, 2]), "strictly increasing"),
    "i not increasing": (lambda o, c: c["m"][1].update(i=[2, 0]), "strictly increasing"),
    "i repeated": (lambda o, c: c["m"][1].update(i=[0, 0]), "strictly increasing"),
    "i negative": (lambda o, c: c["m"][1].update(i=[-1, 0]), "each below 3"),
    "i out of range": (lambda o, c: c["m"][1].update(i=[0, 3]), "each below 3 (the"),
    "i longer than values": (lambda o, c: c["m"][2].update(i=[0, 1]),
                             "columns.m[2] (bat).v has 1 values for 2 indices"),
    "values longer than i": (lambda o, c: c["m"][1]["v"].append(5), "has 3 values for 2"),
    "bad series name, unnamed": (lambda o, c: c["m"][0].update(n="-bad", v=1),
                                 "columns.m[0].v must be an array"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(WHOLE_BATCH))
@pytest.mark.parametrize("parse", PARSERS, ids=["reference", "fast"])
def test_whole_batch_errors_name_the_column_or_series(case: str, parse: Any) -> None:
    change, wording = WHOLE_BATCH[case]
    with pytest.raises(BadBatch) as exc:
        parse(cbor2.dumps(_with(change)), max_readings=10)
    assert wording in str(exc.value)
    assert "columns" in str(exc.value) or case in ("both readings and columns", "neither")


def test_unknown_keys_are_ignored() -> None:
    def change(o: dict[str, Any], c: dict[str, Any]) -> None:
        o["note"] = 1
        c["extra"] = "x"
        c["m"][0]["t"] = [1, 2]

    for parse in PARSERS:
        assert parse(cbor2.dumps(_with(change)), max_readings=10) == parse(
            cbor2.dumps(_good()), max_readings=10
        )


@pytest.mark.parametrize("parse", PARSERS, ids=["reference", "fast"])
def test_too_many_readings_is_413_counted_by_device(parse: Any) -> None:
    obj = _env_columns(6, sparse=False)
    assert len(parse(cbor2.dumps(obj), max_readings=6).readings) == 6
    with pytest.raises(TooLarge, match="the batch has 6 readings; at most 5"):
        parse(cbor2.dumps(obj), max_readings=5)
    obj["columns"]["seq"] = "not even checked"  # the count comes first, as for rows
    with pytest.raises(TooLarge):
        parse(cbor2.dumps(obj), max_readings=5)


@pytest.mark.parametrize("parse", PARSERS, ids=["reference", "fast"])
def test_too_many_values_is_413(parse: Any) -> None:
    """At most 100 values per accepted reading, all series together: a value costs a byte
    as a column, so the 4 MiB body limit alone would let a batch hold 8 times the
    measurements a row batch can."""
    obj = _env_columns(2, sparse=False)
    obj["columns"]["m"] = [{"n": f"m{j}", "v": [j, j]} for j in range(100)]
    assert len(parse(cbor2.dumps(obj), max_readings=2).readings[1].measurements) == 100
    obj["columns"]["m"].append({"n": "one-more", "v": [1.5], "i": [1]})
    with pytest.raises(TooLarge, match="has 201 values in its series; at most 200 "):
        parse(cbor2.dumps(obj), max_readings=2)


# ---- per-reading rejections of the spec ------------------------------------------------


def test_series_faults_reject_the_readings_they_name() -> None:
    """A bad unit rejects each reading the series names; a bad value rejects its own
    reading; a metric twice in one reading rejects that reading; the others are stored."""
    obj = _env_columns(4, sparse=False)
    cols = obj["columns"]
    cols["m"].append({"n": "bat", "u": "", "v": [1, 2], "i": [0, 2]})  # bad unit
    cols["m"][0]["v"][1] = float("nan")  # bad value of reading 1
    cols["m"].append({"n": "hum", "v": [5], "i": [3]})  # hum twice in reading 3
    for parse in PARSERS:
        got = parse(cbor2.dumps(obj), max_readings=10)
        assert [r.reason for r in got.rejected] == [
            "m[2].u (bat) must be a SenML unit text of 1..32 chars",
            "m[0].v (temp) must be a finite number, got nan",
            "m[2].u (bat) must be a SenML unit text of 1..32 chars",
            "metric 'hum' appears more than once in m",
        ]
        assert got.readings == ()


def test_shared_names_on_disjoint_readings_are_fine() -> None:
    """One metric in two units (two series of one name) never meets itself in a reading."""
    obj = _env_columns(4, sparse=False)
    obj["columns"]["m"].append({"n": "p", "u": "hPa", "v": [1000, 1001], "i": [0, 2]})
    obj["columns"]["m"].append({"n": "p", "u": "kPa", "v": [100.0], "i": [3]})
    for parse in PARSERS:
        got = parse(cbor2.dumps(obj), max_readings=10)
        assert got.rejected == ()
        assert [len(r.measurements) for r in got.readings] == [3, 2, 3, 3]
        assert got.readings[3].measurements[2] == batch.Measurement("p", "kPa", 100.0)


# ---- the shared vectors ----------------------------------------------------------------


def _vectors(name: str) -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads((VECTORS / name).read_text())
    return vectors


@pytest.mark.parametrize("case", _vectors("cloud-batches-columns.json"), ids=lambda c: c["name"])
def test_columnar_vectors_mean_their_readings(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["hex"])
    assert cbor2.loads(data) == case["decoded"]
    rows = {k: v for k, v in case["decoded"].items() if k != "columns"}
    rows_body = cbor2.dumps({**rows, "readings": case["readings"]})
    expected = outcome(batch.parse_batch, rows_body, 10)
    assert expected[0] != "error" and expected[3] == typed(())
    for parse in PARSERS:
        assert outcome(parse, data, 10) == expected


def test_columnar_vector_holds_the_row_vectors_readings() -> None:
    [row] = _vectors("cloud-batches.json")
    col = _vectors("cloud-batches-columns.json")[0]
    assert col["readings"] == row["decoded"]["readings"]
    from_rows = batch.parse_batch(bytes.fromhex(row["hex"]), max_readings=10)
    for parse in PARSERS:
        from_columns = parse(bytes.fromhex(col["hex"]), max_readings=10)
        assert typed(tuple(from_columns.readings)) == typed(from_rows.readings)


# ---- hostile bodies --------------------------------------------------------------------


@st.composite
def damaged(draw: Any) -> bytes:
    """A columnar vector with 1..4 bytes flipped, cut, or CBOR heads known to break
    parsers inserted."""
    seeds = [bytes.fromhex(v["hex"]) for v in _vectors("cloud-batches-columns.json")]
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "cut", "head"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 8))]
        else:
            data[pos:pos] = draw(st.sampled_from(HOSTILE_CBOR_HEADS))
        if not data:
            break
    return bytes(data)


@fuzz(300)
@given(damaged())
def test_damaged_columnar_bodies(data: bytes) -> None:
    """Both parsers give the same answer (a batch, or a short 400/413), within the
    allocation bound every parser keeps."""
    with bounded_alloc(len(data)):
        got = [outcome(parse, data, 10) for parse in PARSERS]
    assert got[0] == got[1]
    if got[0][0] == "error":
        assert len(got[0][2]) < 600


@pytest.mark.parametrize("kind", ["v", "vb"])
def test_a_body_at_the_value_cap_stays_bounded(kind: str) -> None:
    """Many one-byte values (the cheapest measurements a body can carry) up to the cap,
    as numbers (the fast lane keeps columns) and booleans (it builds `Reading`s), through
    both parsers: memory stays within the bound."""
    n = 500
    values = [0] * n if kind == "v" else [True] * n
    cols = {
        "device": ["a"] * n,
        "seq": list(range(n)),
        "time": [0] * n,
        "m": [{"n": f"m{j}", kind: values} for j in range(batch.VALUES_PER_READING)],
    }
    data = cbor2.dumps({"gateway": "gw-01", "batch_id": "b", "columns": cols})
    for parse in PARSERS:
        with bounded_alloc(len(data)):
            got = parse(data, max_readings=n)
        assert len(got.readings) == n and len(got.readings[-1].measurements) == 100


# ---- through the API -------------------------------------------------------------------


async def test_columnar_batches_are_stored_and_queried(
    post: Any, client: httpx.AsyncClient
) -> None:
    """Columnar batches at POST /v1/batches (the fast lane's and the reference's) are
    answered as row batches are, and GET /v1/readings returns what they hold."""
    vector = _vectors("cloud-batches-columns.json")[0]
    answer = (await post(bytes.fromhex(vector["hex"]))).json()
    assert answer == {"batch_id": "gw-01-000000000002", "stored": 2, "duplicates": 0,
                      "acked": [["env-0001", 17], ["bin-0002", 0]], "rejected": []}  # fmt: skip
    obj = _env_columns(6, sparse=True)
    obj["columns"]["device"] = ["env-0001"] * 5 + ["BAD"]
    obj["columns"]["seq"] = list(range(6))
    answer = (await post(obj)).json()
    assert (answer["stored"], answer["duplicates"]) == (5, 0)
    assert answer["rejected"] == [
        {"device": "BAD", "seq": 5, "reason": "device id must match ^[a-z0-9][a-z0-9-]{0,31}$"}
    ]
    assert (await post(obj)).json() == answer  # a retry: the recorded answer
    resp = await client.get("/v1/readings", params={"limit": 1000})
    assert resp.status_code == 200, resp.text
    got = {(r["device"], r["seq"], r["metric"]): r for r in resp.json()["readings"]}
    expected = [*vector["readings"], *to_rows(obj)[:5]]
    for reading in expected:
        for m in reading["m"]:
            row = got.pop((reading["device"], reading["seq"], m["n"]))
            value = m.get("v", m.get("vs", m.get("vb")))
            assert row["value"] == value and type(row["value"]) is type(value)
            assert (row["unit"], row["time"]) == (m.get("u"), reading["time"])
            assert row["received"] == reading.get("received")
    assert got == {}


def to_rows(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The reading maps a valid columnar batch means (as `tests/vectors/make_vectors.py`
    writes them for the vectors)."""
    cols = obj["columns"]
    identity = zip(cols["device"], cols["seq"], cols["time"], strict=True)
    readings = [{"device": d, "seq": q, "time": t, "m": []} for d, q, t in identity]
    for r, rc in zip(readings, cols.get("received", [None] * len(readings)), strict=True):
        if rc is not None:
            r["received"] = rc
    for s in cols["m"]:
        kind = next(k for k in ("v", "vs", "vb") if k in s)
        for k, value in zip(s.get("i", range(len(readings))), s[kind], strict=True):
            readings[k]["m"].append({**{k2: s[k2] for k2 in ("n", "u") if k2 in s}, kind: value})
    return readings
