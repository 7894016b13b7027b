"""Gateway pipeline: can one gateway core ingest AND upload 10-packs at 20,000 readings/s?

Two gateways, each its own process pinned to CPU 0, loaded in the same run by the same load
generator (bench/gateway_coap.py's ``drive``, in this process on CPU 1: 10-packs of 3
measurements, 64 confirmable POSTs in flight, each a new ``(device, seq)``):

- ingest only: bench/gateway_coap.py's gateway (Registry + Store + Core + CoapIngress; every
  reading committed before its 2.04), the baseline;
- pipeline:    the same gateway plus the uplink as ``machi_gateway.daemon`` wires it
  (HttpUplink + Batcher, policy and timeouts from the ``[uplink]`` config defaults: a batch
  per ``batch_max`` readings or when the oldest has waited 2 s), posting to a real ``machi-cloud``
  (uvicorn, SQLite, the gateway's token in ``MACHI_CLOUD_GATEWAY_TOKENS``; the cloud stores
  readings of devices it has no registration for, so none is provisioned) pinned to CPU 1.

``MACHI_BENCH_BATCH_MAX`` sets the pipeline's ``[uplink] batch_max`` (default: the config's).
Each gateway gets 0.3 s of warm-up load; the pipeline then waits until its queue is empty,
so the window starts with no backlog. Then ``MACHI_BENCH_SECONDS`` (default 5) of load.
Printed: readings/s answered 2.04 (ingested); readings/s the cloud stored during the same
window (its ``samples`` rows, counted read-only before and after: stored = acked, as the
cloud answers only after its commit); the gateway queue's backlog when the load stops (its
``queue`` rows, read-only) and how long it took to fall below one batch and to empty (a
last partial batch leaves once its oldest reading is 2 s old); the gateway's CPU per
reading (``/proc/<pid>/stat``) from the window's start until its queue is empty, divided by
the readings ingested in the window: ingest and upload of every one, the sustained cost,
whose inverse is the rate one idle core could sustain; and how busy the gateway's core was
during the window. The baseline runs before and after the pipeline (fresh gateways), and
the ratios are against the mean of the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.gateway_coap import (
    _SEQ_BASE,
    DEVICES,
    ROOT,
    SMALL,
    Template,
    cpu_seconds,
    drive,
    start_server,
)
from machi_tools.procs import ManagedProcess, stop_popen
from machi_tools.system import Cloud

GATEWAY = "gw-01"
TOKEN = "bench-secret"
IN_FLIGHT = 64
_DRAIN_TIMEOUT_S = 20.0
_POLL_S = 0.02


# ---- the pipeline gateway (run as a subprocess) ---------------------------------------------


async def serve(ready: Path, data: Path, cloud: str, batch_max: int | None) -> None:
    """bench/gateway_coap.py's gateway plus the uplink to ``cloud``, wired as the daemon
    wires it from its ``[uplink]`` config (defaults but for the URL, the token and, when
    given, ``batch_max``)."""
    from machi_gateway import gctune
    from machi_gateway.config import from_mapping
    from machi_gateway.core import Core
    from machi_gateway.ingress.coap import CoapIngress
    from machi_gateway.registry import Registry
    from machi_gateway.stats import IngressStats
    from machi_gateway.store import Store
    from machi_gateway.uplink.batcher import Batcher, BatchPolicy
    from machi_gateway.uplink.http import HttpUplink

    gctune.tune()
    uplink_section: dict[str, Any] = {"url": cloud, "token": TOKEN}
    if batch_max is not None:
        uplink_section["batch_max"] = batch_max
    config = from_mapping({"gateway": {"id": GATEWAY}, "uplink": uplink_section},
                          base_dir=data)
    up = config.uplink
    devices = data / "devices.json"
    await asyncio.to_thread(devices.write_text, json.dumps(
        {"devices": [{"id": f"env-{i:04d}", "type": "env"} for i in range(DEVICES)]}))
    registry = Registry(devices)
    registry.reload_if_changed()
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(Store(
            data / "queue.sqlite3", max_readings=10**8, retry_after_s=30, dedup_window_s=86400))
        uplink = await stack.enter_async_context(
            HttpUplink(up.url, token=up.token, timeout_s=up.timeout_s, tls_config=config.cloud))
        batcher = Batcher(store, uplink, gateway=config.gateway_id, policy=BatchPolicy.of(up))
        coap = await stack.enter_async_context(CoapIngress(
            Core(registry, store, IngressStats()), host="127.0.0.1", port=0, max_payload=1024))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(batcher.run(), name="uplink")
            part = ready.with_suffix(".part")  # written whole, then renamed: never half-read
            await asyncio.to_thread(part.write_text, json.dumps(
                {"port": coap.address[1], "batch_max": up.batch_max}))
            part.replace(ready)
            await asyncio.Event().wait()


# ---- processes --------------------------------------------------------------------------------


def _pinned(cmd: list[str], cpu: int) -> list[str]:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu), *cmd]
    return cmd


def _pin(pid: int, cpu: int) -> None:
    """Pin every thread of a running process (its later threads inherit it)."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), {cpu})


