"""What aiocoap's OSCORE layer refuses before our resource is counted by reason.

The gateway in ``oscore = "required"`` mode, raw datagrams from aiocoap's OSCORE code as the
node: an Echo challenge, a replay, a wrong key, an unknown kid and a malformed OSCORE option
each land in the gateway's rejects-by-reason counter (``/healthz`` ``rejected``,
``/metrics`` ``machi_gateway_rejected_total``), and each answer is what it was before.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiocoap
import cbor2
import pytest
from aiocoap import oscore as aio_oscore

from machi_gateway.core import Core
from machi_gateway.health import Snapshot
from machi_gateway.ingress.coap import CoapIngress
from machi_gateway.ingress.oscore_ctx import NodeSideContext, refusal_reason
from machi_gateway.registry import Registry
from machi_gateway.stats import IngressStats
from machi_gateway.store import Store

from .oscore_client import exchange, next_mid, protect

KEY1 = bytes(range(16))
KEY3 = bytes(range(16, 32))


def _reading(seq: int) -> bytes:
    return bytes(cbor2.dumps([{0: "seq", 2: seq, -2: "env-0001:"},
                              {0: "temp", 1: "Cel", 2: 21}]))


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[tuple[int, IngressStats, Store]]:
    devices = tmp_path / "devices.json"
    devices.write_text(json.dumps({"devices": [
        {"id": "env-0001", "type": "env", "short_id": 1, "key": KEY1.hex()},
        {"id": "env-0002", "type": "env", "short_id": 2, "key": KEY3.hex(), "revoked": True},
    ]}))
    registry = Registry(devices)
    assert registry.reload_if_changed()
    stats = IngressStats()
    async with Store(tmp_path / "q.db", max_readings=100, retry_after_s=30,
                     dedup_window_s=3600) as store:
        async with CoapIngress(Core(registry, store, stats), host="127.0.0.1", port=0,
                               max_payload=1024, oscore="required", registry=registry,
                               oscore_seq_file=tmp_path / "seq.json") as coap:
            yield coap.address[1], stats, store


async def test_oscore_refusals_are_counted_by_reason(
        gw: tuple[int, IngressStats, Store]) -> None:
    port, stats, store = gw
    node = NodeSideContext(1, KEY1)

    # a fresh context: the first request is answered with the Echo challenge
    data, req = protect(node, _reading(1))
    outer = await exchange(port, data)
    inner, _ = node.unprotect(outer, req)
    assert inner.code == aiocoap.UNAUTHORIZED and inner.opt.echo
    assert stats.rejected == {"oscore-echo": 1}
    data, req = protect(node, _reading(1), echo=inner.opt.echo)
    captured = data
    outer = await exchange(port, data)
    assert node.unprotect(outer, req)[0].code == aiocoap.CHANGED
    assert store.depth == 1

    # the accepted datagram again, from another socket (no CoAP deduplication): replay
    r = await exchange(port, captured)
    assert r.code == aiocoap.UNAUTHORIZED and r.payload == b"Replay detected"
    # wrong key: decryption fails
    r = await exchange(port, protect(NodeSideContext(1, KEY3), _reading(2))[0])
    assert r.code == aiocoap.BAD_REQUEST
    # a kid nobody has, and a revoked device's kid: no context
    for kid in (9, 2):
        r = await exchange(port, protect(NodeSideContext(kid, KEY1), _reading(2))[0])
        assert r.code == aiocoap.UNAUTHORIZED and r.opt.oscore is None
    # an OSCORE option with reserved flag bits set does not even parse: 4.02
    bad = aiocoap.Message(code=aiocoap.POST, payload=b"\x00" * 12)
    bad.mid, bad.token, bad.mtype = next_mid(), b"\x07", aiocoap.CON
    bad.opt.oscore = b"\xe1\x05"
    r = await exchange(port, bytes(bad.encode()))
    assert r.code == aiocoap.BAD_OPTION and r.opt.oscore is None

    assert stats.rejected == {"oscore-echo": 1, "oscore-replay": 1, "oscore-decrypt": 1,
                              "oscore-unknown-kid": 2, "oscore-format": 1}
    assert store.depth == 1
    text = Snapshot(gateway="gw", queue_depth=0, readings_in=1, duplicates=0,
                    rejected=dict(stats.rejected)).to_prometheus()
    for reason in ("oscore-echo", "oscore-replay", "oscore-decrypt", "oscore-unknown-kid",
                   "oscore-format"):
        assert f'reason="{reason}"' in text


def test_refusal_reason_maps_the_subclasses_first() -> None:
    assert refusal_reason(aio_oscore.ReplayError("x")) == "oscore-replay"
    assert refusal_reason(aio_oscore.DecodeError("x")) == "oscore-format"
    assert refusal_reason(aio_oscore.ProtectionInvalid("x")) == "oscore-decrypt"


async def _post(port: int, node: NodeSideContext, seq: int) -> tuple[aiocoap.Message, bytes, bool]:
    """POST one reading, following an Echo; (inner answer, datagram accepted, echoed)."""
    data, req = protect(node, _reading(seq))
    inner, _ = node.unprotect(await exchange(port, data), req)
    echoed = inner.code == aiocoap.UNAUTHORIZED and inner.opt.echo is not None
    if echoed:
        data, req = protect(node, _reading(seq), echo=inner.opt.echo)
        inner, _ = node.unprotect(await exchange(port, data), req)
    return inner, data, echoed


async def test_clean_stop_keeps_replay_windows_a_crash_does_not(tmp_path: Path) -> None:
    devices = tmp_path / "devices.json"
    devices.write_text(json.dumps({"devices": [
        {"id": "env-0001", "type": "env", "short_id": 1, "key": KEY1.hex()}]}))
    registry = Registry(devices)
    assert registry.reload_if_changed()
    seq_file = tmp_path / "oscore-seq.json"
    windows = tmp_path / "oscore-seq.windows.json"
    node = NodeSideContext(1, KEY1)
    async with Store(tmp_path / "q.db", max_readings=100, retry_after_s=30,
                     dedup_window_s=3600) as store:
        core = Core(registry, store, IngressStats())

        def ingress() -> CoapIngress:
            return CoapIngress(core, host="127.0.0.1", port=0, max_payload=1024,
                               oscore="required", registry=registry, oscore_seq_file=seq_file)

        async with ingress() as coap:
            inner, captured, echoed = await _post(coap.address[1], node, 1)
            assert inner.code == aiocoap.CHANGED and echoed  # a first start: Echo
        # a clean stop saved the window, and nothing of the key
        assert windows.stat().st_mode & 0o777 == 0o600
        assert KEY1.hex() not in windows.read_text()

        async with ingress() as coap:
            assert not windows.exists()  # consumed before the first request
            inner, _, echoed = await _post(coap.address[1], node, 2)
            assert inner.code == aiocoap.CHANGED and not echoed  # no Echo round trip
            r = await exchange(coap.address[1], captured)  # from before the restart
            assert r.code == aiocoap.UNAUTHORIZED and r.payload == b"Replay detected"
            assert coap.credentials.windows.restored == 1
            # a crash now would find no file: the next start starts with the Echo again
        windows.write_text("{not json")  # a damaged file is not trusted (and removed)
        async with ingress() as coap:
            assert not windows.exists()
            inner, _, echoed = await _post(coap.address[1], node, 3)
            assert inner.code == aiocoap.CHANGED and echoed
        assert store.depth == 3
