"""Commands pushed to an always-on streetlight (issue #4, protocol.md §5 "Push"), end to end:
operator → cloud → gateway (long-poll) → **CoAP POST /c to the node at once**, OSCORE on
both ways → the real streetlight firmware executes it and answers → `executed` in the
cloud, long before the node's next reading. And a push to a node that is down: the command
stays queued and rides in the ACK of the node's first reading after it is back.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from machi_tools.system import Cloud, Fleet, Gateway, Node, provisioned_system

ADMIN = secrets.token_urlsafe(16)
OPERATOR = secrets.token_urlsafe(16)
INTERVAL_S = 30.0  # the light's reading interval: a command via the ACK would wait this long


@dataclass
class PushGateway(Gateway):
    """The gateway with `[downlink] push = true` and a short push retransmission."""

    def write_config(self) -> None:
        super().write_config()
        text = self.config_path.read_text()
        assert "[downlink]\nenabled = true\n" in text
        self.config_path.write_text(text.replace(
            "[downlink]\nenabled = true\n",
            "[downlink]\nenabled = true\npush = true\npush_ack_timeout_s = 0.5\n"
            "push_max_retransmit = 2\n"))


@pytest.fixture
def system(workdir: Path) -> Iterator[tuple[Cloud, Gateway, Fleet]]:
    with provisioned_system(workdir, {"light": 1}, admin_token=ADMIN,
                            api_tokens=f"root=admin:{ADMIN},olga=operator:{OPERATOR}",
                            interval_s=INTERVAL_S, gateway_type=PushGateway,
                            oscore="required") as parts:
        yield parts


def _until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _events(node: Node, event: str) -> list[Any]:
    return [e for e in node.events() if e.event == event]


def _command(ops: httpx.Client, name: str, **args: Any) -> str:
    resp = ops.post("/v1/commands", json={"device": "light-0001", "name": name, "args": args,
                                          "ttl_s": 300})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _state(ops: httpx.Client, cmd_id: str) -> str:
    return str(ops.get(f"/v1/commands/{cmd_id}").json()["state"])


def test_push_reaches_the_light_at_once_and_a_dead_node_gets_it_in_the_next_ack(
    system: tuple[Cloud, Gateway, Fleet]
) -> None:
    cloud, gateway, fleet = system
    light = fleet.nodes[0]
    # the first reading is acknowledged: the gateway knows the light's address and OSCORE
    # context, the light knows the time; the next reading is INTERVAL_S away
    _until(lambda: _events(light, "ack"), 30, "the light's first ack")
    acks = len(_events(light, "ack"))
    with httpx.Client(base_url=cloud.url, timeout=10,
                      headers={"Authorization": f"Bearer {OPERATOR}"}) as ops:
        t0 = time.monotonic()
        cmd_id = _command(ops, "dim", level=37)
        _until(lambda: _state(ops, cmd_id) == "executed", 25, "executed")
        latency = time.monotonic() - t0
        cmds = [e for e in _events(light, "cmd") if e.fields.get("name") == "dim"]
        assert [c.fields.get("result") for c in cmds] == ["ok"], cmds
        # it did not ride an ACK: the light sent no reading in between, and the whole trip
        # took a fraction of the reading interval
        assert len(_events(light, "ack")) == acks
        assert latency < INTERVAL_S / 2, latency
        print(f"push: command created -> executed in the cloud in {latency:.2f} s")
        # the push was protected: the light took it through its OSCORE server path (the
        # first one after its boot after an Echo round trip), nothing refused as forged
        serve = _events(light, "serve")
        assert [e.fields.get("reason") for e in serve] == ["echo"], serve

        # the light goes down; a command pushed meanwhile gets no answer and stays queued
        assert light.process is not None
        light.process.stop(timeout=10)
        cmd2 = _command(ops, "off")
        log = gateway.process.log_path if gateway.process else None
        assert log is not None
        _until(lambda: f"push {cmd2} to light-0001: no answer" in log.read_text(
            errors="replace"), 30, "the failed push")
        assert _state(ops, cmd2) == "queued"
        assert not [e for e in _events(light, "cmd") if e.fields.get("name") == "off"]
        # back up (a short interval now, so its report follows quickly): the command rides
        # in the ACK of its first reading, is executed once and reported
        light.spec = replace(light.spec, interval_s=1.0)
        starts = len(_events(light, "start"))
        light.start()
        _until(lambda: _state(ops, cmd2) == "executed", 30, "executed after the restart")
        events = light.events()
        first = max(i for i, e in enumerate(events) if e.event == "start")
        assert len(_events(light, "start")) == starts + 1
        off = [i for i, e in enumerate(events) if e.event == "cmd"
               and e.fields.get("name") == "off"]
        assert len(off) == 1 and off[0] > first, off
        ack_after = [i for i, e in enumerate(events) if e.event == "ack" and i > first]
        assert ack_after and ack_after[0] < off[0]  # delivered in an ACK, not pushed
