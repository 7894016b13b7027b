"""Firmware: CPU time and heap per reading under the real MicroPython, bytes per reading.

Baselines measured in the same run: cbor2 (C extension) on CPython encoding the same pack,
and SenML-JSON for the size of the same reading.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import timeit
from pathlib import Path

import cbor2

from machi_tools.procs import executable

ROOT = Path(__file__).resolve().parents[1]
N = 5000


def senml_pack() -> list[dict[int, object]]:
    vec = json.loads((ROOT / "tests/vectors/senml-readings.json").read_text())[0]
    return [{int(k): v for k, v in rec.items()} for rec in vec["senml"]]


def senml_json_bytes() -> int:
    """The same reading as SenML-JSON (RFC 8428 §5), compact separators."""
    vec = json.loads((ROOT / "tests/vectors/senml-readings.json").read_text())[0]
    labels = {"0": "n", "1": "u", "2": "v", "-2": "bn", "-3": "bt"}
    records = [{labels[k]: v for k, v in rec.items()} for rec in vec["senml"]]
    return len(json.dumps(records, separators=(",", ":")).encode())


def run() -> dict[str, float]:
    env = dict(os.environ, MICROPYPATH=f".frozen:{ROOT / 'firmware/lib'}")
    out = subprocess.run(
        [executable("micropython"), str(ROOT / "bench/mp_encode.py"), str(N)],
        capture_output=True, text=True, env=env, check=True,
    ).stdout
    mp = json.loads(out.strip().splitlines()[-1])
    pack = senml_pack()
    cpython_us = min(timeit.repeat(lambda: cbor2.dumps(pack, canonical=True),
                                   number=N, repeat=3)) / N * 1e6
    json_bytes = senml_json_bytes()
    print("firmware encode (env reading, 7 measurements)")
    print(f"  micropython  {mp['us_per_reading']:8.1f} us/reading, "
          f"{mp['heap_bytes_per_reading']} heap bytes/reading, {mp['bytes']} bytes")
    print(f"  baseline cbor2 on CPython {cpython_us:8.1f} us/reading")
    print(f"  ratio micropython / cbor2: {mp['us_per_reading'] / cpython_us:.1f}x")
    print(f"  baseline SenML-JSON with MicroPython's json, same run: "
          f"{mp['json_us_per_reading']:.1f} us/reading, "
          f"{mp['json_heap_bytes_per_reading']} heap bytes/reading, {mp['json_bytes']} bytes")
    print(f"  ratio ours / json under micropython: CPU "
          f"{mp['us_per_reading'] / mp['json_us_per_reading']:.2f}x, heap "
          f"{mp['heap_bytes_per_reading'] / mp['json_heap_bytes_per_reading']:.2f}x")
    print(f"  size: SenML-CBOR {mp['bytes']} B vs SenML-JSON {json_bytes} B "
          f"= {mp['bytes'] / json_bytes:.2f} of JSON")
    return {"mp_us": mp["us_per_reading"], "cbor2_us": cpython_us,
            "heap": mp["heap_bytes_per_reading"], "cbor_bytes": mp["bytes"],
            "json_bytes": json_bytes, "mp_json_us": mp["json_us_per_reading"],
            "mp_json_heap": mp["json_heap_bytes_per_reading"]}


if __name__ == "__main__":
    run()
    sys.exit(0)
