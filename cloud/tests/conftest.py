"""Fixtures for the cloud tests: a storage on each backend, the app, an in-process client.

Every test that uses `storage` (or `app`, `client`, `post`, ...) runs twice: on a temp
SQLite file and on PostgreSQL. PostgreSQL is ONE throwaway server per session
(`machi_cloud.storage.pgserver`) holding a migrated template database; each test gets a
fresh copy of it (`CREATE DATABASE .. TEMPLATE`, milliseconds) that is dropped afterwards.
Without the server binaries the PostgreSQL half is skipped, saying why. A test about one
backend only (the SQLite file itself) pins it: `@pytest.mark.parametrize("backend",
["sqlite"])`.

`httpx.ASGITransport` does not run lifespan events, so the storage is opened here and
handed to `create_app` (the caller owns it). Test modules share helpers only through these
fixtures (`--import-mode=importlib`, no packages).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
from fastapi import FastAPI

from machi_cloud.app import create_app
from machi_cloud.settings import ApiTokens, GatewayTokens, Limits, Settings
from machi_cloud.storage import Storage
from machi_cloud.storage.pgserver import PostgresServer, find_bindir
from machi_cloud.storage.postgres import PostgresStorage
from machi_cloud.storage.sqlite import SQLiteStorage
from machi_tools.procs import stop_popen

VECTORS = Path(__file__).resolve().parents[2] / "tests" / "vectors"
TOKENS = {"gw-01": "secret-01", "gw-02": "secret-02"}
PEOPLE = {"alice": "admin:admin-secret", "olga": "operator:op-secret", "vic": "viewer:view-secret"}
AUTH = {
    "admin": {"Authorization": "Bearer admin-secret"},
    "operator": {"Authorization": "Bearer op-secret"},
    "viewer": {"Authorization": "Bearer view-secret"},
    "gw-01": {"Authorization": f"Bearer {TOKENS['gw-01']}"},
    "gw-02": {"Authorization": f"Bearer {TOKENS['gw-02']}"},
}

Post = Callable[..., Awaitable[httpx.Response]]


@pytest.fixture
def vector() -> dict[str, Any]:
    """The shared `two-readings` batch vector: {"name", "hex", "decoded"}."""
    vectors: list[dict[str, Any]] = json.loads((VECTORS / "cloud-batches.json").read_text())
    return vectors[0]


@pytest.fixture
def vector_body(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["hex"])


@pytest.fixture
def limits() -> Limits:
    return Limits()


BACKENDS = ["sqlite", "postgres"]
TEMPLATE_DB = "machi_template"
_db_names = itertools.count()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Which storage the app-level tests run on: each runs once per backend."""
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """The session's throwaway PostgreSQL server (initdb + pg_ctl, a free port), with a
    migrated template database `TEMPLATE_DB` to copy per test."""
    if find_bindir() is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not installed: set MACHI_PG_BINDIR"
        )
    with PostgresServer() as server:
        dsn = server.create_database(TEMPLATE_DB)

        async def migrate() -> None:
            async with PostgresStorage(dsn, pool_size=1):
                pass

        # in a thread of its own: this may be set up while a test's event loop runs
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, migrate()).result()
        yield server


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> Iterator[str | None]:
    """A fresh, migrated PostgreSQL database of this test (None on SQLite)."""
    if backend != "postgres":
        yield None
        return
    server: PostgresServer = request.getfixturevalue("pg")
    name = f"t{os.getpid()}_{next(_db_names)}"
    dsn = server.create_database(name, template=TEMPLATE_DB)
    try:
        yield dsn
    finally:
        server.drop_database(name)


@pytest.fixture
def settings(tmp_path: Path, limits: Limits, database_url: str | None) -> Settings:
    return Settings(
        db=tmp_path / "cloud.sqlite",
        database_url=database_url,
        gateway_tokens=GatewayTokens.from_mapping(TOKENS),
        api_tokens=ApiTokens.from_mapping(PEOPLE),
        limits=limits,
    )


def open_storage(settings: Settings) -> Storage:
    """The (unopened) storage `settings` name: PostgreSQL when it has a URL, else SQLite."""
    if settings.database_url:
        return PostgresStorage(settings.database_url, pool_size=4)
    return SQLiteStorage(settings.db)


@pytest.fixture
async def storage(settings: Settings) -> AsyncIterator[Storage]:
    async with open_storage(settings) as st:
        yield st


@pytest.fixture
def app(settings: Settings, storage: Storage) -> FastAPI:
    return create_app(settings, storage)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cloud.test") as c:
        yield c


