"""Every error answer as `application/problem+json` (RFC 9457), including FastAPI's own.

Handlers are installed for our `ProblemError` hierarchy, for Starlette's HTTP exceptions
(unknown path 404, wrong method 405) and for request validation (422), so a client never has
to parse two error formats. Each `detail` says what to change, not just what failed.
"""

from __future__ import annotations

import http
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import ProblemError

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("machi_cloud")

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}


def problem_response(
    *,
    status: int,
    detail: str,
    title: str | None = None,
    type_uri: str = "about:blank",
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    """One RFC 9457 problem document."""
    body: dict[str, Any] = {
        "type": type_uri,
        "title": title or _phrase(status),
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    if extra:
        body.update(extra)
    return Response(
        content=json.dumps(body, ensure_ascii=False),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_response(
        status=exc.status,
        title=exc.title,
        detail=exc.detail,
        type_uri=exc.type_uri,
        instance=request.url.path,
        headers=exc.headers,
    )


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    headers = dict(exc.headers or {})
    if status == 404 and exc.detail == _phrase(404):
        detail = f"there is nothing at {request.url.path}; the API is described at /docs"
    elif status == 405:
        allowed = headers.get("allow") or headers.get("Allow") or "?"
        detail = f"{request.method} is not allowed on {request.url.path}; use {allowed}"
    else:
        detail = str(exc.detail)
    return problem_response(
        status=status, detail=detail, instance=request.url.path, headers=headers or None
    )


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        errors.append({"where": where, "message": str(err.get("msg", "invalid"))})
    detail = "; ".join(f"{e['where']}: {e['message']}" for e in errors) or "invalid request"
    return problem_response(
        status=422,
        detail=detail,
        type_uri="urn:machi:problem:invalid-parameter",
        instance=request.url.path,
        extra={"errors": errors},
    )


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        status=500,
        detail="an internal error occurred; the server log has the details (retry later)",
        instance=request.url.path,
    )


def install(app: FastAPI) -> None:
    """Route every error of `app` through the handlers above."""
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(Exception, _on_unexpected)
