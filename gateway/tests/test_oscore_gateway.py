"""OSCORE on the CoAP ingress (docs/security.md §2): contexts from the live registry.

The node side here is aiocoap's own OSCORE code driven by hand (raw UDP datagrams), so the
tests can replay exact bytes, use a wrong key and see every answer; the firmware's
OSCORE against the real daemon is firmware/tests/test_oscore_node.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest

from machi_gateway.config import from_mapping
from machi_gateway.core import Core
from machi_gateway.errors import ConfigError
from machi_gateway.ingress.coap import CoapIngress
from machi_gateway.ingress.oscore_ctx import NodeSideContext, SenderSequence
from machi_gateway.registry import Registry
from machi_gateway.stats import IngressStats
from machi_gateway.store import Store

from .oscore_client import exchange, next_mid, protect

KEY1 = bytes(range(16))
KEY3 = bytes(range(16, 32))


def pack(device: str, seq: int) -> bytes:
    return bytes(cbor2.dumps([{0: "seq", 2: seq, -2: f"{device}:"},
                              {0: "temp", 1: "Cel", 2: 21}]))


@dataclass
class Answer:
    outer: aiocoap.Message
    inner: aiocoap.Message | None  # None: the answer was not protected
    echoed: bool = False


async def post(port: int, ctx: NodeSideContext, payload: bytes) -> Answer:
    """POST a protected reading; follow one Echo challenge like the firmware does."""
    echo: bytes | None = None
    while True:
        data, request_id = protect(ctx, payload, echo)
        outer = await exchange(port, data)
        if outer.opt.oscore is None:
            return Answer(outer, None, echo is not None)
        inner, _ = ctx.unprotect(outer, request_id)
        if inner.code == aiocoap.UNAUTHORIZED and inner.opt.echo and echo is None:
            echo = inner.opt.echo
            continue
        return Answer(outer, inner, echo is not None)


@dataclass
class Gw:
    port: int
    store: Store
    registry: Registry
    devices: Path
    coap: CoapIngress

    def write_devices(self, devices: list[dict[str, Any]]) -> None:
        tmp = self.devices.with_suffix(".tmp")
        tmp.write_text(json.dumps({"devices": devices}))
        os.replace(tmp, self.devices)
        assert self.registry.reload_if_changed()


DEVICES = [
    {"id": "env-0001", "type": "env", "short_id": 1, "key": KEY1.hex()},
    {"id": "env-0003", "type": "env", "short_id": 3, "key": KEY3.hex()},
]


@pytest.fixture
async def gw_factory(tmp_path: Path) -> AsyncIterator[Any]:
    async def make(mode: str) -> AsyncIterator[Gw]:
        devices = tmp_path / f"devices-{mode}.json"
        devices.write_text(json.dumps({"devices": DEVICES}))
        registry = Registry(devices)
        assert registry.reload_if_changed()
        async with Store(tmp_path / f"q-{mode}.db", max_readings=100, retry_after_s=30,
                         dedup_window_s=3600) as store:
            core = Core(registry, store, IngressStats())
            async with CoapIngress(core, host="127.0.0.1", port=0, max_payload=1024,
                                   oscore=mode, registry=registry,
                                   oscore_seq_file=tmp_path / f"seq-{mode}.json") as coap:
                yield Gw(coap.address[1], store, registry, devices, coap)

    yield make


@pytest.fixture
async def gw(gw_factory: Any) -> AsyncIterator[Gw]:
    async for g in gw_factory("required"):
        yield g


def plain(payload: bytes) -> bytes:
    msg = aiocoap.Message(code=aiocoap.POST, uri_path=("r",), content_format=112,
                          payload=payload)
    msg.mid, msg.token, msg.mtype = next_mid(), b"\x09", aiocoap.CON
    return bytes(msg.encode())


async def test_protected_reading_stored_after_one_echo_plain_refused(gw: Gw) -> None:
    node = NodeSideContext(1, KEY1)
    a = await post(gw.port, node, pack("env-0001", 1))
    assert a.inner is not None and a.echoed  # a fresh context: Echo first (security.md §2.4)
    assert (a.outer.code, a.inner.code) == (aiocoap.CHANGED, aiocoap.CHANGED)
    assert a.inner.opt.content_format == 60 and 1 in cbor2.loads(a.inner.payload)
    assert gw.store.depth == 1
    a = await post(gw.port, node, pack("env-0001", 2))
    assert a.inner is not None and a.inner.code == aiocoap.CHANGED and not a.echoed
    assert gw.store.depth == 2
    # plain CoAP in "required" mode: 4.01, nothing stored
    r = await exchange(gw.port, plain(pack("env-0001", 3)))
    assert r.code == aiocoap.UNAUTHORIZED and r.opt.oscore is None
    assert gw.store.depth == 2


async def test_reading_in_another_devices_name_is_refused(gw: Gw) -> None:
    node = NodeSideContext(1, KEY1)
    a = await post(gw.port, node, pack("env-0003", 7))  # env-0001's key, env-0003's name
    assert a.inner is not None and a.inner.code == aiocoap.UNAUTHORIZED
    assert b"env-0001" in a.inner.payload or a.inner.payload == b""
    assert gw.store.depth == 0


async def test_wrong_key_unknown_kid_and_replay_are_refused(gw: Gw) -> None:
    wrong = NodeSideContext(1, KEY3)
    data, _ = protect(wrong, pack("env-0001", 1))
    r = await exchange(gw.port, data)
    assert r.code == aiocoap.BAD_REQUEST and r.opt.oscore is None  # decryption failed
    data, _ = protect(NodeSideContext(9, KEY1), pack("env-0001", 1))  # kid 9 is not registered
    r = await exchange(gw.port, data)
    assert r.code == aiocoap.UNAUTHORIZED and r.opt.oscore is None
    assert gw.store.depth == 0
    # a captured datagram sent again from another port (no CoAP deduplication)
    node = NodeSideContext(1, KEY1)
    assert (await post(gw.port, node, pack("env-0001", 1))).inner is not None
    data, _ = protect(node, pack("env-0001", 2))
    first = await exchange(gw.port, data)
    assert first.opt.oscore is not None and gw.store.depth == 2
    again = await exchange(gw.port, data)
    assert again.code == aiocoap.UNAUTHORIZED and again.opt.oscore is None
    assert again.payload == b"Replay detected"
    assert gw.store.depth == 2


async def test_registry_changes_apply_without_restart(gw: Gw) -> None:
    node5 = NodeSideContext(5, KEY1)
    data, _ = protect(node5, pack("env-0005", 1))
    assert (await exchange(gw.port, data)).code == aiocoap.UNAUTHORIZED  # not yet known
    gw.write_devices([*DEVICES, {"id": "env-0005", "type": "env", "short_id": 5,
                                 "key": KEY1.hex()}])
    a = await post(gw.port, node5, pack("env-0005", 2))
    assert a.inner is not None and a.inner.code == aiocoap.CHANGED
    node1 = NodeSideContext(1, KEY1)
    assert (await post(gw.port, node1, pack("env-0001", 1))).inner is not None
    # revoke env-0001: its next protected request is refused, unprotected 4.01
    gw.write_devices([{**DEVICES[0], "revoked": True}, DEVICES[1],
                      {"id": "env-0005", "type": "env", "short_id": 5, "key": KEY1.hex()}])
    a = await post(gw.port, node1, pack("env-0001", 2))
    assert a.inner is None and a.outer.code == aiocoap.UNAUTHORIZED
    # a new key for env-0005 (rotation): the old key stops working, the new one works
    new = os.urandom(16)
    gw.write_devices([DEVICES[1], {"id": "env-0005", "type": "env", "short_id": 5,
                                   "key": new.hex()}])
    data, _ = protect(node5, pack("env-0005", 3))
    assert (await exchange(gw.port, data)).code == aiocoap.BAD_REQUEST
    a = await post(gw.port, NodeSideContext(5, new), pack("env-0005", 4))
    assert a.inner is not None and a.inner.code == aiocoap.CHANGED
    assert gw.store.depth == 3


async def test_optional_mode_takes_both_and_off_mode_only_plain(gw_factory: Any) -> None:
    async for g in gw_factory("optional"):
        assert (await exchange(g.port, plain(pack("env-0001", 1)))).code == aiocoap.CHANGED
        node3 = NodeSideContext(3, KEY3)
        a = await post(g.port, node3, pack("env-0003", 1))
        assert a.inner is not None and a.inner.code == aiocoap.CHANGED
        a = await post(g.port, node3, pack("env-0001", 2))
        assert a.inner is not None and a.inner.code == aiocoap.UNAUTHORIZED  # identity
        assert g.store.depth == 2
    async for g in gw_factory("off"):
        assert (await exchange(g.port, plain(pack("env-0001", 1)))).code == aiocoap.CHANGED
        data, _ = protect(NodeSideContext(3, KEY3), pack("env-0003", 1))
        r = await exchange(g.port, data)
        assert r.code != aiocoap.CHANGED and r.opt.oscore is None
        assert g.store.depth == 1


def test_sender_sequence_reserved_in_blocks_and_refuses_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "seq.json"
    s = SenderSequence(path, block=4)
    assert s.start("a") == 0
    s.reserve("a", 1)  # number 0 used
    s.reserve("a", 2)
    assert s.writes == 1
    s.reserve("a", 6)
    assert s.writes == 2
    again = SenderSequence(path, block=4)
    assert again.start("a") == 10 and again.start("b") == 0  # never below a used number
    path.write_text("{not json")
    with pytest.raises(RuntimeError, match="unreadable"):
        SenderSequence(path)
    path.write_text('{"a": -1}')
    with pytest.raises(RuntimeError, match="malformed"):
        SenderSequence(path)


def test_config_oscore_key(tmp_path: Path) -> None:
    assert from_mapping({}, base_dir=tmp_path).coap.oscore == "optional"
    cfg = from_mapping({"coap": {"oscore": "required"}}, base_dir=tmp_path)
    assert cfg.coap.oscore == "required"
    with pytest.raises(ConfigError, match=r"\[coap\] oscore: must be one of off, optional"):
        from_mapping({"coap": {"oscore": "yes"}}, base_dir=tmp_path)
    with pytest.raises(ValueError, match="oscore must be one of"):
        CoapIngress(Core(Registry(tmp_path / "d.json"), None, IngressStats()),  # type: ignore[arg-type]
                    host="127.0.0.1", port=0, max_payload=1024, oscore="on")
