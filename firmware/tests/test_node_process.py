"""Real node processes (`micropython firmware/main.py cfg.json`) against a real aiocoap server.

The server is an aiocoap resource at `/r` on 127.0.0.1 and a port chosen at run time; it
records every payload and answers as each test says. The node is the unmodified firmware on
the real MicroPython unix port, so these tests cover the UDP transport, the confirmable
client's interop with aiocoap (piggybacked and separate responses), the seq store across
restarts and `kill -9`, and the exit codes and log lines `machi fleet` relies on.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.resource
import cbor2
import pytest

from .conftest import free_udp_port, udp_server_context

pytestmark = pytest.mark.micropython
MAIN = Path(__file__).resolve().parents[1] / "main.py"
FAST = {"ack_timeout_s": 0.3, "ack_random_factor": 1.5, "max_retransmit": 4}


@dataclass
class Recorder(aiocoap.resource.Resource):  # type: ignore[misc]
    """POST /r: records (seq, pack) per reading and answers with `respond(seq, k)` (a
    Message; seq: the first of the POST, k: the POST's number)."""

    respond: Callable[[int, int], aiocoap.Message] | None = None
    delay: float = 0.0
    readings: list[tuple[int, list[dict[int, Any]]]] = field(default_factory=list)
    requests: int = 0

    def __post_init__(self) -> None:
        super().__init__()

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        assert request.opt.content_format == 112
        pack = cbor2.loads(request.payload)
        seq = pack[0][2]
        # a POST may carry several readings (a backlog, protocol.md §2): one entry each
        starts = [i for i, r in enumerate(pack) if r.get(0) == "seq"] + [len(pack)]
        for i, j in zip(starts, starts[1:], strict=False):
            self.readings.append((pack[i][2], pack[i:j]))
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)  # aiocoap sends an empty ACK meanwhile
        if self.respond:
            return self.respond(seq, self.requests)
        return aiocoap.Message(code=aiocoap.CHANGED)

    def seqs(self) -> list[int]:
        return [s for s, _ in self.readings]


class Server:
    def __init__(self, port: int, resource: Recorder) -> None:
        self.port = port
        self.resource = resource
        self.ctx: aiocoap.Context | None = None

    async def start(self) -> None:
        site = aiocoap.resource.Site()
        site.add_resource(["r"], self.resource)
        self.ctx = await udp_server_context(site, self.port)

    async def stop(self) -> None:
        if self.ctx is not None:
            await self.ctx.shutdown()
            self.ctx = None


class NodeProc:
    """One `micropython firmware/main.py` process; its stdout goes to a log file."""

    def __init__(self, binary: str, workdir: Path, port: int, **cfg: Any) -> None:
        self.binary = binary
        self.workdir = workdir
        self.device = cfg.pop("device_id", "env-0001")
        self.config = {
            "device_id": self.device,
            "type": cfg.pop("type", "env"),
            "gateway": {"host": "127.0.0.1", "port": port},
            "interval_s": 0.2,
            "count": 5,
            "drain_timeout_s": 30,
            "state_dir": str(workdir / "state" / self.device),
            "seed": 1,
            "coap": dict(FAST),
            **cfg,
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0
        self.log_path = workdir / "node.log"

    async def start(self, heapsize: str = "256K", **changes: Any) -> None:
        self.config.update(changes)
        path = self.workdir / "cfg.json"
        path.write_text(json.dumps(self.config))
        self.runs += 1
        log = self.log_path.open("a")
        log.write(f"--- run {self.runs}\n")
        log.flush()
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            "-X",
            f"heapsize={heapsize}",
            str(MAIN),
            str(path),
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            cwd="/",  # no reliance on cwd
        )
        log.close()

    async def wait(self, within: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), within)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def last_run(self) -> str:
        return self.output().rsplit("--- run", 1)[-1]

    def events(self, event: str, text: str | None = None) -> list[dict[str, str]]:
        out = []
        for line in (self.last_run() if text is None else text).splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == self.device and parts[2] == event:
                out.append(dict(re.findall(r"(\w+)=(\S+)", line)))
        return out


