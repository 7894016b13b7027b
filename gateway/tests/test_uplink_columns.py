"""As columns (``[uplink] format = "columns"``, the default) a batch means exactly the
row batch of the same queue: checked by expanding the columns as the spec defines it
(docs/protocol.md §3) and, once the cloud parses columns, by its own parsers. A stored
body the columns cannot carry goes to dead letters when the batch is built."""

from __future__ import annotations

import asyncio
import datetime
import io
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import cbor2
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machi_cloud import batch as cloud_batch
from machi_cloud import fastbatch
from machi_gateway.config import from_mapping
from machi_gateway.errors import ConfigError
from machi_gateway.model import Measurement, Reading
from machi_gateway.store import Queued, Store
from machi_gateway.uplink import wire
from machi_gateway.uplink.base import Batch
from machi_gateway.uplink.batcher import CAP_HOLD_S, Batcher, BatchPolicy
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
    return list(map(Queued.of, rs))


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
    parser takes (a 400 would hold back the queue), every undamaged reading included."""
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
    body_sent = wire.encode_batch(Batch(gateway="gw-01", batch_id="b", readings=tuple(fit),
                                        columns=columns))
    parsed = cloud_batch.parse_batch(body_sent, max_readings=100)
    taken = {(r.device, r.seq) for r in parsed.readings}
    assert taken >= {q.key for k, q in enumerate(items) if k != which}


# ---- the cloud's parsers (machi_cloud) -------------------------------------------------


def _parsed(parse: Callable[..., Any], body: bytes) -> tuple[list[Any], list[Any]]:
    batch = parse(body, max_readings=5000)
    readings = [(r.device, r.seq, r.time, r.received, r.transport,
                 Counter((m.name, m.unit, type(m.value), m.value) for m in r.measurements))
                for r in batch.readings]
    return readings, sorted(batch.rejected)


@pytest.mark.parametrize("parse", [cloud_batch.parse_batch, fastbatch.parse_batch],
                         ids=["batch", "fastbatch"])
def test_the_cloud_parses_the_columns_as_the_rows(parse: Callable[..., Any]) -> None:
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
    got, want = _parsed(parse, as_columns), _parsed(parse, as_rows)
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
    "a bignum the cloud refuses": (_body(m=[{"n": "t", "v": 1 << 8300}]),
                                   "CBOR tag 2, which the store never writes"),
    "a bignum the cloud takes": (_body(m=[{"n": "t", "v": 1 << 64}]),
                                 "CBOR tag 2, which the store never writes"),
}


@pytest.mark.parametrize(("body", "reason"), DAMAGED.values(), ids=DAMAGED)
async def test_a_body_the_columns_cannot_carry_is_dead_lettered_and_the_rest_goes_out(
    upload_all: Any, store: Store, make_reading: Callable[..., Reading],
    caplog: pytest.LogCaptureFixture, queue_file: Any, body: Any, reason: str,
) -> None:
    await store.add_many([make_reading(seq=i) for i in range(5)])
    queue_file.damage(2, body)
    posts: list[dict[str, Any]] = []
    with caplog.at_level(logging.ERROR, logger="machi_gateway.uplink.batcher"):
        batcher = await upload_all(store, _columns_cloud(posts), POLICY)
    [post] = posts  # found when the batch was built: one batch, taken at once
    assert post["columns"]["seq"] == [0, 1, 3, 4] and batcher.sent == 4
    [(device, seq, why)] = queue_file.dead()
    assert (device, seq) == ("env-0001", 2) and why.startswith("corrupt queue body")
    assert reason in why
    assert "queued body of env-0001 seq 2 cannot be sent" in caplog.text


def _sharing(seq: int, marked: Any) -> bytes:
    """A body with a shared value (CBOR tag 28) ``marked`` under an extra key, and whose
    "m" is a reference (tag 29) to the first value marked: alone, its own measurements."""
    d = cbor2.dumps
    return b"".join((b"\xa7", d("device"), d("env-0001"), d("seq"), d(seq), d("time"), d(T0),
                     d("received"), d(T0 + 0.5), d("transport"), d("coap"), d("x"),
                     b"\xd8\x1c", d(marked), d("m"), b"\xd8\x1d\x00"))


async def test_bodies_referring_to_each_other_are_dead_lettered(
    upload_all: Any, store: Store, make_reading: Callable[..., Reading], queue_file: Any,
) -> None:
    """Damage forming shared values and references (CBOR tags 28, 29) in two bodies, each
    of which decodes alone: decoded in one array, the second's reference reached into the
    first, which stopped the upload loop (a crash loop of the daemon) or sent one
    reading with another's values. The decoder refuses them, as the cloud's does."""
    await store.add_many([make_reading(seq=i) for i in range(4)])
    m = [{"n": "temp", "u": "Cel", "v": 20.0}]
    queue_file.damage(0, cbor2.dumps({**make_reading(seq=0).to_wire(),
                                      "transport": cbor2.CBORTag(28, "coap")}))
    queue_file.damage(1, _sharing(1, m))
    posts: list[dict[str, Any]] = []
    await upload_all(store, _columns_cloud(posts), POLICY)
    assert [p["columns"]["seq"] for p in posts] == [[2, 3]]
    dead = queue_file.dead()
    assert [k[:2] for k in dead] == [("env-0001", 0), ("env-0001", 1)]
    assert all("tag 28" in why for *_, why in dead)


def test_no_reading_is_sent_with_another_readings_values() -> None:
    a = _odd("env-0001", 1, cbor2.CBORTag(28, [{"n": "temp", "u": "Cel", "v": 99.0}]))
    b = Queued("env-0001", 2, T0 + 0.5, _sharing(2, [{"n": "temp", "u": "Cel", "v": 20.0}]))
    fit, columns, unfit = wire.to_columns([a, b, *_queued(_fleet(1))])
    assert [q.seq for q in fit] == [100] and [q for q, _ in unfit] == [a, b]
    assert columns is not None and 99.0 not in cbor2.loads(columns)["m"][0]["v"]


def test_bodies_that_fit_alone_but_not_together_go_one_by_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A guard, for the unforeseen: building the columns never raises (Batcher.run would
    die); the first body goes alone, the others stay queued for the next batch."""
    items = _queued(_fleet(3))
    decode = wire._decode

    def alone_only(batch: Sequence[Queued]) -> list[Any]:
        if len(batch) > 1:
            raise wire._Unfit("fits alone only")
        return decode(batch)
    monkeypatch.setattr(wire, "_decode", alone_only)
    fit, columns, unfit = wire.to_columns(items)
    assert fit == items[:1] and not unfit
    assert columns is not None and cbor2.loads(columns)["seq"] == [items[0].seq]


