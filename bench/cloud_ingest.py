"""Cloud ingest: readings/s through the API into SQLite and PostgreSQL, against raw inserts.

For each backend, on a fresh database each time, batches of 500 readings (2 measurements
each, 50 devices; bodies as columns, as the gateway sends them, docs/protocol.md §3) are
stored three ways in the same run, and SQLite again with batches of 2000 (the gateway's
default `batch_max`, what a busy gateway sends):

- raw:     the rows the storage's schema holds, inserted directly, in the same (key) order,
           one transaction per 500 readings, same durability - the baseline (SQLite: one
           `samples` row per reading with its `m` JSON text made before the clock starts,
           WAL, synchronous=FULL, executemany; PostgreSQL: `samples` and `measurements`
           rows by COPY);
- storage: `Storage.store_batch` on already parsed batches (dedup, latest, devices, answer);
- api:     `POST /v1/batches` with CBOR bodies through the ASGI app in this process,
           called as uvicorn calls it (`asgi_post`: no sockets, no HTTP parsing, no test
           client's work);
- api4:    the same with 4 clients (gateways) posting at once, each sending the next batch
           when its answer comes: SQLite's writer commits the batches that wait for it
           together (`storage.group_commit`), as a cloud serving many gateways does;
- http:    the same against a real `machi-cloud` process (uvicorn, 127.0.0.1) pinned to
           the other CPU, this process being the client (httpx), one batch at a time: the
           server waits while the client makes the next request;
- http4:   the same with 4 client threads: the server's one core never waits for the
           client, so this is the rate of one core serving gateways over HTTP;
- paired:  (SQLite) raw and api alternating batch by batch on two fresh databases, so
           both meet the same moments of the shared disk: the steadier ratio
           (`python -m bench.cloud_ingest paired` runs only this one: the quick check).

The process is pinned to one CPU (PostgreSQL's own processes are not). PostgreSQL runs as
a throwaway durable server (fsync on) started by `machi_cloud.storage.pgserver`.
`MACHI_BENCH_READINGS` sets the readings per measurement (default 20,000),
`MACHI_BENCH_REPEAT` how many times each path runs, interleaved, the best counting
(default 3: the machine is shared, and fsync times vary a lot between runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import hashlib
import io
import json
import os
import pstats
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import cbor2
import httpx

from machi_cloud import fastbatch
from machi_cloud.app import create_app, freeze_startup_objects
from machi_cloud.batch import Batch, parse_batch
from machi_cloud.settings import GatewayTokens, Settings
from machi_cloud.storage import Storage
from machi_cloud.storage.group_commit import GroupCommit
from machi_cloud.storage.pgserver import PostgresServer, PostgresUnavailable
from machi_cloud.storage.postgres import PostgresStorage
from machi_cloud.storage.rows import m_text
from machi_cloud.storage.sqlite import SQLiteStorage
from machi_gateway.uplink.batcher import BatchPolicy
from machi_tools.procs import stop_popen

BATCH = 500
GATEWAY_BATCH = BatchPolicy().batch_max  # the gateway's default [uplink] batch_max
DEVICES = 50
T0 = 1795390000
TOKEN = "bench-secret"
HEADERS = ((b"authorization", f"Bearer {TOKEN}".encode()), (b"content-type", b"application/cbor"))


def bodies(readings: int, *, batch: int = BATCH, columns: bool = True) -> list[bytes]:
    """CBOR batches as a gateway sends them: each device's seq counts up across batches;
    as columns (the gateway's default, docs/protocol.md §3) or as reading maps."""
    out = []
    for b in range(readings // batch):
        items = []
        for i in range(batch):
            n = b * batch + i
            device, seq = f"env-{n % DEVICES:04d}", n // DEVICES
            items.append(
                {
                    "device": device,
                    "seq": seq,
                    "time": T0 + seq,
                    "received": T0 + seq + 0.25,
                    "transport": "coap",
                    "m": [
                        {"n": "temp", "u": "Cel", "v": 20.0 + (n % 100) / 8},
                        {"n": "hum", "u": "%RH", "v": 40.0 + (n % 50) / 4},
                    ],
                }
            )
        doc: dict[str, Any] = {"gateway": "gw-01", "batch_id": f"b-{b}"}
        doc.update({"columns": as_columns(items)} if columns else {"readings": items})
        out.append(cbor2.dumps(doc))
    return out


def as_columns(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Reading maps that all have the same measurements as columns with dense series."""
    cols: dict[str, Any] = {
        key: [r[key] for r in items] for key in ("device", "seq", "time", "received", "transport")
    }
    cols["m"] = [
        {"n": m["n"], "u": m["u"], "v": [r["m"][j]["v"] for r in items]}
        for j, m in enumerate(items[0]["m"])
    ]
    return cols


def rows(batch: Batch) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The samples and measurements rows of one batch, as PostgreSQL's schema holds them,
    in key order (device, seq; device, seq, metric), the order in which it inserts them."""
    readings = sorted(batch.readings)
    samples = [
        (r.device, r.seq, r.time, r.received, "gw-01", r.transport, batch.batch_id)
        for r in readings
    ]
    measurements = [
        (r.device, r.seq, m.name, m.unit, m.value) for r in readings for m in r.measurements
    ]
    return samples, measurements


def sqlite_rows(batch: Batch) -> list[tuple[Any, ...]]:
    """The `samples` rows of one batch as SQLite's schema holds them (its measurements
    in `m`, encoded as the storage encodes them), in key order."""
    return [
        (r.device, r.seq, r.time, r.received, "gw-01", r.transport, batch.batch_id,
         m_text(r.measurements))
        for r in sorted(batch.readings)
    ]  # fmt: skip


# -- raw baselines -------------------------------------------------------------------------


def raw_sqlite(path: Path, batches: list[Batch]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    prepared = [sqlite_rows(b) for b in batches]
    start = time.perf_counter()
    for samples in prepared:
        raw_sqlite_batch(conn, samples)
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def raw_sqlite_batch(conn: sqlite3.Connection, samples: list[tuple[Any, ...]]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO samples (device, seq, time, received, gateway, transport, batch_id,"
        " ingested, m) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
        samples,
    )
    conn.commit()


async def raw_postgres(dsn: str, batches: list[Batch]) -> float:
    conn = await asyncpg.connect(dsn)
    prepared = []
    for b in batches:
        samples, ms = rows(b)
        times = {(r.device, r.seq): r.time for r in b.readings}
        prepared.append(
            (samples, [(d, s, n, times[(d, s)], u, None, v, None, None) for d, s, n, u, v in ms])
        )
    start = time.perf_counter()
    for samples, measurements in prepared:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "samples",
                records=samples,
                columns=["device", "seq", "time", "received", "gateway", "transport", "batch_id"],
            )
            await conn.copy_records_to_table(
                "measurements",
                records=measurements,
                columns=[
                    "device", "seq", "metric", "time", "unit",
                    "value_int", "value_real", "value_text", "value_bool",
                ],
            )  # fmt: skip
    elapsed = time.perf_counter() - start
    await conn.close()
    return elapsed


# -- the service paths ----------------------------------------------------------------------


async def through_storage(storage: Storage, batches: list[Batch], raw: list[bytes]) -> float:
    start = time.perf_counter()
    for batch, body in zip(batches, raw, strict=True):
        await storage.store_batch(
            gateway=batch.gateway,
            batch_id=batch.batch_id,
            body_hash=hashlib.sha256(body).digest(),
            readings=batch.readings,
            rejected=batch.rejected,
        )
    return time.perf_counter() - start


@contextlib.asynccontextmanager
async def api_poster(
    storage: Storage, tmp: Path
) -> AsyncIterator[Callable[[bytes], Awaitable[None]]]:
    """`post(body)`: one `POST /v1/batches` through the ASGI app in this process, called
    as a server calls it (`asgi_post`): the app's whole stack runs (middleware, routing,
    auth, body, parse, storage, answer), and no test client's work is counted. (Until the
    fifth round this was httpx's `ASGITransport`, whose own request building, URL parsing
    and cookie handling cost 0.7-1 us a reading of a 500-reading batch, a tenth of the
    measured path.)"""
    settings = Settings(
        db=tmp / "unused.sqlite", gateway_tokens=GatewayTokens.from_mapping({"gw-01": TOKEN})
    )
    app = create_app(settings, storage)

    async def post(body: bytes) -> None:
        status, answer = await asgi_post(app, "/v1/batches", body, HEADERS)
        if status != 200:
            raise RuntimeError(f"API answered {status}: {answer!r}")

    yield post


async def asgi_post(
    app: Callable[..., Awaitable[None]],
    path: str,
    body: bytes,
    headers: tuple[tuple[bytes, bytes], ...],
) -> tuple[int, bytes]:
    """One HTTP/1.1 POST handed to an ASGI app as uvicorn hands it one (the scope, one
    `http.request` message with the whole body); its status and body."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080),
        "headers": [(b"host", b"127.0.0.1:8080"), (b"content-length", b"%d" % len(body)),
                    *headers],
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client stays: no disconnect while answering
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def through_api(storage: Storage, raw: list[bytes], tmp: Path, *, at_once: int = 1) -> float:
    """The batches posted one after another, or by `at_once` clients (gateways) at a time,
    each taking the next batch when its answer comes."""
    async with api_poster(storage, tmp) as post:
        unsent = iter(raw)

        async def client() -> None:
            for body in unsent:
                await post(body)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(at_once)))
        return time.perf_counter() - start


async def paired_sqlite(
    tmp: Path, raw: list[bytes], batches: list[Batch], repeat: int
) -> tuple[float, float, float]:
    """SQLite raw and api alternating batch by batch, each on its own fresh database:
    both meet the same moments of the shared disk (whose fsync time varies by 2x between
    runs), so their ratio varies much less than that of separate runs. Returns the best
    raw and api rates and the median of the runs' ratios."""
    ratios: list[float] = []
    t_raws: list[float] = []
    t_apis: list[float] = []
    prepared = [sqlite_rows(b) for b in batches]
    for n in range(repeat):
        raw_db, api_db = tmp / f"paired-raw-{n}.sqlite", tmp / f"paired-api-{n}.sqlite"
        for path in (raw_db, api_db):
            async with SQLiteStorage(path):
                pass
        conn = sqlite3.connect(raw_db, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        t_raw = t_api = 0.0
        async with SQLiteStorage(api_db) as storage, api_poster(storage, tmp) as post:
            for samples, body in zip(prepared, raw, strict=True):
                start = time.perf_counter()
                raw_sqlite_batch(conn, samples)
                middle = time.perf_counter()
                await post(body)
                t_raw += middle - start
                t_api += time.perf_counter() - middle
        conn.close()
        ratios.append(t_raw / t_api)
        t_raws.append(t_raw)
        t_apis.append(t_api)
    readings = sum(len(b.readings) for b in batches)
    return readings / min(t_raws), readings / min(t_apis), statistics.median(ratios)


async def print_paired(tmp: Path, raw: list[bytes], batches: list[Batch], repeat: int) -> float:
    """`paired_sqlite`, printed as one line (the full run and `paired` alone); the ratio."""
    raw_rate, api_rate, ratio = await paired_sqlite(tmp, raw, batches, repeat)
    print(
        f"  sqlite    paired, batch by batch: raw {raw_rate:8,.0f}/s"
        f"   api {api_rate:8,.0f}/s   api / raw {ratio:4.0%} (median of {repeat})"
    )
    return ratio


def through_http(db: list[str], raw: list[bytes], tmp: Path, *, at_once: int = 1) -> float:
    """A real `machi-cloud` (uvicorn) process pinned to another CPU than this client; the
    batches posted one after another, or by `at_once` client threads (gateways), each
    taking the next batch when its answer comes: then the server is never idle waiting
    for this client, and the rate is that of the server's one core."""
    tmp.mkdir(parents=True, exist_ok=True)
    ready = tmp / "ready"
    script = Path(sys.executable).parent / "machi-cloud"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "machi_cloud.cli"]
    argv += [*db, "--port", "0", "--ready-file", str(ready), "--log-level", "warning"]
    env = {**os.environ, "MACHI_CLOUD_GATEWAY_TOKENS": f"gw-01={TOKEN}"}
    mine = os.sched_getaffinity(0)
    other = (set(range(os.cpu_count() or 1)) - mine) or mine
    cpu = min(other)
    with open(tmp / "log", "wb") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"machi-cloud did not start: {(tmp / 'log').read_text()}")
            time.sleep(0.05)
        url = json.loads(ready.read_text())["url"]
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/cbor"}
        unsent = iter(raw)
        lock = threading.Lock()

        def client(http: httpx.Client) -> None:
            while True:
                with lock:
                    body = next(unsent, None)
                if body is None:
                    return
                resp = http.post("/v1/batches", content=body, headers=headers)
                if resp.status_code != 200:
                    raise RuntimeError(f"API answered {resp.status_code}: {resp.text}")

        # made before the clock starts: an httpx.Client costs ~25 ms (its TLS context)
        with contextlib.ExitStack() as clients, ThreadPoolExecutor(at_once) as pool:
            https = [
                clients.enter_context(httpx.Client(base_url=url, timeout=60))
                for _ in range(at_once)
            ]
            start = time.perf_counter()
            for done in [pool.submit(client, http) for http in https]:
                done.result()
            return time.perf_counter() - start
    finally:
        stop_popen(proc, 30)


# -- driver ----------------------------------------------------------------------------------


class Backend:
    """Makes a fresh, migrated database per measurement and a storage on it."""

    def __init__(self, name: str, tmp: Path, pg: PostgresServer | None) -> None:
        self.name, self.tmp, self.pg, self.n = name, tmp, pg, 0

    async def fresh(self) -> tuple[str, Callable[[], Storage]]:
        self.n += 1
        if self.pg is None:
            path = self.tmp / f"bench-{self.n}.sqlite"
            async with SQLiteStorage(path):
                pass
            return str(path), lambda: SQLiteStorage(path)
        dsn = self.pg.create_database(f"bench_{self.n}")
        async with PostgresStorage(dsn):
            pass
        return dsn, lambda: PostgresStorage(dsn)

    async def raw(self, batches: list[Batch]) -> float:
        where, _ = await self.fresh()
        if self.pg is None:
            return await asyncio.to_thread(raw_sqlite, Path(where), batches)
        return await raw_postgres(where, batches)

    async def service(self, run: Callable[[Storage], Awaitable[float]]) -> float:
        _, make = await self.fresh()
        async with make() as storage:
            return await run(storage)

    async def http(self, raw: list[bytes], at_once: int = 1) -> float:
        where, _ = await self.fresh()
        db = ["--db", where] if self.pg is None else ["--database-url", where]
        tmp = self.tmp / f"http-{self.n}"
        return await asyncio.to_thread(through_http, db, raw, tmp, at_once=at_once)


PATHS = ("raw", "storage", "api", "api4", "http", "http4")


async def measure(
    backend: Backend, raw: list[bytes], batches: list[Batch], repeat: int
) -> dict[str, float]:
    readings = sum(len(b.readings) for b in batches)
    best = dict.fromkeys(PATHS, float("inf"))
    for _ in range(repeat):  # interleaved, best of `repeat`: the machine is shared
        best["raw"] = min(best["raw"], await backend.raw(batches))
        best["storage"] = min(
            best["storage"],
            await backend.service(lambda st: through_storage(st, batches, raw)),
        )
        best["api"] = min(
            best["api"], await backend.service(lambda st: through_api(st, raw, backend.tmp))
        )
        best["api4"] = min(
            best["api4"],
            await backend.service(lambda st: through_api(st, raw, backend.tmp, at_once=4)),
        )
        best["http"] = min(best["http"], await backend.http(raw))
        best["http4"] = min(best["http4"], await backend.http(raw, at_once=4))
    return {k: readings / v for k, v in best.items()}


def parse_rate(raw: list[bytes], parse: Callable[..., Batch]) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for body in raw:
            parse(body, max_readings=5000)
        best = min(best, time.perf_counter() - start)
    return len(raw) * len(parse(raw[0], max_readings=5000).readings) / best


def pin_to_one_cpu() -> str:
    with contextlib.suppress(AttributeError, OSError):
        cpu = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned"


async def amain(readings: int, repeat: int) -> dict[str, float]:
    raw = bodies(readings)
    batches = [fastbatch.parse_batch(b, max_readings=5000) for b in raw]
    freeze_startup_objects()  # as `machi-cloud` does once it has built its app
    results: dict[str, float] = {}
    print(
        f"cloud ingest: {readings} readings per run, batches of {BATCH} (and {GATEWAY_BATCH},"
        " the gateway's batch_max), 2 measurements each, sent as columns"
    )
    print(
        f"  {pin_to_one_cpu()}; api = POST /v1/batches in-process (ASGI), http = real"
        f" machi-cloud process on another CPU; best of {repeat}; % of raw"
    )
    maps = bodies(readings, columns=False)
    print(
        "  parse only (CBOR -> validated readings), the service's fast lane:"
        f" {parse_rate(raw, fastbatch.parse_batch):,.0f} readings/s as columns,"
        f" {parse_rate(maps, fastbatch.parse_batch):,.0f}/s as reading maps;"
        f" the reference (batch.parse_batch) {parse_rate(maps, parse_batch):,.0f}/s"
    )
    with tempfile.TemporaryDirectory(prefix="machi-bench-") as tmp:
        backends: list[tuple[str, PostgresServer | None]] = [("sqlite", None)]
        with contextlib.ExitStack() as stack:
            try:
                backends.append(("postgres", stack.enter_context(PostgresServer(durable=True))))
            except PostgresUnavailable as exc:
                print(f"  postgres: skipped ({exc})")
            for name, server in backends:
                if server is None:
                    ratio = await print_paired(Path(tmp), raw, batches, repeat)
                    results.update({"sqlite_paired_ratio": ratio})
                rates = await measure(Backend(name, Path(tmp), server), raw, batches, repeat)
                results.update({f"{name}_{path}": rate for path, rate in rates.items()})
                print_rates(name, rates)
            big = bodies(readings, batch=GATEWAY_BATCH)
            big_batches = [fastbatch.parse_batch(b, max_readings=5000) for b in big]
            (Path(tmp) / "big").mkdir()
            rates = await measure(
                Backend("sqlite", Path(tmp) / "big", None), big, big_batches, repeat
            )
            results.update({f"sqlite_{GATEWAY_BATCH}_{path}": r for path, r in rates.items()})
            print_rates(f"sqlite, batches of {GATEWAY_BATCH}:\n           ", rates)
    return results


def print_rates(name: str, rates: dict[str, float]) -> None:
    raw_rate = rates["raw"]
    print(
        f"  {name:9s} raw {raw_rate:8,.0f}/s"
        + "".join(
            f"   {path} {rates[path]:8,.0f}/s ({rates[path] / raw_rate:4.0%})"
            for path in PATHS[1:]
        )
    )


def profile(readings: int) -> None:
    """Where the SQLite API path spends its time (`python -m bench.cloud_ingest profile`)."""
    raw = bodies(readings)
    freeze_startup_objects()

    async def go() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            async with SQLiteStorage(Path(tmp) / "p.sqlite") as st:
                # the writer's work on this thread, so that cProfile sees it
                st._group = GroupCommit(lambda fn: fn(), st._writer_connection, name="profile")
                await through_api(st, raw, Path(tmp))

    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(go())
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    print(out.getvalue())


def run() -> dict[str, float]:
    readings = int(os.environ.get("MACHI_BENCH_READINGS", "20000"))
    repeat = int(os.environ.get("MACHI_BENCH_REPEAT", "3"))
    return asyncio.run(amain(max(GATEWAY_BATCH, readings - readings % GATEWAY_BATCH), repeat))


async def paired_only(readings: int, repeat: int) -> float:
    """Only the SQLite paired measurement (`python -m bench.cloud_ingest paired`): the
    quick before/after check, e.g. against an older tree with `PYTHONPATH=<tree>/cloud`."""
    raw = bodies(readings)
    batches = [fastbatch.parse_batch(b, max_readings=5000) for b in raw]
    freeze_startup_objects()
    print(f"  {pin_to_one_cpu()}; {readings} readings per run, batches of {BATCH}")
    with tempfile.TemporaryDirectory(prefix="machi-bench-") as tmp:
        return await print_paired(Path(tmp), raw, batches, repeat)


if __name__ == "__main__":
    n = int(os.environ.get("MACHI_BENCH_READINGS", "20000"))
    if sys.argv[1:] == ["profile"]:
        profile(n)
    elif sys.argv[1:] == ["paired"]:
        asyncio.run(paired_only(n - n % BATCH, int(os.environ.get("MACHI_BENCH_REPEAT", "3"))))
    else:
        run()
