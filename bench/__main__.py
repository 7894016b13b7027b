"""`make bench`: every benchmark, each printing ratios against a baseline from the same run."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = [
    "bench.firmware_encode",
    "bench.lora_airtime",
    "bench.gateway_coap",
    "bench.gateway_uplink",
    "bench.gateway_pipeline",
    "bench.cloud_ingest",
    "bench.e2e_latency",
]


def main() -> int:
    for name in BENCHMARKS:
        print(f"== {name}")
        importlib.import_module(name).run()
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
