"""Bodies in and out of the control endpoints: JSON for people, JSON or CBOR for gateways.

A gateway chooses CBOR by `Accept: application/cbor` (answers) and `Content-Type:
application/cbor` (bodies), as for batches; everything else is JSON. Bodies are validated
with a pydantic model; a failure is the same 422 problem FastAPI gives for a JSON body.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import cbor2
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from .errors import BadBody, TooLarge, UnsupportedMediaType

CBOR = "application/cbor"
JSON = "application/json"
M = TypeVar("M", bound=BaseModel)
_MAX_CONTROL_BODY = 64 * 1024


def wants_cbor(request: Request) -> bool:
    return CBOR in request.headers.get("accept", "")


def respond(
    request: Request, data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """`data` as CBOR when the caller accepts it, else as compact JSON."""
    if wants_cbor(request):
        return Response(cbor2.dumps(data), status_code=status, media_type=CBOR, headers=headers)
    return Response(
        json.dumps(data, separators=(",", ":"), allow_nan=False),
        status_code=status,
        media_type=JSON,
        headers=headers,
    )


async def read_model(request: Request, model: type[M]) -> M:
    """The body (JSON, or CBOR when so declared) validated as `model`."""
    media = request.headers.get("content-type", JSON).split(";")[0].strip().lower() or JSON
    if media not in (JSON, CBOR):
        raise UnsupportedMediaType(f"Content-Type is {media!r}; send {JSON} or {CBOR}")
    body = await request.body()
    if len(body) > _MAX_CONTROL_BODY:
        raise TooLarge(f"the body is {len(body)} bytes; at most {_MAX_CONTROL_BODY} accepted")
    try:
        data = cbor2.loads(body) if media == CBOR else json.loads(body)
    except (cbor2.CBORDecodeError, ValueError, RecursionError) as exc:
        kind = "CBOR" if media == CBOR else "JSON"
        raise BadBody(f"the body is not valid {kind}: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_context=False)]
        ) from exc


def body_doc(model: type[BaseModel], *, cbor: bool = False) -> dict[str, Any]:
    """`openapi_extra` declaring `model` as the request body (JSON, and CBOR if `cbor`)."""
    schema = model.model_json_schema()
    content = {JSON: {"schema": schema}}
    if cbor:
        content[CBOR] = {"schema": schema}
    return {"requestBody": {"required": True, "content": content}}
