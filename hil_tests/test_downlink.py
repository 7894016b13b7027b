"""A command travels the whole way: operator → cloud → gateway (long-poll) → the node's
next ACK → the streetlight firmware executes it → its report → `executed` in the cloud,
with every step in the audit log."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from machi_tools.system import Cloud, Fleet, Gateway, provisioned_system

ADMIN = secrets.token_urlsafe(16)
OPERATOR = secrets.token_urlsafe(16)


@pytest.fixture
def system(workdir: Path) -> Iterator[tuple[Cloud, Gateway, Fleet]]:
    with provisioned_system(workdir, {"light": 1, "env": 1}, admin_token=ADMIN,
                            api_tokens=f"root=admin:{ADMIN},olga=operator:{OPERATOR}",
                            interval_s=0.3) as parts:
        yield parts


def _wait_state(client: httpx.Client, cmd_id: str, want: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        cmd: dict[str, Any] = client.get(f"/v1/commands/{cmd_id}").json()
        if cmd["state"] == want or time.monotonic() > deadline:
            return cmd
        time.sleep(0.2)


def test_dim_command_reaches_the_streetlight_and_is_reported_executed(
    system: tuple[Cloud, Gateway, Fleet]
) -> None:
    cloud, _gateway, fleet = system
    with httpx.Client(base_url=cloud.url, timeout=10,
                      headers={"Authorization": f"Bearer {OPERATOR}"}) as ops:
        resp = ops.post("/v1/commands", json={"device": "light-0001", "name": "dim",
                                              "args": {"level": 37}, "ttl_s": 60})
        assert resp.status_code == 201, resp.text
        cmd_id = resp.json()["id"]
        cmd = _wait_state(ops, cmd_id, "executed", timeout=60)
        assert cmd["state"] == "executed", cmd
        # the node really did it: its log names the command, and it now reports 37 %
        light = next(n for n in fleet.nodes if n.spec.device_id == "light-0001")
        assert any(e.event == "cmd" and e.fields.get("name") == "dim" for e in light.events())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            latest = ops.get("/v1/latest").json()
            dim = _latest_value(latest, "light-0001", "dim")
            if dim == 37:
                break
            time.sleep(0.3)
        assert dim == 37, latest
        # an env sensor cannot be dimmed: refused with a problem document, nothing queued
        bad = ops.post("/v1/commands", json={"device": "env-0001", "name": "dim",
                                             "args": {"level": 10}, "ttl_s": 60})
        assert bad.status_code in (400, 409, 422), bad.text
        assert bad.headers["content-type"].startswith("application/problem+json")
    with httpx.Client(base_url=cloud.url, timeout=10,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
        audit = admin.get("/v1/audit").json()
        actions = [e["action"] for e in audit["entries"] if e["subject"] == cmd_id]
        assert actions[0].startswith("command") and len(actions) >= 3, actions
        assert admin.get("/v1/audit/verify").json()["ok"] is True


def _latest_value(latest: Any, device: str, metric: str) -> Any:
    """`GET /v1/latest` is {"devices": {device: {metric: {"value", "unit", ...}}}}."""
    return latest["devices"].get(device, {}).get(metric, {}).get("value")