@pytest.fixture
async def rig(
    tmp_path: Path, micropython: str
) -> AsyncIterator[Callable[..., Awaitable[tuple[Server, NodeProc]]]]:
    """rig(respond=..., delay=..., **node_cfg) -> (server not started, node not started)."""
    made: list[tuple[Server, NodeProc]] = []

    async def make(
        respond: Callable[[int, int], aiocoap.Message] | None = None,
        delay: float = 0.0,
        **cfg: Any,
    ) -> tuple[Server, NodeProc]:
        port = free_udp_port()
        server = Server(port, Recorder(respond=respond, delay=delay))
        node = NodeProc(micropython, tmp_path, port, **cfg)
        made.append((server, node))
        return server, node

    ok = False
    try:
        yield make
        ok = True
    finally:
        for server, node in made:
            await node.stop()
            await server.stop()
            if not ok:
                print(f"----- node output\n{node.output()}")


async def until(cond: Callable[[], bool], within: float, why: str) -> None:
    for _ in range(int(within / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting: {why}")


def decoded_ok(server: Server, device: str) -> None:
    for seq, pack in server.resource.readings:
        assert pack[0] == {0: "seq", 2: seq, -2: f"{device}:", -3: pack[0][-3]}
        assert isinstance(pack[0][-3], int) and pack[0][-3] > 1_700_000_000
        assert [r[0] for r in pack[1:]] == ["temp", "hum", "pres", "pm25", "pm10", "lux", "bat"]


async def test_five_readings_then_restart_and_kill9_never_reuse_seq(rig: Any) -> None:
    server, node = await rig()
    await server.start()
    await node.start()
    assert await node.wait(30) == 0, node.output()
    first = server.resource.seqs()
    assert len(first) == 5
    assert first == sorted(set(first)), first  # strictly increasing
    decoded_ok(server, node.device)
    recs = [int(e["seq"]) for e in node.events("rec")]
    acks = node.events("ack")
    assert recs == first
    assert [int(e["seq"]) for e in acks] == first
    assert all(e["code"] == "2.04" and e["tries"] == "1" for e in acks)
    assert node.events("start")[0]["seq"] == "0" and node.events("stop")

    # a clean restart: the seq store resumes above everything handed out
    await node.start()
    assert await node.wait(30) == 0, node.output()
    second = server.resource.seqs()[5:]
    assert len(second) == 5 and min(second) > max(first), (first, second)

    # kill -9 mid-run (count 0 = forever), then again: still nothing reused
    await node.start(count=0, interval_s=0.05)
    await until(lambda: len(server.resource.readings) >= 18, 20, node.output())
    assert node.proc is not None
    node.proc.send_signal(signal.SIGKILL)
    await node.proc.wait()
    killed_recs = [int(e["seq"]) for e in node.events("rec")]
    before = set(server.resource.seqs()) | set(killed_recs)
    await node.start(count=3, interval_s=0.2)
    assert await node.wait(30) == 0, node.output()
    third = [int(e["seq"]) for e in node.events("rec")]
    assert len(third) == 3 and min(third) > max(before), (sorted(before), third)
    seqs = server.resource.seqs()
    # the reading in flight at the kill may be sent again from the ring (a duplicate the
    # gateway drops); nothing else is sent twice
    assert len(seqs) - len(set(seqs)) <= 1, seqs
    assert set(killed_recs) <= set(seqs), "a reading of the killed run was lost"


def ring_records(path: Path, slot_size: int = 256) -> list[tuple[int, int, bytes]]:
    """(state, seq, data) of every valid record of a ring file (lib/ring.py's format);
    asserts that every slot is either never written (zeros) or a record with a good CRC."""
    if not path.exists():  # killed before the ring was made (made as .tmp, then renamed)
        return []
    raw = path.read_bytes()
    assert len(raw) % slot_size == 0
    out = []
    for off in range(0, len(raw), slot_size):
        slot = raw[off : off + slot_size]
        if not any(slot):
            continue
        state, magic, k, seq, _drops = struct.unpack_from("<BBHQI", slot)
        assert magic == 0x4D and 20 + k <= slot_size, f"slot {off // slot_size} corrupt"
        (crc,) = struct.unpack_from("<I", slot, 16 + k)
        assert zlib.crc32(slot[1 : 16 + k]) == crc, f"slot {off // slot_size}: bad CRC"
        out.append((state, seq, slot[16 : 16 + k]))
    return out


async def test_kill9_at_random_moments_never_corrupts_or_loses(rig: Any) -> None:
    # 150 runs killed with SIGKILL at a random moment (while sampling, writing the ring,
    # sending, popping), against a real aiocoap server; then one clean run drains the ring
    rnd = random.Random()
    server, node = await rig(count=0, interval_s=0.02, outbox_slots=512)
    await server.start()
    recs: list[int] = []
    for _ in range(150):
        await node.start()
        await asyncio.sleep(rnd.uniform(0.02, 0.15))
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        await node.proc.wait()
        run = [int(e["seq"]) for e in node.events("rec")]
        assert all(s > max(recs, default=-1) for s in run), "a seq was reused"
        recs += run
        ring = ring_records(Path(node.config["state_dir"]) / "ring")  # never corrupt
        live = {seq for state, seq, _ in ring if state == 0xA5}
        got = set(server.resource.seqs())
        missing = [s for s in recs if s not in live and s not in got]
        assert not missing, f"promised (rec) but neither in the ring nor acked: {missing}"
    # (how many depends on the machine's load: a busy machine starts micropython slower)
    assert len(recs) >= 20, f"only {len(recs)} readings in 150 runs: kills too early?"
    print(f"150 kills, {len(recs)} readings recorded")
    # seqs never reused: one content per seq at the server
    payloads: dict[int, bytes] = {}
    for seq, pack in server.resource.readings:
        body = cbor2.dumps(pack[1:])
        assert payloads.setdefault(seq, body) == body, f"seq {seq} with two contents"
    await node.start(count=1, interval_s=0.05)
    assert await node.wait(60) == 0, node.output()
    got = set(server.resource.seqs())
    assert set(recs) <= got, sorted(set(recs) - got)
    assert not [r for r in ring_records(Path(node.config["state_dir"]) / "ring") if r[0] == 0xA5]


async def test_bad_request_is_logged_and_dropped(rig: Any) -> None:
    def respond(seq: int, k: int) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.BAD_REQUEST, payload=b"no seq record")

    server, node = await rig(respond=respond, count=3)
    await server.start()
    await node.start()
    assert await node.wait(30) == 0, node.output()
    assert len(server.resource.readings) == 3  # each sent once, none retried
    rejects = [ln for ln in node.last_run().splitlines() if " reject " in ln]
    assert len(rejects) == 3, node.output()
    assert all(ln.startswith("E env-0001 reject seq=") for ln in rejects)
    assert all(ln.endswith("code=4.00 no seq record") for ln in rejects)
    assert node.events("stop")[0]["rejected"] == "3"


async def test_server_late_retransmissions_deliver_everything(rig: Any) -> None:
    server, node = await rig(count=5)
    await node.start()
    await asyncio.sleep(1.2)  # the node samples and retransmits into the void (ICMP refused)
    await server.start()
    assert await node.wait(60) == 0, node.output()
    recs = {int(e["seq"]) for e in node.events("rec")}
    assert len(recs) == 5
    assert set(server.resource.seqs()) == recs  # nothing lost (duplicates are allowed)
    assert node.events("retry"), "expected retransmissions while the server was absent"
    assert max(int(e["tries"]) for e in node.events("ack")) > 1


async def test_separate_response_from_aiocoap(rig: Any) -> None:
    # a slow resource: aiocoap ACKs empty first, then sends the response as its own CON
    server, node = await rig(delay=0.6, count=2, type="bin", device_id="bin-0001")
    await server.start()
    await node.start()
    assert await node.wait(30) == 0, node.output()
    assert len(server.resource.readings) == 2, "a retransmission after the empty ACK"
    acks = node.events("ack")
    assert len(acks) == 2 and all(int(e["ms"]) >= 600 and e["tries"] == "1" for e in acks)
    pack = server.resource.readings[0][1]
    assert [r[0] for r in pack[1:]] == ["fill", "temp", "tilt", "bat"]


async def test_service_unavailable_waits_max_age(rig: Any) -> None:
    def respond(seq: int, k: int) -> aiocoap.Message:
        if k == 1:
            return aiocoap.Message(code=aiocoap.SERVICE_UNAVAILABLE, max_age=1)
        return aiocoap.Message(code=aiocoap.CHANGED)

    server, node = await rig(respond=respond, count=2, type="light", device_id="light-0001")
    await server.start()
    await node.start()
    assert await node.wait(30) == 0, node.output()
    seqs = server.resource.seqs()
    assert seqs[0] == seqs[1] and len(set(seqs)) == 2, seqs  # the first one sent again
    assert node.events("busy")[0]["wait_s"] == "1"


async def test_sigint_stops_cleanly_and_bad_config_exits_2(rig: Any, tmp_path: Path) -> None:
    server, node = await rig(count=0)
    await server.start()
    await node.start()
    await until(lambda: len(server.resource.readings) >= 2, 20, node.output())
    assert node.proc is not None
    node.proc.send_signal(signal.SIGINT)
    assert await node.wait(5) == 0, node.output()
    assert node.events("stop"), node.output()

    await node.start(interval_s=-1)
    assert await node.wait(10) == 2
    assert "interval_s: must be > 0" in node.last_run()


async def test_damaged_seq_store_refuses_to_start(rig: Any) -> None:
    server, node = await rig(count=1)
    await server.start()
    await node.start()
    assert await node.wait(30) == 0, node.output()
    state = Path(node.config["state_dir"])
    (state / "seq").write_bytes(b"")
    (state / "seq.bak").write_bytes(b"garbage")
    await node.start()
    assert await node.wait(10) == 4, node.output()
    assert "refusing to start" in node.last_run()
    assert len(server.resource.readings) == 1


async def test_no_clock_node_learns_time_and_runs_commands_from_the_ack(rig: Any) -> None:
    # a board without a clock (ESP32 after power-on): the gateway's 2.04 payload (CF 60)
    # carries its time and a command; later readings carry the right sample time and report
    # the command's result as a "cmd/<cid>" record
    import time

    def respond(seq: int, k: int) -> aiocoap.Message:
        body: dict[int, Any] = {1: int(time.time())}
        if k == 1:
            body[2] = [[7, "config", {"heartbeat_s": 60}], [8, "dim", {"level": 5}]]
        return aiocoap.Message(code=aiocoap.CHANGED, payload=cbor2.dumps(body),
                               content_format=60)

    server, node = await rig(respond=respond, count=4, clock=False)
    await server.start()
    await node.start()
    assert await node.wait(30) == 0, node.output()
    packs = [p for _, p in server.resource.readings]
    assert -3 not in packs[0][0]  # sent before the time was known
    for p in packs[1:]:
        assert abs(p[0][-3] - time.time()) < 10, p[0]
    stamps = [p[0][-3] for p in packs[1:]]
    assert stamps == sorted(stamps)
    results = {r[0]: r.get(3) for p in packs for r in p[1:] if r[0].startswith("cmd/")}
    assert results == {"cmd/7": "ok", "cmd/8": "err:unsupported"}, results
    assert len(node.events("time")) == 1 and len(node.events("cmd")) == 2


async def test_restart_resends_the_ring_and_a_lowered_seq_mark_is_raised(rig: Any) -> None:
    # no gateway: 3 readings stay in the ring; an operator then sets the seq mark too low
    # (seqstore.write_mark after a repair); the next start resumes above the ring's seqs and
    # sends the 3 old readings first, oldest first, with their original sample times
    server, node = await rig(count=3, interval_s=0.3, drain_timeout_s=0.5)
    await node.start()
    assert await node.wait(30) == 3, node.output()  # exit 3: not drained
    old = [int(e["seq"]) for e in node.events("rec")]
    state = Path(node.config["state_dir"])
    for name in ("seq", "seq.bak"):
        (state / name).write_bytes(b"1 %08x\n" % zlib.crc32(b"1"))
    await server.start()
    await node.start(count=2, interval_s=0.3, drain_timeout_s=30)
    assert await node.wait(30) == 0, node.output()
    assert "seqstore mark 1 below the ring's seq" in node.last_run()
    new = [int(e["seq"]) for e in node.events("rec")]
    assert min(new) > max(old), (old, new)
    assert node.events("start")[0]["waiting"] == "3"
    seqs = server.resource.seqs()
    assert seqs[:3] == old and sorted(seqs[3:]) == new, seqs
    times = [pack[0][-3] for _, pack in server.resource.readings[:3]]
    assert times == sorted(times) and times[2] - times[0] >= 0
