"""Gateway CoAP ingress: readings/s into the durable queue vs a bare aiocoap server.

Two servers, each in its own process pinned to CPU 0, measured in the same run with the
same load generator (this process, pinned to CPU 1 when there is one):

- bare:    an aiocoap server whose ``/r`` answers 2.04 and does nothing else (baseline);
- gateway: the real ingress: SenML decode, registry check, SQLite queue in WAL with
           ``synchronous=FULL`` (group commit; every reading committed before its ACK),
           the CF 60 time payload in the 2.04.

The load generator is a raw UDP CoAP client (no library in the way): it keeps
``concurrency`` confirmable POSTs in flight, each a distinct ``(device, seq)`` SenML pack
of ~130 bytes (7 measurements), and times request -> 2.04 for each (a piggybacked ACK,
or an empty ACK then a separate response when aiocoap answers late). Requests without an
answer after 5 s are counted as lost (and not retransmitted: no retransmission noise).

``python -m bench.gateway_coap`` (``MACHI_BENCH_SECONDS``, default 5, per server and
concurrency level).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 200
_LOST_AFTER_S = 5.0


# ---- servers (run as subprocesses) -------------------------------------------------------


async def serve(kind: str, ready: Path, data: Path) -> None:
    import aiocoap
    import aiocoap.resource

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


def reading(device: int, seq: int) -> bytes:
    return bytes(cbor2.dumps([
        {0: "seq", 2: seq, -2: f"env-{device:04d}:", -3: 1795390000 + seq},
        {0: "temp", 1: "Cel", 2: 21.5}, {0: "hum", 1: "%RH", 2: 48.25},
        {0: "pres", 1: "Pa", 2: 101325}, {0: "pm25", 1: "ug/m3", 2: 12},
        {0: "pm10", 1: "ug/m3", 2: 20}, {0: "lux", 1: "lx", 2: 350},
        {0: "bat", 1: "V", 2: 3.75}]))


def con_post(mid: int, token: bytes, payload: bytes) -> bytes:
    """CON POST /r, Content-Format 112 (RFC 7252 §3)."""
    head = struct.pack(">BBH", 0x40 | len(token), 0x02, mid) + token
    opts = bytes([0xB1]) + b"r"          # Uri-Path (11), length 1
    opts += bytes([0x11, 112])           # Content-Format (12 = 11 + 1), length 1
    return head + opts + b"\xff" + payload


@dataclass
class Load(asyncio.DatagramProtocol):
    concurrency: int
    seconds: float
    seq_base: int
    transport: asyncio.DatagramTransport | None = None
    inflight: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    codes: dict[int, int] = field(default_factory=dict)
    sent: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    stop_at: float = 0.0
    next_mid: int = 0

    def send_one(self) -> None:
        assert self.transport is not None
        mid = self.next_mid = (self.next_mid + 1) & 0xFFFF
        n = self.seq_base + self.sent
        self.sent += 1
        token = struct.pack(">I", n & 0xFFFFFFFF)
        msg = con_post(mid, token, reading(n % DEVICES, n // DEVICES))
        self.inflight[n & 0xFFFFFFFF] = time.perf_counter()
        self.transport.sendto(msg)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 8 or data[0] & 0x0F != 4:
            return
        kind, code = data[0] >> 4 & 3, data[1]
        if code == 0:  # an empty ACK: the answer follows as a separate response
            return
        if kind == 0:  # a separate CON response: acknowledge it (RFC 7252 §5.2.2)
            assert self.transport is not None
            self.transport.sendto(struct.pack(">BBH", 0x60, 0, struct.unpack_from(
                ">H", data, 2)[0]))
        t0 = self.inflight.pop(struct.unpack_from(">I", data, 4)[0], None)
        if t0 is None:
            return
        now = time.perf_counter()
        self.latencies.append(now - t0)
        self.codes[data[1]] = self.codes.get(data[1], 0) + 1
        if now < self.stop_at:
            self.send_one()
        elif not self.inflight:
            self.done.set()


async def drive(port: int, concurrency: int, seconds: float, seq_base: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    load = Load(concurrency, seconds, seq_base)
    transport, _ = await loop.create_datagram_endpoint(lambda: load,
                                                       remote_addr=("127.0.0.1", port))
    load.transport = transport
    start = time.perf_counter()
    load.stop_at = start + seconds
    for _ in range(concurrency):
        load.send_one()
    try:
        await asyncio.wait_for(load.done.wait(), seconds + _LOST_AFTER_S)
    except TimeoutError:
        pass
    elapsed = max(time.perf_counter() - start, 1e-9)
    transport.close()
    lat = sorted(load.latencies)
    ok = load.codes.get(0x44, 0)  # 2.04
    return {
        "rate": ok / elapsed,
        "codes": {f"{k >> 5}.{k & 31:02d}": v for k, v in load.codes.items() if k != 0x44},
        "ok": ok, "sent": load.sent, "lost": len(load.inflight),
        "other": sum(v for k, v in load.codes.items() if k != 0x44),
        "p50_ms": 1000 * lat[len(lat) // 2] if lat else float("nan"),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
    }


def start_server(kind: str, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    ready = tmp / f"{kind}.ready"
    data = tmp / kind
    data.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "gateway"), str(ROOT),
                                         env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "bench.gateway_coap", "--serve", kind, "--ready",
           str(ready), "--data", str(data)]
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{kind} server did not start")
        time.sleep(0.05)
    time.sleep(0.1)
    return proc, int(json.loads(ready.read_text())["port"])


def run() -> None:
    seconds = float(os.environ.get("MACHI_BENCH_SECONDS", "5"))
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    levels = (1, 16, 64)
    results: dict[tuple[str, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="machi-bench-") as tmp:
        procs = {kind: start_server(kind, Path(tmp)) for kind in ("bare", "gateway")}
        try:
            seq_base = random.randrange(1 << 20) * 1000
            for conc in levels:
                for kind in ("bare", "gateway"):  # interleaved: same machine state
                    proc, port = procs[kind]
                    asyncio.run(drive(port, conc, 0.5, seq_base))  # warm-up
                    seq_base += 10**6
                    results[kind, conc] = asyncio.run(drive(port, conc, seconds, seq_base))
                    seq_base += 10**6
        finally:
            for proc, _ in procs.values():
                proc.terminate()
                proc.wait(10)
    print(f"{'server':<8} {'in flight':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'lost':>5} {'non-2.04':>8} {'vs bare':>8}")
    for conc in levels:
        for kind in ("bare", "gateway"):
            r = results[kind, conc]
            ratio = r["rate"] / results["bare", conc]["rate"]
            print(f"{kind:<8} {conc:>9} {r['rate']:>8.0f} {r['p50_ms']:>7.2f} "
                  f"{r['p99_ms']:>7.2f} {r['lost']:>5} {r['other']:>8} {ratio:>7.0%}")
    for key, r in results.items():
        if r["codes"]:
            print(f"  {key[0]} at {key[1]} in flight answered {r['codes']}")
    print("gateway: every 2.04 sent after the reading's SQLite commit (WAL, "
          "synchronous=FULL, group commit); one reading (7 measurements) per request")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--serve", choices=("bare", "gateway"))
    p.add_argument("--ready", type=Path)
    p.add_argument("--data", type=Path)
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.ready, args.data))
        return 0
    run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
