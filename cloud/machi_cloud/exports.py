"""Aggregates, latest values, SenML and open-data exports, and the delivery report.

**Open data** (`GET /v1/open-data`) publishes only what cannot point at a person:

- no metric that records people: `motion`, `presence`, `occupancy`, nor a streetlight's
  `dim` and `power` (the lamp brightens when someone walks by, so both replay motion);
- no command results (`cmd/*`) and no `dropped` counters (operations, not observations);
- nothing from a device registered with `"personal": true`;
- no seq, gateway or receive time: a row is `device, time, metric, unit, value`.

**Delivery report** (`GET /v1/devices/{id}/delivery`): the seq range the cloud holds, the
missing ranges inside it, and what the node says it dropped: the `dropped` measurement is
the node's running count of readings it discarded (outbox overflow), which may restart at
0 when the node reboots; the report sums its increases. A node that reboots skips the rest
of its reserved seq block (docs/protocol.md §1), so a gap right after a reboot need not be
a loss.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from .auth import Principal, reader
from .batch import DEVICE_ID, Value
from .errors import BadQuery, NotFound, NotSupported
from .query import next_page, parse_time, reading_query
from .storage import Cursor, ReadingQuery, ReadingRow, Storage
from .storage.base import MAX_QUERY_LIMIT
from .storage.records import AggregateQuery, RegisteredDevice

router = APIRouter(tags=["query"])
SENML_JSON = "application/senml+json"
BUCKETS = {"hour": 3600, "day": 86400}
FNS = ("mean", "min", "max", "count")
PERSONAL_METRICS = frozenset({"motion", "presence", "occupancy", "dim", "power", "dropped"})
Reader = Annotated[Principal | None, Depends(reader)]


def is_personal(metric: str) -> bool:
    """True for metrics the open-data export leaves out (see the module docstring)."""
    return metric in PERSONAL_METRICS or metric.startswith("cmd/")


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(
            [
                ("true" if v else "false") if isinstance(v, bool) else ("" if v is None else v)
                for v in row
            ]
        )
    return out.getvalue()


def _json(data: Any) -> Response:
    return Response(json.dumps(data, separators=(",", ":")), media_type="application/json")


def senml_record(
    device: str, metric: str, unit: str | None, value: Value, t: float
) -> dict[str, Any]:
    """One fully resolved SenML record (RFC 8428): name = `<device>:<metric>`."""
    rec: dict[str, Any] = {"n": f"{device}:{metric}", "t": t}
    if unit:
        rec["u"] = unit
    if isinstance(value, bool):
        rec["vb"] = value
    elif isinstance(value, str):
        rec["vs"] = value
    else:
        rec["v"] = value
    return rec


def senml_pack(rows: Sequence[ReadingRow]) -> str:
    """Readings as a SenML JSON pack, every record resolved (absolute name and time)."""
    return json.dumps(
        [senml_record(r.device, r.metric, r.unit, r.value, r.time) for r in rows],
        separators=(",", ":"),
    )


@router.get(
    "/v1/readings/aggregate",
    summary="Numeric values of a metric per device and hour or day: mean, min, max, count",
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
async def get_aggregate(
    request: Request,
    _: Reader,
    metric: Annotated[str, Query(min_length=1, max_length=64, description="e.g. temp")],
    device: Annotated[str | None, Query(max_length=64)] = None,
    bucket: Literal["hour", "day"] = "hour",
    fn: Annotated[str, Query(max_length=64, description="comma list of mean,min,max,count")] = (
        "mean,min,max,count"
    ),
    since: Annotated[str | None, Query(description="epoch seconds or ISO 8601")] = None,
    until: Annotated[str | None, Query(description="epoch seconds or ISO 8601")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    format: Literal["json", "csv"] = "json",
) -> Response:
    storage: Storage = request.app.state.storage
    fns = [f.strip() for f in fn.split(",") if f.strip()]
    bad = [f for f in fns if f not in FNS]
    if bad or not fns:
        raise BadQuery(f"fn={fn!r}: give a comma list of {', '.join(FNS)}")
    try:
        query = AggregateQuery(
            metric=metric,
            bucket_s=BUCKETS[bucket],
            device=device or None,
            since=parse_time(since, "since"),
            until=parse_time(until, "until"),
            limit=limit,
        )
    except ValueError as exc:
        raise BadQuery(str(exc)) from exc
    rows = await storage.aggregate(query)
    if format == "csv":
        header = ["device", "start", *fns]
        body = _csv_text(header, ([r.device, r.start, *(getattr(r, f) for f in fns)] for r in rows))
        return Response(body, media_type="text/csv; charset=utf-8")
    return _json(
        {
            "metric": metric,
            "bucket": bucket,
            "buckets": [
                {"device": r.device, "start": r.start, **{f: getattr(r, f) for f in fns}}
                for r in rows
            ],
        }
    )


@router.get(
    "/v1/latest",
    summary="The latest value of every metric of every device",
    responses={200: {"content": {"application/json": {}, "text/csv": {}, SENML_JSON: {}}}},
)
async def get_latest(
    request: Request, _: Reader, format: Literal["json", "csv", "senml"] = "json"
) -> Response:
    storage: Storage = request.app.state.storage
    rows = [
        (d.device, metric, v.unit, v.value, v.time, v.seq)
        for d in await storage.devices()
        for metric, v in sorted(d.latest.items())
    ]
    if format == "csv":
        body = _csv_text(("device", "metric", "unit", "value", "time", "seq"), rows)
        return Response(body, media_type="text/csv; charset=utf-8")
    if format == "senml":
        pack = [senml_record(d, m, u, v, t) for d, m, u, v, t, _ in rows]
        return Response(json.dumps(pack, separators=(",", ":")), media_type=SENML_JSON)
    latest: dict[str, dict[str, Any]] = {}
    for d, m, u, v, t, q in rows:
        latest.setdefault(d, {})[m] = {"value": v, "unit": u, "time": t, "seq": q}
    return _json({"devices": latest})


async def _registry(storage: Storage) -> dict[str, RegisteredDevice]:
    try:
        return {r.device: r for r in await storage.registry()}
    except NotSupported:
        return {}


@router.get(
    "/v1/open-data",
    summary="Readings safe to publish: nothing that could identify a person",
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
async def get_open_data(
    request: Request,
    _: Reader,
    device: Annotated[str | None, Query(max_length=64)] = None,
    metric: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(description="epoch seconds or ISO 8601")] = None,
    until: Annotated[str | None, Query(description="epoch seconds or ISO 8601")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_QUERY_LIMIT)] = 10_000,
    after: Annotated[str | None, Query(max_length=512)] = None,
    format: Literal["csv", "json"] = "csv",
) -> Response:
    storage: Storage = request.app.state.storage
    try:
        cursor = Cursor.decode(after) if after else None
        query = reading_query(device, metric, since, until, limit=limit, after=cursor)
    except ValueError as exc:
        raise BadQuery(f"{exc}: check after (a `next` value), since and until") from exc
    raw = await storage.readings(query)
    nxt = next_page(raw, limit)
    personal = {d for d, r in (await _registry(storage)).items() if r.personal}
    rows = [
        (r.device, r.time, r.metric, r.unit, r.value)
        for r in raw
        if not is_personal(r.metric) and r.device not in personal
    ]
    headers = {"X-Next-Cursor": nxt} if nxt else None
    if format == "csv":
        body = _csv_text(("device", "time", "metric", "unit", "value"), rows)
        return Response(body, media_type="text/csv; charset=utf-8", headers=headers)
    return _json(
        {
            "count": len(rows),
            "readings": [
                {"device": d, "time": t, "metric": m, "unit": u, "value": v}
                for d, t, m, u, v in rows
            ],
            "next": nxt,
        }
    )


def dropped_total(values: Sequence[Value]) -> int:
    """Sum of increases of a running counter that may restart at 0 (see module docstring)."""
    total = 0
    prev = 0
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            continue
        n = int(v)
        total += n - prev if n >= prev else n
        prev = n
    return total


@router.get(
    "/v1/devices/{device}/delivery",
    summary="Data loss of a device: missing seq ranges, drops the node reported, last seq",
)
async def get_delivery(
    request: Request,
    _: Reader,
    device: Annotated[str, Path(pattern=DEVICE_ID.pattern)],
    max_gaps: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    storage: Storage = request.app.state.storage
    report = await storage.delivery(device, max_gaps=max_gaps)
    if report.readings == 0:
        raise NotFound(f"device {device!r} has no stored readings yet")
    dropped = await storage.readings(
        ReadingQuery(device=device, metric="dropped", limit=MAX_QUERY_LIMIT)
    )
    return _json(
        {
            "device": device,
            "readings": report.readings,
            "first_seq": report.first_seq,
            "last_seq": report.last_seq,
            "missing": report.missing,
            "gaps": [[a, b] for a, b in report.gaps],
            "gaps_truncated": len(report.gaps) == max_gaps,
            "dropped_reported": dropped_total([r.value for r in dropped]),
        }
    )
