"""Gateway uplink: CPU per reading to turn the queue's oldest rows into a batch body.

Three paths over the same queue (a real SQLite store of 500 readings), in the same run:

- rebuild: ``store.oldest()`` (every stored body decoded with cbor2 and validated by
  ``Reading.from_wire``), then every reading encoded again (``to_wire`` + ``cbor2.dumps``),
  as the uplink did before the splice (baseline);
- splice (``format = "readings"``): ``store.queued()`` (the rows as stored), the cheap
  head check of each body (``wire.looks_intact``), and ``wire.encode_batch`` splicing
  the stored bodies (byte-identical to rebuild);
- columns (``format = "columns"``, the default): ``store.queued()``, ``wire.to_columns``
  (the bodies decoded in one cbor2 call, the columns built) and ``wire.encode_batch``.

All read the same rows with the same SELECT. CPU is the process's (``time.process_time``:
the store thread included), per reading, the median of ``ROUNDS`` interleaved rounds;
"encode only" leaves the read out. The collector is set as in the daemon
(``gctune.tune``) and collects before each sample. Readings of 2, 3 and 7 measurements
from 200 devices, and a mixed fleet (env, bin with a boolean, light with a text: sparse
series).
``python -m bench.gateway_uplink``.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import cbor2

from machi_gateway import gctune
from machi_gateway.model import Measurement, Reading
from machi_gateway.store import Queued, Store
from machi_gateway.uplink import wire
from machi_gateway.uplink.base import Batch

N = 500
ROUNDS = 60
Shape = tuple[tuple[str, str | None, float | int | bool | str], ...]
ENV: Shape = (("temp", "Cel", 21.5), ("hum", "%RH", 48.25), ("pres", "Pa", 101325),
              ("pm25", "ug/m3", 12), ("pm10", "ug/m3", 20), ("lux", "lx", 350),
              ("bat", "V", 3.75))
BIN: Shape = (("fill", "%", 85), ("tilt", None, False), ("bat", "V", 3.5))
LIGHT: Shape = (("on", None, True), ("mode", None, "auto"), ("lux", "lx", 120))
FLEETS: tuple[tuple[str, tuple[Shape, ...]], ...] = (
    ("2 measurements", (ENV[:2],)), ("3 measurements", ((ENV[0], ENV[1], ENV[6]),)),
    ("7 measurements", (ENV,)), ("mixed fleet", ((ENV[0], ENV[1], ENV[6]), BIN, LIGHT)))


def _value(v: float | int | bool | str, i: int) -> float | int | bool | str:
    return v if isinstance(v, bool | str) else v + i % 5


def _readings(shapes: tuple[Shape, ...]) -> list[Reading]:
    t0 = 1_795_390_000.0
    return [Reading(device=f"dev-{i % 200:04d}", seq=(1 << 33) + i, time=t0 + i,
                    received=t0 + i + 0.125, transport="coap",
                    measurements=tuple(Measurement(n, u, _value(v, i))
                                       for n, u, v in shapes[i % len(shapes)]))
            for i in range(N)]


def _old_body(batch_id: str, readings: list[Reading]) -> bytes:
    return bytes(cbor2.dumps({"gateway": "gw-01", "batch_id": batch_id,
                              "readings": [r.to_wire() for r in readings]}))


def _splice_body(batch_id: str, items: list[Queued]) -> bytes:
    intact = tuple(q for q in items if wire.looks_intact(q))
    return wire.encode_batch(Batch(gateway="gw-01", batch_id=batch_id, readings=intact))


def _columns_body(batch_id: str, items: list[Queued]) -> bytes:
    fit, columns, unfit = wire.to_columns(items)
    assert fit == items and not unfit and columns is not None  # else it measures fewer
    return wire.encode_batch(Batch(gateway="gw-01", batch_id=batch_id, readings=tuple(fit),
                                   columns=columns))


async def _cpu_us(fn: Callable[[], Awaitable[bytes]]) -> float:
    gc.collect()  # each path pays for collections its own objects cause, not the last one's
    t = time.process_time()
    await fn()
    return (time.process_time() - t) * 1e6 / N


async def _measure(store: Store) -> tuple[dict[str, float], dict[str, int]]:
    items = await store.queued(N)
    decoded = await store.oldest(N)

    async def rebuild() -> bytes:
        return _old_body("gw-01-1", await store.oldest(N))

    async def splice() -> bytes:
        return _splice_body("gw-01-1", await store.queued(N))

    async def columns() -> bytes:
        return _columns_body("gw-01-1", await store.queued(N))

    async def rebuild_encode() -> bytes:  # the bodies as read, decoded and encoded again
        return _old_body("gw-01-1", [Reading.from_wire(cbor2.loads(q.body)) for q in items])

    async def splice_encode() -> bytes:
        return _splice_body("gw-01-1", items)

    async def columns_encode() -> bytes:
        return _columns_body("gw-01-1", items)

    assert await rebuild() == await splice() == _old_body("gw-01-1", decoded)  # same bytes
    sizes = {"rows": len(await splice()), "columns": len(await columns())}
    samples: dict[str, list[float]] = {}
    for rnd in range(ROUNDS):
        paths = [("rebuild", rebuild), ("splice", splice), ("columns", columns),
                 ("rebuild_encode", rebuild_encode), ("splice_encode", splice_encode),
                 ("columns_encode", columns_encode)]
        for name, fn in paths if rnd % 2 == 0 else paths[::-1]:
            samples.setdefault(name, []).append(await _cpu_us(fn))
    return {name: statistics.median(s) for name, s in samples.items()}, sizes


async def _run() -> None:
    print(f"{'readings of':<16} {'path':<12} {'rebuild':>8} {'splice':>8} {'columns':>8}"
          f" {'rows KB':>8} {'cols KB':>8}")
    for label, shapes in FLEETS:
        with tempfile.TemporaryDirectory(prefix="machi-bench-") as tmp:
            async with Store(Path(tmp) / "q.sqlite3", max_readings=10**6, retry_after_s=30,
                             dedup_window_s=86400) as store:
                await store.add_many(_readings(shapes))
                r, size = await _measure(store)
        for path, suffix in (("read+encode", ""), ("encode only", "_encode")):
            print(f"{label:<16} {path:<12} {r['rebuild' + suffix]:>8.2f} "
                  f"{r['splice' + suffix]:>8.2f} {r['columns' + suffix]:>8.2f} "
                  f"{size['rows'] / 1000:>8.1f} {size['columns'] / 1000:>8.1f}")
    print(f"CPU us per reading, median of {ROUNDS} rounds of a {N}-reading batch; rebuild: "
          "decode + validate + re-encode (the uplink before the splice), splice: head check "
          "+ the stored bodies (format readings), columns: one decode + columns (format "
          "columns); KB: the batch body")


def run() -> None:
    gctune.tune()
    asyncio.run(_run())


if __name__ == "__main__":
    run()
