"""What the parser fuzz tests share (gateway, cloud, firmware; issue #8, `make fuzz`).

The hypothesis profiles (a fixed, derandomized CI budget or the long by-hand run of
`MACHI_FUZZ=long`), the allocation bound every parser must keep, and the CBOR heads known
to break parsers. A test module imports it; nothing here runs on its own.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings

LONG = os.environ.get("MACHI_FUZZ", "") == "long"
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
# A deadline per example: a decoder takes microseconds on these inputs, so 5 s means a hang
# (or super-linear work), never a slow CI machine.
settings.register_profile("machi-fuzz-ci", deadline=timedelta(seconds=5), derandomize=True,
                          suppress_health_check=_SLOW_OK, database=None)
settings.register_profile("machi-fuzz-long", deadline=timedelta(seconds=5),
                          max_examples=int(os.environ.get("MACHI_FUZZ_EXAMPLES", "100000")),
                          suppress_health_check=_SLOW_OK)
PROFILE = settings.get_profile("machi-fuzz-long" if LONG else "machi-fuzz-ci")


def fuzz(ci_examples: int) -> settings:
    """The active profile; in CI with this parser's share of the time budget."""
    return PROFILE if LONG else settings(PROFILE, max_examples=ci_examples)


@contextmanager
def bounded_alloc(size: int) -> Iterator[None]:
    """Fail if parsing ``size`` bytes allocates more than a small multiple of that: a
    5-byte head claiming 2^32 items must be refused before anything is allocated for them."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        yield
        grown = tracemalloc.get_traced_memory()[1] - before
    finally:
        if started:
            tracemalloc.stop()
    assert grown <= 1024 * 1024 + 300 * size, f"{grown} bytes allocated for {size} bytes"


# CBOR heads that break parsers: huge definite lengths, indefinite starts, breaks, NaN and
# infinities, 64-bit and big integers, tags (bignum, shared reference, ...), undefined,
# reserved and simple values.
HOSTILE_CBOR_HEADS = [bytes.fromhex(h) for h in (
    "9bffffffffffffffff", "9affffffff", "bbffffffffffffffff", "baffffffff",
    "5bffffffffffffffff", "5affffffff", "7bffffffffffffffff", "7affffffff", "99ffff",
    "9f", "bf", "5f", "7f", "ff", "f97e00", "f97c00", "f9fc00", "fa7fc00000",
    "fb7ff8000000000000", "fb7ff0000000000000", "fbfff0000000000000", "1bffffffffffffffff",
    "3bffffffffffffffff", "1b7fffffffffffffff", "1b8000000000000000", "c2", "c3",
    "c249010000000000000000", "c3581f" + "ff" * 31, "d81c", "d81d00", "d81d1bffffffffff",
    "d81900", "d90100", "c0", "c1", "c4", "c5", "d823", "d9d9f7", "f7", "f8ff", "f818", "1c",
    "3e", "5d", "fc", "fd", "fe", "a0", "80", "40", "60", "f6", "f4", "f5",
)]


def typed(value: Any) -> Any:
    """`value` with every scalar tagged by its type: 1, 1.0 and True must not compare equal."""
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [typed(v) for v in value]]
    if isinstance(value, float) and value != value:
        return ("float", "nan")
    return (type(value).__name__, value)


def batch_outcome(
    parse: Callable[..., Any], data: bytes, limit: int, *, refused: type[Exception]
) -> Any:
    """What a cloud batch parser makes of `data`, to compare two parsers whole: the batch's
    identity, readings and rejections with every value `typed`, or the refusal's class and
    message. A fast lane may hold its readings as `ReadingColumns`: compared as the tuple."""
    try:
        b = parse(data, max_readings=limit)
    except refused as exc:
        return ("error", type(exc).__name__, str(exc))
    return (b.gateway, b.batch_id, typed(tuple(b.readings)), typed(b.rejected))
