"""Gateway uplink: CPU per reading to turn the queue's oldest rows into a batch body.

Two paths over the same queue (a real SQLite store of 500 readings), in the same run:

- old: ``store.oldest()`` (every stored body decoded with cbor2 and validated by
  ``Reading.from_wire``), then every reading encoded again (``to_wire`` + ``cbor2.dumps``),
  as the uplink did before (baseline);
- new: ``store.queued()`` (the rows as stored), the cheap head check of each body
  (``wire.looks_intact``), and ``wire.encode_batch`` splicing the stored bodies.

Both read the same rows with the same SELECT, so the difference is the decode and
re-encode. CPU is the process's (``time.process_time``: the store thread included), per
reading, the median of ``ROUNDS`` interleaved rounds; "encode only" leaves the read out.
Readings of 3 and 7 measurements from 200 devices. ``python -m bench.gateway_uplink``.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import cbor2

from machi_gateway.model import Measurement, Reading
from machi_gateway.store import Queued, Store
from machi_gateway.uplink import wire
from machi_gateway.uplink.base import Batch

N = 500
ROUNDS = 60
ENV = (("temp", "Cel", 21.5), ("hum", "%RH", 48.25), ("pres", "Pa", 101325),
       ("pm25", "ug/m3", 12), ("pm10", "ug/m3", 20), ("lux", "lx", 350), ("bat", "V", 3.75))
SMALL = (ENV[0], ENV[1], ENV[6])


def _readings(shape: tuple[tuple[str, str, float | int], ...]) -> list[Reading]:
    t0 = 1_795_390_000.0
    return [Reading(device=f"env-{i % 200:04d}", seq=(1 << 33) + i, time=t0 + i,
                    received=t0 + i + 0.125, transport="coap",
                    measurements=tuple(Measurement(n, u, v + i % 5) for n, u, v in shape))
            for i in range(N)]


def _old_body(batch_id: str, readings: list[Reading]) -> bytes:
    return bytes(cbor2.dumps({"gateway": "gw-01", "batch_id": batch_id,
                              "readings": [r.to_wire() for r in readings]}))


def _new_body(batch_id: str, items: list[Queued]) -> bytes:
    intact = tuple(q for q in items if wire.looks_intact(q))
    return wire.encode_batch(Batch(gateway="gw-01", batch_id=batch_id, readings=intact))


async def _cpu_us(fn: Callable[[], Awaitable[bytes]]) -> float:
    t = time.process_time()
    await fn()
    return (time.process_time() - t) * 1e6 / N


async def _measure(store: Store) -> dict[str, float]:
    items = await store.queued(N)
    decoded = await store.oldest(N)

    async def old() -> bytes:
        return _old_body("gw-01-1", await store.oldest(N))

    async def new() -> bytes:
        return _new_body("gw-01-1", await store.queued(N))

    async def old_encode() -> bytes:  # the bodies as read, decoded and encoded again
        return _old_body("gw-01-1", [Reading.from_wire(cbor2.loads(q.body)) for q in items])

    async def new_encode() -> bytes:
        return _new_body("gw-01-1", items)

    assert await old() == await new() == _old_body("gw-01-1", decoded)  # same bytes
    samples: dict[str, list[float]] = {}
    for rnd in range(ROUNDS):
        pairs = [("old", old), ("new", new), ("old_encode", old_encode),
                 ("new_encode", new_encode)]
        for name, fn in pairs if rnd % 2 == 0 else pairs[::-1]:
            samples.setdefault(name, []).append(await _cpu_us(fn))
    return {name: statistics.median(s) for name, s in samples.items()}


async def _run() -> None:
    print(f"{'readings of':<16} {'path':<12} {'old us/rd':>9} {'new us/rd':>9} {'old/new':>8}")
    for label, shape in (("3 measurements", SMALL), ("7 measurements", ENV)):
        with tempfile.TemporaryDirectory(prefix="machi-bench-") as tmp:
            async with Store(Path(tmp) / "q.sqlite3", max_readings=10**6, retry_after_s=30,
                             dedup_window_s=86400) as store:
                await store.add_many(_readings(shape))
                r = await _measure(store)
        for path, old, new in (("read+encode", r["old"], r["new"]),
                               ("encode only", r["old_encode"], r["new_encode"])):
            print(f"{label:<16} {path:<12} {old:>9.2f} {new:>9.2f} {old / new:>7.1f}x")
    print(f"CPU us per reading, median of {ROUNDS} rounds of a {N}-reading batch; "
          "old: decode + validate + re-encode (the uplink before), new: head check + splice "
          "of the stored bodies; both bodies byte-identical")


def run() -> None:
    asyncio.run(_run())


if __name__ == "__main__":
    run()
