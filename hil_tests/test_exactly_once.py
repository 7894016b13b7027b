"""The end-to-end promise: every reading a node accepted reaches the cloud exactly once.

Real processes throughout: `machi-cloud` (SQLite), `machi-gateway` (aiocoap) and nodes running
the real firmware under the real MicroPython interpreter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from machi_tools.system import Fleet, Gateway, NodeSpec, fleet_specs


def _assert_exactly_once(fleet: Fleet, cloud_reader: Any, per_node: int) -> None:
    expected = {n.spec.device_id: set(n.recorded_seqs()) for n in fleet.nodes}
    for dev, seqs in expected.items():
        assert len(seqs) == per_node, f"{dev} recorded {len(seqs)} readings, not {per_node}"
    got = cloud_reader.wait_for_seqs(expected, timeout=30)
    for dev in expected:
        missing = expected[dev] - got[dev]
        extra = got[dev] - expected[dev]
        assert not missing, f"{dev}: lost {sorted(missing)}"
        assert not extra, f"{dev}: cloud has readings the node never recorded: {sorted(extra)}"
        counts = cloud_reader.seqs(dev)
        assert all(n == 1 for n in counts.values()), f"{dev}: duplicated {counts}"
    devices = {d["device"]: d for d in cloud_reader.devices()}
    for dev, seqs in expected.items():
        assert devices[dev]["readings"] == len(seqs)
        assert devices[dev]["last_seq"] == max(seqs)


def test_five_nodes_twenty_readings_arrive_exactly_once(
    start_fleet: Callable[[list[NodeSpec]], Fleet], cloud_reader: Any
) -> None:
    specs = fleet_specs({"env": 2, "bin": 2, "light": 1}, interval_s=0.1, count=20)
    fleet = start_fleet(specs)
    codes = fleet.wait(timeout=90)
    assert all(code == 0 for code in codes.values()), f"node exit codes {codes}\n{fleet.logs()}"
    _assert_exactly_once(fleet, cloud_reader, per_node=20)


def _wait_acks(fleet: Fleet, at_least: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(n.acked_seqs()) >= at_least for n in fleet.nodes):
            return
        time.sleep(0.1)
    raise AssertionError(f"nodes did not reach {at_least} acks\n{fleet.logs()}")


def test_gateway_restart_mid_run_loses_and_duplicates_nothing(
    start_fleet: Callable[[list[NodeSpec]], Fleet], gateway: Gateway, cloud_reader: Any
) -> None:
    specs = fleet_specs({"env": 3, "bin": 2}, interval_s=0.1, count=40)
    fleet = start_fleet(specs)
    _wait_acks(fleet, at_least=8, timeout=30)
    assert gateway.stop() == 0, "gateway did not shut down cleanly on SIGTERM"
    time.sleep(1.0)  # nodes keep sampling and retransmitting into the void
    gateway.start()
    codes = fleet.wait(timeout=120)
    assert all(code == 0 for code in codes.values()), f"node exit codes {codes}\n{fleet.logs()}"
    _assert_exactly_once(fleet, cloud_reader, per_node=40)


def test_gateway_killed_mid_run_loses_and_duplicates_nothing(
    start_fleet: Callable[[list[NodeSpec]], Fleet], gateway: Gateway, cloud_reader: Any
) -> None:
    specs = fleet_specs({"env": 2, "light": 2, "bin": 1}, interval_s=0.1, count=40)
    fleet = start_fleet(specs)
    for at_least in (5, 15, 25):
        _wait_acks(fleet, at_least=at_least, timeout=60)
        gateway.kill()  # power cut: no flush, no checkpoint
        gateway.start()
    codes = fleet.wait(timeout=120)
    assert all(code == 0 for code in codes.values()), f"node exit codes {codes}\n{fleet.logs()}"
    _assert_exactly_once(fleet, cloud_reader, per_node=40)
