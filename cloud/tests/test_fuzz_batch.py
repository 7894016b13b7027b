"""Hostile input for the cloud's batch parser (issue #8) and the control-body reader.

`batch.parse_batch` either returns a valid `Batch` (every reading validated, every rejection
with a reason and an identity the answer can echo) or raises `BadBatch` / `TooLarge` with a
detail; nothing else, no hang (a per-example deadline), no allocation out of proportion to
the body, and no work out of proportion to it either (shared references and colliding map
keys are refused). `wire.read_model` raises only its documented errors.

Inputs: random bytes; the vector batch mutated byte by byte (bit flips, truncation,
splices, hostile CBOR heads, deep nesting); batches whose items are swapped for other types
(NaN, infinities, big integers, tags, nesting). Profiles as in gateway/tests/
test_fuzz_parsers.py: `machi-fuzz-ci` by default, `MACHI_FUZZ=long` for `make fuzz`.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.requests import Request

from machi_cloud.app import create_app
from machi_cloud.batch import DEVICE_ID, METRIC_NAME, Batch, Reading, parse_batch
from machi_cloud.commands import StateIn
from machi_cloud.errors import BadBatch, BadBody, TooLarge, UnsupportedMediaType
from machi_cloud.settings import GATEWAY_ID, GatewayTokens, Settings
from machi_cloud.storage.sqlite import SQLiteStorage
from machi_cloud.wire import read_model
from machi_tools.fuzzkit import HOSTILE_CBOR_HEADS, bounded_alloc, fuzz

REPO = Path(__file__).resolve().parents[2]
MAX_READINGS = 5000


VECTOR = json.loads((REPO / "tests" / "vectors" / "cloud-batches.json").read_text())
SEEDS = [bytes.fromhex(v["hex"]) for v in VECTOR]
DOC = VECTOR[0]["decoded"]
HOSTILE_HEADS = HOSTILE_CBOR_HEADS


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "head", "insert", "splice", "nest"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "head":
            data[pos:pos] = draw(st.sampled_from(HOSTILE_HEADS))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "splice":
            other = draw(st.sampled_from(SEEDS))
            data = data[:pos] + other[draw(st.integers(0, len(other))):]
        else:
            data[pos:pos] = draw(st.sampled_from([b"\x81", b"\x9f", b"\xa1\x61a"])) * draw(
                st.integers(1, 3000))
    return bytes(data)


HUGE_INTS = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, -(2**64), 10**400, 2**20000]


def _huge(i: int) -> int:
    """(a function, not sampled_from: hypothesis would repr() a 6000-digit int)"""
    return HUGE_INTS[i]


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(),
    st.integers(0, len(HUGE_INTS) - 1).map(_huge),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.binary(max_size=20), st.sampled_from(["gw-01", "env-0001", "temp", "Cel", ""]),
    st.integers(4000, 5000).map(lambda n: "a" * n),
    st.builds(cbor2.CBORTag, st.integers(6, 2**32).filter(
        lambda t: t not in {24, 25, 28, 29, 256, 258}), st.integers(0, 10)),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=16)


def _nodes(obj: Any) -> list[tuple[Any, Any]]:
    out: list[tuple[Any, Any]] = []
    stack = [obj]
    while stack:
        cur = stack.pop()
        for k, v in (enumerate(cur) if isinstance(cur, list) else cur.items()):
            out.append((cur, k))
            if isinstance(v, list | dict):
                stack.append(v)
    return out


@st.composite
def swapped(draw: st.DrawFn) -> bytes:
    """The vector batch with 1..4 items (or keys) replaced by values of other types."""
    obj = cbor2.loads(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        nodes = _nodes(obj)
        if not nodes:
            break
        cont, key = draw(st.sampled_from(nodes))
        new = draw(values)
        if isinstance(cont, dict) and draw(st.booleans()):
            try:
                cont[new] = cont.pop(key)
            except TypeError:
                pass
        else:
            cont[key] = new
    return cbor2.dumps(obj)


def _batch(readings: Any, **top: Any) -> bytes:
    return cbor2.dumps({"gateway": "gw-01", "batch_id": "b-1", "readings": readings, **top})


def _reading(**kw: Any) -> dict[str, Any]:
    return {"device": "env-0001", "seq": 1, "time": 1795390000, "m": [{"n": "t", "v": 1}],
            **kw}


def _colliding_keys(n: int) -> bytes:
    """A batch map with ``n`` more integer keys k * (2^61 - 1): all of one hash, so a dict
    takes O(n^2) to build (4 MiB of them: minutes)."""
    m = 2**61 - 1
    out = bytearray(b"\xba" + (n + 3).to_bytes(4, "big"))
    out += cbor2.dumps("gateway")[0:] + cbor2.dumps("gw-01") + cbor2.dumps("batch_id")
    out += cbor2.dumps("b") + cbor2.dumps("readings") + b"\x80"
    for k in range(1, n + 1):
        v = (k * m).to_bytes((k * m).bit_length() // 8 + 1, "big")
        out += b"\xc2" + bytes([0x40 | len(v)]) + v + b"\x00"
    return bytes(out)


def _shared_laughs() -> bytes:
    """5000 readings sharing one ``m`` of 2000 measurements: 10 M measurements to validate
    and store from 235 kB, through cbor2's value sharing (tags 28/29)."""
    m = [{"n": f"m{i}", "v": i} for i in range(2000)]
    readings = [{"device": "env-0001", "seq": i, "time": 1795390000, "m": m}
                for i in range(MAX_READINGS)]
    return cbor2.dumps({"gateway": "gw-01", "batch_id": "b", "readings": readings},
                       value_sharing=True)


