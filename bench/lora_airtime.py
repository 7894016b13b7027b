"""LoRa: bytes on air and time on air per reading, compact frame vs SenML-JSON.

For each reading of tests/vectors/lora-frames.json (env, bin, light), prints the compact
frame's size (MIC included) against the same reading as SenML-JSON (RFC 8428 §5, compact
separators, with bn/bt as an IP node would send it) and SenML-CBOR, and the airtime of
both at SF7..SF12 (AS923, 125 kHz, CR 4/5, explicit header, CRC on, preamble 8) by
Semtech's formula, marking what breaks the 400 ms dwell limit. The airtime is computed by
the firmware's own module (firmware/transports/airtime.py), imported here under CPython.
Run: `.venv/bin/python -m bench.lora_airtime` (also part of `make bench`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import cbor2

ROOT = Path(__file__).resolve().parents[1]
DWELL_US = 400_000


def _airtime_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "fw_airtime", ROOT / "firmware" / "transports" / "airtime.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def senml(frame: dict[str, Any], bt: int = 1795390000) -> list[dict[str, Any]]:
    """The same reading as the IP path's SenML pack (protocol.md §2), JSON labels."""
    pack: list[dict[str, Any]] = [{"bn": frame["device"] + ":", "bt": bt, "n": "seq",
                                   "v": frame["seq"]}]
    for m in frame["reading"]["m"]:
        rec = {"n": m["n"]}
        rec.update({k: v for k, v in m.items() if k != "n"})
        pack.append(rec)
    return pack


def senml_cbor(pack: list[dict[str, Any]]) -> bytes:
    labels = {"bn": -2, "bt": -3, "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4}
    return cbor2.dumps([{labels[k]: v for k, v in rec.items()} for rec in pack])


def run() -> None:
    at = _airtime_module()
    vectors = json.loads((ROOT / "tests/vectors/lora-frames.json").read_text())["frames"]
    sfs = range(7, 13)
    print("bytes per reading (compact frame incl. 4-byte MIC vs the same reading as SenML)")
    print(f"{'reading':26} {'frame':>5} {'SenML-JSON':>10} {'SenML-CBOR':>10} {'ratio':>6}")
    for f in vectors:
        pack = senml(f)
        js = len(json.dumps(pack, separators=(",", ":")).encode())
        cb = len(senml_cbor(pack))
        print(f"{f['name']:26} {f['bytes']:5d} {js:10d} {cb:10d} {js / f['bytes']:5.1f}x")
    print()
    print("time on air in ms, AS923 125 kHz CR 4/5 (* = over the 400 ms dwell limit)")
    head = " ".join(f"{'SF' + str(sf):>9}" for sf in sfs)
    print(f"{'payload':26} {'bytes':>5} {head}")
    env = next(f for f in vectors if f["name"] == "env-typical")
    env_day = next(f for f in vectors if f["name"] == "env-daylight")
    rows = [("env frame (typical)", env["bytes"]), ("env frame (daylight, max)", env_day["bytes"]),
            ("env SenML-CBOR", len(senml_cbor(senml(env)))),
            ("env SenML-JSON", len(json.dumps(senml(env), separators=(",", ":"))))]
    for label, n in rows:
        cells = []
        for sf in sfs:
            us = at.airtime_us(n, sf)
            cells.append(f"{us / 1000:8.1f}{'*' if us > DWELL_US else ' '}")
        print(f"{label:26} {n:5d} {' '.join(cells)}")
    print()
    print("largest payload within 400 ms: " + ", ".join(
        f"SF{sf} {at.max_payload(sf)} B" for sf in sfs))
    print(f"env frame: slowest SF within the dwell limit = SF{at.fit_sf(env['bytes'], 12)}; "
          f"airtime there {at.airtime_us(env['bytes'], at.fit_sf(env['bytes'], 12)) / 1000:.1f}"
          f" ms; 24 bytes at SF10 = {at.airtime_us(24, 10) / 1000:.3f} ms")


if __name__ == "__main__":
    run()
