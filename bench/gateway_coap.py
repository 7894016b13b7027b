"""Gateway CoAP ingress: requests/s and readings/s into the durable queue vs bare aiocoap.

Servers, each in its own process pinned to CPU 0, measured in the same run with the same
load generator (this process, pinned to CPU 1 when there is one):

- bare:    an aiocoap server whose ``/r`` answers 2.04 and does nothing else (baseline);
- gateway: the real ingress: SenML decode, registry check, SQLite queue in WAL with
           ``synchronous=FULL`` (group commit; every reading committed before its ACK),
           the CF 60 time payload in the 2.04. Its aiocoap context skips what bare pays
           per request for nothing (a ``%r`` of the request for a task name, the Site's
           copy of the request, the method dispatch), leaves no reference cycle per
           request and keeps its duplicate cache as bytes: ingress/coap.py;
- echo:    a raw UDP socket answering every request with a pre-built 2.04 ACK: no CoAP
           library, so its rate is the load generator's own ceiling.

The load generator is a synchronous raw UDP CoAP client (no asyncio, no library): it keeps
``concurrency`` confirmable POSTs in flight, each a distinct ``(device, seq)`` pack patched
into a pre-encoded template (two ``struct.pack_into`` per reading), and times request ->
2.04 for each (a piggybacked ACK, or an empty ACK then a separate response when aiocoap
answers late). Requests without an answer 5 s after the end are counted as lost (and not
retransmitted: no retransmission noise). Two payloads: one env reading of 7 measurements
per request (~140 bytes), and packs of 10 readings of 3 measurements (~660 bytes, the
protocol's "several readings in one pack": a node catching up on its backlog).

``python -m bench.gateway_coap`` (``MACHI_BENCH_SECONDS``, default 3, per server and
level; fresh servers for each level; ``MACHI_BENCH_ROUNDS``, default 1, repeats the whole
run and prints medians: on a shared machine single runs move by ±30 %); ``... profile``
profiles the gateway process (cProfile, main thread) and prints the top functions;
``... steady`` keeps one gateway loaded with 10-packs for 8 x 5 s and prints each window
(with the server's resident memory: the duplicate cache grows for EXCHANGE_LIFETIME).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from machi_tools.procs import stop_popen

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 200
_LOST_AFTER_S = 5.0


# ---- servers (run as subprocesses) -------------------------------------------------------


async def serve(kind: str, ready: Path, data: Path) -> None:
    import aiocoap
    import aiocoap.resource

    from machi_gateway import gctune

    gctune.tune()  # as machi-gateway does; the bare server gets the same, to be fair

    if kind == "bare":
        class Bare(aiocoap.resource.Resource):  # type: ignore[misc]
            async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
                return aiocoap.Message(code=aiocoap.CHANGED)

        site = aiocoap.resource.Site()
        site.add_resource(("r",), Bare())
        ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", 0),
                                                          transports=["udp6"])
        from machi_gateway.ingress.coap import CoapIngress
        port = CoapIngress._local_port(ctx)
        await asyncio.to_thread(ready.write_text, json.dumps({"port": port}))
        await asyncio.Event().wait()
    from machi_gateway.core import Core
    from machi_gateway.ingress.coap import CoapIngress
    from machi_gateway.registry import Registry
    from machi_gateway.stats import IngressStats
    from machi_gateway.store import Store

    devices = data / "devices.json"
    await asyncio.to_thread(devices.write_text, json.dumps(
        {"devices": [{"id": f"env-{i:04d}", "type": "env"} for i in range(DEVICES)]}))
    registry = Registry(devices)
    registry.reload_if_changed()
    async with Store(data / "queue.sqlite3", max_readings=10**8, retry_after_s=30,
                     dedup_window_s=86400) as store:
        async with CoapIngress(Core(registry, store, IngressStats()), host="127.0.0.1",
                               port=0, max_payload=1024) as coap:
            await asyncio.to_thread(ready.write_text, json.dumps({"port": coap.address[1]}))
            await asyncio.Event().wait()


# ---- load generator ----------------------------------------------------------------------


_SEQ_BASE = 1 << 40  # every seq >= 2^32: encoded in 9 bytes, so the template has one layout
_DEV_DIGITS = 4


def _records(device: int, seq: int, ms: list[dict[int, Any]]) -> list[dict[int, Any]]:
    return [{0: "seq", 2: seq, -2: f"env-{device:04d}:", -3: 1795390000}, *ms]


ENV = [{0: "temp", 1: "Cel", 2: 21.5}, {0: "hum", 1: "%RH", 2: 48.25},
       {0: "pres", 1: "Pa", 2: 101325}, {0: "pm25", 1: "ug/m3", 2: 12},
       {0: "pm10", 1: "ug/m3", 2: 20}, {0: "lux", 1: "lx", 2: 350},
       {0: "bat", 1: "V", 2: 3.75}]
SMALL = [{0: "temp", 1: "Cel", 2: 21.5}, {0: "hum", 1: "%RH", 2: 48.25},
         {0: "bat", 1: "V", 2: 3.75}]


@dataclass
class Template:
    """A CON POST /r of ``per_request`` readings of one device, with the offsets where the
    message id, token, device digits and each seq go."""

    per_request: int
    measurements: list[dict[int, Any]]
    msg: bytes = b""
    seq_at: list[int] = field(default_factory=list)
    dev_at: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        records = [rec for k in range(self.per_request)
                   for rec in _records(0, _SEQ_BASE + k, self.measurements)]
        payload = bytes(cbor2.dumps(records, canonical=True))
        # CON POST, TKL 4, mid 0, token 0; Uri-Path "r" (11); Content-Format 112 (12)
        head = struct.pack(">BBHI", 0x44, 0x02, 0, 0) + b"\xb1r\x11\x70\xff"
        self.msg = head + payload
        for k in range(self.per_request):
            seq = struct.pack(">BQ", 0x1B, _SEQ_BASE + k)
            at = self.msg.index(seq, self.seq_at[-1] if self.seq_at else 0)
            self.seq_at.append(at + 1)
        i = 0
        while (i := self.msg.find(b"env-0000:", i)) >= 0:
            self.dev_at.append(i + 4)
            i += 1
        assert len(self.dev_at) == self.per_request and len(payload) <= 1024, len(payload)

    def make(self, buf: bytearray, n: int, seq_base: int) -> None:
        """Request number ``n``: device n % DEVICES, seqs following on per device."""
        struct.pack_into(">HI", buf, 2, n & 0xFFFF, n & 0xFFFFFFFF)
        dev = b"%04d" % (n % DEVICES)
        first = seq_base + (n // DEVICES) * self.per_request
        for k in range(self.per_request):
            struct.pack_into(">Q", buf, self.seq_at[k], first + k)
            buf[self.dev_at[k]:self.dev_at[k] + _DEV_DIGITS] = dev


def drive(port: int, concurrency: int, seconds: float, seq_base: int,
          tpl: Template) -> dict[str, Any]:
    """Keep ``concurrency`` requests in flight for ``seconds``; see the module docstring."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect(("127.0.0.1", port))
    buf = bytearray(tpl.msg)
    inflight: dict[int, float] = {}
    latencies: list[float] = []
    codes: dict[int, int] = {}
    sent = 0
    clock = time.perf_counter
    unpack_token = struct.Struct(">I").unpack_from

    def send() -> None:
        nonlocal sent
        tpl.make(buf, sent, seq_base)
        inflight[sent & 0xFFFFFFFF] = clock()
        sent += 1
        sock.send(buf)

    start = clock()
    stop_at = start + seconds
    for _ in range(concurrency):
        send()
    sock.settimeout(_LOST_AFTER_S)
    while inflight:
        try:
            data = sock.recv(2048)
        except TimeoutError:
            break
        if len(data) < 8 or data[0] & 0x0F != 4:
            continue
        code = data[1]
        if code == 0:  # an empty ACK: the answer follows as a separate response
            continue
        if data[0] >> 4 & 3 == 0:  # a separate CON response: acknowledge it (RFC 7252 §5.2.2)
            sock.send(bytes([0x60, 0]) + data[2:4])
        t0 = inflight.pop(unpack_token(data, 4)[0], None)
        if t0 is None:
            continue
        now = clock()
        latencies.append(now - t0)
        codes[code] = codes.get(code, 0) + 1
        if now < stop_at:
            send()
    elapsed = max(clock() - start, 1e-9)
    sock.close()
    lat = sorted(latencies)
    ok = codes.get(0x44, 0)  # 2.04
    return {
        "rate": ok / elapsed, "readings": ok * tpl.per_request / elapsed,
        "codes": {f"{k >> 5}.{k & 31:02d}": v for k, v in codes.items() if k != 0x44},
        "ok": ok, "sent": sent, "lost": len(inflight),
        "other": sum(v for k, v in codes.items() if k != 0x44),
        "p50_ms": 1000 * lat[len(lat) // 2] if lat else float("nan"),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
    }


def _median(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over rounds (``MACHI_BENCH_ROUNDS``); answer codes summed."""
    out: dict[str, Any] = {k: statistics.median(r[k] for r in rs)
                           for k, v in rs[0].items() if isinstance(v, int | float)}
    codes: dict[str, int] = {}
    for r in rs:
        for code, n in r["codes"].items():
            codes[code] = codes.get(code, 0) + n
    out["codes"] = codes
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its threads (Linux /proc; 0 elsewhere):
    the server's cost per request, which a machine shared with other jobs distorts less
    than the wall-clock rate does."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(proc: subprocess.Popen[bytes], port: int, concurrency: int, seconds: float,
            seq_base: int, tpl: Template) -> dict[str, Any]:
    """:func:`drive`, plus the server's CPU microseconds per answered request."""
    cpu0 = cpu_seconds(proc.pid)
    r = drive(port, concurrency, seconds, seq_base, tpl)
    r["cpu_us"] = 1e6 * (cpu_seconds(proc.pid) - cpu0) / max(r["ok"] + r["other"], 1)
    return r


def echo(ready: Path) -> None:
    """The ``echo`` server: a 2.04 ACK for every CON request, straight from the socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    ready.write_text(json.dumps({"port": sock.getsockname()[1]}))
    ack = bytearray(8)
    ack[0:2] = b"\x64\x44"  # ACK, TKL 4, 2.04
    while True:
        data, addr = sock.recvfrom(2048)
        if len(data) >= 8:
            ack[2:8] = data[2:8]  # message id and token
            sock.sendto(ack, addr)


def start_server(kind: str, tmp: Path, extra: list[str] | None = None
                 ) -> tuple[subprocess.Popen[bytes], int]:
    ready = tmp / f"{kind}.ready"
    data = tmp / kind
    data.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "gateway"), str(ROOT),
                                         env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "bench.gateway_coap", "--serve", kind, "--ready",
           str(ready), "--data", str(data), *(extra or [])]
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while not ready.exists() or not ready.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{kind} server did not start")
        time.sleep(0.05)
    time.sleep(0.1)
    return proc, int(json.loads(ready.read_text())["port"])


# (label, readings per request, measurements, in flight) measured against bare and gateway
LEVELS = [("1 reading", 1, ENV, 1), ("1 reading", 1, ENV, 16), ("1 reading", 1, ENV, 64),
          ("10-pack", 10, SMALL, 16), ("10-pack", 10, SMALL, 64)]


def run() -> None:
    seconds = float(os.environ.get("MACHI_BENCH_SECONDS", "3"))
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    rounds = max(1, int(os.environ.get("MACHI_BENCH_ROUNDS", "1")))
    templates = {n: Template(n, ms) for _, n, ms, _ in LEVELS}
    samples: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    seq_base = _SEQ_BASE + random.randrange(1 << 20) * 10**7
    with tempfile.TemporaryDirectory(prefix="machi-bench-") as tmp:
        # fresh servers for every level: aiocoap keeps each exchange for EXCHANGE_LIFETIME
        # (247 s), so a server's cost per request grows while it is loaded (`steady` below)
        for rnd in range(rounds):
            for i, (label, n, _, conc) in enumerate([("echo", 1, ENV, 64), *LEVELS]):
                kinds = ("echo",) if label == "echo" else ("bare", "gateway")
                level = Path(tmp) / f"round{rnd}-level{i}"
                level.mkdir()
                procs = {kind: start_server(kind, level) for kind in kinds}
                try:
                    # interleaved, alternating who goes first: same machine state
                    for kind in kinds if rnd % 2 == 0 else kinds[::-1]:
                        proc, port = procs[kind]
                        drive(port, conc, 0.3, seq_base, templates[n])  # warm-up
                        seq_base += 10**6
                        key = (kind, "1 reading" if label == "echo" else label, conc)
                        samples.setdefault(key, []).append(
                            measure(proc, port, conc, seconds, seq_base, templates[n]))
                        seq_base += 10**6
                finally:
                    for proc, _ in procs.values():
                        stop_popen(proc, 10)
    results = {key: _median(rs) for key, rs in samples.items()}
    if rounds > 1:
        print(f"medians of {rounds} rounds (fresh servers each round)")
    e = results["echo", "1 reading", 64]
    print(f"load generator ceiling (raw UDP echo server, 64 in flight): {e['rate']:.0f} req/s")
    print(f"{'server':<8} {'payload':<10} {'in flight':>9} {'req/s':>7} {'readings/s':>10} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'lost':>5} {'non-2.04':>8} {'vs bare':>8} "
          f"{'CPU us/req':>10} {'ceiling/s':>9} {'CPU vs bare':>11}")
    for label, _, _, conc in LEVELS:
        bare = results["bare", label, conc]
        for kind in ("bare", "gateway"):
            r = results[kind, label, conc]
            ratio = r["rate"] / max(bare["rate"], 1e-9)
            ceiling = 1e6 / r["cpu_us"] if r["cpu_us"] else float("nan")
            by_cpu = bare["cpu_us"] / r["cpu_us"] if r["cpu_us"] else float("nan")
            print(f"{kind:<8} {label:<10} {conc:>9} {r['rate']:>7.0f} {r['readings']:>10.0f} "
                  f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['lost']:>5} {r['other']:>8} "
                  f"{ratio:>7.0%} {r['cpu_us']:>10.0f} {ceiling:>9.0f} {by_cpu:>10.0%}")
    print("CPU us/req: the server process's CPU time per answered request; ceiling/s: "
          "requests/s one idle core would give at that cost; CPU vs bare: bare's CPU per "
          "request over this server's (the rate ratio on a core of its own)")
    for key, r in results.items():
        if r["codes"]:
            print(f"  {key[0]} {key[1]} at {key[2]} in flight answered {r['codes']}")
    print("gateway: every 2.04 sent after its readings' SQLite commit (WAL, synchronous=FULL, "
          "group commit); 1 reading = 7 measurements, ~140 B; 10-pack = 10 readings of 3 "
          "measurements, ~660 B")


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc; NaN elsewhere)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")  # a zombie has no memory left to show


def steady(windows: int = 8, seconds: float = 5.0) -> None:
    """One gateway under 10-packs at 64 in flight for ``windows`` x ``seconds``: how the
    rate and the tail latency move while the process stays loaded."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    tpl = Template(10, SMALL)
    with tempfile.TemporaryDirectory(prefix="machi-bench-") as tmp:
        proc, port = start_server("gateway", Path(tmp))
        try:
            for w in range(windows):
                r = measure(proc, port, 64, seconds, _SEQ_BASE + w * 10**8, tpl)
                print(f"window {w + 1} ({seconds:.0f} s): {r['rate']:.0f} req/s, "
                      f"{r['readings']:.0f} readings/s, p50 {r['p50_ms']:.1f} ms, "
                      f"p99 {r['p99_ms']:.1f} ms, {r['cpu_us']:.0f} CPU us/req, "
                      f"RSS {rss_mib(proc.pid):.0f} MiB")
        finally:
            stop_popen(proc, 10)


def profile() -> None:
    """cProfile of the gateway process under 10-packs at 64 in flight (top 25, cumulative
    and own time), to find where a request's time goes."""
    seconds = float(os.environ.get("MACHI_BENCH_SECONDS", "3"))
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory(prefix="machi-bench-") as tmp:
        out = Path(tmp) / "gateway.prof"
        proc, port = start_server("gateway", Path(tmp), ["--profile", str(out)])
        try:
            for n, ms in ((1, ENV), (10, SMALL)):
                r = drive(port, 64, seconds, _SEQ_BASE + n * 10**9, Template(n, ms))
                print(f"{n} per request: {r['rate']:.0f} req/s, {r['readings']:.0f} readings/s "
                      "(under the profiler)")
        finally:
            stop_popen(proc, 30, sig=signal.SIGINT)  # the server writes its profile on SIGINT
        stats = pstats.Stats(str(out))
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(25)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("what", nargs="?", choices=("run", "profile", "steady"), default="run")
    p.add_argument("--serve", choices=("bare", "gateway", "echo"))
    p.add_argument("--ready", type=Path)
    p.add_argument("--data", type=Path)
    p.add_argument("--profile", type=Path, help="(--serve gateway) write cProfile stats here")
    args = p.parse_args()
    if args.serve == "echo":
        echo(args.ready)
        return 0
    if args.serve:
        if args.profile is None:
            asyncio.run(serve(args.serve, args.ready, args.data))
            return 0
        prof = cProfile.Profile()

        def dump(signum: int, frame: Any) -> None:
            # dump and leave at once: a graceful shutdown of a server that was just
            # loaded can outlast the caller's wait, and only the profile is wanted here
            prof.disable()
            prof.dump_stats(str(args.profile))
            os._exit(0)

        signal.signal(signal.SIGINT, dump)
        signal.signal(signal.SIGTERM, dump)
        prof.enable()
        asyncio.run(serve(args.serve, args.ready, args.data))
        return 0
    if args.what == "profile":
        profile()
    elif args.what == "steady":
        steady()
    else:
        run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