def start_cloud(tmp: Path) -> tuple[Cloud, Path]:
    """A real ``machi-cloud`` on a fresh SQLite database (as the demo and the HIL tests
    start it), pinned to CPU 1; returns it and its database."""
    cloud = Cloud(workdir=tmp / "cloud", gateway_id=GATEWAY, token=TOKEN)
    cloud.start()
    assert cloud.process is not None
    _pin(cloud.process.pid, 1)
    return cloud, cloud.workdir / "cloud.sqlite"


def start_pipeline(tmp: Path, cloud: str) -> tuple[ManagedProcess, int, int, Path]:
    """The pipeline gateway pinned to CPU 0; returns the process, its CoAP port, its batch
    size and its queue database."""
    data = tmp / "pipeline"
    data.mkdir()
    cmd = [sys.executable, "-m", "bench.gateway_pipeline", "--serve", "--ready",
           str(tmp / "pipeline.ready"), "--data", str(data), "--cloud", cloud]
    if os.environ.get("MACHI_BENCH_BATCH_MAX"):  # else the [uplink] default
        cmd += ["--batch-max", os.environ["MACHI_BENCH_BATCH_MAX"]]
    proc = ManagedProcess(
        name="pipeline", argv=_pinned(cmd, 0), log_path=tmp / "pipeline.log",
        ready_file=tmp / "pipeline.ready",
        env={"PYTHONPATH": os.pathsep.join([str(ROOT / "gateway"), str(ROOT),
                                            os.environ.get("PYTHONPATH", "")])})
    proc.start()
    try:
        doc = proc.wait_ready(60)
    except BaseException:  # Ctrl-C too: no process left behind
        proc.stop()
        raise
    return proc, int(doc["port"]), int(doc["batch_max"]), data / "queue.sqlite3"


# ---- measurement ------------------------------------------------------------------------------


def count(db: Path, table: str, upto: int | None = None) -> int:
    """Rows of ``table`` (at most ``upto``: a bounded scan, for polling) in another
    process's WAL database, read-only: a reader blocks neither its writer nor, beyond this
    one query, its checkpoints."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        sql = f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT ?)"
        return int(conn.execute(sql, (-1 if upto is None else upto,)).fetchone()[0])
    finally:
        conn.close()


def wait_until(predicate: Callable[[], bool], since: float, timeout_s: float) -> float | None:
    """Seconds from ``since`` (a ``perf_counter`` time) until ``predicate()`` holds, polled;
    None if it still does not after ``timeout_s``."""
    while not predicate():
        if time.perf_counter() - since > timeout_s:
            return None
        time.sleep(_POLL_S)
    return time.perf_counter() - since


def timed_drive(port: int, seconds: float, seq_base: int, tpl: Template) -> tuple[int, float]:
    """:func:`drive` at ``IN_FLIGHT``; returns readings answered 2.04 and the wall time."""
    start = time.perf_counter()
    r = drive(port, IN_FLIGHT, seconds, seq_base, tpl)
    return r["ok"] * tpl.per_request, time.perf_counter() - start


@dataclass
class Window:
    """One gateway's measured window (see the module docstring)."""

    ingested: int  # readings answered 2.04
    seconds: float
    cpu_s: float  # gateway CPU over the window (pipeline: until its queue was empty)
    window_cpu_s: float  # gateway CPU over the window alone
    acked: int = 0  # readings the cloud stored during the window
    backlog: int = 0  # queued readings when the load stopped
    batch_max: int = 0  # the uplink's batch size
    below_batch_s: float | None = None  # from the load's end until backlog < one batch
    empty_s: float | None = None  # ... until the queue was empty
    cloud_cpu_s: float = 0.0  # the cloud's CPU from the window's start until empty
    drain_cpu_s: float = 0.0  # the gateway's CPU from the load's end until < one batch
    drain_cloud_s: float = 0.0  # ... the cloud's

    @property
    def rate(self) -> float:
        return self.ingested / self.seconds

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu_s / max(self.ingested, 1)


