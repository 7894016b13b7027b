"""Heap budget of each app on a real 32-bit MicroPython: the WebAssembly port (wasm32).

test_heap_budget.py measures on the 64-bit unix port, where pointers (and so bytecode
tables, qstr entries, objects, GC blocks) are twice an ESP32's size. Here the same firmware,
compiled by the same mpy-cross into .mpy files, runs the same workload (8 readings
acknowledged by a 2.04 that carries the time, two commands in the second answer, status
every 4) on MicroPython's wasm32 port (npm @micropython/micropython-webassembly-pyscript,
installed by tools/system-deps.sh) under Node.js (wasm/driver.mjs, wasm/harness.py). The
node's real code path runs: nodemain's config and build, Node, the flash ring and the seq
store on the port's file system, the CoAP client (one transmission is lost, so it
retransmits), the reading encoder. The port has no sockets: wasm/wloop.py stands in for
socket/select (a loopback gateway), time (a virtual clock: a run takes no wall time) and,
with wsys.py and wos.py, for what else the unix port's C modules give (sys.platform,
os.urandom). Their code, data and ~60 names (qstrs), and the port's os/time/binascii, which
are frozen Python here (C on unix and an ESP32), sit on the node's heap: the "harness",
measured, which makes every figure that includes it conservative; its names also shift where
the qstr pools fill up, so they can move the firmware's pool growth either way.

What the figures mean. This port's GC cannot scan the wasm stack, so it collects only when a
call from JavaScript returns; meanwhile an allocation that does not fit adds a heap area
instead of failing. The harness therefore runs the node one step per call (Node.step(False),
as lib/multinode.py does) and detects any growth of the heap. Per app (KB):
- code32: heap taken by loading the modules test_heap_budget.py's probe loads (after a
  collection): .mpy bytecode and qstrs, which an ESP32 also loads into RAM from .mpy files
  on its file system (frozen into the firmware image they would take none).
- resident32: the most the firmware keeps in use at any step boundary, after a collection
  (harness excluded). A heap smaller than that cannot work on a 32-bit port.
- smallest32: the smallest heap (2 KB steps) in which the whole workload completes with no
  growth, collecting only between steps: room for everything one step allocates, garbage
  included (the unix board's virtual sensors make ~2 KB of float garbage per sensor read).
  An upper bound: a GC that collects at any allocation (an ESP32's) needs less.
- the same harness and workload on the 64-bit unix port (wasm/unix_drive.py), whose GC
  collects anywhere: resident64, smallest64 (1 KB steps) and room64, how far above what
  stays live the smallest heap is. est32 = resident32 + room64 estimates a 32-bit port
  collecting anywhere (32-bit garbage is no larger than 64-bit: an estimate, not a run).
The figures are printed (`pytest -s`) and asserted against the bounds measured, never
against timing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .test_heap_budget import build_mpy as build_firmware_mpy

FIRMWARE = Path(__file__).resolve().parents[1]
REPO = FIRMWARE.parent
WASM = Path(__file__).parent / "wasm"
WASM_VERSION = "1.29.0-6"  # tools/system-deps.sh installs this version
PKG = (REPO / ".venv" / "wasm-micropython" / "node_modules" / "@micropython"
       / "micropython-webassembly-pyscript")
# the probe's modules, as test_heap_budget.py's (its figures are comparable)
COMMON = ["nodemain", "coap_client", "ring", "node", "seqstore", "boards.unix",
          "transports.udp"]
APPS = {"env": "apps.env_sensor", "bin": "apps.waste_bin", "light": "apps.streetlight"}
# what build() imports, leaves first: loaded one per call before build(), so a collection
# can run between them as it could on a device (a module missing here is loaded inside
# build() instead, which can only make the figure larger)
LOADS = {
    "env": ["quant", "apps.env_sensor"],
    "bin": ["quant", "apps.waste_bin"],
    "light": ["quant", "sun", "apps.streetlight", "coap_server"],
}
BASE_LOADS = ["coap", "coap_client", "ring", "cbor", "reading", "node", "seqstore",
              "boards.bootcount", "boards.scenario", "boards.unix"]
DROP = 5  # the loopback gateway loses the first transmission of this request
BIG_K = 256


def build_mpy(out: Path, mpy_cross: str) -> Path:
    """The firmware as test_heap_budget.py builds it, plus the harness in out/wasm."""
    build_firmware_mpy(out, mpy_cross)
    (out / "wasm").mkdir()
    for src in WASM.glob("*.py"):
        subprocess.run([mpy_cross, "-o", str(out / "wasm" / (src.stem + ".mpy")), str(src)],
                       check=True)
    return out


def drive(node: str, root: Path, heap_k: int, *args: str) -> tuple[dict[str, Any], str]:
    r = subprocess.run([node, str(WASM / "driver.mjs"), str(PKG / "micropython.mjs"),
                        str(root), str(heap_k), *args],
                       capture_output=True, text=True, timeout=120, check=False)
    out = r.stdout + r.stderr
    last = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and last, out[-3000:]
    res: dict[str, Any] = json.loads(last[-1][len("RESULT "):])
    assert "error" not in res, out[-3000:]
    return res, out


def node_config(typ: str, state_dir: str) -> dict[str, Any]:
    return {"device_id": f"{typ}-0001", "type": typ, "clock": False, "state_dir": state_dir,
            "gateway": {"host": "127.0.0.1", "port": 5683}, "interval_s": 0.05,
            "count": 8, "drain_timeout_s": 20, "status_every": 4,
            "coap": {"ack_timeout_s": 0.5, "ack_random_factor": 1.5, "max_retransmit": 4}}


def loads(typ: str) -> str:
    return " ".join([*BASE_LOADS, *LOADS[typ], "transports.udp"])


def run_wasm(node: str, root: Path, typ: str, heap_k: int) -> tuple[dict[str, Any], str]:
    path = root.parent / f"cfg-{typ}.json"
    path.write_text(json.dumps(node_config(typ, f"/state/{typ}-0001")))
    res, out = drive(node, root, heap_k, "node", str(path), str(DROP), loads(typ))
    if res["grew"]:
        return {}, out  # the only acceptable failure: the heap was too small
    assert res["code"] == 0, out[-3000:]
    return res, out


def run_unix(mp: str, root: Path, typ: str, heap_k: int) -> tuple[dict[str, Any], str]:
    # the same harness on the 64-bit unix port, whose GC collects at any allocation
    state = root.parent / f"state-{typ}-{heap_k}"
    path = root.parent / f"cfg-unix-{typ}.json"
    path.write_text(json.dumps(node_config(typ, str(state))))
    r = subprocess.run([mp, "-X", f"heapsize={heap_k}K", str(WASM / "unix_drive.py"),
                        str(root), str(path), str(DROP), loads(typ)],
                       capture_output=True, text=True, timeout=120, check=False)
    out = r.stdout + r.stderr
    last = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and last, out[-3000:]
    res: dict[str, Any] = json.loads(last[-1][len("RESULT "):])
    if res.get("memory_error"):
        return {}, out  # the only acceptable failure
    assert res["code"] == 0, out[-3000:]
    return res, out


def smallest(run: Any, lo: int, hi: int, step: int) -> int:
    """The smallest heap (KB, to `step` KB) in lo..hi that run() completes in."""
    assert not run(lo)[0] and run(hi)[0], (lo, hi)
    while hi - lo > step:
        mid = (lo + hi) // 2
        if run(mid)[0]:
            hi = mid
        else:
            lo = mid
    return hi


def check_workload(typ: str, res: dict[str, Any], out: str) -> None:
    dev = f"{typ}-0001"
    assert res, out[-3000:]
    acks = re.findall(rf"I {dev} ack seq=(\d+) code=2.04", out)
    assert sorted(map(int, acks)) == list(range(8)), out
    assert f"W {dev} retry seq=" in out, out
    assert f"I {dev} time t=1767225600 was=unknown" in out, out
    assert f"I {dev} cmd cid=1 name=interval result=ok" in out, out
    assert f"I {dev} cmd cid=2 name=config result=" in out, out
    assert f"I {dev} stop code=0 taken=8 left=0 rejected=0" in out, out


@pytest.fixture(scope="module")
def node_js() -> str:
    node = shutil.which("node")
    if not node or not (PKG / "micropython.mjs").exists():
        pytest.skip(f"needs Node.js and npm {PKG.name}@{WASM_VERSION} in {PKG.parents[2]} "
                    "(tools/system-deps.sh installs both)")
    version = json.loads((PKG / "package.json").read_text())["version"]
    assert version == WASM_VERSION, f"{PKG} is {version}: run tools/system-deps.sh"
    return node


@pytest.mark.micropython
def test_heap_per_app_on_wasm32(micropython: str, node_js: str, tmp_path: Path) -> None:
    mpy_cross = str(Path(micropython).parent / "mpy-cross")
    root = build_mpy(tmp_path / "mpy", mpy_cross)
    figures = {}
    for typ, app in APPS.items():
        res, out = run_wasm(node_js, root, typ, BIG_K)
        check_workload(typ, res, out)
        assert res["requests"] == 8 and res["lost"] == 1, res
        harness = res["harness_bytes"]
        heap = smallest(lambda k, t=typ: run_wasm(node_js, root, t, k), 32, BIG_K, 2)
        probe, out = drive(node_js, root, 512, "probe", " ".join([*COMMON, app]))
        mpy = int(re.search(r"^MPY (\d+)", out, re.M).group(1))  # type: ignore[union-attr]
        head = (root / "lib" / "node.mpy").read_bytes()[:3]
        # the port loads what mpy-cross wrote (it ran it above): the same .mpy version, and
        # bytecode only (no architecture: the sub-version only matters for native code)
        assert head[0] == ord("M") and head[1] == mpy & 0xFF and head[2] >> 2 == 0, (head, mpy)
        # the reference: the same harness and workload on the 64-bit unix port
        ures, uout = run_unix(micropython, root, typ, BIG_K)
        check_workload(typ, ures, uout)
        uheap = smallest(lambda k, t=typ: run_unix(micropython, root, t, k), 48, BIG_K, 1)
        figures[typ] = {
            "code": probe["code_bytes"] / 1024, "resident": (res["live"] - harness) / 1024,
            "harness": harness / 1024, "step": res["most"] / 1024, "heap": heap,
            "u_resident": (ures["live"] - ures["harness_bytes"]) / 1024, "u_heap": uheap,
            # what a heap must hold beyond what stays live, when the GC collects anywhere
            "u_room": uheap - ures["live"] / 1024,
        }
    harness = max(f["harness"] for f in figures.values())
    print()
    print(f"KB, MicroPython wasm32 port {WASM_VERSION} (32) and unix port (64), .mpy modules;"
          f" the harness ({harness:.1f} on 32) is in 'smallest', not in code or resident")
    print("app    code32 resident32 smallest32* step32 | resident64 smallest64 room64 | est32")
    for typ, f in figures.items():
        print(f"{typ:6s} {f['code']:6.1f} {f['resident']:10.1f} {f['heap']:11d} "
              f"{f['step']:6.1f} | {f['u_resident']:10.1f} {f['u_heap']:10d} "
              f"{f['u_room']:6.1f} | {f['resident'] + f['u_room']:5.1f}")
    print("* collecting only between steps (this port's GC); 64: the same harness and workload,"
          " collecting anywhere;\n  room64 = smallest64 - what stays live (harness too); "
          "est32 = resident32 + room64: an estimate for a 32-bit port collecting anywhere")
    for f in figures.values():
        # measured on 32 bits: what stays live fits a 64 KB heap (62 KB usable after the
        # GC's tables) with room; necessary, not sufficient
        assert f["resident"] <= 60 and f["code"] <= 48, figures
        # the bound measured with collections only between steps (an upper bound)
        assert f["heap"] <= 112, figures
        # 32 bits keep less live than 64 (pointers, GC blocks of 16 B instead of 32)
        assert f["resident"] < 0.8 * f["u_resident"], figures
