"""Shared fixtures for the technician tools' tests: an emulated board, a fake cloud, `machi`."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from machi_tools.emuboard import EmuBoard
from machi_tools.procs import executable
from machi_tools.system import new_token

MachiRunner = Callable[..., subprocess.CompletedProcess[str]]


def _run_machi(*args: str, timeout: float = 180,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [executable("machi"), *args], capture_output=True, text=True, timeout=timeout,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "TERM": "dumb", **(env or {})},
        check=False,
    )


@pytest.fixture
def machi() -> MachiRunner:
    """Run the installed `machi` command as a technician would."""
    return _run_machi


@pytest.fixture
def emuboard(tmp_path: Path) -> Iterator[EmuBoard]:
    """A blank emulated board (unix micropython on a pty); its filesystem is tmp_path/board."""
    with EmuBoard(tmp_path / "board") as board:
        yield board


@dataclass
class FakeCloud:
    """Just the two C4 endpoints provisioning calls, over real HTTP on 127.0.0.1."""

    token: str = field(default_factory=lambda: new_token(16))
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_with: int | None = None  # answer every call with this status
    url: str = ""


def _handler(cloud: FakeCloud) -> type[BaseHTTPRequestHandler]:
    path_re = re.compile(r"^/v1/devices/([a-z0-9][a-z0-9-]{0,31})(/keys)?$")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            cloud.calls.append((method, self.path))
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if cloud.fail_with:
                self._answer(cloud.fail_with, {"detail": "fake failure"})
                return
            if self.headers.get("Authorization") != f"Bearer {cloud.token}":
                self._answer(401, {"title": "Unauthorized", "detail": "bad token"})
                return
            m = path_re.match(self.path)
            if not m:
                self._answer(404, {"detail": "no such endpoint"})
                return
            dev = m[1]
            if method == "PUT" and not m[2]:
                reg = json.loads(body)
                if reg.get("type") not in ("env", "bin", "light") or "gateway" not in reg:
                    self._answer(422, {"detail": [{"loc": ["body", "type"], "msg": "bad"}]})
                    return
                created = dev not in cloud.devices
                cloud.devices[dev] = reg
                # the real cloud's answer names the short id it assigned (OSCORE kid)
                short_id = list(cloud.devices).index(dev) + 1
                self._answer(201 if created else 200,
                             {"device": dev, **reg, "short_id": short_id})
            elif method == "POST" and m[2]:
                if dev not in cloud.devices:
                    self._answer(404, {"detail": f"device {dev} not registered"})
                    return
                cloud.keys[dev] = secrets.token_hex(16)
                self._answer(201, {"device": dev, "key": cloud.keys[dev]})
            else:
                self._answer(405, {"detail": "method not allowed"})

        def do_PUT(self) -> None:
            self._route("PUT")

        def do_POST(self) -> None:
            self._route("POST")

    return Handler


@pytest.fixture
def fake_cloud() -> Iterator[FakeCloud]:
    cloud = FakeCloud()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(cloud))
    cloud.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield cloud
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def unix_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `machi build --board unix` for the session (provisioning tests pass --build-dir)."""
    from machi_tools.build import build

    out = tmp_path_factory.mktemp("build") / "unix"
    build("unix", out)
    return out


@dataclass(frozen=True)
class DemoRun:
    """One finished `machi demo` run: its exit code, output and working directory."""

    returncode: int
    out: str
    workdir: Path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """`machi demo --duration 25`, run once for the session: test_cli.py checks what a
    person sees (every node within 30 s, a clean stop) and test_demo_oscore.py that it ran
    OSCORE end to end, on the same run (each run takes its whole --duration)."""
    workdir = tmp_path_factory.mktemp("demo")
    result = _run_machi("demo", "--duration", "25", "--workdir", str(workdir))
    return DemoRun(result.returncode, result.stdout + result.stderr, workdir)
