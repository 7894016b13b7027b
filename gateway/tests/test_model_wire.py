"""The queue's body encoder: byte for byte what cbor2 makes of ``Reading.to_wire()``."""

from __future__ import annotations

import enum
import random
from typing import Any

import cbor2
import pytest

from machi_gateway.model import Measurement, Reading, encode_wire

INTS = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1, 2**64,
        2**70, -1, -24, -25, -256, -257, -65537, -(2**32) - 1, -(2**63), -(2**64), -(2**64) - 1]
FLOATS = [0.0, -0.0, 1.5, -2.25, 21.5, 1e308, -1e-308, 5e-324, 3.141592653589793]
TEXTS = ["", "a", "x" * 23, "x" * 24, "y" * 300, "héllo", "温度", "\u0000"]


class Level(enum.IntEnum):
    HIGH = 3


def _reading(measurements: tuple[Measurement, ...], **kw: object) -> Reading:
    base: dict[str, object] = {"device": "env-0001", "seq": 7, "time": 1795390000,
                               "received": 1795390000.25, "transport": "coap"}
    base.update(kw)
    return Reading(measurements=measurements, **base)  # type: ignore[arg-type]


def _same(r: Reading) -> None:
    assert encode_wire(r) == cbor2.dumps(r.to_wire()), r
    assert Reading.from_wire(cbor2.loads(encode_wire(r))) == r


@pytest.mark.parametrize("value", [*INTS, *FLOATS, *TEXTS, True, False, Level.HIGH])
def test_every_value_kind(value: object) -> None:
    _same(_reading((Measurement("m", None, value),)))  # type: ignore[arg-type]
    _same(_reading((Measurement("m", "Cel", value), Measurement("n.2", "%RH", 1))))  # type: ignore[arg-type]


@pytest.mark.parametrize("seq", [0, 23, 24, 2**32, 2**63 - 1])
@pytest.mark.parametrize("t", [0, 1795390000, 1795390000.5, -5, 2.0])
def test_seq_and_times(seq: int, t: float) -> None:
    _same(_reading((Measurement("temp", "Cel", 21.5),), seq=seq, time=t, received=t))


def test_sizes_devices_transports() -> None:
    for n in (0, 1, 22, 23, 24, 30):
        ms = tuple(Measurement(f"m{i}", "V" if i % 2 else None, float(i)) for i in range(n))
        _same(_reading(ms))
    for device in ("a", "env-0001", "x" * 32):
        for transport in ("coap", "lora", "ble", "t" * 30):
            _same(_reading((Measurement("bat", "V", 3.75),), device=device,
                           transport=transport))


def test_random_readings() -> None:
    rnd = random.Random(4)
    pool: list[Any] = [*INTS, *FLOATS, *TEXTS, True, False]
    for _ in range(500):
        names = rnd.sample([f"m{i}" for i in range(40)], rnd.randrange(0, 10))
        ms = tuple(Measurement(n, rnd.choice([None, "Cel", "µg/m3"]), rnd.choice(pool))
                   for n in names)
        _same(_reading(ms, seq=rnd.randrange(2**63), time=rnd.choice([*FLOATS, *INTS[:12]]),
                       received=rnd.uniform(0, 2e9), device=f"d-{rnd.randrange(10**6)}"))
