"""`machi demo` runs OSCORE end to end: cloud-issued keys, a gateway that requires it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from machi_tools.system import NodeSpec, fleet_short_id, fleet_specs


def test_demo_nodes_talk_oscore_to_a_gateway_that_requires_it(demo_run: Any) -> None:
    # the demo run of test_cli.py's test (a session fixture: one `machi demo` for both)
    out, tmp_path = demo_run.out, demo_run.workdir
    assert demo_run.returncode == 0, out
    assert "OSCORE on" in out and "8/8 nodes reporting" in out, out
    assert 'oscore = "required"' in (tmp_path / "gateway.toml").read_text()
    registry = {d["id"]: d for d in json.loads((tmp_path / "devices.json").read_text())["devices"]}
    for dev in ("env-0001", "bin-0003", "light-0002"):
        cfg = json.loads((tmp_path / "nodes" / f"{dev}.json").read_text())
        # the node and the gateway hold the same (cloud-issued) key and short id
        assert cfg["oscore"] == {"key": registry[dev]["key"],
                                 "short_id": registry[dev]["short_id"]}
        assert registry[dev]["key"] not in out
        log = (tmp_path / "logs" / f"{dev}.log").read_text()
        m = re.search(r"oscore protected=(\d+) unprotected=(\d+)", log)
        assert m and int(m[1]) > 0 and int(m[2]) > 0, log[-2000:]
        acked = len(re.findall(r" ack seq=", log))
        assert acked > 0 and int(m[2]) >= acked  # every ack was an OSCORE answer


def test_fleet_specs_give_unique_short_ids_and_keys() -> None:
    specs = fleet_specs({"env": 3, "bin": 2}) + fleet_specs({"light": 2}, first=5)
    assert len({s.short_id for s in specs}) == len({s.key for s in specs}) == 7
    assert [s.short_id for s in specs[:2]] == [fleet_short_id("env", 1), fleet_short_id("env", 2)]
    assert fleet_specs({"env": 1}, keys=False)[0].key is None
    with pytest.raises(ValueError, match="short id"):
        fleet_short_id("env", 0x4000)
    with pytest.raises(ValueError, match="key"):
        NodeSpec("env-0001", "env", key="nothex")
