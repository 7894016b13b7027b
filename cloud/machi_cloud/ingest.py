"""`POST /v1/batches`: the gateway's uplink (docs/protocol.md §3).

Checks run cheapest first and before the body is read where possible: token (401), media
type (415), declared size (413), then the body is read while counting (413), decoded and
validated (400 / 413), matched against the token's gateway (403) and stored (409 / 503).
Each refusal is logged once, naming the peer, and counted by reason for `/healthz`.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .batch import DEVICE_ID
from .errors import Forbidden, ProblemError, TooLarge, Unauthorized, UnsupportedMediaType
from .fastbatch import parse_batch
from .problems import PROBLEM_JSON, PROBLEM_SCHEMA
from .settings import GATEWAY_ID, Limits, Settings
from .storage import Storage

CBOR = "application/cbor"
log = logging.getLogger("machi_cloud.ingest")
router = APIRouter()

_MEASUREMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["n"],
    "description": "exactly one of v, vs, vb",
    "properties": {
        "n": {"type": "string", "pattern": "^[A-Za-z0-9][-_:./A-Za-z0-9]*$"},
        "u": {"type": "string", "description": "SenML unit, e.g. Cel, %RH, ug/m3"},
        "v": {"type": "number"},
        "vs": {"type": "string"},
        "vb": {"type": "boolean"},
    },
}
_DEVICE_PATTERN = DEVICE_ID.pattern
_MAX_READINGS = Limits().max_batch_readings  # the default; a deployment may set another
_SERIES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["n"],
    "description": "one metric's values: exactly one of v, vs, vb; one value per reading, "
    "or per index in i",
    "properties": {
        "n": _MEASUREMENT_SCHEMA["properties"]["n"],
        "u": _MEASUREMENT_SCHEMA["properties"]["u"],
        "v": {"type": "array", "items": {"type": "number"}},
        "vs": {"type": "array", "items": {"type": "string"}},
        "vb": {"type": "array", "items": {"type": "boolean"}},
        "i": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0},
            "description": "strictly increasing indices of the readings the values belong "
            "to; absent: every reading, in order",
        },
    },
}
_COLUMNS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["device", "seq", "time", "m"],
    "description": "the readings as columns: one entry per reading in each array; means "
    "exactly the readings array it expands to (docs/protocol.md §3)",
    "properties": {
        "device": {
            "type": "array",
            "maxItems": _MAX_READINGS,
            "items": {"type": "string", "pattern": _DEVICE_PATTERN},
        },
        "seq": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "time": {"type": "array", "items": {"type": "number"}},
        "received": {"type": "array", "items": {"type": ["number", "null"]}},
        "transport": {"type": "array", "items": {"type": "string"}},
        "m": {"type": "array", "items": _SERIES_SCHEMA},
    },
}
BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["gateway", "batch_id"],
    "description": "exactly one of readings (reading maps) or columns (the same, smaller)",
    "oneOf": [{"required": ["readings"]}, {"required": ["columns"]}],
    "properties": {
        "gateway": {"type": "string", "pattern": GATEWAY_ID.pattern},
        "batch_id": {"type": "string", "minLength": 1, "maxLength": 64},
        "readings": {
            "type": "array",
            "maxItems": _MAX_READINGS,
            "items": {
                "type": "object",
                "required": ["device", "seq", "time", "m"],
                "properties": {
                    "device": {"type": "string", "pattern": _DEVICE_PATTERN},
                    "seq": {"type": "integer", "minimum": 0},
                    "time": {"type": "number", "description": "seconds since the Unix epoch"},
                    "received": {"type": "number"},
                    "transport": {"type": "string", "examples": ["coap", "lora", "ble"]},
                    "m": {"type": "array", "items": _MEASUREMENT_SCHEMA},
                },
            },
        },
        "columns": _COLUMNS_SCHEMA,
    },
}
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "batch_id": {"type": "string"},
        "stored": {"type": "integer"},
        "duplicates": {"type": "integer"},
        "acked": {
            "type": "array",
            "description": "[device, seq] pairs the cloud holds: delete them at the gateway",
            "items": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
        },
        "rejected": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "device": {"type": "string"},
                    "seq": {"type": "integer"},
                    "reason": {"type": "string"},
                },
            },
        },
    },
}
_PROBLEM = {"content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}}}
OPENAPI_EXTRA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A CBOR batch (docs/protocol.md §3), at most 4 MiB",
        "content": {CBOR: {"schema": BATCH_SCHEMA}},
    },
    "responses": {
        "200": {
            "description": "What the cloud holds now (CBOR; JSON with Accept: application/json)",
            "content": {
                CBOR: {"schema": ANSWER_SCHEMA},
                "application/json": {"schema": ANSWER_SCHEMA},
            },
        },
        "400": {"description": "Malformed CBOR or batch shape", **_PROBLEM},
        "401": {"description": "No or unknown bearer token", **_PROBLEM},
        "403": {"description": "The token belongs to another gateway", **_PROBLEM},
        "409": {"description": "batch_id re-used with a different body", **_PROBLEM},
        "413": {"description": "Body or batch too large", **_PROBLEM},
        "415": {"description": "Content-Type is not application/cbor", **_PROBLEM},
        "503": {"description": "Storage unavailable: retry with backoff", **_PROBLEM},
    },
    "security": [{"bearer": []}],
}


def _bearer(request: Request, settings: Settings) -> str:
    """The gateway id the request's token belongs to."""
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("no Authorization header: send 'Authorization: Bearer <gateway token>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <gateway token>'")
    gateway = settings.gateway_tokens.gateway_for(token.strip())
    if gateway is None:
        raise Unauthorized(
            "unknown gateway token: check the gateway's config against the cloud's "
            "--gateway-token / MACHI_CLOUD_GATEWAY_TOKENS"
        )
    return gateway