def ingest_only(tmp: Path, tpl: Template, seconds: float, seq_base: int) -> Window:
    """bench/gateway_coap.py's gateway, fresh (in its own directory under ``tmp``)."""
    tmp.mkdir()
    proc, port = start_server("gateway", tmp)
    try:
        timed_drive(port, 0.3, seq_base, tpl)  # warm-up
        cpu0 = cpu_seconds(proc.pid)
        ingested, wall = timed_drive(port, seconds, seq_base + 10**7, tpl)
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        stop_popen(proc, 15)
    return Window(ingested, wall, cpu, cpu)


def pipeline(tmp: Path, cloud: Cloud, cloud_db: Path,
             tpl: Template, seconds: float, seq_base: int) -> Window:
    proc, port, batch_max, queue_db = start_pipeline(tmp, cloud.url)
    assert cloud.process is not None
    cloud_pid = cloud.process.pid

    def below(n: int) -> Callable[[], bool]:
        return lambda: count(queue_db, "queue", upto=n) < n

    try:
        warm, _ = timed_drive(port, 0.3, seq_base, tpl)
        if wait_until(below(1), time.perf_counter(), _DRAIN_TIMEOUT_S) is None:
            logs = "\n".join(f"{log.name}: {log.read_text()[-1000:]}" for log in (
                tmp / "pipeline.log", cloud.workdir / "logs" / "cloud.log"))
            raise RuntimeError(f"the warm-up's readings never reached the cloud\n{logs}")
        stored0 = count(cloud_db, "samples")
        cpu0, cloud0 = cpu_seconds(proc.pid), cpu_seconds(cloud_pid)
        ingested, wall = timed_drive(port, seconds, seq_base + 10**7, tpl)
        end = time.perf_counter()
        window_cpu, window_cloud = cpu_seconds(proc.pid) - cpu0, cpu_seconds(cloud_pid) - cloud0
        stored1 = count(cloud_db, "samples")
        backlog = count(queue_db, "queue")
        under_batch = wait_until(below(batch_max), end, _DRAIN_TIMEOUT_S)
        drain_cpu = cpu_seconds(proc.pid) - cpu0 - window_cpu
        drain_cloud = cpu_seconds(cloud_pid) - cloud0 - window_cloud
        empty = wait_until(below(1), end, _DRAIN_TIMEOUT_S)
        cpu, cloud_cpu = cpu_seconds(proc.pid) - cpu0, cpu_seconds(cloud_pid) - cloud0
        stored = count(cloud_db, "samples")
    finally:
        proc.stop()
    if empty is not None and stored != warm + ingested:
        print(f"  warning: the cloud holds {stored} readings, {warm + ingested} were answered "
              "2.04 (a request whose answer was lost still had its readings stored)")
    return Window(ingested, wall, cpu, window_cpu, acked=stored1 - stored0, backlog=backlog,
                  batch_max=batch_max, below_batch_s=under_batch, empty_s=empty,
                  cloud_cpu_s=cloud_cpu, drain_cpu_s=drain_cpu, drain_cloud_s=drain_cloud)


