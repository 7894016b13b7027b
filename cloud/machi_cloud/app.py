"""The ASGI application: `create_app(settings, storage=None)` wires routers to a storage.

With `storage=None` the app opens (and closes) an `SQLiteStorage` at `settings.db` in its
lifespan. A storage passed in is owned by the caller, who opens and closes it: tests do so
because `httpx.ASGITransport` does not run lifespan events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import audit_api, commands, dashboard, exports, ingest, problems, query, registry
from .settings import Settings
from .storage import Storage


def create_app(settings: Settings, storage: Storage | None = None) -> FastAPI:
    """A FastAPI app serving ingest, query and exports, registry, commands, audit, dashboard."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if storage is not None:
            yield
            return
        from .storage.sqlite import SQLiteStorage

        async with SQLiteStorage(settings.db) as own:
            app.state.storage = own
            yield

    app = FastAPI(
        title="machi cloud",
        summary="Ingest, query and export of smart-city sensor readings",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.storage = storage
    app.state.refused = Counter()
    app.state.wakeups = commands.Wakeups()
    problems.install(app)
    app.include_router(ingest.router)
    app.include_router(exports.router)  # before query: /v1/readings/aggregate
    app.include_router(query.router)
    app.include_router(registry.router)
    app.include_router(commands.router)
    app.include_router(audit_api.router)
    app.include_router(dashboard.router)
    _document_security(app)
    return app


def _document_security(app: FastAPI) -> None:
    """Declare the bearer scheme that `POST /v1/batches` refers to in its OpenAPI entry."""
    original = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = original()
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "a gateway's token (one per gateway), or a person's token "
                "with a role: viewer < operator < admin (docs/cloud.md, Authentication)",
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
