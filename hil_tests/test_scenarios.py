"""Fault scenarios (hil_tests/scenarios/*.json): 0 lost, 0 duplicated, whatever the faults.

Each scenario runs the real cloud, gateway, MicroPython nodes and the fault proxies as
separate processes; the report names the seed, so a failure can be rerun exactly with
`python -m machi_tools.scenario hil_tests/scenarios/<name>.json --seed N`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from machi_tools.scenario import Scenario, run_scenario

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.json"))
CI_SCENARIOS = [p for p in SCENARIOS if not p.name.startswith("soak")]


@pytest.mark.hil
@pytest.mark.parametrize("path", CI_SCENARIOS, ids=[p.stem for p in CI_SCENARIOS])
def test_scenario_delivers_exactly_once(path: Path, tmp_path: Path) -> None:
    scenario = Scenario.load(path)
    report = run_scenario(scenario, tmp_path)
    print(report.summary())
    assert report.ok, report.summary()
    # a node powered up again takes `count` more readings: at least that many were produced
    assert report.produced >= sum(scenario.nodes.values()) * scenario.count
    # every stored reading was produced: logged by its node, or written to the node's ring
    # in the instant before a power cut killed it, before the log line (Report.unlogged)
    unlogged = sum(len(v) for v in report.unlogged.values())
    assert report.stored == report.produced + unlogged
    # the faults really happened: a scenario that injects nothing proves nothing
    injected = {k: v for k, v in {**report.udp_proxy, **report.http_proxy}.items()
                if k not in ("up_in", "up_out", "down_in", "down_out", "requests", "forwarded")}
    injected.update({k: v for k, v in report.radio.items() if k in ("up_lost", "down_lost")})
    assert injected or scenario.process_faults, f"no fault was injected: {report.summary()}"
