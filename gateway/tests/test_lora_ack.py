"""Confirmed LoRa delivery (docs/protocol-lora.md §8): the ack frame's codec, and the Semtech
ingress with ``confirm=True`` answering every durable frame with a MIC'd ack in the node's
RX window; a replayed frame is acked again but stored once; a bad MIC is counted, dropped
and never acked; commands ride in the ack unless they would break the dwell limit, in
their compact form (key 3) where the 2.04 payload would break it, so an SF10 ack carries
the streetlight's common commands; the ack vectors of tests/vectors/lora-frames.json."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from machi_gateway.downlink.queue import CloudCommand, CommandQueue
from machi_gateway.ingress.semtech import SemtechIngress, parse_datagram
from machi_gateway.lora import commands as compact
from machi_gateway.lora.frame import ACK_TYPE, decode, decode_ack, encode, encode_ack
from machi_gateway.lora.profiles import table

KEY = bytes(16)  # the conftest registry's key for every device
OTHER = bytes(range(16))
EUI = bytes.fromhex("aa555a0000000001")
REPO = Path(__file__).resolve().parents[2]
VECTORS = json.loads((REPO / "tests" / "vectors" / "lora-frames.json").read_text())
DWELL = {"SF10": 24, "SF9": 66}


def test_ack_layout_and_vector() -> None:
    # the same bytes firmware/tests/mp/test_lora_client.py checks under MicroPython
    body = cbor2.dumps({1: 1795390000})
    assert encode_ack(257, 1234, OTHER, body).hex() == "800101d209a1011a6b037a303ea128da"
    assert encode_ack(257, 5, OTHER).hex() == "800101054b7fd783"
    frame = encode_ack(0xBEEF, 2**40, KEY, b"xyz")
    assert frame[0] == ACK_TYPE and frame[1:3] == b"\xbe\xef"
    assert decode_ack(frame, KEY) == (0xBEEF, 2**40, b"xyz")


@pytest.mark.parametrize("vec", VECTORS["acks"], ids=[v["name"] for v in VECTORS["acks"]])
def test_ack_vectors_are_what_the_gateway_sends(vec: dict[str, Any]) -> None:
    # the body the ingress picks (the first of compact.bodies that fits the dwell limit)
    dev = next(d for d in VECTORS["devices"] if d["id"] == vec["device"])
    key, sid = bytes.fromhex(dev["key"]), dev["short_id"]
    cmds = [(c[0], c[1], c[2], c[3]) for c in vec["commands"]]
    sent = next(f for b in compact.bodies(1795390000, cmds)
                if len(f := encode_ack(sid, vec["seq"], key, b)) <= DWELL[vec["sf"]])
    assert sent.hex() == vec["hex"] and len(sent) == vec["bytes"]
    # and what it means: the time (if the ack has room for it) and the CoAP commands
    doc = cbor2.loads(decode_ack(sent, key)[2])
    assert doc.get(1) == vec["time"]
    items = doc.get(2) or [compact.expand(i) for i in doc.get(3, [])]
    assert items == vec["commands"]
    if vec["sf"] == "SF10" and cmds:  # the compact form, the queue's count exact
        assert 3 in doc and 1 not in doc
        assert compact.extra(cmds) == len(sent) - len(encode_ack(sid, vec["seq"], key,
                                                                  cbor2.dumps({1: 0xFFFFFFFF})))


def test_sf10_fits_the_common_streetlight_commands() -> None:
    # 2-byte seq (up to 16383) and 3-byte (up to 2,097,151), any cid 0..255, any level
    for seq in (5002, 2_000_000):
        for cid in (0, 23, 24, 255):
            for name, args in (("on", {}), ("off", {}), ("dim", {"level": 0}),
                               ("dim", {"level": 100}), ("schedule", {"mode": "auto"}),
                               ("schedule", {"mode": "off"})):
                body = compact.bodies(1795390000, [(cid, name, args, 1795390120)])[-1]
                assert len(encode_ack(0xBEEF, seq, KEY, body)) <= 24, (seq, cid, name, args)


@pytest.mark.parametrize("name,args", [
    ("dim", {"level": 37.5}), ("dim", {"level": True}), ("dim", {"level": -1}),
    ("dim", {"level": 1, "fade": 2}), ("dim", {"p": 4}), ("schedule", {"mode": "dusk"}),
    ("on", {"x": 1}), ("config", {"tick_s": 5}), ("update", {"v": 3}),
    ("interval", {"s": 2**32})])
def test_args_the_table_cannot_express_keep_the_coap_form(name: str,
                                                          args: dict[str, Any]) -> None:
    assert compact.compact((4, name, args, 99)) == [4, name, args, 99]


def test_compact_round_trips_and_the_table_is_one_cbor_byte() -> None:
    for cmd in ((1, "on", {}, 9), (2, "off", {}, 9), (3, "dim", {"level": 37}, 9),
                (4, "schedule", {"mode": "on"}, 9), (5, "interval", {"s": 86400}, 9)):
        item = compact.compact(cmd)
        assert isinstance(item[1], int) and compact.expand(item) == list(cmd)
    assert [o.name for o in compact.ops()][:4] == ["on", "off", "dim", "schedule"]


async def test_the_queue_counts_what_the_ack_can_carry(tmp_path: Path) -> None:
    # for every room: what the queue lets through fits (compact.extra), the next would not
    # and stays queued; so the ingress never cuts a command out of an ack
    plan: list[tuple[str, dict[str, Any]]] = [
        ("dim", {"level": 37}), ("config", {"tick_s": 5}), ("on", {}),
        ("schedule", {"mode": "auto"})]
    cmds = [CloudCommand(id=f"c{i}", device="light-0001", name=n, args=a)
            for i, (n, a) in enumerate(plan)]
    seen = set()
    for room in range(0, 60, 3):
        async with CommandQueue(tmp_path / f"q{room}.db", per_ack=4) as q:
            await q.add(cmds)
            out = await q.on_reading("light-0001", 1, {},
                                    lambda c, r=room: compact.extra(c) <= r)
            assert compact.extra(out) <= room
            if len(out) < len(cmds):
                nxt = await q.open_for("light-0001", 0)
                wire = (nxt[len(out)][1], nxt[len(out)][2], nxt[len(out)][3],
                        int(time.time()) + 120)
                assert compact.extra([*out, wire]) > room
                assert await q.state_of(f"c{len(out)}") == "queued"
            assert [await q.state_of(c.id) for c in cmds[:len(out)]] == ["sent"] * len(out)
            seen.add(len(out))
    assert seen == {0, 1, 2, 3, 4}  # the rooms cover none, some and all of them


@pytest.mark.parametrize("bad", ["mic", "type", "short"])
def test_ack_refuses_what_is_not_one(bad: str) -> None:
    frame = bytearray(encode_ack(7, 9, KEY))
    if bad == "mic":
        frame[-1] ^= 1
    elif bad == "type":
        frame[0] = 1
    else:
        frame = frame[:5]
    with pytest.raises(ValueError):
        decode_ack(bytes(frame), KEY)
    with pytest.raises(ValueError):
        encode_ack(70000, 1, KEY)


class Forwarder:
    def __init__(self, port: int) -> None:
        self.server = ("127.0.0.1", port)
        self.up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.down = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (self.up, self.down):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)

    async def recv(self, sock: socket.socket, within: float = 10) -> bytes:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            return await loop.sock_recv(sock, 4096)

    async def push(self, token: int, frame: bytes, datr: str = "SF10BW125") -> None:
        pk = {"tmst": 1_000_000 + token, "freq": 923.2, "stat": 1, "modu": "LORA",
              "datr": datr, "codr": "4/5", "rssi": -90, "lsnr": 5.0, "size": len(frame),
              "data": base64.b64encode(frame).decode()}
        self.up.sendto(struct.pack(">BHB", 2, token, 0) + EUI
                       + json.dumps({"rxpk": [pk]}).encode(), self.server)
        assert (await self.recv(self.up))[3] == 1  # PUSH_ACK

    async def ack(self) -> tuple[dict[str, Any], bytes]:
        """The next PULL_RESP: (txpk, its payload)."""
        while True:
            ident, _, _, body = parse_datagram(await self.recv(self.down))
            if ident == 3:
                tx = json.loads(body)["txpk"]
                return tx, base64.b64decode(tx["data"])

    def close(self) -> None:
        self.up.close()
        self.down.close()


@pytest.fixture
async def fwd(parts: Any) -> AsyncIterator[tuple[Forwarder, SemtechIngress]]:
    ingress = SemtechIngress(parts.core, decode=decode,
                             registry_lookup=parts.registry.by_short_id,
                             host="127.0.0.1", port=0, confirm=True)
    async with ingress:
        f = Forwarder(ingress.address[1])
        f.down.sendto(struct.pack(">BHB", 2, 1, 2) + EUI, f.server)  # PULL_DATA
        assert (await f.recv(f.down))[3] == 4
        try:
            yield f, ingress
        finally:
            f.close()


def _body(ack: bytes) -> Any:
    """The CBOR body of an ack (MIC checked)."""
    return cbor2.loads(decode_ack(ack, KEY)[2])


def _frame(short_id: int, seq: int, key: bytes = KEY) -> bytes:
    return encode(table()[1], short_id, seq, key, {"temp": 21.5, "hum": 40})


async def test_every_durable_frame_is_acked_and_a_replay_is_stored_once(
    parts: Any, fwd: tuple[Forwarder, SemtechIngress], until: Any, lora: Any
) -> None:
    f, ingress = fwd
    sid = lora.short_ids["env-0001"]
    frame = _frame(sid, 42)
    await f.push(10, frame)
    tx, payload = await f.ack()
    assert tx["tmst"] == 1_000_010 + 1_000_000 and tx["ipol"] is True and tx["imme"] is False
    short_id, seq, body = decode_ack(payload, KEY)
    assert (short_id, seq) == (sid, 42)
    assert isinstance(cbor2.loads(body)[1], int)  # the gateway time, as in a 2.04
    await f.push(11, frame)  # the node missed the ack and sends again: a replay
    _, again = await f.ack()
    assert decode_ack(again, KEY)[:2] == (sid, 42)
    assert parts.store.depth == 1
    [r] = await parts.store.oldest(5)
    assert (r.device, r.seq) == ("env-0001", 42)
    assert ingress.counters["acks"] == 2


async def test_a_bad_mic_is_counted_dropped_and_not_acked(
    parts: Any, fwd: tuple[Forwarder, SemtechIngress], until: Any, lora: Any
) -> None:
    f, ingress = fwd
    sid = lora.short_ids["env-0003"]
    await f.push(20, _frame(sid, 1, key=OTHER))
    await until(lambda: parts.stats.rejected["bad-mic"] == 1)
    await f.push(21, _frame(sid, 2))  # the next good frame is the first ack that comes
    _, payload = await f.ack()
    assert decode_ack(payload, KEY)[1] == 2
    assert parts.store.depth == 1 and ingress.counters["acks"] == 1


async def test_commands_ride_in_the_ack_unless_too_long_for_the_dwell_limit(
    parts: Any, fwd: tuple[Forwarder, SemtechIngress], lora: Any
) -> None:
    f, ingress = fwd
    sid = lora.short_ids["env-0003"]
    await parts.commands.add([CloudCommand(id="c-1", device="env-0003", name="config",
                                           args={"tick_s": 5})])
    await f.push(30, _frame(sid, 5), datr="SF7BW125")
    _, payload = await f.ack()
    [cmd] = _body(payload)[2]  # room: the 2.04 payload as is
    assert cmd[:3] == [0, "config", {"tick_s": 5}]
    await f.push(31, _frame(sid, 6), datr="SF10BW125")  # 24 bytes at most: time only
    _, payload = await f.ack()
    doc = _body(payload)
    assert len(payload) <= 24 and 2 not in doc and 3 not in doc and 1 in doc
    # the queue left it out (it knew the room), so nothing had to be cut from an ack
    assert ingress.counters["ack_trimmed"] == 0


async def test_a_command_that_does_not_fit_the_ack_stays_queued_until_one_has_room(
    parts: Any, fwd: tuple[Forwarder, SemtechIngress], lora: Any
) -> None:
    # "sent" must mean "went on air": an SF10 ack has no room for a command, so the cloud
    # would otherwise be told sent (and then acknowledged) of a command the node never got
    f, _ = fwd
    sid = lora.short_ids["env-0001"]
    await parts.commands.add([CloudCommand(id="c-9", device="env-0001", name="dim",
                                           args={"p": 40})])
    for token, seq in ((40, 1), (41, 2)):
        await f.push(token, _frame(sid, seq), datr="SF10BW125")
        _, payload = await f.ack()
        assert 2 not in _body(payload)
        assert await parts.commands.state_of("c-9") == "queued"
    await f.push(42, _frame(sid, 3), datr="SF9BW125")  # 66 bytes: room for it
    _, payload = await f.ack()
    [cmd] = _body(payload)[2]
    assert cmd[:3] == [0, "dim", {"p": 40}]
    assert await parts.commands.state_of("c-9") == "sent"


async def test_at_sf10_dim_goes_in_the_ack_compact_and_is_sent(
    parts: Any, fwd: tuple[Forwarder, SemtechIngress], lora: Any
) -> None:
    # issue #4: the CoAP form of dim {"level": 37} makes a 38-byte ack; compact it is 22
    f, ingress = fwd
    sid = lora.short_ids["env-0001"]
    await parts.commands.add([CloudCommand(id="c-7", device="env-0001", name="dim",
                                           args={"level": 37}),
                              CloudCommand(id="c-8", device="env-0001", name="on", args={})])
    await f.push(50, _frame(sid, 1), datr="SF10BW125")
    tx, payload = await f.ack()
    assert tx["datr"] == "SF10BW125" and len(payload) <= 24
    doc = _body(payload)
    assert 1 not in doc and 2 not in doc  # no room for the time: the node keeps its clock
    [item] = doc[3]  # one command per SF10 ack: "on" waits, queued, for the next
    assert item[:3] == [0, 2, 37] and compact.expand(item)[:3] == [0, "dim", {"level": 37}]
    assert item[3] >= parts.core._clock() + 100  # exp: absolute, about 120 s ahead
    assert await parts.commands.state_of("c-7") == "sent"
    assert await parts.commands.state_of("c-8") == "queued"
    assert ingress.counters["ack_trimmed"] == 0
    await f.push(51, _frame(sid, 2), datr="SF10BW125")  # the next ack: dim again, on waits
    _, payload = await f.ack()
    assert [i[:2] for i in _body(payload)[3]] == [[0, 2]]
    assert await parts.commands.state_of("c-8") == "queued"
