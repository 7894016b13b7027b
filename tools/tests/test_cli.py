"""The `machi` command as a technician runs it: demo and fleet, as real subprocesses."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from machi_tools.cli import build_parser
from machi_tools.system import Cloud, Gateway, fleet_specs, stop_system

# the `machi` fixture (conftest.py): the installed command, run as a technician would
Machi = Callable[..., subprocess.CompletedProcess[str]]


def test_demo_shows_every_node_within_30_seconds_and_stops_cleanly(demo_run: Any) -> None:
    out, tmp_path = demo_run.out, demo_run.workdir
    assert demo_run.returncode == 0, out
    assert "8/8 nodes reporting" in out, out
    took = float(re.search(r"all nodes reached the cloud in ([\d.]+)s", out)[1])  # type: ignore[index]
    assert took < 30, out
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/", out), out
    # every process was stopped: the logs end with their clean-exit lines
    for name in ("env-0001", "bin-0003", "light-0002"):
        assert "stop" in (tmp_path / "logs" / f"{name}.log").read_text().splitlines()[-1]


def test_fleet_command_runs_nodes_against_a_gateway(tmp_path: Path, machi: Machi) -> None:
    cloud = Cloud(workdir=tmp_path / "sys")
    gateway: Gateway | None = None
    try:
        cloud.start()
        gateway = Gateway(workdir=tmp_path / "sys", cloud_url=cloud.url, token=cloud.token)
        host, port = gateway.start()
        result = machi(
            "fleet", "--gateway", f"{host}:{port}", "--env", "2", "--bin", "1", "--count", "3",
            "--interval", "0.2", "--ack-timeout", "0.5", "--workdir", str(tmp_path / "fleet"),
            "--devices-file", str(gateway.devices_path),
        )
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        for dev in ("env-0001", "env-0002", "bin-0001"):
            assert re.search(rf"{dev}: 3 recorded, 3 acked, exit 0", out), out
        # the gateway batches within batch_age_s; the readings then show up in the cloud
        with httpx.Client(base_url=cloud.url, timeout=5) as client:
            for _ in range(100):
                devices = client.get("/v1/devices").json()["devices"]
                if sum(d["readings"] for d in devices) == 9:
                    break
                time.sleep(0.1)
            assert sorted(d["device"] for d in devices) == ["bin-0001", "env-0001", "env-0002"]
            assert all(d["readings"] == 3 for d in devices), devices
    finally:
        stop_system(cloud, gateway)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fleet", "--gateway", "nohostport"], "expected HOST:PORT"),
        (["fleet"], "--gateway"),
        (["nosuch"], "invalid choice"),
    ],
)
def test_bad_usage_exits_2_with_a_clear_message(
    argv: list[str], message: str, machi: Machi
) -> None:
    result = machi(*argv)
    assert result.returncode == 2
    assert message in result.stderr


def test_fleet_without_nodes_is_refused(tmp_path: Path, machi: Machi) -> None:
    result = machi("fleet", "--gateway", "127.0.0.1:5683", "--env", "0",
                   "--workdir", str(tmp_path))
    assert result.returncode == 2
    assert "no nodes" in result.stdout


def test_help_has_examples() -> None:
    assert "machi demo --duration 30" in build_parser().format_help()


def test_fleet_specs_names_and_validation() -> None:
    specs = fleet_specs({"env": 2, "light": 1}, interval_s=0.5, count=3)
    assert [s.device_id for s in specs] == ["env-0001", "env-0002", "light-0001"]
    assert all(s.count == 3 and s.interval_s == 0.5 for s in specs)
    with pytest.raises(ValueError, match="node type"):
        fleet_specs({"toaster": 1})


def test_audit_verify_detects_an_edited_row(tmp_path: Path, machi: Machi) -> None:
    """`machi audit verify` on a real cloud database: OK, then TAMPERED after an edit."""
    import sqlite3

    import httpx as _httpx

    admin = "t0ken-admin"
    cloud = Cloud(workdir=tmp_path, api_tokens=f"root=admin:{admin}")
    try:
        url = cloud.start()
        with _httpx.Client(base_url=url, timeout=10,
                           headers={"Authorization": f"Bearer {admin}"}) as client:
            for i in range(3):
                resp = client.put(f"/v1/devices/env-{i:04d}", json={
                    "type": "env", "gateway": "gw-01", "site": "t", "lat": 36.1, "lon": 137.9,
                    "transport": "coap"})
                assert resp.status_code == 201, resp.text
    finally:
        cloud.stop()
    db = str(tmp_path / "cloud.sqlite")
    ok = machi("audit", "verify", "--db", db)
    assert ok.returncode == 0 and "OK, 3 entries" in ok.stdout, ok.stdout + ok.stderr
    con = sqlite3.connect(db)
    triggers = [r[0] for r in con.execute(
        "SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name='audit'")]
    for name in triggers:  # an attacker with the file can drop the guards; the chain still tells
        con.execute(f"DROP TRIGGER {name}")
    con.execute("UPDATE audit SET details = replace(details, 'env', 'bin') WHERE seq = 2")
    con.commit()
    con.close()
    bad = machi("audit", "verify", "--db", db)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "TAMPERED" in bad.stdout


def test_tokens_never_start_with_a_dash() -> None:
    # a token pasted after `--admin-token` must not look like an option to argparse
    # (a CI run once drew one that did)
    from machi_tools.system import new_token

    tokens = [new_token(12) for _ in range(3000)]
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == len(tokens) and all(len(t) == 16 for t in tokens)