def _string_refs() -> bytes:
    """Readings whose ``vs`` texts are string references (tags 256/25) to one long text."""
    text = "x" * 4000
    readings = [_reading(seq=i, m=[{"n": "t", "vs": text}]) for i in range(200)]
    return cbor2.dumps({"gateway": "gw-01", "batch_id": "b", "readings": readings},
                       string_referencing=True)


# found by this file (docs/security.md "Fuzzing"); each made parse_batch raise ValueError,
# a 500 (answer not encodable), or work without bound; all are refused by the decoder now
REGRESSIONS = {
    "time-bignum": _batch([_reading(time=10**5000)]),  # repr() in the reason: ValueError
    "received-bignum": _batch([_reading(received=-(10**5000))]),
    "seq-bignum": _batch([_reading(seq=10**5000)]),  # 500: the answer echoes it in JSON
    "colliding-keys": _colliding_keys(3000),
    "shared-values": _shared_laughs(),
    "string-references": _string_refs(),
}
HOSTILE = {
    **REGRESSIONS,
    # found by the long run: decodes (under the bignum limit), was a 2,000-digit reason
    "time-of-2000-digits": _batch([_reading(time=10**2000)]),
    "array-2^32": b"\x9a\xff\xff\xff\xff",
    "map-2^64": b"\xbb" + b"\xff" * 8,
    "bytes-2^64": b"\x5b" + b"\xff" * 8,
    "deep": b"\x81" * 100_000 + b"\x00",
    "deep-indefinite": b"\x9f" * 100_000,
    "deep-in-m": _batch([]).replace(b"\x80", b"\x81" * 50_000 + b"\x00"),
    "nan-inf": _batch([_reading(time=math.nan, m=[{"n": "a", "v": math.inf}])]),
    "self-containing": bytes.fromhex("d81ca1687265616469" "6e677381d81d00"),
}


def check(body: bytes) -> None:
    with bounded_alloc(len(body)):
        try:
            batch = parse_batch(body, max_readings=MAX_READINGS)
        except (BadBatch, TooLarge) as exc:
            assert exc.detail and len(exc.detail) < 600, exc.detail
            return
    assert isinstance(batch, Batch) and GATEWAY_ID.match(batch.gateway)
    assert 1 <= len(batch.batch_id) <= 64
    for r in batch.readings:
        assert isinstance(r, Reading) and DEVICE_ID.match(r.device) and 0 <= r.seq < 2**63
        assert type(r.time) in (int, float) and 0 <= r.time < 1e11
        for m in r.measurements:
            assert METRIC_NAME.match(m.name)
            assert isinstance(m.value, bool | str) or math.isfinite(m.value)
    for rej in batch.rejected:
        assert rej.reason and len(rej.reason) < 300
    # the answer (docs/protocol.md §3) can be written in either format
    answer = {"acked": [[r.device, r.seq] for r in batch.readings],
              "rejected": [{"device": j.device, "seq": j.seq, "reason": j.reason}
                           for j in batch.rejected]}
    json.dumps(answer, allow_nan=False)
    cbor2.dumps(answer)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_bodies(name: str) -> None:
    check(HOSTILE[name])


