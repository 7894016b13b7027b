"""Fixtures that run the real system: `machi-cloud`, `machi-gateway` and MicroPython nodes.

Every process listens on a loopback port chosen at run time, writes its log into the test's
temporary directory, and is stopped in `finally` even when the test fails; a failing test
prints the tail of every log so the cause is visible in CI output.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from machi_tools.system import Cloud, CoapProfile, Fleet, Gateway, NodeSpec, write_devices_file

# Emulated nodes use a short ACK_TIMEOUT so retransmission scenarios finish in seconds;
# the algorithm (random factor, doubling, MAX_RETRANSMIT) is RFC 7252's.
FAST_COAP = CoapProfile(ack_timeout_s=0.5, ack_random_factor=1.5, max_retransmit=4)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    return report is None or report.failed


def _print_logs(workdir: Path) -> None:
    for log in sorted((workdir / "logs").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        print(f"\n----- {log.name} (last 40 of {len(lines)} lines)")
        print("\n".join(lines[-40:]))


@pytest.fixture
def workdir(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    yield tmp_path
    if _failed(request):
        _print_logs(tmp_path)


@pytest.fixture
def cloud(workdir: Path) -> Iterator[Cloud]:
    c = Cloud(workdir=workdir)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def gateway(workdir: Path, cloud: Cloud) -> Iterator[Gateway]:
    g = Gateway(workdir=workdir, cloud_url=cloud.url, token=cloud.token, batch_age_s=0.3)
    try:
        g.start()
        yield g
    finally:
        g.stop()


@pytest.fixture
def start_fleet(workdir: Path, gateway: Gateway) -> Iterator[Callable[[list[NodeSpec]], Fleet]]:
    fleets: list[Fleet] = []

    def start(specs: list[NodeSpec]) -> Fleet:
        write_devices_file(gateway.devices_path, specs)
        gateway.wait_devices(len(specs))
        fleet = Fleet(specs=specs, workdir=workdir, gateway=gateway.coap, coap=FAST_COAP)
        fleets.append(fleet)
        fleet.start()
        return fleet

    try:
        yield start
    finally:
        for fleet in fleets:
            fleet.stop()


class CloudReader:
    """Reads back what the cloud stored, through its public API."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=10)

    def rows(self, device: str) -> list[dict[str, Any]]:
        resp = self.client.get("/v1/readings", params={"device": device, "limit": 100000})
        resp.raise_for_status()
        rows: list[dict[str, Any]] = resp.json()["readings"]
        return rows

    def seqs(self, device: str) -> Counter[int]:
        """How many distinct stored readings each seq has (1 each when exactly once)."""
        rows = self.rows(device)
        per_metric = Counter((r["seq"], r["metric"]) for r in rows)
        dup = [k for k, n in per_metric.items() if n > 1]
        assert not dup, f"{device}: measurements stored more than once: {dup[:10]}"
        return Counter(r["seq"] for r in rows if r["metric"] == rows[0]["metric"])

    def devices(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.client.get("/v1/devices").json()["devices"]
        return data

    def wait_for_seqs(self, expected: dict[str, set[int]], timeout: float) -> dict[str, set[int]]:
        """Poll until the cloud holds every expected seq (or time runs out); return what it has."""
        deadline = time.monotonic() + timeout
        got: dict[str, set[int]] = {}
        while True:
            got = {dev: set(self.seqs(dev)) for dev in expected}
            if all(expected[d] <= got[d] for d in expected) or time.monotonic() > deadline:
                return got
            time.sleep(0.3)

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def cloud_reader(cloud: Cloud) -> Iterator[CloudReader]:
    reader = CloudReader(cloud.url)
    try:
        yield reader
    finally:
        reader.close()
