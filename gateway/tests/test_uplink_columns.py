"""As columns (``[uplink] format = "columns"``, the default) a batch means exactly the
row batch of the same queue: checked by expanding the columns as the spec defines it
(docs/protocol.md §3) and, once the cloud parses columns, by its own parsers. A stored
body the columns cannot carry goes to dead letters when the batch is built."""

from __future__ import annotations

import datetime
import io
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import cbor2
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machi_gateway.config import from_mapping
from machi_gateway.errors import ConfigError
from machi_gateway.model import Measurement, Reading, encode_wire
from machi_gateway.store import Queued, Store
from machi_gateway.uplink import wire
from machi_gateway.uplink.base import Batch
from machi_gateway.uplink.batcher import Batcher, BatchPolicy
from machi_gateway.uplink.http import HttpUplink

POLICY = BatchPolicy(batch_max=50, batch_age_s=0, backoff_initial_s=0.01, backoff_max_s=0.02)
T0 = 1_795_390_000


def _env(i: int) -> tuple[Measurement, ...]:
    return (Measurement("temp", "Cel", 21.5 + i), Measurement("hum", "%RH", 48 + i))


def _bin(i: int) -> tuple[Measurement, ...]:
    return (Measurement("fill", "%", 85 - i), Measurement("tilt", None, i % 2 == 0),
            Measurement("bat", "V", 3.5))


def _light(i: int) -> tuple[Measurement, ...]:
    return (Measurement("on", None, bool(i % 3)), Measurement("mode", None, "auto"),
            Measurement("bat", "V", 3.25 + i))


def _fleet(n: int) -> list[Reading]:
    """Env, bin and light nodes in turn: texts, booleans, a metric ("bat") of two shapes."""
    kinds = (("env", _env), ("bin", _bin), ("light", _light))
    return [Reading(device=f"{kinds[i % 3][0]}-{i % 5:04d}", seq=100 + i, time=T0 + i,
                    received=T0 + i + 0.5, transport="coap" if i % 2 else "lora",
                    measurements=kinds[i % 3][1](i)) for i in range(n)]


def _queued(rs: Sequence[Reading]) -> list[Queued]:
    return [Queued(r.device, r.seq, r.received, encode_wire(r)) for r in rs]


def _columns_of(items: Sequence[Queued]) -> dict[str, Any]:
    fit, columns, unfit = wire.to_columns(items)
    assert fit == list(items) and not unfit and columns is not None
    doc: dict[str, Any] = cbor2.loads(columns)
    return doc


def expand(columns: dict[str, Any]) -> list[dict[str, Any]]:
    """The row batch's readings a columnar batch means (the spec's equivalence)."""
    n = len(columns["device"])
    rows: list[dict[str, Any]] = [{"device": columns["device"][k], "seq": columns["seq"][k],
                                   "time": columns["time"][k], "m": []} for k in range(n)]
    for k, row in enumerate(rows):
        if "received" in columns and columns["received"][k] is not None:
            row["received"] = columns["received"][k]
        if "transport" in columns:
            row["transport"] = columns["transport"][k]
    for s in columns["m"]:
        [kind] = [key for key in ("v", "vs", "vb") if key in s]
        idx = s.get("i", range(n))
        assert len(idx) == len(s[kind]) and list(idx) == sorted(set(idx))  # strictly increasing
        for k, value in zip(idx, s[kind], strict=True):
            m = {"n": s["n"], **({"u": s["u"]} if "u" in s else {}), kind: value}
            rows[k]["m"].append(m)
    return rows


