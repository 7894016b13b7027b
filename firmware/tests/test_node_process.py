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
import re
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.resource
import cbor2
import pytest

pytestmark = pytest.mark.micropython
MAIN = Path(__file__).resolve().parents[1] / "main.py"
FAST = {"ack_timeout_s": 0.3, "ack_random_factor": 1.5, "max_retransmit": 4}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Recorder(aiocoap.resource.Resource):  # type: ignore[misc]
    """POST /r: records (seq, pack) and answers with `respond(seq, k)` (a Message)."""

    respond: Callable[[int, int], aiocoap.Message] | None = None
    delay: float = 0.0
    readings: list[tuple[int, list[dict[int, Any]]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        assert request.opt.content_format == 112
        pack = cbor2.loads(request.payload)
        seq = pack[0][2]
        self.readings.append((seq, pack))
        if self.delay:
            await asyncio.sleep(self.delay)  # aiocoap sends an empty ACK meanwhile
        if self.respond:
            return self.respond(seq, len(self.readings))
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
        self.ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", self.port))

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
    assert len(seqs) == len(set(seqs)), "a seq was sent twice without a retransmission"


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
