"""POST /v1/batches: storing, idempotency, dedup, partial rejection and every refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import cbor2
import httpx

from machi_cloud.settings import Limits

Check = Callable[[httpx.Response, int], dict[str, Any]]


async def _rows(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    resp = await client.get("/v1/readings", params={"limit": 100000, **params})
    assert resp.status_code == 200, resp.text
    rows: list[dict[str, Any]] = resp.json()["readings"]
    return rows


async def test_vector_batch_is_stored_and_answered_in_cbor(
    post: Any, client: httpx.AsyncClient, vector_body: bytes, vector: dict[str, Any]
) -> None:
    resp = await post(vector_body, accept="application/cbor")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/cbor"
    answer = cbor2.loads(resp.content)
    assert answer == {
        "batch_id": "gw-01-000000000001",
        "stored": 2,
        "duplicates": 0,
        "acked": [["env-0001", 17], ["bin-0002", 0]],
        "rejected": [],
    }
    rows = await _rows(client)
    got = {(r["device"], r["seq"], r["metric"]): r for r in rows}
    for reading in vector["decoded"]["readings"]:
        for m in reading["m"]:
            row = got.pop((reading["device"], reading["seq"], m["n"]))
            value = m.get("v", m.get("vs", m.get("vb")))
            assert row["value"] == value and type(row["value"]) is type(value)
            assert row["unit"] == m.get("u")
            assert row["time"] == reading["time"]
            assert row["received"] == reading["received"]
            assert row["gateway"] == "gw-01"
    assert got == {}


async def test_json_answer_on_request(post: Any, vector_body: bytes) -> None:
    resp = await post(vector_body, accept="application/json")
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["stored"] == 2


async def test_retry_same_batch_id_gets_same_answer_and_stores_nothing_twice(
    post: Any, client: httpx.AsyncClient, vector_body: bytes
) -> None:
    first = await post(vector_body)
    second = await post(vector_body)
    assert second.status_code == 200
    assert second.json() == first.json()  # the recorded answer, stored: 2 included
    assert len(await _rows(client)) == 4
    devices = (await client.get("/v1/devices")).json()["devices"]
    assert {d["device"]: d["readings"] for d in devices} == {"bin-0002": 1, "env-0001": 1}


async def test_same_readings_in_new_batch_are_duplicates(
    post: Any, client: httpx.AsyncClient, make_batch: Callable[..., dict[str, Any]]
) -> None:
    ids = [("env-0001", 1), ("env-0001", 2)]
    a = (await post(make_batch("b-1", ids))).json()
    assert (a["stored"], a["duplicates"]) == (2, 0)
    b = (await post(make_batch("b-2", [*ids, ("env-0001", 3)], value=99.0))).json()
    assert (b["stored"], b["duplicates"]) == (1, 2)
    assert b["acked"] == [["env-0001", 1], ["env-0001", 2], ["env-0001", 3]]
    rows = await _rows(client, device="env-0001")
    assert [(r["seq"], r["value"]) for r in rows] == [(1, 21.0), (2, 22.0), (3, 102.0)]
    device = (await client.get("/v1/devices")).json()["devices"][0]
    assert (device["readings"], device["last_seq"]) == (3, 3)


async def test_repeat_inside_one_batch_is_stored_once(
    post: Any, client: httpx.AsyncClient, make_batch: Callable[..., dict[str, Any]]
) -> None:
    ans = (await post(make_batch("b-1", [("env-0001", 5), ("env-0001", 5)]))).json()
    assert (ans["stored"], ans["duplicates"], ans["acked"]) == (1, 1, [["env-0001", 5]])
    assert len(await _rows(client)) == 1


async def test_reused_batch_id_with_other_body_is_409(
    post: Any,
    client: httpx.AsyncClient,
    make_batch: Callable[..., dict[str, Any]],
    assert_problem: Check,
) -> None:
    assert (await post(make_batch("b-1", [("env-0001", 1)]))).status_code == 200
    resp = await post(make_batch("b-1", [("env-0001", 2)]))
    problem = assert_problem(resp, 409)
    assert "b-1" in problem["detail"]
    assert [r["seq"] for r in await _rows(client)] == [1]


async def test_same_batch_id_from_two_gateways_is_no_conflict(
    post: Any, make_batch: Callable[..., dict[str, Any]]
) -> None:
    a = await post(make_batch("b-1", [("env-0001", 1)]))
    b = await post(make_batch("b-1", [("env-0002", 1)], gateway="gw-02"), token="secret-02")
    assert (a.status_code, b.status_code) == (200, 200)
    assert b.json()["stored"] == 1


async def test_partial_reject_stores_the_good_readings(
    post: Any, client: httpx.AsyncClient, make_batch: Callable[..., dict[str, Any]]
) -> None:
    batch = make_batch("b-1", [("env-0001", 1), ("env-0001", 2), ("env-0001", 3), ("Bad!", 4)])
    batch["readings"][1]["m"] = [{"n": "temp", "v": 1, "vs": "x"}]  # two values
    batch["readings"][2]["time"] = "yesterday"
    ans = (await post(batch)).json()
    assert ans["stored"] == 1
    assert ans["acked"] == [["env-0001", 1]]
    reasons = {(r["device"], r["seq"]): r["reason"] for r in ans["rejected"]}
    assert set(reasons) == {("env-0001", 2), ("env-0001", 3), ("Bad!", 4)}
    assert "exactly one of v, vs, vb" in reasons[("env-0001", 2)]
    assert '"time"' in reasons[("env-0001", 3)]
    assert "device id" in reasons[("Bad!", 4)]
    assert [r["seq"] for r in await _rows(client)] == [1]


async def test_values_of_each_kind_keep_their_type(
    post: Any, client: httpx.AsyncClient, make_batch: Callable[..., dict[str, Any]]
) -> None:
    batch = make_batch("b-1", [("light-0001", 1)])
    batch["readings"][0]["m"] = [
        {"n": "on", "vb": True},
        {"n": "mode", "vs": "dim"},
        {"n": "level", "u": "%", "v": 40},
        {"n": "power", "u": "W", "v": 12.0},
    ]
    assert (await post(batch)).json()["stored"] == 1
    values = {r["metric"]: r["value"] for r in await _rows(client)}
    assert values == {"on": True, "mode": "dim", "level": 40, "power": 12.0}
    assert type(values["level"]) is int and type(values["power"]) is float


async def test_malformed_cbor_is_400(
    post: Any, client: httpx.AsyncClient, vector_body: bytes, assert_problem: Check
) -> None:
    assert_problem(await post(vector_body[:-7]), 400)
    assert_problem(await post(vector_body + b"\x00"), 400)  # trailing bytes
    assert_problem(await post(b""), 400)
    assert (await client.get("/v1/readings")).json()["count"] == 0


async def test_wrong_shape_is_400(
    post: Any, make_batch: Callable[..., dict[str, Any]], assert_problem: Check
) -> None:
    good = make_batch("b-1", [("env-0001", 1)])
    cases: list[Any] = [
        cbor2.dumps([1, 2, 3]),
        {k: v for k, v in good.items() if k != "readings"},
        {**good, "batch_id": ""},
        {**good, "batch_id": "x" * 65},
        {**good, "readings": {"a": 1}},
        {**good, "readings": [1]},
        {**good, "readings": [{"device": "env-0001", "seq": "1", "time": 1, "m": []}]},
        {**good, "gateway": 7},
    ]
    for body in cases:
        problem = assert_problem(await post(body), 400)
        assert problem["type"] == "urn:machi:problem:bad-batch"


async def test_missing_or_unknown_token_is_401(
    post: Any, vector_body: bytes, assert_problem: Check
) -> None:
    resp = await post(vector_body, token=None)
    assert_problem(resp, 401)
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert_problem(await post(vector_body, token="nope"), 401)
    assert_problem(await post(vector_body, headers={"Authorization": "Basic Z3c6eA=="}), 401)


async def test_token_of_another_gateway_is_403(
    post: Any, client: httpx.AsyncClient, vector_body: bytes, assert_problem: Check
) -> None:
    problem = assert_problem(await post(vector_body, token="secret-02"), 403)
    assert "gw-02" in problem["detail"] and "gw-01" in problem["detail"]
    assert (await client.get("/v1/readings")).json()["count"] == 0


async def test_not_cbor_is_415(post: Any, vector_body: bytes, assert_problem: Check) -> None:
    assert_problem(await post(vector_body, content_type="application/json"), 415)
    assert (await post(vector_body, content_type="application/cbor; x=1")).status_code == 200


async def test_body_over_limit_is_413_by_header_and_by_counting(
    client: httpx.AsyncClient, post: Any, assert_problem: Check, settings: Any
) -> None:
    limit = settings.limits.max_body_bytes
    assert_problem(await post(b"\xa0" * (limit + 1)), 413)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(5):
            yield b"\x00" * (limit // 4)

    resp = await client.post(
        "/v1/batches",
        content=chunks(),
        headers={"Authorization": "Bearer secret-01", "Content-Type": "application/cbor"},
    )
    assert "content-length" not in resp.request.headers
    assert_problem(resp, 413)


async def test_too_many_readings_is_413(
    post: Any, make_batch: Callable[..., dict[str, Any]], assert_problem: Check, limits: Limits
) -> None:
    ids = [("env-0001", i) for i in range(limits.max_batch_readings + 1)]
    problem = assert_problem(await post(make_batch("b-1", ids)), 413)
    assert str(limits.max_batch_readings) in problem["detail"]


async def test_refusals_are_counted_in_healthz(
    post: Any, client: httpx.AsyncClient, vector_body: bytes
) -> None:
    await post(vector_body, token="nope")
    await post(b"\xff")
    health = (await client.get("/healthz")).json()
    assert health["refused"] == {"unauthorized": 1, "bad-batch": 1}