def _as_set(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the cloud reads it (unknown keys ignored, no received = null, no transport
    = "unknown"), its measurements as a multiset (the columns may reorder them)."""
    ms = Counter((m["n"], m.get("u"), *[(k, type(v), v) for k, v in m.items()
                                         if k in ("v", "vs", "vb")]) for m in row["m"])
    return {"device": row["device"], "seq": row["seq"], "time": row.get("time"),
            "received": row.get("received"), "transport": row.get("transport", "unknown"),
            "m": ms}


def _rows_of(items: Sequence[Queued]) -> list[dict[str, Any]]:
    """The readings of the row batch of ``items`` (the spliced bodies, decoded)."""
    body = wire.encode_batch(Batch(gateway="gw-01", batch_id="b", readings=tuple(items)))
    return list(cbor2.loads(body)["readings"])


def _same_readings(items: Sequence[Queued]) -> dict[str, Any]:
    columns = _columns_of(items)
    assert list(map(_as_set, expand(columns))) == list(map(_as_set, _rows_of(items)))
    return columns


def test_a_mixed_fleet_is_dense_where_every_reading_has_the_metric_else_sparse() -> None:
    columns = _same_readings(_queued(_fleet(9)))
    assert columns["device"][:3] == ["env-0000", "bin-0001", "light-0002"]
    series = {(s["n"], s.get("u")): s for s in columns["m"]}
    assert series[("temp", "Cel")]["i"] == [0, 3, 6]
    assert series[("tilt", None)] == {"n": "tilt", "vb": [False, True, False], "i": [1, 4, 7]}
    assert series[("mode", None)]["vs"] == ["auto"] * 3
    assert series[("bat", "V")]["i"] == [1, 2, 4, 5, 7, 8]  # two shapes, one series
    dense = _columns_of(_queued([r for r in _fleet(9) if r.device.startswith("env")]))
    assert dense["m"] == [{"n": "temp", "u": "Cel", "v": [21.5, 24.5, 27.5]},
                          {"n": "hum", "u": "%RH", "v": [48, 51, 54]}]


def test_the_shared_vectors(vectors: Callable[[str], Any]) -> None:
    """The cloud's vectors (tests/vectors/cloud-batches-columns.json): this test's
    expansion reads them as their readings, the gateway builds the same readings from
    them, and the first byte for byte (the same series in the same order)."""
    for case in vectors("cloud-batches-columns.json"):
        want = list(map(_as_set, case["readings"]))
        assert list(map(_as_set, expand(case["decoded"]["columns"]))) == want
        items = [Queued(r["device"], r["seq"], r.get("received"), cbor2.dumps(r))
                 for r in case["readings"]]
        fit, columns, _ = wire.to_columns(items)
        assert columns is not None and list(map(_as_set, expand(cbor2.loads(columns)))) == want
        body = wire.encode_batch(Batch(gateway=case["decoded"]["gateway"], readings=tuple(fit),
                                       batch_id=case["decoded"]["batch_id"], columns=columns))
        if case["name"] == "two-readings-sparse":
            assert body.hex() == case["hex"]


def test_the_columnar_body_is_smaller() -> None:
    items = _queued([r for r in _fleet(300) if r.device.startswith("env")])
    columns = wire.encode_batch(Batch(gateway="gw-01", batch_id="b", readings=tuple(items),
                                      columns=wire.to_columns(items)[1]))
    rows = wire.encode_batch(Batch(gateway="gw-01", batch_id="b", readings=tuple(items)))
    assert len(columns) < 0.6 * len(rows)
    assert list(cbor2.loads(columns)) == ["gateway", "batch_id", "columns"]


def _odd(device: str, seq: int, m: list[Any], **fields: Any) -> Queued:
    """A queued reading whose body is the map given (not one the store would write)."""
    doc = {"device": device, "seq": seq, "time": T0, "received": T0 + 0.5, "transport": "coap",
           "m": m, **fields}
    return Queued(device, seq, T0 + 0.5, cbor2.dumps(doc))


def test_irregular_readings() -> None:
    """An empty m, no received, a metric twice in one reading, a metric with two units or
    two kinds, keys in another order: the same readings all the same."""
    items = [
        _odd("env-0001", 1, []),
        _odd("env-0001", 2, [{"n": "temp", "u": "Cel", "v": 1.5}], received=None),
        _odd("env-0001", 3, [{"n": "temp", "u": "Cel", "v": 1}, {"n": "temp", "u": "Cel",
                                                               "v": 2}]),
        _odd("env-0001", 4, [{"v": 3, "u": "K", "n": "temp"}, {"n": "temp", "vs": "x"}]),
        _odd("env-0001", 5, [{"n": "temp", "u": "Cel", "v": 4}]),
    ]
    items.append(Queued("env-0001", 6, T0, cbor2.dumps({"device": "env-0001", "seq": 6,
                                                         "time": T0, "m": []})))
    columns = _same_readings(items)
    assert columns["received"][1] is None and columns["transport"][5] == "unknown"
    assert sorted(s["i"] for s in columns["m"] if s["n"] == "temp" and s.get("u") == "Cel"
                  ) == [[1, 2, 4], [2]]  # the reading with temp twice is in two series
    assert _columns_of(items[:1])["m"] == []


MEASUREMENTS = st.sampled_from([
    Measurement("temp", "Cel", 21.5), Measurement("temp", "K", 290),
    Measurement("temp", None, "warm"), Measurement("hum", "%RH", 40),
    Measurement("door", None, True), Measurement("x", "u" * 40, -1.0),
    Measurement("big", None, 2**40), Measurement("neg", None, -300)])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(MEASUREMENTS, max_size=5), min_size=1, max_size=12))
def test_any_queue_gives_the_readings_of_its_row_batch(shapes: list[list[Measurement]]) -> None:
    rs = [Reading(device=f"dev-{i % 3}", seq=i, time=T0 + i, received=T0 + i + 0.25,
                  transport="coap", measurements=tuple(ms)) for i, ms in enumerate(shapes)]
    _same_readings(_queued(rs))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 5), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                   min_size=1, max_size=3), st.booleans())
def test_damage_anywhere_never_stops_the_batch_nor_gets_it_refused(
    which: int, flips: list[tuple[int, int]], cut: bool,
) -> None:
    """Bytes of one stored body changed (or the body cut short): building the columns
    never raises, keeps every other reading, and what it sends the cloud's reference
    parser takes (a 400 would hold back the queue)."""
    items = _queued(_fleet(6))
    body = bytearray(items[which].body)
    for at, byte in flips:
        body[at % len(body)] = byte
    damaged = bytes(body[: flips[0][0] % len(body)] if cut else body)
    items[which] = items[which]._replace(body=damaged)
    fit, columns, unfit = wire.to_columns(items)
    assert [q for q in items if q not in fit] == [q for q, _ in unfit]
    assert len(fit) >= len(items) - 1 and all(why for _, why in unfit)
    if columns is None:
        return
    assert list(map(_as_set, expand(cbor2.loads(columns)))) == list(map(_as_set, _rows_of(fit)))
    batch = pytest.importorskip("machi_cloud.batch")
    body_sent = wire.encode_batch(Batch(gateway="gw-01", batch_id="b", readings=tuple(fit),
                                        columns=columns))
    assert len(batch.parse_batch(body_sent, max_readings=100).readings) <= len(fit)


# ---- the cloud's parsers (machi_cloud), when installed ----------------------------------


def _parsed(parse: Callable[..., Any], body: bytes) -> tuple[list[Any], list[Any]]:
    batch = parse(body, max_readings=5000)
    readings = [(r.device, r.seq, r.time, r.received, r.transport,
                 Counter((m.name, m.unit, type(m.value), m.value) for m in r.measurements))
                for r in batch.readings]
    return readings, sorted(batch.rejected)


@pytest.mark.parametrize("parser", ["batch", "fastbatch"])
def test_the_cloud_parses_the_columns_as_the_rows(parser: str) -> None:
    module = pytest.importorskip(f"machi_cloud.{parser}")
    rs = _fleet(30)
    rs[4] = Reading(device="env-0004", seq=4, time=T0, received=T0, transport="coap",
                    measurements=(Measurement("temp", "u" * 40, 1.5),))  # a bad unit
    twice = [{"n": "temp", "v": 1}, {"n": "temp", "v": 2}]
    items = [*_queued(rs), _odd("env-0009", 9, []), _odd("env-0009", 10, twice),
             _odd("env-0009", 11, [], received=None)]
    fit, columns, unfit = wire.to_columns(items)
    assert fit == items and not unfit
    as_columns = wire.encode_batch(Batch(gateway="gw-01", batch_id="b", readings=tuple(items),
                                         columns=columns))
    as_rows = wire.encode_batch(Batch(gateway="gw-01", batch_id="b", readings=tuple(items)))
    got, want = _parsed(module.parse_batch, as_columns), _parsed(module.parse_batch, as_rows)
    assert got == want
    assert [r[:2] for r in want[1]] == [("env-0004", 4), ("env-0009", 10)]
    assert len(want[0]) == len(items) - 2


# ---- stored bodies the columns cannot carry ---------------------------------------------


def _columns_cloud(posts: list[dict[str, Any]]) -> httpx.MockTransport:
    """Acks every reading of a columnar batch; anything else gets 400."""
    def handler(req: httpx.Request) -> httpx.Response:
        fp = io.BytesIO(req.content)
        doc = cbor2.CBORDecoder(fp).decode()
        if fp.tell() != len(req.content) or "columns" not in doc or "readings" in doc:
            return httpx.Response(400, json={"title": "bad batch"})
        posts.append(doc)
        rows = expand(doc["columns"])
        return httpx.Response(200, content=cbor2.dumps(
            {"acked": [[r["device"], r["seq"]] for r in rows], "rejected": []}))
    return httpx.MockTransport(handler)


def _damage(store: Store, seq: int, body: Any) -> None:
    conn = sqlite3.connect(store.path)
    try:
        conn.execute("UPDATE queue SET body = ? WHERE seq = ?", (body, seq))
        conn.commit()
    finally:
        conn.close()


def _dead(store: Store) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute("SELECT device, seq, reason FROM dead_letters").fetchall()
    finally:
        conn.close()


def _body(**changes: Any) -> bytes:
    doc = {"device": "env-0001", "seq": 2, "time": T0, "received": T0 + 0.5,
           "transport": "coap", "m": [{"n": "temp", "u": "Cel", "v": 21.5}]}
    doc.update(changes)
    return bytes(cbor2.dumps(doc, datetime_as_timestamp=True))


DAMAGED: dict[str, tuple[Any, str]] = {
    "not CBOR": (b"\xff\x00", "not CBOR"),
    "cut short": (_body()[:-4], "not CBOR"),
    "bytes after it": (_body() + b"\x00", "bytes after its CBOR map"),
    "not a map": (cbor2.dumps([1, 2]), "not a reading map"),
    "not a blob": ("text, not a blob", "not a byte string"),
    "another identity": (_body(seq=3), "not the queue row's"),
    "m not an array": (_body(m={"n": "temp"}), '"m" is not an array'),
    "a measurement not a map": (_body(m=[["temp", 1]]), "a measurement is not a map"),
    "no value": (_body(m=[{"n": "temp", "u": "Cel"}]), "keys n, u; it needs n and exactly"),
    "two values": (_body(m=[{"n": "t", "v": 1, "vs": "x"}]), "keys n, v, vs; it needs"),
    "no name": (_body(m=[{"v": 1}]), "keys v; it needs n"),
    "a name not a text": (_body(m=[{"n": 5, "v": 1}]), "name or unit is not a text"),
    "a time of another type": (_body(time=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)),
                               "a time is a datetime"),
    "a value of another type": (_body(m=[{"n": "t", "v": cbor2.CBORTag(4000, 1)}]),
                                "a measurement value is a CBORTag"),
}


@pytest.mark.parametrize(("body", "reason"), DAMAGED.values(), ids=DAMAGED)
async def test_a_body_the_columns_cannot_carry_is_dead_lettered_and_the_rest_goes_out(
    upload_all: Any, store: Store, make_reading: Callable[..., Reading],
    caplog: pytest.LogCaptureFixture, body: Any, reason: str,
) -> None:
    await store.add_many([make_reading(seq=i) for i in range(5)])
    _damage(store, 2, body)
    posts: list[dict[str, Any]] = []
    with caplog.at_level(logging.ERROR, logger="machi_gateway.uplink.batcher"):
        batcher = await upload_all(store, _columns_cloud(posts), POLICY)
    [post] = posts  # found when the batch was built: one batch, taken at once
    assert post["columns"]["seq"] == [0, 1, 3, 4] and batcher.sent == 4
    [(device, seq, why)] = _dead(store)
    assert (device, seq) == ("env-0001", 2) and why.startswith("corrupt queue body")
    assert reason in why
    assert "queued body of env-0001 seq 2 is corrupt" in caplog.text


async def test_only_unfit_bodies_go_a_batch_of_them_only_too(
    upload_all: Any, store: Store, make_reading: Callable[..., Reading],
) -> None:
    """Every body of the oldest batch unfit: all are dead-lettered, the next batch goes."""
    await store.add_many([make_reading(seq=i) for i in range(4)])
    for seq in range(2):
        _damage(store, seq, b"\xff")
    posts: list[dict[str, Any]] = []
    await upload_all(store, _columns_cloud(posts), BatchPolicy(
        batch_max=2, batch_age_s=0, backoff_initial_s=0.01, backoff_max_s=0.02))
    assert [p["columns"]["seq"] for p in posts] == [[2, 3]]
    assert store.dead_letters == 2


async def test_a_400_keeps_a_columnar_batch_and_names_the_remedy(
    upload_all: Any, store: Store, make_reading: Callable[..., Reading],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cloud older than columns answers 400: nothing is deleted or dead-lettered, the
    same batch goes again (the log says to set format = "readings"), and is taken once
    the cloud takes it."""
    await store.add_many([make_reading(seq=i) for i in range(3)])
    posts: list[dict[str, Any]] = []
    inner = _columns_cloud(posts)
    refused: list[bytes] = []

    async def handler(req: httpx.Request) -> httpx.Response:
        if len(refused) < 2:
            refused.append(req.content)
            return httpx.Response(400, json={"title": '"readings" must be an array'})
        return await inner.handle_async_request(req)
    with caplog.at_level(logging.ERROR, logger="machi_gateway.uplink.batcher"):
        batcher = await upload_all(store, httpx.MockTransport(handler), POLICY)
    assert refused[0] == refused[1] and cbor2.loads(refused[0]) == posts[0]
    assert store.dead_letters == 0 and batcher.sent == 3
    assert 'set [uplink] format = "readings"' in caplog.text


async def test_a_reading_the_cloud_rejects_is_sent_and_dead_lettered(
    store: Store, make_reading: Callable[..., Reading]
) -> None:
    """Values the cloud refuses (a bad unit) go out in the columns; its rejection moves
    that reading to dead letters, as with rows."""
    await store.add_many([make_reading(seq=0), make_reading(
        seq=1, measurements=(Measurement("temp", "u" * 40, 1.5),))])

    def handler(req: httpx.Request) -> httpx.Response:
        s = cbor2.loads(req.content)["columns"]["m"]
        assert {"n": "temp", "u": "u" * 40, "v": [1.5], "i": [1]} in s
        return httpx.Response(200, content=cbor2.dumps({"acked": [["env-0001", 0]], "rejected": [
            {"device": "env-0001", "seq": 1, "reason": "m[0].u (temp) must be a SenML unit"}]}))
    async with HttpUplink("http://c", token="t", timeout_s=1,
                          transport=httpx.MockTransport(handler)) as up:
        batcher = Batcher(store, up, gateway="gw-01", policy=POLICY)
        await batcher.drain(2)
    assert store.depth == 0 and store.dead_letters == 1 and batcher.sent == 1


# ---- the option ---------------------------------------------------------------------------


def test_the_format_option(tmp_path: Any) -> None:
    assert from_mapping({}, base_dir=tmp_path).uplink.format == "columns"
    rows = from_mapping({"uplink": {"format": "readings"}}, base_dir=tmp_path)
    assert rows.uplink.format == "readings" and "as readings" in rows.summary()
    assert BatchPolicy.of(rows.uplink).format == "readings"  # what the daemon hands the batcher
    with pytest.raises(ConfigError, match=r"\[uplink\] format: must be one of columns, "
                                          r"readings; got 'rows'"):
        from_mapping({"uplink": {"format": "rows"}}, base_dir=tmp_path)
    with pytest.raises(ValueError, match="format must be one of columns, readings"):
        BatchPolicy(format="json")
