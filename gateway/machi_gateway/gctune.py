"""Garbage-collector settings for the long-running daemon.

Generation 0 (young objects): CPython collects it each time the count of container
objects allocated minus those freed since the last collection passes a threshold, 700 by
default. A loaded CoAP ingress has thousands of objects in flight at any moment (64
requests of 10-packs: their messages, decoded records, readings, futures), allocated and
freed by reference counting within milliseconds, so that count swings past 700 every few
requests and each collection walks, and promotes to generation 1, whatever is in flight
at that moment, only to see it freed a moment later. With the threshold (10,000) above
that working set, a collection runs only when objects really accumulate.
bench/gateway_coap.py, 10-packs at 64 in flight, the collector timed with
``gc.callbacks`` in the server: 200-215 ms of collections per ~2,800 requests at 700,
20-35 ms at 10,000 (about 60 µs less per 10-pack), the ACK latency tail unchanged
(docs/benchmarks.md). The memory this may leave waiting is bounded: at most 10,000
unreachable objects (cyclic garbage, of which the CoAP path now makes none:
ingress/coap.py ``_TokenManager``) before the next collection, a few MB at most.

Generation 2 (full collections): every CoAP exchange is remembered for EXCHANGE_LIFETIME
= 247 s to answer duplicates, so under steady load the heap holds a few hundred
thousand long-lived objects and every full collection walks all of them: docs/benchmarks.md
measured p99 ACK latency growing from ~150 ms to 280-720 ms within 40 s of load with
CPython's default, 60-90 ms with full collections ten times rarer (threshold 100, kept
here: a full collection after 100 of generation 1, i.e. after ~10^7 net allocations, and
no sooner than the long-lived objects grew by 25 %).

Objects made during start-up (modules, config, registry) are frozen out of the
collector's view altogether. Nothing here changes what is freed, only how often the
collector looks: reference counting still frees everything acyclic at once.
"""

from __future__ import annotations

import gc

THRESHOLDS = (10_000, 10, 100)  # CPython's default is (700, 10, 10)


def tune() -> None:
    """Call once, after start-up and before serving."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
