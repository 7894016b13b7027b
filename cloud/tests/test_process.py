"""`machi-cloud` as a real process: port 0, ready file, a batch in and out, SIGTERM -> 0."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

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
