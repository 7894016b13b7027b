"""`machi-cloud` as a real process: port 0, ready file, a batch in and out, SIGTERM -> 0;
and the app factories opening their own storage (SQLite or PostgreSQL) in the lifespan."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from machi_cloud import app as app_module
from machi_cloud.errors import StorageUnavailable
from machi_cloud.settings import Settings
from machi_cloud.storage.postgres import PostgresStorage
from machi_cloud.storage.sqlite import SQLiteStorage

Ready = Callable[..., dict[str, Any]]  # conftest.wait_ready
Start = Callable[..., subprocess.Popen[bytes]]  # conftest.start_cloud


def test_process_serves_and_stops_cleanly(
    tmp_path: Path, vector_body: bytes, start_cloud: Start, wait_ready: Ready
) -> None:
    ready = tmp_path / "cloud.ready"
    log = tmp_path / "cloud.log"
    env = {**os.environ, "MACHI_CLOUD_GATEWAY_TOKENS": "gw-01=proc-secret"}
    proc = start_cloud(["--db", str(tmp_path / "c.sqlite")], ready, log, env)
    try:
        info = wait_ready(proc, ready, log, 30)
        assert info["pid"] == proc.pid
        url = info["url"]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        with httpx.Client(base_url=url, timeout=10) as client:
            resp = client.post(
                "/v1/batches",
                content=vector_body,
                headers={"Authorization": "Bearer proc-secret", "Content-Type": "application/cbor"},
            )
            assert resp.status_code == 200, resp.text
            rows = client.get("/v1/readings", params={"device": "env-0001"}).json()["readings"]
            assert {(r["metric"], r["value"]) for r in rows} == {("temp", 21.5), ("hum", 48.25)}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log.read_text()
        assert not ready.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
            print(log.read_text())


@pytest.mark.parametrize("factory", ["create_app", "from_environment"])
async def test_app_factories_open_the_configured_backend_in_their_lifespan(
    settings: Settings,
    vector_body: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    factory: str,
) -> None:
    """No storage handed in: the lifespan opens PostgreSQL when a database URL is set
    (directly, or from MACHI_CLOUD_DATABASE_URL for the uvicorn factory), else SQLite."""
    if factory == "create_app":
        app = app_module.create_app(settings)
    else:
        config = tmp_path / "cloud.toml"
        config.write_text(f'db = "{settings.db}"\n')
        monkeypatch.setenv("MACHI_CLOUD_CONFIG", str(config))
        monkeypatch.setenv("MACHI_CLOUD_GATEWAY_TOKENS", "gw-01=secret-01")
        monkeypatch.delenv("MACHI_CLOUD_DATABASE_URL", raising=False)
        if settings.database_url:
            monkeypatch.setenv("MACHI_CLOUD_DATABASE_URL", settings.database_url)
        app = app_module.from_environment()
        assert gc.get_freeze_count() > 0  # the service process exempts its startup objects
        gc.unfreeze()
    async with app.router.lifespan_context(app):
        kind = PostgresStorage if settings.database_url else SQLiteStorage
        assert isinstance(app.state.storage, kind)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cloud.test") as c:
            resp = await c.post(
                "/v1/batches",
                content=vector_body,
                headers={"Authorization": "Bearer secret-01", "Content-Type": "application/cbor"},
            )
            assert resp.status_code == 200, resp.text
            assert (await c.get("/healthz")).json()["readings"] == 2
    if not settings.database_url:
        assert settings.db.exists()


async def test_app_lifespan_refuses_an_unreachable_database_with_a_clear_error(
    tmp_path: Path,
) -> None:
    """The password never appears in the error; the app does not start."""
    url = "postgresql://machi:hunter2@127.0.0.1:1/nowhere"
    app = app_module.create_app(Settings(db=tmp_path / "unused.sqlite", database_url=url))
    with pytest.raises(StorageUnavailable) as caught:
        async with app.router.lifespan_context(app):
            raise AssertionError("the app started without its database")
    assert "cannot connect to PostgreSQL at postgresql://machi:***@127.0.0.1:1/nowhere" in (
        caught.value.detail
    )
    assert "hunter2" not in caught.value.detail


def test_a_stop_ends_a_held_long_poll_at_once(
    tmp_path: Path, start_cloud: Start, wait_ready: Ready
) -> None:
    """SIGTERM while a gateway long-polls for commands: the poll is answered (no commands)
    and the process exits 0, instead of the stop waiting for the poll (uvicorn lets open
    requests finish) and then cutting it off unanswered after its graceful timeout."""
    ready = tmp_path / "cloud.ready"
    log = tmp_path / "cloud.log"
    env = {**os.environ, "MACHI_CLOUD_GATEWAY_TOKENS": "gw-01=proc-secret"}
    proc = start_cloud(["--db", str(tmp_path / "c.sqlite")], ready, log, env)
    try:
        url = wait_ready(proc, ready, log, 30)["url"]
        answers: list[httpx.Response] = []

        def poll() -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                answers.append(client.get(
                    "/v1/gateways/gw-01/commands", params={"wait": 25},
                    headers={"Authorization": "Bearer proc-secret"}))

        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(1.0)  # the poll reaches the service and is held (wait=25)
        assert poller.is_alive(), answers
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        poller.join(30)
        assert len(answers) == 1
        assert answers[0].status_code == 200, answers[0].text
        assert answers[0].json()["commands"] == []
        # well before the poll's 25 s and uvicorn's 10 s graceful timeout
        assert time.monotonic() - started < 8, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
            print(log.read_text())