@pytest.fixture
def post(client: httpx.AsyncClient) -> Post:
    """POST a batch (bytes, or a dict encoded with cbor2) as gw-01 asking for a JSON answer."""

    async def post(
        body: bytes | dict[str, Any],
        *,
        token: str | None = TOKENS["gw-01"],
        content_type: str = "application/cbor",
        accept: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        data = cbor2.dumps(body) if isinstance(body, dict) else body
        h = {"Content-Type": content_type, "Accept": accept}
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        h.update(headers or {})
        return await client.post("/v1/batches", content=data, headers=h)

    return post


@pytest.fixture
def make_batch() -> Callable[..., dict[str, Any]]:
    """A batch dict: `make_batch("b1", [("env-0001", 1), ...])`, one temp measurement each."""

    def make(
        batch_id: str,
        ids: list[tuple[str, int]],
        *,
        gateway: str = "gw-01",
        value: float = 20.0,
        time0: int = 1795390000,
    ) -> dict[str, Any]:
        return {
            "gateway": gateway,
            "batch_id": batch_id,
            "readings": [
                {
                    "device": device,
                    "seq": seq,
                    "time": time0 + seq,
                    "received": time0 + seq + 0.5,
                    "transport": "coap",
                    "m": [{"n": "temp", "u": "Cel", "v": value + seq}],
                }
                for device, seq in ids
            ],
        }

    return make


def assert_problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    """An RFC 9457 problem document with `status` and a non-empty detail."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers
    problem: dict[str, Any] = resp.json()
    assert problem["status"] == status
    assert isinstance(problem["type"], str) and problem["type"]
    assert isinstance(problem["title"], str) and problem["title"]
    assert isinstance(problem["detail"], str) and len(problem["detail"]) > 10
    return problem


@pytest.fixture(name="assert_problem")
def assert_problem_fixture() -> Callable[[httpx.Response, int], dict[str, Any]]:
    return assert_problem


@pytest.fixture
def auth() -> dict[str, dict[str, str]]:
    """Authorization headers by role (`admin`, `operator`, `viewer`) or gateway id."""
    return AUTH


@pytest.fixture
def register(client: httpx.AsyncClient) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Register a device as admin: `await register("lamp-01", type="light", lat=.., lon=..)`."""

    async def register(device: str, **fields: Any) -> dict[str, Any]:
        body = {"type": "env", "gateway": "gw-01", **fields}
        resp = await client.put(f"/v1/devices/{device}", json=body, headers=AUTH["admin"])
        assert resp.status_code in (200, 201), resp.text
        answer: dict[str, Any] = resp.json()
        return answer

    return register


# -- a real machi-cloud process -------------------------------------------------------------

PROCESS_TOKENS = {"admin": "proc-admin", "operator": "proc-operator", "gw-01": "proc-gw-01"}


@pytest.fixture
def process_tokens() -> dict[str, str]:
    """The bearer tokens of the `cloud` process: admin, operator and gw-01."""
    return PROCESS_TOKENS


def _command() -> list[str]:
    script = Path(sys.executable).parent / "machi-cloud"
    return [str(script)] if script.exists() else [sys.executable, "-m", "machi_cloud.cli"]


def wait_ready(
    proc: subprocess.Popen[bytes], ready: Path, log: Path, timeout_s: float = 60
) -> dict[str, Any]:
    """The ready file of a started `machi-cloud` (pid, url) once it is written; fails with
    the process's log if it exits first or takes longer than `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        assert proc.poll() is None, f"exited early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"not ready:\n{log.read_text()}"
        time.sleep(0.05)
    info: dict[str, Any] = json.loads(ready.read_text())
    return info


Ready = Callable[..., dict[str, Any]]


@pytest.fixture(name="wait_ready")
def wait_ready_fixture() -> Ready:
    return wait_ready


def start_cloud(
    args: list[str], ready: Path, log: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """`machi-cloud ARGS --port 0 --ready-file READY` with its output in `log`; the caller
    waits for it (`wait_ready`) and stops it."""
    argv = [*_command(), *args, "--port", "0", "--ready-file", str(ready)]
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)


Start = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture(name="start_cloud")
def start_cloud_fixture() -> Start:
    return start_cloud


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[str]:
    """A machi-cloud process on a free port (its URL); tokens in `process_tokens`."""
    ready, log = tmp_path / "cloud.ready", tmp_path / "cloud.log"
    t = PROCESS_TOKENS
    env = {
        **os.environ,
        "MACHI_CLOUD_GATEWAY_TOKENS": f"gw-01={t['gw-01']}",
        "MACHI_CLOUD_API_TOKENS": f"alice=admin:{t['admin']},olga=operator:{t['operator']}",
    }
    proc = start_cloud(["--db", str(tmp_path / "c.sqlite")], ready, log, env)
    try:
        yield wait_ready(proc, ready, log)["url"]
    finally:
        stop_popen(proc, 20)