def _secs(s: float | None) -> str:
    return f"{s:.2f}" if s is not None else f">{_DRAIN_TIMEOUT_S:.0f}"


def report(before: Window, pipe: Window, after: Window) -> None:
    print(f"{'gateway':<22} {'ingested/s':>10} {'acked/s':>8} {'backlog':>8} "
          f"{'<1 batch s':>10} {'empty s':>7} {'CPU us/rd':>9} {'ceiling/s':>9} {'core busy':>9}")
    rows = (("ingest only (before)", before), ("ingest+upload", pipe),
            ("ingest only (after)", after))
    for name, w in rows:
        up = w is pipe
        print(f"{name:<22} {w.rate:>10.0f} {f'{w.acked / w.seconds:.0f}' if up else '-':>8} "
              f"{w.backlog if up else '-':>8} {_secs(w.below_batch_s) if up else '-':>10} "
              f"{_secs(w.empty_s) if up else '-':>7} {w.cpu_us:>9.1f} {1e6 / w.cpu_us:>9.0f} "
              f"{w.window_cpu_s / w.seconds:>9.0%}")
    rate = (before.rate + after.rate) / 2
    cpu_us = (before.cpu_us + after.cpu_us) / 2
    print(f"ingest+upload / ingest only (mean of before and after): ingested/s "
          f"{pipe.rate / rate:.0%}, acked/s {pipe.acked / pipe.seconds / rate:.0%}, CPU per "
          f"reading {pipe.cpu_us / cpu_us:.2f}x (+{pipe.cpu_us - cpu_us:.1f} us: the uplink); "
          f"cloud CPU {1e6 * pipe.cloud_cpu_s / max(pipe.ingested, 1):.1f} us per reading")
    if pipe.below_batch_s and pipe.backlog >= 5 * pipe.batch_max:  # else too coarse
        t = pipe.below_batch_s  # the drain: upload alone, the load generator idle
        print(f"drain (upload alone, batches of {pipe.batch_max}): "
              f"{(pipe.backlog - pipe.batch_max) / t:.0f} readings/s until below one batch, "
              f"the gateway's core {pipe.drain_cpu_s / t:.0%} busy, the cloud's "
              f"{pipe.drain_cloud_s / t:.0%}")
    print("CPU us/rd: the gateway's CPU per reading ingested in the window (ingest+upload: "
          "until its queue was empty, so every reading's upload is in); ceiling/s: readings/s "
          "one idle core would sustain at that cost; core busy: the gateway's CPU time over "
          "the window's wall time; acked/s: readings the cloud stored during the window")


def run() -> None:
    seconds = float(os.environ.get("MACHI_BENCH_SECONDS", "5"))
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    tpl = Template(10, SMALL)
    seq_base = _SEQ_BASE + random.randrange(1 << 20) * 10**9
    print(f"10-packs ({tpl.per_request} readings of {len(SMALL)} measurements), {IN_FLIGHT} in "
          f"flight, {seconds:.0f} s; gateway on CPU 0, machi-cloud (SQLite) and the load "
          "generator on CPU 1")
    with tempfile.TemporaryDirectory(prefix="machi-bench-") as name:
        tmp = Path(name)
        cloud, cloud_db = start_cloud(tmp)
        try:
            # the baseline before and after: the machine's speed drifts by tens of % a minute
            before = ingest_only(tmp / "before", tpl, seconds, seq_base)
            pipe = pipeline(tmp, cloud, cloud_db, tpl, seconds, seq_base + 10**8)
            after = ingest_only(tmp / "after", tpl, seconds, seq_base + 2 * 10**8)
        finally:
            cloud.stop()
    report(before, pipe, after)


def main() -> int:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--serve", action="store_true", help="run the pipeline gateway")
    p.add_argument("--ready", type=Path)
    p.add_argument("--data", type=Path)
    p.add_argument("--cloud", help="the cloud's base URL")
    p.add_argument("--batch-max", type=int, help="[uplink] batch_max (default: its default)")
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.ready, args.data, args.cloud, args.batch_max))
    else:
        run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
