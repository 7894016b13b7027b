"""Aggregation, latest values, SenML and open-data exports, and the delivery report."""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

Register = Callable[..., Awaitable[dict[str, Any]]]
T0 = 1795388400  # a whole hour (2026-11-22T22:00:00Z)


def _reading(device: str, seq: int, t: float, **m: Any) -> dict[str, Any]:
    def one(n: str, v: Any) -> dict[str, Any]:
        key = "vb" if isinstance(v, bool) else "vs" if isinstance(v, str) else "v"
        return {"n": n, key: v}

    return {"device": device, "seq": seq, "time": t, "m": [one(k, v) for k, v in m.items()]}


@pytest.fixture
async def loaded(post: Any, register: Register) -> None:
    readings = [
        _reading("env-0001", 0, T0 + 10, temp=10),
        _reading("env-0001", 1, T0 + 20, temp=20.5),
        _reading("env-0001", 2, T0 + 3600, temp=30, dropped=2),
        _reading("env-0001", 5, T0 + 3700, temp=40, dropped=5),  # 3, 4 missing
        _reading("env-0001", 6, T0 + 3800, temp="n/a", dropped=1),  # reboot: counter restarts
        _reading("env-0001", 9, T0 + 3900),  # no measurements: still counts for delivery
        _reading("lamp-01", 0, T0 + 5, lamp=True, dim=100, power=60.5, motion=True, lux=3),
        _reading("env-0002", 0, T0 + 5, temp=99),
    ]
    resp = await post({"gateway": "gw-01", "batch_id": "x-1", "readings": readings})
    assert resp.json()["stored"] == len(readings), resp.text
    await register("env-0002", personal=True)


async def test_aggregate_per_hour_and_day(client: httpx.AsyncClient, loaded: None) -> None:
    resp = await client.get(
        "/v1/readings/aggregate", params={"device": "env-0001", "metric": "temp"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["buckets"] == [
        {"device": "env-0001", "start": T0, "mean": 15.25, "min": 10, "max": 20.5, "count": 2},
        {"device": "env-0001", "start": T0 + 3600, "mean": 35.0, "min": 30, "max": 40, "count": 2},
    ]  # the text value "n/a" is not a number and is left out
    day = await client.get(
        "/v1/readings/aggregate", params={"metric": "temp", "bucket": "day", "fn": "max,count"}
    )
    days = [b for b in day.json()["buckets"] if b["device"] == "env-0001"]
    midnight = T0 + 3600  # 2026-11-23T00:00:00Z
    assert days == [
        {"device": "env-0001", "start": midnight - 86400, "max": 20.5, "count": 2},
        {"device": "env-0001", "start": midnight, "max": 40, "count": 2},
    ]
    text = await client.get(
        "/v1/readings/aggregate", params={"metric": "temp", "device": "env-0002", "format": "csv"}
    )
    assert next(iter(csv.reader(io.StringIO(text.text)))) == [
        "device",
        "start",
        "mean",
        "min",
        "max",
        "count",
    ]
    bad = await client.get("/v1/readings/aggregate", params={"metric": "temp", "fn": "median"})
    assert bad.status_code == 400 and "mean" in bad.json()["detail"]


async def test_senml_and_latest_exports(client: httpx.AsyncClient, loaded: None) -> None:
    resp = await client.get("/v1/readings", params={"device": "lamp-01", "format": "senml"})
    assert resp.headers["content-type"].startswith("application/senml+json")
    pack = resp.json()
    assert {"n": "lamp-01:lamp", "t": T0 + 5, "vb": True} in pack
    assert {"n": "lamp-01:power", "t": T0 + 5, "v": 60.5} in pack
    latest = (await client.get("/v1/latest")).json()["devices"]
    assert latest["env-0001"]["temp"]["value"] == "n/a" and latest["env-0001"]["temp"]["seq"] == 6
    rows = list(csv.DictReader(io.StringIO((await client.get("/v1/latest?format=csv")).text)))
    assert {"device": "lamp-01", "metric": "motion", "unit": "", "value": "true",
            "time": str(T0 + 5), "seq": "0"} in rows  # fmt: skip
    senml = (await client.get("/v1/latest?format=senml")).json()
    assert {"n": "env-0002:temp", "t": T0 + 5, "v": 99} in senml


async def test_open_data_leaves_out_what_could_identify_people(
    client: httpx.AsyncClient, loaded: None
) -> None:
    resp = await client.get("/v1/open-data")
    assert resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert list(rows[0]) == ["device", "time", "metric", "unit", "value"]
    metrics = {(r["device"], r["metric"]) for r in rows}
    assert ("lamp-01", "lux") in metrics and ("lamp-01", "lamp") in metrics
    assert not {m for _, m in metrics} & {"motion", "dim", "power", "dropped"}
    assert not any(d == "env-0002" for d, _ in metrics)  # registered as personal
    as_json = (await client.get("/v1/open-data", params={"format": "json"})).json()
    assert as_json["count"] == len(rows)


async def test_delivery_report_shows_gaps_drops_and_last_seq(
    client: httpx.AsyncClient, loaded: None
) -> None:
    resp = await client.get("/v1/devices/env-0001/delivery")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "device": "env-0001",
        "readings": 6,
        "first_seq": 0,
        "last_seq": 9,
        "missing": 4,
        "gaps": [[3, 4], [7, 8]],
        "gaps_truncated": False,
        "dropped_reported": 6,  # 2, then 5 (+3), then restarted at 1 (+1)
    }
    assert (await client.get("/v1/devices/nobody-1/delivery")).status_code == 404
