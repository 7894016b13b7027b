"""Read side of the API: `/v1/readings` (JSON or CSV), `/v1/devices`, `/healthz`.

Responses are serialised with `json.dumps` directly rather than through FastAPI's encoder:
a page may hold 100,000 rows and the generic encoder costs several times more.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from .auth import Principal, reader
from .errors import BadQuery, NotSupported, StorageUnavailable
from .status import fleet_view
from .storage import Cursor, ReadingQuery, ReadingRow, Storage
from .storage.base import MAX_QUERY_LIMIT

router = APIRouter()
CSV_COLUMNS = ("device", "seq", "time", "received", "gateway", "metric", "unit", "value")


def parse_time(value: str | None, name: str) -> float | None:
    """Seconds since the epoch, or an ISO 8601 time (UTC when it has no offset)."""
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = datetime.fromisoformat(value)
        except ValueError as exc:
            raise BadQuery(
                f"{name}={value!r} is not a time: give seconds since the Unix epoch "
                "(1795390000) or ISO 8601 (2026-11-23T00:00:00Z)"
            ) from exc
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    if not math.isfinite(seconds):
        raise BadQuery(f"{name} must be a finite number of seconds, got {value!r}")
    return seconds


def reading_query(
    device: str | None,
    metric: str | None,
    since: str | None,
    until: str | None,
    *,
    limit: int,
    after: Cursor | None,
) -> ReadingQuery:
    """The query of the readings endpoints' parameters (an empty string: no filter).
    `BadQuery` for a time that is not one, ValueError for values `ReadingQuery` refuses."""
    return ReadingQuery(
        device=device or None,
        metric=metric or None,
        since=parse_time(since, "since"),
        until=parse_time(until, "until"),
        limit=limit,
        after=after,
    )


def next_page(rows: Sequence[ReadingRow], limit: int) -> str | None:
    """The `next` cursor after a page of `rows`; None when the page was not full (the end)."""
    if len(rows) != limit:
        return None
    return Cursor(rows[-1].device, rows[-1].seq, rows[-1].metric).encode()


def _json(data: Any, status: int = 200) -> Response:
    return Response(
        content=json.dumps(data, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
    )


def _row(r: ReadingRow) -> dict[str, Any]:
    return {
        "device": r.device,
        "seq": r.seq,
        "time": r.time,
        "received": r.received,
        "gateway": r.gateway,
        "metric": r.metric,
        "unit": r.unit,
        "value": r.value,
    }


def _csv(rows: list[ReadingRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        value: Any = ("true" if r.value else "false") if isinstance(r.value, bool) else r.value
        received = "" if r.received is None else r.received
        writer.writerow(
            (r.device, r.seq, r.time, received, r.gateway, r.metric, r.unit or "", value)
        )
    return out.getvalue()


@router.get(
    "/v1/readings",
    summary="Stored measurements, one row each, ordered by (device, seq, metric)",
    tags=["query"],
    response_class=Response,
    responses={
        200: {
            "description": "JSON `{count, readings, next}`, CSV with a header row, or a SenML "
            "JSON pack (application/senml+json, names `<device>:<metric>`)",
            "content": {"application/json": {}, "text/csv": {}, "application/senml+json": {}},
        }
    },
)
async def get_readings(
    request: Request,
    _: Annotated[Principal | None, Depends(reader)],
    device: Annotated[str | None, Query(max_length=64, description="device id")] = None,
    metric: Annotated[str | None, Query(max_length=64, description="metric name")] = None,
    since: Annotated[str | None, Query(description="inclusive: epoch seconds or ISO 8601")] = None,
    until: Annotated[str | None, Query(description="exclusive: epoch seconds or ISO 8601")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_QUERY_LIMIT)] = 1000,
    after: Annotated[
        str | None, Query(max_length=512, description="the `next` cursor of the previous page")
    ] = None,
    format: Annotated[Literal["json", "csv", "senml"], Query()] = "json",
) -> Response:
    storage: Storage = request.app.state.storage
    try:
        cursor = Cursor.decode(after) if after else None
    except ValueError as exc:
        raise BadQuery(f"after={after!r} is {exc}: pass the `next` value of a page") from exc
    try:
        query = reading_query(device, metric, since, until, limit=limit, after=cursor)
    except ValueError as exc:
        raise BadQuery(str(exc)) from exc
    rows = await storage.readings(query)
    next_cursor = next_page(rows, query.limit)
    headers = {"X-Next-Cursor": next_cursor} if next_cursor else None
    if format == "senml":
        from .exports import SENML_JSON, senml_pack

        return Response(content=senml_pack(rows), media_type=SENML_JSON, headers=headers)
    if format == "csv":
        return Response(
            content=_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers=headers,
        )
    return _json({"count": len(rows), "readings": [_row(r) for r in rows], "next": next_cursor})


@router.get(
    "/v1/devices",
    summary="Every registered or seen device: registration, health, battery, latest values",
    tags=["query"],
)
async def get_devices(
    request: Request, _: Annotated[Principal | None, Depends(reader)]
) -> Response:
    storage: Storage = request.app.state.storage
    summaries = await storage.devices()
    try:
        registered = await storage.registry()
    except NotSupported:  # a backend without a registry yet: readings only
        registered = []
    return _json({"devices": fleet_view(registered, summaries, time.time())})


@router.get("/healthz", summary="Liveness and database health", tags=["ops"])
async def healthz(request: Request) -> Response:
    storage: Storage = request.app.state.storage
    refused: Counter[str] = request.app.state.refused
    try:
        stats = await storage.stats()
    except StorageUnavailable as exc:
        return _json({"status": "error", "db": exc.detail, "refused": dict(refused)}, 503)
    return _json(
        {
            "status": "ok",
            "db": "ok",
            "devices": stats.devices,
            "readings": stats.readings,
            "batches": stats.batches,
            "refused": dict(refused),
        }
    )
