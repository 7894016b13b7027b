"""End-to-end latency: a node records a reading -> the cloud has stored it.

The real programs: `machi-cloud` (SQLite), `machi-gateway` and emulated nodes (the
firmware under the real MicroPython, several per process: `firmware/multi.py`), on
loopback, with no faults.

Method. The two ends are timestamped by the same host clock:

- *recorded*: the moment this process reads the node's `I <dev> rec seq=N` line from the
  node process's stdout pipe (a thread blocks on the pipe; the unix port writes stdout
  unbuffered). The line is written right after the reading is durably in the node's ring,
  so this is when the node has promised the reading.
- *stored*: the cloud's own `samples.ingested` column (`time.time()` when the storage
  writes the batch, just before its commit), read from the cloud's SQLite file after the
  run; `samples.received` (the gateway's receive time) splits the path in two.

Baselines from the same run: the node's own CoAP round trip to the gateway (its `ack ...
ms=` figure: CON sent -> 2.04 received, the gateway's durable queue commit included), and
the gateway's `batch_age_s` (how long it lets a batch fill before posting it).
Also printed: the node process's CPU time per reading (the whole firmware loop, from
wait4) and peak RSS (/proc VmHWM), and the MicroPython heap in use after start-up.

``python -m bench.e2e_latency``; MACHI_BENCH_E2E_NODES (20), MACHI_BENCH_E2E_READINGS per
node (20), MACHI_BENCH_E2E_BATCH_AGE_S (gateway settings to measure, "0.5,0.05").
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from machi_tools.procs import executable, firmware_dir
from machi_tools.scenario import process_resources
from machi_tools.system import Cloud, CoapProfile, Gateway, Node, fleet_specs, write_devices_file

_REC = re.compile(r"^I (\S+) rec seq=(\d+)")
_ACK = re.compile(r"^I (\S+) ack seq=(\d+) code=2\.\d\d tries=(\d+) ms=(\d+)")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class NodeOutput(threading.Thread):
    """Reads the node process's stdout and timestamps every `rec` line on arrival."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.recorded: dict[tuple[str, int], float] = {}
        self.ack_ms: list[float] = []
        self.first_try_ack_ms: list[float] = []
        self.lines: list[str] = []

    def run(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            now = time.time()
            line = raw.decode(errors="replace").rstrip("\n")
            if m := _REC.match(line):
                self.recorded[(m[1], int(m[2]))] = now
            elif m := _ACK.match(line):
                self.ack_ms.append(float(m[4]))
                if m[3] == "1":
                    self.first_try_ack_ms.append(float(m[4]))
            else:
                self.lines.append(line)


def _watch_rss(pid: int, peak: list[float]) -> None:
    """VmHWM of the node process every 0.2 s while it lives (rusage's ru_maxrss would count
    the forking CPython's pages too)."""
    while got := process_resources(pid):
        peak[0] = max(peak[0], got["peak_rss_mib"])
        time.sleep(0.2)


def _stored(db: Path) -> dict[tuple[str, int], tuple[float, float]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT device, seq, received, ingested FROM samples").fetchall()
    finally:
        con.close()
    return {(d, int(s)): (float(r), float(i)) for d, s, r, i in rows}


def measure(workdir: Path, nodes: int, readings: int, batch_age_s: float) -> dict[str, float]:
    cloud = Cloud(workdir=workdir)
    gateway: Gateway | None = None
    proc: subprocess.Popen[bytes] | None = None
    peak: list[float] = [0.0]
    try:
        cloud.start()
        gateway = Gateway(workdir=workdir, cloud_url=cloud.url, token=cloud.token,
                          batch_age_s=batch_age_s)
        specs = fleet_specs({"env": nodes}, interval_s=1.0, count=readings)
        write_devices_file(gateway.devices_path, specs)
        coap = gateway.start()
        gateway.wait_devices(len(specs))
        configs = [Node(spec=s, workdir=workdir, gateway=coap, coap=CoapProfile(),
                        drain_timeout_s=60).config() for s in specs]
        path = workdir / "nodes.json"
        path.write_text(json.dumps({"nodes": configs}))
        proc = subprocess.Popen(
            [executable("micropython"), "-X", f"heapsize={256 + 32 * nodes}K",
             str(firmware_dir() / "multi.py"), str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = NodeOutput(proc)
        out.start()
        timer = threading.Timer(readings * 1.0 + 120, proc.kill)
        timer.start()
        rss = threading.Thread(target=_watch_rss, args=(proc.pid, peak), daemon=True)
        rss.start()
        _, status, usage = os.wait4(proc.pid, 0)  # its CPU time with it
        timer.cancel()
        code = proc.returncode = os.waitstatus_to_exitcode(status)
        out.join(10)
        if code != 0:
            raise RuntimeError(f"nodes exited {code}: {out.lines[-10:]}")
        deadline = time.monotonic() + 60
        while len(stored := _stored(workdir / "cloud.sqlite")) < len(out.recorded):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cloud has {len(stored)} of {len(out.recorded)} readings")
            time.sleep(0.2)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if gateway is not None:
            gateway.stop()
        cloud.stop()
    heap = next((int(m[1]) for line in out.lines
                 if (m := re.match(r"I - multi nodes=\d+ failed=0 heap=(\d+)", line))), 0)
    e2e = [stored[k][1] - t for k, t in out.recorded.items()]
    to_gw = [stored[k][0] - t for k, t in out.recorded.items()]
    to_cloud = [stored[k][1] - stored[k][0] for k in out.recorded]
    return {
        "readings": len(e2e),
        "e2e_p50_ms": 1000 * pct(e2e, 0.5), "e2e_p99_ms": 1000 * pct(e2e, 0.99),
        "gw_p50_ms": 1000 * pct(to_gw, 0.5), "gw_p99_ms": 1000 * pct(to_gw, 0.99),
        "up_p50_ms": 1000 * pct(to_cloud, 0.5), "up_p99_ms": 1000 * pct(to_cloud, 0.99),
        "ack_p50_ms": pct(out.ack_ms, 0.5), "ack_p99_ms": pct(out.ack_ms, 0.99),
        "batch_age_ms": 1000 * batch_age_s,
        "node_cpu_ms_per_reading": 1000 * (usage.ru_utime + usage.ru_stime) / len(e2e),
        "node_peak_rss_mib": peak[0], "node_heap_bytes": heap,
    }


def run() -> list[dict[str, float]]:
    nodes = int(os.environ.get("MACHI_BENCH_E2E_NODES", "20"))
    readings = int(os.environ.get("MACHI_BENCH_E2E_READINGS", "20"))
    ages = [float(a) for a in os.environ.get("MACHI_BENCH_E2E_BATCH_AGE_S", "0.5,0.05")
            .split(",")]
    results = []
    print(f"end to end, node records -> cloud stored ({nodes} nodes in one MicroPython "
          f"process, {readings} readings each, 1 reading/s, no faults)")
    for age in ages:
        with tempfile.TemporaryDirectory(prefix="machi-e2e-") as tmp:
            r = measure(Path(tmp), nodes, readings, age)
        results.append(r)
        print(f" gateway batch_age_s {age}: {r['readings']:.0f} readings")
        print(f"  e2e             p50 {r['e2e_p50_ms']:7.1f} ms   p99 {r['e2e_p99_ms']:7.1f} ms")
        print(f"    node->gateway  p50 {r['gw_p50_ms']:7.1f} ms   p99 {r['gw_p99_ms']:7.1f} ms")
        print(f"    gateway->cloud p50 {r['up_p50_ms']:7.1f} ms   p99 {r['up_p99_ms']:7.1f} ms")
        print(f"  baseline CoAP round trip node->gateway (ACK) p50 {r['ack_p50_ms']:.1f} ms, "
              f"p99 {r['ack_p99_ms']:.1f} ms")
        ack = max(r["ack_p50_ms"], 1.0)  # the node's ticks are whole ms
        print(f"  ratio e2e p50 / ACK p50: {r['e2e_p50_ms'] / ack:.1f}x; "
              f"e2e p50 / batch_age: {r['e2e_p50_ms'] / r['batch_age_ms']:.2f}")
        print(f"  node process (whole firmware loop: sample, ring, CoAP, log): "
              f"{r['node_cpu_ms_per_reading']:.2f} ms CPU per reading (start-up included), "
              f"peak RSS {r['node_peak_rss_mib']:.1f} MiB, MicroPython heap in use after "
              f"start-up {r['node_heap_bytes'] / 1024:.0f} KB for {nodes} nodes")
    return results


if __name__ == "__main__":
    run()
