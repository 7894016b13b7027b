"""Garbage-collector settings for the long-running daemon.

aiocoap keeps every CoAP exchange (its response and a timer) for EXCHANGE_LIFETIME =
247 s to answer duplicates, so under steady load the heap holds a few hundred thousand
young-looking objects, and every full (generation 2) collection of CPython's cyclic GC
walks all of them: docs/benchmarks.md measured p99 ACK latency growing from ~150 ms to
280-720 ms within 40 s of load, and 60-90 ms with full collections ten times rarer.
Objects made during start-up (modules, config, registry) are frozen out of the
collector's view altogether. Nothing here changes what is freed, only how often the
collector looks: reference counting still frees everything acyclic at once.
"""

from __future__ import annotations

import gc

THRESHOLDS = (700, 10, 100)  # CPython's default is (700, 10, 10)


def tune() -> None:
    """Call once, after start-up and before serving."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
