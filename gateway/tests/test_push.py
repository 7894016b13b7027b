"""Commands pushed at once to always-on nodes (downlink/push.py, protocol.md §5 "Push").

The real CoAP ingress and command queue; the node is a UDP socket driven by hand (raw
datagrams, aiocoap's OSCORE as the node's server side), so the tests see the exact
request, can stay silent, answer late or answer with an Echo challenge. The real firmware
against the real daemon is hil_tests/test_push.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest
from aiocoap.message import Direction

from machi_gateway.config import from_mapping
from machi_gateway.core import Core
from machi_gateway.downlink.push import Pusher
from machi_gateway.downlink.queue import CloudCommand, CommandQueue
from machi_gateway.errors import ConfigError
from machi_gateway.ingress.coap import CoapIngress
from machi_gateway.ingress.oscore_ctx import NodeSideContext
from machi_gateway.registry import Registry
from machi_gateway.stats import IngressStats
from machi_gateway.store import Store

KEY = bytes(range(16))
SHORT_ID = 0x8001
TIMEOUT = 20.0
DEVICES = [
    {"id": "light-0001", "type": "light", "short_id": SHORT_ID, "key": KEY.hex()},
    {"id": "env-0001", "type": "env", "short_id": 1, "key": bytes(range(1, 17)).hex()},
]




class Node(asyncio.DatagramProtocol):
    """A node's one UDP socket, connected to the gateway."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self.mid = 0x100
        self.ctx: NodeSideContext | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.inbox.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def recv(self) -> aiocoap.Message:
        return aiocoap.Message.decode(await asyncio.wait_for(self.inbox.get(), TIMEOUT))

    async def reading(self, seq: int, device: str = "light-0001") -> aiocoap.Message:
        """POST one reading; follow an Echo challenge; the (inner) answer."""
        echo: bytes | None = None
        while True:
            self.mid += 1
            msg = aiocoap.Message(code=aiocoap.POST, uri_path=("r",), content_format=112,
                                  payload=cbor2.dumps([{0: "seq", 2: seq, -2: f"{device}:"},
                                                       {0: "dim", 1: "%", 2: 40}]))
            rid = None
            if self.ctx is not None:
                if echo is not None:
                    msg.opt.echo = echo
                msg.direction = Direction.OUTGOING
                msg, rid = self.ctx.protect(msg)
            msg.mid, msg.token, msg.mtype = self.mid, b"\x05", aiocoap.CON
            self.send(bytes(msg.encode()))
            ans = await self.recv()
            if self.ctx is None:
                return ans
            inner, _ = self.ctx.unprotect(ans, rid)
            if inner.code == aiocoap.UNAUTHORIZED and inner.opt.echo and echo is None:
                echo = inner.opt.echo
                continue
            return inner

    def answer(self, req: aiocoap.Message, code: aiocoap.numbers.Code, payload: bytes,
               echo: bytes | None = None) -> Any:
        """Answer a (possibly protected) request piggybacked; the inner request."""
        inner, rid = req, None
        if self.ctx is not None:
            inner, rid = self.ctx.unprotect(req, None)
        resp = aiocoap.Message(code=code, payload=payload, content_format=0)
        if echo is not None:
            resp.opt.echo = echo
        if rid is not None and self.ctx is not None:
            resp.direction = Direction.OUTGOING
            resp, _ = self.ctx.protect(resp, rid)
        resp.mid, resp.token, resp.mtype = req.mid, req.token, aiocoap.ACK
        self.send(bytes(resp.encode()))
        return inner


@dataclass
class Gw:
    coap: CoapIngress
    queue: CommandQueue
    pusher: Pusher
    node: Node


