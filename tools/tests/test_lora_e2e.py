"""Commands to a LoRa streetlight end to end (issue #4): operator -> cloud -> gateway
(long-poll) -> the ack of the node's next frame -> the real firmware under MicroPython
executes them -> their results ride in its next compact frame (docs/protocol-lora.md §1)
-> the gateway's command queue -> ``executed`` / ``failed`` in the cloud.

Twice: the virtual concentrator reports SF9 (a 66-byte ack: the commands in their CoAP
form next to the time) and SF10 (24 bytes: the commands compact, ``[cid, op, arg, exp]``
without the time, one per ack, which the node's LoRa client expands; protocol-lora.md
§8). At SF10 a config command (a map: no compact form) never fits an ack: it stays
queued, is never reported ``sent``, and expires."""

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


@pytest.fixture(params=["SF9", "SF10"])
def lora_light(request: pytest.FixtureRequest, tmp_path: Path
               ) -> Iterator[tuple[Cloud, Gateway, Node, str]]:
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
                  f"{host}:{port}", "--datr", f"{request.param}BW125",
                  "--ready-file", str(tmp_path / "vconcentrator.ready"),
                  "--stats-file", str(tmp_path / "vconcentrator.stats")],
            log_path=tmp_path / "logs" / "vconcentrator.log",
            ready_file=tmp_path / "vconcentrator.ready")
        concentrator.start()
        lhost, lport = concentrator.wait_ready()["listen"]
        # about one reading per exchange (~1.3 s with the ack's window), so a result does
        # not wait behind a growing backlog of readings (LoRa: one reading per frame)
        spec = NodeSpec(DEVICE, "light", interval_s=1.0, transport="lora",
                        short_id=reg.short_id, key=reg.key.hex())
        node = Node(spec=spec, workdir=tmp_path, gateway=gateway.coap,
                    radio=(str(lhost), int(lport)))
        node.start()
        yield cloud, gateway, node, request.param
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
    lora_light: tuple[Cloud, Gateway, Node, str]
) -> None:
    cloud, gateway, node, sf = lora_light
    _wait(lambda: any(e.event == "ack" for e in node.events()), 30, "the node's first ack")
    # (name, args, ttl_s, final state, the node's result or None: never delivered)
    plan: list[tuple[str, dict[str, Any], int, str, str | None]] = [
        ("dim", {"level": 37}, 60, "executed", "ok")]
    if sf == "SF9":
        plan.append(("config", {"wattage": 5}, 60, "failed", "err:key"))  # no such key
    else:  # a config map never fits an SF10 ack: it stays queued, never "sent", expires
        plan += [("schedule", {"mode": "auto"}, 60, "executed", "ok"),
                 ("config", {"wattage": 5}, 5, "expired", None)]
    with httpx.Client(base_url=cloud.url, timeout=10,
                      headers={"Authorization": f"Bearer {OPERATOR}"}) as ops:
        ids = []
        for name, args, ttl, _, _ in plan:
            resp = ops.post("/v1/commands", json={"device": DEVICE, "name": name,
                                                  "args": args, "ttl_s": ttl})
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["id"])
        done = ("executed", "failed", "expired")
        def final_state(cmd_id: str) -> dict[str, Any]:
            return dict(_wait(lambda: (c := _state(ops, cmd_id))["state"] in done and c, 30,
                              f"command {cmd_id}'s result"))

        final = [final_state(i) for i in ids]
    for (name, _, _, state, result), got in zip(plan, final, strict=True):
        assert got["state"] == state, (name, got)
        if state == "failed":
            assert result is not None and result.removeprefix("err:") in got["detail"], got
    # the node did execute each delivered command once, and said so in its log
    cmds = sorted((e.fields.get("name"), e.fields.get("result")) for e in node.events()
                  if e.event == "cmd")
    assert cmds == sorted((p[0], p[4]) for p in plan if p[4] is not None), cmds
    # the results came in LoRa frames: the gateway's only ingress for this device
    health = gateway.health()
    assert not health["rejected"], health
