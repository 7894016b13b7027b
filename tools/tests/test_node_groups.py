"""Nodes grouped N per MicroPython process (`Fleet(per_process=N)`, `NodeGroup`): the shared
log is split by device, read incrementally, and each node gets its own exit code. The
group's real process runs in the city-200 HIL scenario and firmware/tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from machi_tools.procs import ManagedProcess
from machi_tools.scenario import Scenario
from machi_tools.system import Fleet, GroupedNode, NodeGroup, NodeSpec, fleet_specs


def _group(tmp_path: Path, n: int = 2) -> NodeGroup:
    group = NodeGroup(name="group-001", workdir=tmp_path)
    for spec in fleet_specs({"env": n}, count=3):
        group.members.append(GroupedNode(spec=spec, workdir=tmp_path,
                                         gateway=("127.0.0.1", 5683), group=group))
    return group


def _fake_process(group: NodeGroup, code: int) -> None:
    """Stands in for `micropython multi.py`: a process that exits with `code`."""
    group.process = ManagedProcess(name=group.name, argv=["sh", "-c", f"exit {code}"],
                                   log_path=group.log_path)


def test_events_are_split_by_device_and_read_as_the_log_grows(tmp_path: Path) -> None:
    group = _group(tmp_path)
    group.log_path.parent.mkdir(parents=True)
    with open(group.log_path, "w") as log:
        log.write("I - multi nodes=2 failed=0 heap=1 free=2\n"
                  "I env-0001 rec seq=0\nI env-0002 rec seq=0\nI env-0001 ack seq=0 code=2.04 "
                  "tries=1 ms=3\nI env-0002 rec se")  # the last line is being written
    a, b = group.members
    assert a.recorded_seqs() == [0] and a.acked_seqs() == [0]
    assert b.recorded_seqs() == [0]
    with open(group.log_path, "a") as log:
        log.write("q=1\nI env-0002 ack seq=0 code=2.04 tries=2 ms=900\n")
    assert b.recorded_seqs() == [0, 1] and b.acked_seqs() == [0]
    assert a.recorded_seqs() == [0]
    assert a.log_path == b.log_path == group.log_path


def test_each_node_gets_the_code_of_its_last_stop_line(tmp_path: Path) -> None:
    group = _group(tmp_path, 3)
    _fake_process(group, 3)
    group.start()
    assert group.process is not None
    group.process.wait(30)
    with open(group.log_path, "a") as log:
        # env-0001 stopped in an earlier run, then its process died without a stop line
        log.write("I env-0001 start seq=0\nI env-0001 stop code=0 taken=3\n"
                  "I env-0001 start seq=16\n"
                  "I env-0002 start seq=0\nI env-0002 stop code=3 taken=3\n"
                  "I env-0003 start seq=0\nI env-0003 stop code=0 taken=3\n")
    codes = {m.spec.device_id: m.exit_code() for m in group.members}
    assert codes == {"env-0001": 3, "env-0002": 3, "env-0003": 0}
    fleet = Fleet(specs=[], workdir=tmp_path, gateway=("127.0.0.1", 5683), per_process=3)
    fleet.nodes.extend(group.members)
    assert len(fleet.processes()) == 1  # one SIGINT, one wait for the three of them


def test_restart_after_a_power_cut_starts_a_new_line(tmp_path: Path) -> None:
    group = _group(tmp_path)
    _fake_process(group, 0)
    group.start()
    assert group.process is not None
    group.process.wait(30)
    with open(group.log_path, "a") as log:
        log.write("I env-0001 rec seq=4")  # kill -9 between the line and its newline
    group.members[1].start()  # powered up again: the whole group's process
    group.process.wait(30)
    assert group.log_path.read_text().endswith("I env-0001 rec seq=4\n")
    nodes = json.loads(group.config_path.read_text())["nodes"]
    assert [n["device_id"] for n in nodes] == ["env-0001", "env-0002"]
    assert all(Path(n["state_dir"]).is_dir() for n in nodes)
    assert group.members[0].process is group.process


def test_bad_group_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="per_process must be >= 1"):
        Fleet(specs=[NodeSpec("env-0001", "env")], workdir=tmp_path,
              gateway=("127.0.0.1", 5683), per_process=0)
    with pytest.raises(ValueError, match="only udp nodes can share a process"):
        Fleet(specs=[NodeSpec("env-0001", "env", transport="nbiot")], workdir=tmp_path,
              gateway=("127.0.0.1", 5683), per_process=2)
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"name": "x", "nodes": {"env": 2}, "count": 1,
                                "nodes_per_process": 0}))
    with pytest.raises(ValueError, match="nodes_per_process must be >= 1"):
        Scenario.load(path)


def test_ci_scenario_runs_nodes_in_groups() -> None:
    city = Scenario.load(Path(__file__).resolve().parents[2] / "hil_tests" / "scenarios"
                         / "city-200.json")
    assert sum(city.nodes.values()) == 200 and city.nodes_per_process > 1