async def test_only_unfit_bodies_go_a_batch_of_them_only_too(
    upload_all: Any, store: Store, make_reading: Callable[..., Reading], queue_file: Any,
) -> None:
    """Every body of the oldest batch unfit: all are dead-lettered, the next batch goes."""
    await store.add_many([make_reading(seq=i) for i in range(4)])
    for seq in range(2):
        queue_file.damage(seq, b"\xff")
    posts: list[dict[str, Any]] = []
    await upload_all(store, _columns_cloud(posts), BatchPolicy(
        batch_max=2, batch_age_s=0, backoff_initial_s=0.01, backoff_max_s=0.02))
    assert [p["columns"]["seq"] for p in posts] == [[2, 3]]
    assert store.dead_letters == 2


def _refuse_columns(post: Any) -> tuple[int, Any] | None:
    """A cloud older than columnar batches: 400 for one, the default answer for rows."""
    if "columns" in post.body:
        return 400, {"title": '"readings" must be an array'}
    return None


def _forms(fake_cloud: Any, batch_keys: Callable[..., Any]) -> list[tuple[str, list[int]]]:
    """Each post's form and seqs."""
    return [("columns" if "columns" in p.body else "rows", [k[1] for k in batch_keys(p.body)])
            for p in fake_cloud.posts]


async def test_a_cloud_older_than_columns_gets_rows_for_a_while(
    until: Any, store: Store, make_reading: Callable[..., Reading], fake_cloud: Any,
    batch_keys: Callable[..., Any], caplog: pytest.LogCaptureFixture,
) -> None:
    """Gateways upgraded before the cloud: its 400 for a columnar batch sends the same
    readings as rows under a new id; once it takes them, one error says to upgrade it and
    batches stay rows for CAP_HOLD_S, then columns are tried again. Nothing is lost or
    dead-lettered, and the queue does not stall."""
    fake_cloud.script = [_refuse_columns] * 20
    ahead = [0.0]  # the batcher's clock runs this far ahead of the real one
    async with HttpUplink(fake_cloud.url, token="t", timeout_s=1) as up:
        batcher = Batcher(store, up, gateway="gw-01", policy=POLICY,
                          clock=lambda: time.time() + ahead[0])
        task = asyncio.create_task(batcher.run())
        try:
            with caplog.at_level(logging.ERROR, logger="machi_gateway.uplink.batcher"):
                for first, skip in ((0, 0), (3, CAP_HOLD_S / 2), (6, CAP_HOLD_S)):
                    ahead[0] = skip
                    await store.add_many([make_reading(seq=i) for i in range(first, first + 3)])
                    await until(lambda: store.depth == 0)
        finally:
            task.cancel()
    assert _forms(fake_cloud, batch_keys) == [
        ("columns", [0, 1, 2]), ("rows", [0, 1, 2]), ("rows", [3, 4, 5]),
        ("columns", [6, 7, 8]), ("rows", [6, 7, 8])]
    ids = [p.body["batch_id"] for p in fake_cloud.posts]
    assert len(set(ids)) == len(ids)
    assert caplog.text.count("the cloud does not take columnar batches: upgrade it") == 2
    assert store.dead_letters == 0 and batcher.sent == 9


async def test_rows_refused_too_are_checked_as_rows_are(
    until: Any, store: Store, make_reading: Callable[..., Reading], fake_cloud: Any,
    batch_keys: Callable[..., Any], queue_file: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """A 400 for the rows sent after a 400 for columns is not the cloud's age: the bodies
    get the full check of the row form, a bad one goes to dead letters, and the others
    go out under a new id, as columns again."""
    await store.add_many([make_reading(seq=i) for i in range(4)])
    odd = {**make_reading(seq=1).to_wire(), "x": 1}  # fits the columns, not the store's form
    queue_file.damage(1, cbor2.dumps(odd))
    fake_cloud.script = [lambda p: (400, {"title": "bad batch"})] * 2
    async with HttpUplink(fake_cloud.url, token="t", timeout_s=1) as up:
        batcher = Batcher(store, up, gateway="gw-01", policy=POLICY)
        task = asyncio.create_task(batcher.run())
        try:
            with caplog.at_level(logging.ERROR, logger="machi_gateway.uplink.batcher"):
                await until(lambda: store.depth == 0)
        finally:
            task.cancel()
    assert _forms(fake_cloud, batch_keys) == [
        ("columns", [0, 1, 2, 3]), ("rows", [0, 1, 2, 3]), ("columns", [0, 2, 3])]
    assert queue_file.dead() == [("env-0001", 1, "corrupt queue body")]
    assert "does not take columnar batches" not in caplog.text and batcher.sent == 3


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