@pytest.fixture
async def gw_factory(tmp_path: Path) -> AsyncIterator[Any]:
    async def make(oscore: bool) -> AsyncIterator[Gw]:
        devices = tmp_path / "devices.json"
        devices.write_text(json.dumps({"devices": DEVICES}))
        registry = Registry(devices)
        assert registry.reload_if_changed()
        async with (Store(tmp_path / "q.db", max_readings=100, retry_after_s=30,
                          dedup_window_s=3600) as store,
                    CommandQueue(tmp_path / "commands.sqlite3") as queue):
            core = Core(registry, store, IngressStats(), commands=queue)
            async with CoapIngress(core, host="127.0.0.1", port=0, max_payload=1024,
                                   oscore="optional", registry=registry,
                                   oscore_seq_file=tmp_path / "seq.json") as coap:
                pusher = Pusher(queue, registry, ack_timeout_s=0.3, max_retransmit=2)
                pusher.attach(coap)
                loop = asyncio.get_running_loop()
                transport, node = await loop.create_datagram_endpoint(
                    Node, remote_addr=("127.0.0.1", coap.address[1]))
                if oscore:
                    node.ctx = NodeSideContext(SHORT_ID, KEY)
                try:
                    yield Gw(coap, queue, pusher, node)
                finally:
                    transport.close()

    yield make


async def states(queue: CommandQueue, command: str) -> list[str]:
    return [r.state for r in await queue.pending_reports() if r.command == command]


async def add(queue: CommandQueue, cid: str, name: str = "dim", device: str = "light-0001",
              **args: Any) -> None:
    await queue.add([CloudCommand(id=cid, device=device, name=name, args=args,
                                  expires=time.time() + 600)])


@pytest.mark.parametrize("oscore", [False, True], ids=["plain", "oscore"])
async def test_push_executes_at_once_and_moves_the_states(gw_factory: Any,
                                                          oscore: bool) -> None:
    async for gw in gw_factory(oscore):
        ans = await gw.node.reading(1)
        assert ans.code == aiocoap.CHANGED
        await add(gw.queue, "c-1", level=30)
        task = asyncio.create_task(gw.pusher.push_device("light-0001"))
        req = await gw.node.recv()
        assert (req.mtype, req.code) == (aiocoap.CON, aiocoap.POST)
        assert (req.opt.oscore is not None) == oscore
        inner = gw.node.answer(req, aiocoap.CHANGED, b"ok")
        assert inner.opt.uri_path == ("c",) and inner.opt.content_format == 60
        cid, name, args, exp = cbor2.loads(inner.payload)
        assert (name, args) == ("dim", {"level": 30}) and isinstance(cid, int)
        assert isinstance(exp, int) and exp > 1e9
        assert await asyncio.wait_for(task, TIMEOUT) == 1
        assert await gw.queue.state_of("c-1") == "executed"
        assert await states(gw.queue, "c-1") == ["sent", "acknowledged", "executed"]
        assert not gw.queue.has_open("light-0001")
        # the node's next reading reports cmd/<cid> = ok as well: nothing more happens
        assert (await gw.node.reading(2)).code == aiocoap.CHANGED
        assert await states(gw.queue, "c-1") == ["sent", "acknowledged", "executed"]


async def test_retransmitted_until_answered_and_failed_result(gw_factory: Any) -> None:
    async for gw in gw_factory(False):
        await gw.node.reading(1)
        await add(gw.queue, "c-2", name="schedule", mode="bogus")
        task = asyncio.create_task(gw.pusher.push_device("light-0001"))
        first = await gw.node.recv()  # lost
        again = await gw.node.recv()  # RFC 7252: the same message id and bytes
        assert (again.mid, again.token, again.payload) == (first.mid, first.token,
                                                           first.payload)
        gw.node.answer(again, aiocoap.CHANGED, b"err:mode")
        assert await asyncio.wait_for(task, TIMEOUT) == 1
        assert await states(gw.queue, "c-2") == ["sent", "acknowledged", "failed"]
        assert [r.detail for r in await gw.queue.pending_reports()][-1] == "mode"


