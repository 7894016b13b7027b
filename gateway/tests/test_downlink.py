"""Downlink end to end: a fake cloud (real HTTP) offers commands, the gateway long-polls,
a node (aiocoap client) gets them in its ACKs and reports cmd/<cid>; every state reaches
the cloud; the queue survives a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest

from machi_gateway.core import Core, split_command_results
from machi_gateway.downlink.cloud import CommandClient
from machi_gateway.downlink.queue import CloudCommand, CommandQueue
from machi_gateway.downlink.service import Downlink
from machi_gateway.ingress.coap import CoapIngress
from machi_gateway.model import Measurement
from machi_gateway.registry import Registry
from machi_gateway.stats import IngressStats
from machi_gateway.store import Store


def pack(device: str, seq: int, **results: str) -> bytes:
    """A SenML-CBOR reading (docs/protocol.md §2) with cmd/<cid> result records."""
    records: list[dict[int, Any]] = [{0: "seq", 2: seq, -2: f"{device}:"},
                                     {0: "temp", 1: "Cel", 2: 20.5}]
    records += [{0: f"cmd/{cid.removeprefix('c')}", 3: v} for cid, v in results.items()]
    return bytes(cbor2.dumps(records))


@dataclass
class Node:
    client: aiocoap.Context
    uri: str

    async def send(self, payload: bytes) -> dict[int, Any]:
        msg = aiocoap.Message(code=aiocoap.POST, uri=self.uri, payload=payload)
        msg.opt.content_format = 112
        resp = await self.client.request(msg).response
        assert resp.code == aiocoap.CHANGED, resp
        assert resp.opt.content_format == 60
        doc: dict[int, Any] = cbor2.loads(resp.payload)
        return doc


@pytest.fixture
async def setup(tmp_path: Path, devices_file: Path, control_cloud: Any
                ) -> AsyncIterator[tuple[Node, CommandQueue, Downlink]]:
    registry = Registry(devices_file)
    assert registry.reload_if_changed()
    client = CommandClient(control_cloud.url, gateway="gw-01", token=control_cloud.token,
                           timeout_s=5)
    async with (
        Store(tmp_path / "q.db", max_readings=100, retry_after_s=30,
              dedup_window_s=3600) as store,
        CommandQueue(tmp_path / "commands.db") as commands,
    ):
        downlink = Downlink(commands, client, wait_s=1, idle_s=0.05, expire_every_s=0.05,
                            backoff_initial_s=0.05, backoff_max_s=0.2)
        core = Core(registry, store, IngressStats(), commands=commands)
        async with CoapIngress(core, host="127.0.0.1", port=0, max_payload=1024) as coap:
            node_ctx = await aiocoap.Context.create_client_context()
            task = asyncio.create_task(downlink.run())
            try:
                yield Node(node_ctx, f"coap://127.0.0.1:{coap.address[1]}/r"), commands, \
                    downlink
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await node_ctx.shutdown()
                await client.aclose()


async def test_command_life_cycle_through_acks(
    setup: tuple[Node, CommandQueue, Downlink], control_cloud: Any, until: Any
) -> None:
    node, commands, _ = setup
    now = time.time()
    control_cloud.fail_next = 1  # the first poll meets a 503: retried with backoff
    control_cloud.add(id="c-1", device="env-0001", name="dim", args={"level": 40},
                      created=now, expires=now + 3600)
    control_cloud.add(id="c-2", device="env-0001", name="on", args={}, created=now + 1,
                      expires=now + 3600)
    # c-3 expires soon, but not before the first poll (a 503, then a retry) has queued it:
    # with 0.5 s a loaded machine could expire it before open_commands was seen at 3
    control_cloud.add(id="c-3", device="env-0003", name="interval", args={"s": 60},
                      created=now, expires=now + 2)
    control_cloud.add(id="c-bad", device="env-0001", name="explode", args={},
                      created=now, expires=now + 3600)
    await until(lambda: commands.open_commands == 3)

    # First reading: both commands ride in the ACK, with the time.
    doc = await node.send(pack("env-0001", 1))
    assert [c[:3] for c in doc[2]] == [[0, "dim", {"level": 40}], [1, "on", {}]]
    assert all(abs(c[3] - (doc[1] + 120)) <= 2 for c in doc[2])  # exp: now + 120 s
    assert abs(doc[1] - now) < 60
    await until(lambda: control_cloud.state("c-1") == "sent"
                and control_cloud.state("c-2") == "sent")
    # The same reading again (the ACK was lost): the commands come again.
    assert [c[:3] for c in (await node.send(pack("env-0001", 1)))[2]] == \
        [c[:3] for c in doc[2]]
    # Next reading reports cid 0 done and cid 1 failed: stripped from the reading.
    doc = await node.send(pack("env-0001", 2, c0="ok", c1="err:range"))
    assert 2 not in doc
    await until(lambda: control_cloud.state("c-1") == "executed"
                and control_cloud.state("c-2") == "failed")
    assert [s for i, s, _ in control_cloud.states if i == "c-1"] == \
        ["sent", "acknowledged", "executed"]
    assert ("c-2", "failed", "range") in control_cloud.states
    # c-3 was never picked up: it expires; the invalid command is refused as failed.
    await until(lambda: control_cloud.state("c-3") == "expired"
                and control_cloud.state("c-bad") == "failed")
    await until(lambda: commands.outbox == 0)
    assert commands.open_commands == 0
    assert 2 not in await node.send(pack("env-0003", 1))


async def test_acknowledged_when_the_node_moves_on(
    setup: tuple[Node, CommandQueue, Downlink], control_cloud: Any, until: Any
) -> None:
    node, commands, _ = setup
    control_cloud.add(id="c-7", device="bin-0002", name="config", args={"tilt": 30},
                      created=time.time(), expires=time.time() + 3600)
    await until(lambda: commands.open_commands == 1)
    assert [c[:3] for c in (await node.send(pack("bin-0002", 10)))[2]] == \
        [[0, "config", {"tilt": 30}]]
    # A later reading without the result: the node got the ACK; still offered until done.
    assert [c[:3] for c in (await node.send(pack("bin-0002", 11)))[2]] == \
        [[0, "config", {"tilt": 30}]]
    await until(lambda: control_cloud.state("c-7") == "acknowledged")


async def test_queue_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "commands.db"
    async with CommandQueue(path) as q:
        assert await q.add([CloudCommand(id="a", device="env-0001", name="off"),
                            CloudCommand(id="b", device="env-0001", name="on")]) == 2
        assert await q.add([CloudCommand(id="a", device="env-0001", name="off")]) == 0
        assert [c[:3] for c in await q.on_reading("env-0001", 5, {})] == \
            [(0, "off", {}), (1, "on", {})]
    async with CommandQueue(path) as q:
        assert q.open_commands == 2 and q.outbox == 2  # two "sent" reports not yet sent
        assert [c[:3] for c in await q.on_reading("env-0001", 5, {0: "ok"})] == \
            [(1, "on", {})]
        # The next command gets a fresh cid: 0 and 1 were used recently.
        await q.add([CloudCommand(id="c", device="env-0001", name="dim", args={"level": 5})])
        assert (await q.on_reading("env-0001", 6, {}))[-1][:3] == (2, "dim", {"level": 5})
        assert await q.state_of("a") == "executed"


async def test_the_outbox_count_follows_reports_queued_while_one_is_sent(
        tmp_path: Path) -> None:
    """A refused command's report queued while another report's deletion is in flight
    (the poll and the report loop run at once) is counted: ``outbox`` matches the rows."""
    async with CommandQueue(tmp_path / "commands.db") as q:
        await q.refuse("c-x", "unknown name")
        [first] = await q.pending_reports()
        await asyncio.gather(q.reported(first.n), q.refuse("c-y", "unknown name"))
        assert [r.command for r in await q.pending_reports()] == ["c-y"]
        assert q.outbox == 1


def test_cmd_records_are_stripped(make_reading: Any) -> None:
    r = make_reading(measurements=(Measurement("temp", "Cel", 1.0),
                                   Measurement("cmd/3", None, "ok"),
                                   Measurement("cmd/4", None, "err:busy")))
    stripped, results = split_command_results(r)
    assert [m.name for m in stripped.measurements] == ["temp"]
    assert results == {3: "ok", 4: "err:busy"}


def test_cloud_command_validation() -> None:
    with pytest.raises(ValueError):
        CloudCommand(id="x", device="env-0001", name="reboot")
    with pytest.raises(ValueError):
        CloudCommand.from_json({"id": "x", "device": "BAD", "name": "on"})
    c = CloudCommand.from_json({"id": "x", "device": "env-0001", "name": "dim",
                                "args": {"level": 3}, "created": 1, "expires": None})
    assert c.expires == float("inf")


async def test_an_update_reported_ok_pending_is_executed_and_err_is_failed(
        tmp_path: Path) -> None:
    async with CommandQueue(tmp_path / "commands.db") as q:
        await q.add([CloudCommand(id="u", device="env-0001", name="update",
                                  args={"version": 2}),
                     CloudCommand(id="v", device="env-0002", name="update")])
        assert [c[:3] for c in await q.on_reading("env-0001", 5, {})] == \
            [(0, "update", {"version": 2})]
        assert [c[:3] for c in await q.on_reading("env-0002", 5, {})] == [(0, "update", {})]
        await q.on_reading("env-0001", 6, {0: "ok:pending"})  # cids are per device
        await q.on_reading("env-0002", 6, {0: "err:signature"})
        assert await q.state_of("u") == "executed"
        assert await q.state_of("v") == "failed"