def test_bignums_references_and_colliding_keys_are_refused() -> None:
    for body in REGRESSIONS.values():
        with pytest.raises(BadBatch, match="not well-formed CBOR"):
            parse_batch(body, max_readings=MAX_READINGS)


async def test_regressions_through_the_app(tmp_path: Path) -> None:
    """The same bodies at POST /v1/batches, through whatever parser ingest uses (the fast
    lane of fastbatch.py included), answered in JSON: a 400, never a 500."""
    conf = Settings(db=tmp_path / "fuzz.sqlite",
                    gateway_tokens=GatewayTokens.from_mapping({"gw-01": "t"}))
    storage = SQLiteStorage(conf.db)
    await storage.open()
    try:
        transport = httpx.ASGITransport(app=create_app(conf, storage),
                                        raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for name, body in REGRESSIONS.items():
                resp = await client.post("/v1/batches", content=body, headers={
                    "Authorization": "Bearer t", "Content-Type": "application/cbor",
                    "Accept": "application/json"})
                assert resp.status_code == 400, (name, resp.text)
    finally:
        await storage.close()


def test_vector_still_parses() -> None:
    batch = parse_batch(SEEDS[0], max_readings=MAX_READINGS)
    assert len(batch.readings) == 2 and not batch.rejected


@fuzz(300)
@given(st.binary(max_size=2048))
def test_random_bytes(body: bytes) -> None:
    check(body)


@fuzz(600)
@given(mutated() | swapped() | values.map(cbor2.dumps)
       | st.lists(st.builds(_reading, seq=scalars, time=scalars, m=values), max_size=3)
       .map(_batch))
@example(REGRESSIONS["time-bignum"])
def test_structured_bodies(body: bytes) -> None:
    check(body)


# ---- wire.read_model: control bodies (JSON or CBOR) ------------------------------------------


def _request(body: bytes, ctype: str) -> Request:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
             "headers": [(b"content-type", ctype.encode("latin-1"))]}
    return Request(scope, receive)


def check_read_model(body: bytes, ctype: str) -> None:
    try:
        with bounded_alloc(len(body)):
            model = asyncio.run(read_model(_request(body, ctype), StateIn))
    except (BadBody, TooLarge, UnsupportedMediaType) as exc:
        assert exc.detail
        return
    except RequestValidationError as exc:
        for err in exc.errors():  # what problems.py renders
            ".".join(str(p) for p in err.get("loc", ()))
            str(err.get("msg", "invalid"))
        return
    assert isinstance(model, StateIn)


def _json(doc: Any) -> bytes:
    try:
        return json.dumps(doc, default=lambda o: f"{type(o).__name__}").encode()
    except ValueError:  # an int of over 4300 digits: JSON as a peer would write it
        return b'{"state": "sent", "time": ' + b"9" * 5000 + b"}"


state_docs = st.fixed_dictionaries({}, optional={"state": scalars | st.just("sent"),
                                                 "time": scalars, "detail": scalars})


@fuzz(300)
@given(st.one_of(
    st.tuples(state_docs.map(cbor2.dumps) | mutated() | st.binary(max_size=256),
              st.just("application/cbor")),
    st.tuples(state_docs.map(_json)
              | st.binary(max_size=256) | st.integers(1, 50_000).map(lambda n: b"[" * n),
              st.sampled_from(["application/json", "", "text/plain", "application/json; x"])),
))
@example((cbor2.dumps({"state": "sent", "time": 10**5000}), "application/cbor"))
@example((b"[" * 100_000, "application/json"))
def test_read_model(case: tuple[bytes, str]) -> None:
    check_read_model(*case)