async def _body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is {int(declared)} bytes; at most {limit} are accepted")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body exceeds {limit} bytes: send smaller batches")
        chunks.append(chunk)
    return b"".join(chunks)


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and CBOR not in accept


@router.post(
    "/v1/batches",
    summary="Store a gateway's batch of readings (idempotent per batch_id)",
    openapi_extra=OPENAPI_EXTRA,
    response_class=Response,
    tags=["ingest"],
)
async def post_batch(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    storage: Storage = request.app.state.storage
    refused: Counter[str] = request.app.state.refused
    gateway: str | None = None
    try:
        gateway = _bearer(request, settings)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != CBOR:
            raise UnsupportedMediaType(
                f"Content-Type is {media or 'missing'!r}; send the batch as {CBOR}"
            )
        body = await _body(request, settings.limits.max_body_bytes)
        batch = parse_batch(body, max_readings=settings.limits.max_batch_readings)
        if batch.gateway != gateway:
            raise Forbidden(
                f"this token belongs to gateway {gateway!r} but the batch says "
                f"{batch.gateway!r}: each gateway must use its own token"
            )
        result = await storage.store_batch(
            gateway=gateway,
            batch_id=batch.batch_id,
            body_hash=hashlib.sha256(body).digest(),
            readings=batch.readings,
            rejected=batch.rejected,
        )
    except ProblemError as exc:
        refused[exc.slug] += 1
        peer = request.client.host if request.client else "?"
        log.warning("refused batch from %s (%s): %d %s", gateway or "?", peer, exc.status, exc)
        raise
    if result.rejected and not result.replayed:
        log.info(
            "batch %s of %s: %d reading(s) rejected, first: %s",
            result.batch_id,
            gateway,
            len(result.rejected),
            result.rejected[0].reason,
        )
    if _wants_json(request):
        return JSONResponse(result.answer())
    return Response(content=result.encode(), media_type=CBOR)
