"""`machi-cloud` as a real process: port 0, ready file, a batch in and out, SIGTERM -> 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _command() -> list[str]:
    script = Path(sys.executable).parent / "machi-cloud"
    return [str(script)] if script.exists() else [sys.executable, "-m", "machi_cloud.cli"]


def test_process_serves_and_stops_cleanly(tmp_path: Path, vector_body: bytes) -> None:
    ready = tmp_path / "cloud.ready"
    log = tmp_path / "cloud.log"
    env = {**os.environ, "MACHI_CLOUD_GATEWAY_TOKENS": "gw-01=proc-secret"}
    argv = [
        *_command(),
        "--db",
        str(tmp_path / "c.sqlite"),
        "--port",
        "0",
        "--ready-file",
        str(ready),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, f"exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text()}"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
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
