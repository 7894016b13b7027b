"""GET /v1/readings, /v1/devices, /healthz, the dashboard, OpenAPI and error shapes."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import httpx
import pytest

Check = Callable[[httpx.Response, int], dict[str, Any]]
T0 = 1795390000


@pytest.fixture
async def loaded(post: Any, make_batch: Callable[..., dict[str, Any]], vector_body: bytes) -> None:
    """The vector batch plus env-0003 seq 0..9 at T0+seq."""
    assert (await post(vector_body)).status_code == 200
    batch = make_batch("b-2", [("env-0003", s) for s in range(10)], time0=T0)
    assert (await post(batch)).json()["stored"] == 10


async def _get(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    resp = await client.get("/v1/readings", params=params)
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    assert data["count"] == len(data["readings"])
    return data


async def test_filters_by_device_metric_and_time(client: httpx.AsyncClient, loaded: None) -> None:
    assert (await _get(client))["count"] == 14
    env1 = await _get(client, device="env-0001")
    assert {r["metric"] for r in env1["readings"]} == {"temp", "hum"}
    hum = await _get(client, metric="hum")
    assert [(r["device"], r["value"]) for r in hum["readings"]] == [("env-0001", 48.25)]
    window = await _get(client, device="env-0003", since=T0 + 3, until=T0 + 6)
    assert [r["seq"] for r in window["readings"]] == [3, 4, 5]  # since incl., until excl.
    iso = await _get(client, device="env-0003", since="2026-11-23T00:00:00Z")
    assert iso["count"] == 0  # T0 is 2026-11-22T23:26:40Z, so all ten are earlier
    iso_all = await _get(client, device="env-0003", since="2026-11-01T00:00:00+00:00")
    assert iso_all["count"] == 10


async def test_limit_and_cursor_pages_through_everything(
    client: httpx.AsyncClient, loaded: None
) -> None:
    seen: list[tuple[str, int, str]] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 4, **({"after": after} if after else {})}
        page = await _get(client, **params)
        seen += [(r["device"], r["seq"], r["metric"]) for r in page["readings"]]
        after = page["next"]
        if after is None:
            break
    assert len(seen) == 14 and seen == sorted(seen) and len(set(seen)) == 14


async def test_csv_export(client: httpx.AsyncClient, loaded: None) -> None:
    resp = await client.get("/v1/readings", params={"format": "csv", "device": "bin-0002"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert list(rows[0]) == [
        "device",
        "seq",
        "time",
        "received",
        "gateway",
        "metric",
        "unit",
        "value",
    ]
    assert [(r["metric"], r["unit"], r["value"]) for r in rows] == [
        ("fill", "%", "85"),
        ("tilt", "", "false"),
    ]
    assert rows[0]["time"] == "1795390060" and rows[0]["received"] == "1795390060.25"


async def test_bad_query_parameters_are_problems(
    client: httpx.AsyncClient, assert_problem: Check
) -> None:
    assert "limit" in assert_problem(await client.get("/v1/readings?limit=100001"), 422)["detail"]
    assert_problem(await client.get("/v1/readings?limit=abc"), 422)
    assert_problem(await client.get("/v1/readings?format=xml"), 422)
    assert "since" in assert_problem(await client.get("/v1/readings?since=soon"), 400)["detail"]
    assert_problem(await client.get("/v1/readings?since=10&until=5"), 400)
    assert_problem(await client.get("/v1/readings?after=garbage"), 400)


async def test_devices_with_latest_values(
    client: httpx.AsyncClient, loaded: None, post: Any, make_batch: Callable[..., dict[str, Any]]
) -> None:
    # an older reading arriving late must not replace the latest value
    late = make_batch("b-3", [("env-0003", 100), ("env-0003", 50)], time0=T0)
    assert (await post(late)).json()["stored"] == 2
    devices = {d["device"]: d for d in (await client.get("/v1/devices")).json()["devices"]}
    assert list(devices) == ["bin-0002", "env-0001", "env-0003"]
    env3 = devices["env-0003"]
    assert (env3["readings"], env3["last_seq"]) == (12, 100)
    assert env3["latest"] == {"temp": {"value": 120.0, "unit": "Cel", "time": T0 + 100}}
    assert env3["last_seen"] == T0 + 100.5
    assert devices["bin-0002"]["latest"]["tilt"] == {"value": False, "unit": None, "time": T0 + 60}


async def test_healthz(client: httpx.AsyncClient, loaded: None) -> None:
    health = (await client.get("/healthz")).json()
    assert health["status"] == "ok" and health["db"] == "ok"
    assert (health["devices"], health["readings"], health["batches"]) == (3, 12, 2)


async def test_dashboard_is_self_contained(client: httpx.AsyncClient) -> None:
    resp = await client.get("/")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    html = resp.text
    assert 'fetch("/v1/devices"' in html and "setInterval(refresh, 2000)" in html
    assert "http://" not in html and "https://" not in html  # no external assets


async def test_unknown_path_and_method_are_problems(
    client: httpx.AsyncClient, assert_problem: Check
) -> None:
    assert "/nowhere" in assert_problem(await client.get("/nowhere"), 404)["detail"]
    problem = assert_problem(await client.get("/v1/batches"), 405)
    assert "POST" in problem["detail"]


async def test_openapi_documents_the_cbor_body(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    op = doc["paths"]["/v1/batches"]["post"]
    schema = op["requestBody"]["content"]["application/cbor"]["schema"]
    assert schema["required"] == ["gateway", "batch_id"]
    assert schema["oneOf"] == [{"required": ["readings"]}, {"required": ["columns"]}]
    assert "application/problem+json" in op["responses"]["409"]["content"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert {"/v1/readings", "/v1/devices", "/healthz"} <= set(doc["paths"])
