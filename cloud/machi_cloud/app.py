"""The ASGI application: `create_app(settings, storage=None)` wires routers to a storage.

With `storage=None` the app opens (and closes) its storage in its lifespan: a
`PostgresStorage` when `settings.database_url` is set (`--database-url`,
`MACHI_CLOUD_DATABASE_URL`, `database_url` in the TOML file), else an `SQLiteStorage` at
`settings.db`; so `uvicorn --factory` with settings of one's own works on both. A storage
passed in is owned by the caller, who opens and closes it: tests do so because
`httpx.ASGITransport` does not run lifespan events.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import audit_api, commands, dashboard, exports, ingest, problems, query, registry
from .settings import Settings
from .storage import Storage

CONFIG_ENV = "MACHI_CLOUD_CONFIG"


def create_app(settings: Settings, storage: Storage | None = None) -> FastAPI:
    """A FastAPI app serving ingest, query and exports, registry, commands, audit, dashboard."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if storage is not None:
            yield
            return
        async with open_storage(settings) as own:
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


def open_storage(settings: Settings) -> Storage:
    """The (unopened) storage `settings` name: PostgreSQL when a database URL is set."""
    if settings.database_url:
        from .storage.postgres import PostgresStorage

        return PostgresStorage(settings.database_url)
    from .storage.sqlite import SQLiteStorage

    return SQLiteStorage(settings.db)


def freeze_startup_objects() -> None:
    """Exempt every object alive now (modules, routes, schemas, settings: ~70,000) from the
    cyclic garbage collector. Each batch allocates ~2,000 containers that live through the
    request, which makes full collections frequent, and each of those would traverse all
    of these again: ~3 us per ingested reading (docs/benchmarks.md). Only for the process
    that is the service (`machi-cloud`, the uvicorn factory), once, after building the app.
    """
    gc.collect()
    gc.freeze()


def from_environment() -> FastAPI:
    """`uvicorn --factory machi_cloud.app:from_environment`: the settings `machi-cloud` would
    use with no flags: the TOML file named by `MACHI_CLOUD_CONFIG`, if any, then the token
    variables and `MACHI_CLOUD_DATABASE_URL` (PostgreSQL) over it."""
    import os

    from .cli import build_parser, load_settings

    config = os.environ.get(CONFIG_ENV)
    args = build_parser().parse_args(["--config", config] if config else [])
    app = create_app(load_settings(args))
    freeze_startup_objects()
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
