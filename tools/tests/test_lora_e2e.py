"""Commands to a LoRa streetlight end to end (issue #4): operator -> cloud -> gateway
(long-poll) -> the ack of the node's next frame -> the real firmware under MicroPython
executes them -> their results ride in its next compact frame (docs/protocol-lora.md §1)
-> the gateway's command queue -> ``executed`` / ``failed`` in the cloud.

The virtual concentrator reports SF9: at SF10 an ack may be 24 bytes, too short for a
command (the gateway then sends the time only, ``ack_trimmed``), so over SF10 commands
wait for a frame that went out faster (protocol-lora.md §8)."""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from machi_tools.cloudapi import CloudClient
from machi_tools.procs import ManagedProcess
from machi_tools.system import Cloud, Gateway, Node, NodeSpec

ADMIN = secrets.token_urlsafe(16)
OPERATOR = secrets.token_urlsafe(16)
DEVICE = "light-0001"


def _wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return got


@pytest.fixture
def lora_light(tmp_path: Path) -> Iterator[tuple[Cloud, Gateway, Node]]:
    cloud = Cloud(workdir=tmp_path, api_tokens=f"root=admin:{ADMIN},olga=operator:{OPERATOR}")
    gateway: Gateway | None = None
    concentrator: ManagedProcess | None = None
    node: Node | None = None
    try:
        cloud.start()
        with CloudClient(cloud.url, ADMIN) as admin:  # as `machi provision` registers it
            reg = admin.register(DEVICE, {"type": "light", "gateway": cloud.gateway_id,
                                          "site": "e2e", "lat": 36.115, "lon": 137.954,
                                          "transport": "lora"})
        assert reg.short_id is not None
        gateway = Gateway(workdir=tmp_path, cloud_url=cloud.url, token=cloud.token,
                          devices_sync=True, downlink=True, batch_age_s=0.2, lora_udp=True)
        gateway.start()
        gateway.wait_devices(1)  # the short id and key, synced from the cloud's registry
        host, port = gateway.lora
        concentrator = ManagedProcess(
            name="vconcentrator",
            argv=[sys.executable, "-m", "machi_tools.vconcentrator", "--gateway",
                  f"{host}:{port}", "--datr", "SF9BW125",
                  "--ready-file", str(tmp_path / "vconcentrator.ready"),
                  "--stats-file", str(tmp_path / "vconcentrator.stats")],
            log_path=tmp_path / "logs" / "vconcentrator.log",
            ready_file=tmp_path / "vconcentrator.ready")
        concentrator.start()
        lhost, lport = concentrator.wait_ready()["listen"]
        spec = NodeSpec(DEVICE, "light", interval_s=0.5, transport="lora",
                        short_id=reg.short_id, key=reg.key.hex())
        node = Node(spec=spec, workdir=tmp_path, gateway=gateway.coap,
                    radio=(str(lhost), int(lport)))
        node.start()
        yield cloud, gateway, node
    finally:
        if node is not None and node.process is not None:
            node.process.stop(timeout=10)
        if concentrator is not None:
            concentrator.stop()
        if gateway is not None:
            gateway.stop()
        cloud.stop()


def _state(ops: httpx.Client, cmd_id: str) -> dict[str, Any]:
    cmd: dict[str, Any] = ops.get(f"/v1/commands/{cmd_id}").json()
    return cmd


@pytest.mark.hil
@pytest.mark.micropython
def test_lora_streetlight_commands_end_executed_and_failed(
    lora_light: tuple[Cloud, Gateway, Node]
) -> None:
    cloud, gateway, node = lora_light
    _wait(lambda: any(e.event == "ack" for e in node.events()), 30, "the node's first ack")
    with httpx.Client(base_url=cloud.url, timeout=10,
                      headers={"Authorization": f"Bearer {OPERATOR}"}) as ops:
        ids = {}
        for what, name, args in (("ok", "dim", {"level": 37}),
                                 ("bad", "config", {"wattage": 5})):  # no such key: err:key
            resp = ops.post("/v1/commands", json={"device": DEVICE, "name": name,
                                                  "args": args, "ttl_s": 60})
            assert resp.status_code == 201, resp.text
            ids[what] = resp.json()["id"]
        done = ("executed", "failed", "expired")
        ok = _wait(lambda: (c := _state(ops, ids["ok"]))["state"] in done and c, 30,
                   "the dim command's result")
        bad = _wait(lambda: (c := _state(ops, ids["bad"]))["state"] in done and c, 30,
                    "the config command's result")
    assert ok["state"] == "executed", ok
    assert bad["state"] == "failed" and "key" in bad["detail"], bad
    # the node did execute both, and said so in its log
    cmds = {e.fields.get("name"): e.fields.get("result") for e in node.events()
            if e.event == "cmd"}
    assert cmds == {"dim": "ok", "config": "err:key"}, cmds
    # the results came in LoRa frames: the gateway's only ingress for this device
    health = gateway.health()
    assert not health["rejected"], health