async def test_echo_challenge_of_a_rebooted_node_is_followed(gw_factory: Any) -> None:
    async for gw in gw_factory(True):
        await gw.node.reading(1)
        await add(gw.queue, "c-3", name="on")
        task = asyncio.create_task(gw.pusher.push_device("light-0001"))
        req = await gw.node.recv()
        gw.node.answer(req, aiocoap.UNAUTHORIZED, b"", echo=b"12345678")
        req2 = await gw.node.recv()
        assert req2.mid != req.mid
        inner = gw.node.answer(req2, aiocoap.CHANGED, b"ok")
        assert inner.opt.echo == b"12345678"
        assert await asyncio.wait_for(task, TIMEOUT) == 1
        assert await gw.queue.state_of("c-3") == "executed"


async def test_no_answer_leaves_the_command_for_the_next_ack(gw_factory: Any) -> None:
    async for gw in gw_factory(True):
        await gw.node.reading(1)
        await add(gw.queue, "c-4", name="off")
        assert await asyncio.wait_for(gw.pusher.push_device("light-0001"), TIMEOUT) == 0
        assert gw.pusher.failed == 1
        n = gw.node.inbox.qsize()
        assert n == 3  # 1 + max_retransmit transmissions, never answered
        assert await gw.queue.state_of("c-4") == "queued"  # nothing reported
        assert await states(gw.queue, "c-4") == []
        # pushed once only: a second offer does not send it again, the ACK path does
        assert await gw.pusher.push_device("light-0001") == 0
        while not gw.node.inbox.empty():
            gw.node.inbox.get_nowait()
        ans = await gw.node.reading(2)
        cmds = cbor2.loads(ans.payload)[2]
        assert [c[1] for c in cmds] == ["off"]
        assert await states(gw.queue, "c-4") == ["sent"]


async def test_error_answer_and_bad_protection_leave_it_queued(gw_factory: Any) -> None:
    async for gw in gw_factory(True):
        await gw.node.reading(1)
        await add(gw.queue, "c-5", name="on")
        task = asyncio.create_task(gw.pusher.push_device("light-0001"))
        req = await gw.node.recv()
        gw.node.answer(req, aiocoap.NOT_FOUND, b"")  # an older firmware: no /c
        assert await asyncio.wait_for(task, TIMEOUT) == 0
        await add(gw.queue, "c-6", name="off")
        task = asyncio.create_task(gw.pusher.push_device("light-0001"))
        req = await gw.node.recv()
        inner = aiocoap.Message(code=aiocoap.CHANGED, payload=b"ok")  # forged: unprotected
        inner.mid, inner.token, inner.mtype = req.mid, req.token, aiocoap.ACK
        gw.node.send(bytes(inner.encode()))
        assert await asyncio.wait_for(task, TIMEOUT) == 0
        for c in ("c-5", "c-6"):
            assert await gw.queue.state_of(c) == "queued"


async def test_only_always_on_devices_with_a_known_address(gw_factory: Any) -> None:
    async for gw in gw_factory(False):
        await add(gw.queue, "c-7", name="on")
        assert not gw.pusher.pushable("light-0001")  # no reading yet: no address
        assert await gw.pusher.push_device("light-0001") == 0
        await gw.node.reading(1, device="env-0001")
        await add(gw.queue, "c-8", name="interval", device="env-0001", s=60)
        assert not gw.pusher.pushable("env-0001")  # a sleepy type: the ACK path only
        assert await gw.pusher.push_device("env-0001") == 0
        assert gw.node.inbox.empty()


def test_config_keys(tmp_path: Path) -> None:
    cfg = from_mapping({"downlink": {"push": True, "push_ack_timeout_s": 1,
                                     "push_max_retransmit": 2}}, base_dir=tmp_path)
    assert (cfg.downlink.push, cfg.downlink.push_ack_timeout_s,
            cfg.downlink.push_max_retransmit) == (True, 1.0, 2)
    assert from_mapping({}, base_dir=tmp_path).downlink.push is False
    for bad in ({"push": "yes"}, {"push_ack_timeout_s": 0}, {"push_max_retransmit": 99}):
        with pytest.raises(ConfigError, match="push"):
            from_mapping({"downlink": bad}, base_dir=tmp_path)


def test_bad_tuning_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="push"):
        Pusher(CommandQueue(tmp_path / "c.db"), Registry(tmp_path / "d.json"),
               ack_timeout_s=0)
