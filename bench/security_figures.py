"""Security figures of issue #8 (docs/security.md "Figures (issue #8)"), measured on the
real processes: `machi-gateway` (`oscore = "required"`), real MicroPython nodes
(`firmware/main.py` with OSCORE) behind a recording UDP relay, and the firmware updater
(`firmware/tests/mp/fw_driver.py`) against releases signed by `machi release`.

    .venv/bin/python -m bench.security_figures [--reboots N] [--datagrams N] [--fw-rounds N]

Not part of `make bench` (that one is about speed). `hil_tests/test_security_figures.py`
runs the same code with small numbers and asserts every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import httpx

from machi_tools.cloudapi import CloudClient
from machi_tools.procs import executable, firmware_dir
from machi_tools.system import (
    Cloud,
    CoapProfile,
    Gateway,
    Node,
    NodeSpec,
    write_devices_file,
)

NO_CLOUD = "http://127.0.0.1:9"  # unreachable on purpose: readings stay in the queue
FAST = CoapProfile(ack_timeout_s=0.3, ack_random_factor=1.5, max_retransmit=3)
OPT_OSCORE = 9


# ---------------------------------------------------------------- the recording relay


class Relay:
    """Node <-> gateway UDP relay in a thread; records every node datagram with the
    node incarnation (`boot`) current when it passed."""

    def __init__(self, gateway: tuple[str, int]) -> None:
        self.gateway = gateway
        self.boot = 0
        self.sent: list[tuple[int, bytes]] = []  # (boot, datagram node -> gateway)
        self.back: list[bytes] = []  # gateway -> node
        self.delay_s = 0.0  # > 0: every gateway -> node datagram is held back this long
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, None)
        self._up: dict[tuple[str, int], socket.socket] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()

    def new_boot(self) -> int:
        """A node is (re)started: forget the old upstream sockets (its port is gone)."""
        with self.lock:
            self.boot += 1
            for up in self._up.values():
                self._sel.unregister(up)
                up.close()
            self._up.clear()
            return self.boot

    def count(self) -> int:
        with self.lock:
            return len(self.sent)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(0.2):
                with self.lock:
                    if key.fileobj is self.sock:
                        self._from_node()
                    elif key.data in self._up:
                        self._from_gateway(key.data)

    def _from_node(self) -> None:
        try:
            data, addr = self.sock.recvfrom(4096)
        except BlockingIOError:
            return
        self.sent.append((self.boot, data))
        up = self._up.get(addr)
        if up is None:
            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            up.setblocking(False)
            up.connect(self.gateway)
            self._up[addr] = up
            self._sel.register(up, selectors.EVENT_READ, addr)
        up.send(data)

    def _from_gateway(self, addr: tuple[str, int]) -> None:
        try:
            data = self._up[addr].recv(4096)
        except (BlockingIOError, ConnectionRefusedError):
            return
        self.back.append(data)
        if self.delay_s > 0:
            threading.Timer(self.delay_s, self._late, (data, addr)).start()
        else:
            self.sock.sendto(data, addr)

    def _late(self, data: bytes, addr: tuple[str, int]) -> None:
        with self.lock:
            if not self._stop.is_set():
                self.sock.sendto(data, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for up in self._up.values():
            up.close()
        self.sock.close()
        self._sel.close()


# ---------------------------------------------------------------- wire parsing


def oscore_fields(datagram: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(kid, Partial IV, ciphertext) of an OSCORE request, None if it is not one."""
    try:
        msg = aiocoap.Message.decode(datagram)
    except Exception:
        return None
    opt = msg.opt.oscore
    if opt is None or len(opt) == 0:
        return None
    opt = bytes(opt)
    n, has_ctx, has_kid = opt[0] & 0x07, opt[0] & 0x10, opt[0] & 0x08
    piv, rest = opt[1:1 + n], opt[1 + n:]
    if has_ctx and rest:
        rest = rest[1 + rest[0]:]
    if not has_kid or not piv:
        return None
    return bytes(rest), bytes(piv), bytes(msg.payload)


def describe(answer: bytes) -> str:
    """`4.02 'payload'` of a CoAP answer (the first message of what was received)."""
    try:
        m = aiocoap.Message.decode(answer)
    except Exception:
        return answer[:16].hex()
    return f"{m.code.dotted} {bytes(m.payload)[:40]!r}"


def exchange(target: tuple[str, int], datagrams: list[bytes], wait_s: float = 1.0,
             batch: int = 200) -> list[bytes]:
    """Send each datagram from a socket of its own; return everything answered to it
    (all answer datagrams concatenated), so every answer byte is attributed."""
    answers: list[bytes] = []
    for start in range(0, len(datagrams), batch):
        socks = []
        for d in datagrams[start:start + batch]:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect(target)
            s.send(d)
            socks.append(s)
        got = [b""] * len(socks)
        sel = selectors.DefaultSelector()
        for i, s in enumerate(socks):
            sel.register(s, selectors.EVENT_READ, i)
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                try:
                    got[key.data] += key.fileobj.recv(4096)  # type: ignore[union-attr]
                except (BlockingIOError, ConnectionRefusedError):
                    pass
        sel.close()
        for s in socks:
            s.close()
        answers += got
    return answers


# ---------------------------------------------------------------- the rig


@dataclass
class Figures:
    reboots: int = 0
    pivs: int = 0  # node requests on the wire with (kid, Partial IV)
    distinct_pivs: int = 0
    piv_reused_other_ciphertext: int = 0
    piv_reused_across_boots: int = 0
    gateway_restarts: list[str] = field(default_factory=list)
    replays_sent: int = 0
    replays_accepted: int = 0
    forged_sent: int = 0
    forged_accepted: int = 0
    hostile_sent: int = 0
    hostile_answered: int = 0
    max_ratio: float = 0.0
    worst: str = ""
    over_one: dict[str, int] = field(default_factory=dict)  # answers larger than the request
    legit_stored: int = 0
    delayed_sent: int = 0  # commands whose ACK was held back past their exp
    delayed_executed: int = 0
    delayed_stale: int = 0  # refused by the node as err:stale
    control_executed: int = 0  # the same commands, not held back
    control_sent: int = 0
    delayed_by_board: dict[str, dict[str, int]] = field(default_factory=dict)
    fw_attempts: dict[str, int] = field(default_factory=dict)
    fw_activated: int = 0
    fw_reasons: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class Rig:
    """The gateway, the relay and one OSCORE node that is killed -9 again and again."""

    def __init__(self, workdir: Path, rng: random.Random) -> None:
        self.workdir = workdir
        self.rng = rng
        self.spec = NodeSpec(device_id="env-0001", type="env", interval_s=0.05,
                             short_id=1, key=secrets.token_hex(16))
        self.gateway = Gateway(workdir=workdir / "gw", cloud_url=NO_CLOUD, token="t",
                               oscore="required")
        self.gateway.workdir.mkdir(parents=True, exist_ok=True)
        write_devices_file(self.gateway.devices_path, [self.spec])
        self.gateway.start(timeout=60)
        self.relay = Relay(self.gateway.coap)
        self.node = Node(spec=self.spec, workdir=workdir / "node",
                         gateway=("127.0.0.1", self.relay.port), coap=FAST)

    def accepted(self) -> int:
        """Readings the gateway took in (new or duplicate): what an accepted replay or
        forgery would move."""
        h = self.gateway.health()
        return int(h["readings_in"]) + int(h["duplicates"])

    def rejected(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.gateway.health().get("rejected", {}).items()}

    def reboot_once(self, timeout: float = 30.0) -> None:
        """Start the node, wait until it sends, kill -9 it at a random moment."""
        self.relay.new_boot()
        before = self.relay.count()
        self.node.start()
        deadline = time.monotonic() + timeout
        while self.relay.count() == before:
            if time.monotonic() > deadline or not self.node.process or \
                    not self.node.process.alive():
                tail = self.node.process.log_tail() if self.node.process else ""
                raise RuntimeError(f"the node sent nothing after its start:\n{tail}")
            time.sleep(0.005)
        time.sleep(self.rng.uniform(0.0, 0.4))  # mid-send: it sends every 50 ms
        assert self.node.process is not None
        self.node.process.kill()

    def restart_gateway(self, how: str) -> None:
        if how == "kill -9":
            self.gateway.kill()
        else:
            self.gateway.stop()
        self.gateway.start(timeout=60)  # same port: the relay keeps working
        self.gateway.wait_devices(1, timeout=30)

    def close(self) -> None:
        if self.node.process is not None:
            self.node.process.kill()
        self.relay.close()
        self.gateway.stop()


def count_pivs(fig: Figures, sent: list[tuple[int, bytes]]) -> None:
    seen: dict[tuple[bytes, bytes], tuple[int, bytes]] = {}
    other_ct: set[tuple[bytes, bytes]] = set()
    other_boot: set[tuple[bytes, bytes]] = set()
    for boot, d in sent:
        f = oscore_fields(d)
        if f is None:
            continue
        fig.pivs += 1
        key = (f[0], f[1])
        if key in seen:
            first_boot, first_ct = seen[key]
            if first_ct != f[2]:
                other_ct.add(key)
            if first_boot != boot:
                other_boot.add(key)
        else:
            seen[key] = (boot, f[2])
    fig.distinct_pivs = len(seen)
    fig.piv_reused_other_ciphertext = len(other_ct)
    fig.piv_reused_across_boots = len(other_boot)


def attack(rig: Rig, datagrams: list[bytes]) -> int:
    """Send attack datagrams with no node running: how many readings got in."""
    before = rig.accepted()
    exchange(rig.gateway.coap, datagrams)
    time.sleep(0.3)
    return rig.accepted() - before


def forgeries(captures: list[bytes], n: int, rng: random.Random) -> list[bytes]:
    """Bit flips anywhere in captured requests, and fresh Partial IVs with random
    ciphertext under the node's kid."""
    out = []
    top = max((int.from_bytes(f[1], "big") for c in captures
               if (f := oscore_fields(c)) is not None), default=0)
    for i in range(n):
        c = bytearray(rng.choice(captures))
        if i % 3 == 2:  # a fresh sequence number: decryption is really attempted
            old = aiocoap.Message.decode(bytes(c))
            piv = (top + 1000 + i).to_bytes(3, "big")
            msg = aiocoap.Message(code=aiocoap.POST, payload=rng.randbytes(len(old.payload)))
            msg.mtype, msg.mid, msg.token = aiocoap.CON, rng.randrange(65536), old.token
            msg.opt.oscore = bytes([0x08 | len(piv)]) + piv + (1).to_bytes(2, "big")
            out.append(bytes(msg.encode()))
            continue
        where = rng.randrange(4, len(c)) if i % 3 == 0 else rng.randrange(len(c) - 8, len(c))
        c[where] ^= 1 << rng.randrange(8)  # anywhere after the header / in the tag
        out.append(bytes(c))
    return out


def hostile(captures: list[bytes], n: int, rng: random.Random) -> list[bytes]:
    """Unauthenticated datagrams of many kinds: plain requests with any method and path,
    wrong kids, malformed OSCORE options, cut and random bytes, captured requests."""
    reading = cbor2.dumps([{0: "seq", 2: 1, -2: "env-0001:"}, {0: "temp", 2: 21.5}])
    paths = [("r",), ("c",), ("fw", "env", "manifest"), ("fw", "env", "image"),
             (".well-known", "core"), ("x",) * 3, ()]
    methods = [aiocoap.GET, aiocoap.POST, aiocoap.PUT, aiocoap.DELETE, aiocoap.FETCH]
    out: list[bytes] = []
    for i in range(n):
        kind = i % 9
        m = aiocoap.Message(code=rng.choice(methods), uri_path=rng.choice(paths))
        m.mtype = rng.choice([aiocoap.CON, aiocoap.NON])
        m.mid, m.token = rng.randrange(65536), rng.randbytes(rng.randrange(9))
        if kind == 0:
            m.payload = reading
            m.opt.content_format = 112
        elif kind == 1:  # wrong kid
            m.code = aiocoap.POST
            m.uri_path = ()
            m.opt.oscore = bytes([0x09, rng.randrange(256)]) + rng.randbytes(rng.randrange(1, 5))
            m.payload = rng.randbytes(rng.randrange(9, 200))
        elif kind == 2:  # malformed OSCORE option
            m.opt.oscore = bytes([rng.choice([0xE0, 0x07, 0x16, 0xFF])]) + rng.randbytes(
                rng.randrange(0, 6))
            m.payload = rng.randbytes(rng.randrange(0, 40))
        elif kind == 8:  # the real node's kid, an old Partial IV, a tiny body
            m.code, m.uri_path = aiocoap.POST, ()
            m.opt.oscore = bytes([0x09, rng.randrange(8)]) + (1).to_bytes(2, "big")
            m.payload = rng.randbytes(rng.randrange(0, 12))
        elif kind == 3:  # Block2 / Observe asked of anything
            m.code = aiocoap.GET
            m.opt.block2 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(0, 0, 6)
            m.opt.observe = 0
        if kind == 4 and captures:
            out.append(rng.choice(captures))
            continue
        raw = bytes(m.encode())
        if kind == 5:
            raw = raw[: rng.randrange(1, len(raw) + 1)]
        elif kind == 6:
            raw = rng.randbytes(rng.randrange(1, 64))
        elif kind == 7:
            raw = bytes([0x40, 0x00]) + rng.randbytes(2)  # empty CON: a CoAP ping (RST)
        out.append(raw)
    return out


def measure_oscore(workdir: Path, fig: Figures, reboots: int, datagrams: int,
                   rng: random.Random, progress: bool, max_s: float) -> None:
    rig = Rig(workdir, rng)
    try:
        t0 = time.monotonic()
        for i in range(reboots):
            if time.monotonic() - t0 > max_s:
                break  # fig.reboots says how many were done
            rig.reboot_once()
            fig.reboots += 1
            if progress and (i + 1) % 50 == 0:
                print(f"  {i + 1} reboots, {rig.relay.count()} datagrams, "
                      f"{time.monotonic() - t0:.0f} s", flush=True)
        time.sleep(0.5)  # answers in flight
        fig.legit_stored = rig.accepted()
        with rig.relay.lock:
            sent = list(rig.relay.sent)
        count_pivs(fig, sent)
        captures = [d for _, d in sent if oscore_fields(d) is not None]
        if not captures:
            raise RuntimeError("no OSCORE request recorded")
        cap = max(200, datagrams)
        sample = captures if len(captures) <= cap else \
            captures[-cap // 2:] + rng.sample(captures[:-cap // 2], cap // 2)
        # (a) replays: same gateway run, after a clean restart, after kill -9; then the
        # node reboots once more (new sequence numbers accepted) and everything again
        for phase in ("same run", "clean restart", "kill -9"):
            if phase != "same run":
                rig.restart_gateway(phase)
                fig.gateway_restarts.append(phase)
            fig.replays_sent += len(sample)
            fig.replays_accepted += attack(rig, sample)
        live = rig.accepted()
        rig.reboot_once()
        time.sleep(1.0)
        if rig.accepted() <= live:
            raise RuntimeError("the node's own readings were not accepted after the "
                               "gateway restarts: the rig is broken")
        fig.replays_sent += len(sample)
        fig.replays_accepted += attack(rig, sample)
        # (b) forged and bit-flipped
        forged = forgeries(captures, max(30, datagrams), rng)
        fig.forged_sent = len(forged)
        fig.forged_accepted = attack(rig, forged)
        # (f) unauthenticated requests: bytes answered / bytes sent, per datagram
        hostile_dgs = hostile(captures, max(100, datagrams), rng)
        answers = exchange(rig.gateway.coap, hostile_dgs)
        fig.hostile_sent = len(hostile_dgs)
        for req, ans in zip(hostile_dgs, answers, strict=True):
            if ans:
                fig.hostile_answered += 1
                ratio = len(ans) / len(req)
                if ratio > 1:
                    what = describe(ans)
                    fig.over_one[what] = fig.over_one.get(what, 0) + 1
                if ratio > fig.max_ratio:
                    fig.max_ratio, fig.worst = ratio, f"{req.hex()} -> {ans.hex()}"
        fig.rejected = rig.rejected()
    finally:
        rig.close()


# ---------------------------------------------------------------- (d) delayed commands


def _cmd_events(node: Node) -> list[tuple[str, str]]:
    """(level, result) of every command the node handled."""
    return [(e.level, e.fields.get("result", "")) for e in node.events() if e.event == "cmd"]


@dataclass
class ClocklessNode(Node):
    """A board without a clock of its own (an ESP32 after power-on): it learns the time
    from the gateway's 2.04s (`"clock": false`, boards/unix.py)."""

    def config(self) -> dict[str, Any]:
        return {**super().config(), "clock": False}


def measure_delayed(workdir: Path, fig: Figures, rounds: int, ttl_s: int = 5) -> None:
    """Commands (ttl 5 s: exp is at most 5 s after the ACK is built) whose 2.04 the relay
    holds back ttl + 3 s, past exp but inside the node's CoAP exchange (ACK_TIMEOUT 2 s,
    4 retransmissions: it is still waiting): must not be executed. Two nodes: a board with
    its own clock and one that learns the time from the gateway. Control rounds without
    the delay (ttl 60 s) must execute."""
    delay_s = ttl_s + 3.0
    admin, operator = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    cloud = Cloud(workdir=workdir, api_tokens=f"root=admin:{admin},olga=operator:{operator}")
    gateway: Gateway | None = None
    relay: Relay | None = None
    nodes: dict[str, Node] = {}
    try:
        cloud.start(timeout=60)
        specs = []
        with CloudClient(cloud.url, admin) as adm:
            for i in (1, 2):
                reg = adm.register(f"env-000{i}", {
                    "type": "env", "gateway": cloud.gateway_id, "site": "sec", "lat": 36.1,
                    "lon": 137.9, "transport": "coap"})
                specs.append(NodeSpec(device_id=f"env-000{i}", type="env", interval_s=1.0,
                                      short_id=reg.short_id, key=reg.key.hex()))
        gateway = Gateway(workdir=workdir, cloud_url=cloud.url, token=cloud.token,
                          devices_sync=True, downlink=True, batch_age_s=0.3,
                          oscore="required")
        gateway.start(timeout=60)
        gateway.wait_devices(2, timeout=30)
        relay = Relay(gateway.coap)
        relay.new_boot()
        for board, kind, spec in (("own clock", Node, specs[0]),
                                  ("no clock", ClocklessNode, specs[1])):
            nodes[board] = kind(spec=spec, workdir=workdir, gateway=("127.0.0.1", relay.port),
                                coap=CoapProfile(ack_timeout_s=2.0, max_retransmit=4))
            nodes[board].start()
            fig.delayed_by_board[board] = {"held": 0, "executed": 0, "stale": 0}
        for node in nodes.values():
            _until(lambda: any(e.event == "ack" for e in node.events()),  # noqa: B023
                   60, "the first ack")
        with httpx.Client(base_url=cloud.url, timeout=10,
                          headers={"Authorization": f"Bearer {operator}"}) as ops:
            for r in range(2 * rounds):
                held = r % 2 == 0
                relay.delay_s = delay_s if held else 0.0
                before = {b: len(_cmd_events(n)) for b, n in nodes.items()}
                ids = []
                for node in nodes.values():
                    resp = ops.post("/v1/commands", json={
                        "device": node.spec.device_id, "name": "interval", "args": {"s": 1},
                        "ttl_s": ttl_s if held else 60})
                    resp.raise_for_status()
                    ids.append(str(resp.json()["id"]))
                _until(lambda: all(ops.get(f"/v1/commands/{c}").json()["state"]
                                   in ("executed", "failed", "expired") for c in ids),  # noqa: B023
                       90, "the commands' end")
                relay.delay_s = 0.0
                if held:
                    time.sleep(delay_s + 1)  # anything still held arrives
                for board, node in nodes.items():
                    new = _cmd_events(node)[before[board]:]
                    ran = sum(1 for lvl, _ in new if lvl == "I")
                    if held:
                        fig.delayed_sent += 1
                        fig.delayed_executed += ran
                        stale = sum(1 for _, res in new if res == "err:stale")
                        fig.delayed_stale += stale
                        fig.delayed_by_board[board]["stale"] += stale
                        fig.delayed_by_board[board]["held"] += 1
                        fig.delayed_by_board[board]["executed"] += ran
                    else:
                        fig.control_sent += 1
                        fig.control_executed += ran
    finally:
        for node in nodes.values():
            if node.process is not None:
                node.process.kill()
        if relay is not None:
            relay.close()
        if gateway is not None:
            gateway.stop()
        cloud.stop()


def _until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


# ---------------------------------------------------------------- (e) firmware images


@dataclass
class FwGateway(Gateway):
    """The gateway with `[firmware] dir` (nothing else of it is used here)."""

    fw_dir: Path | None = None

    def write_config(self) -> None:
        super().write_config()
        with self.config_path.open("a") as f:
            f.write(f'[firmware]\ndir = "{self.fw_dir}"\n')


def _machi(*args: str) -> None:
    r = subprocess.run([executable("machi"), *args], capture_output=True, text=True,
                       timeout=120, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"machi {' '.join(args)}: {r.stdout}{r.stderr}")


def _driver(state: Path, *args: str) -> tuple[int, str]:
    fw = firmware_dir()
    env = dict(os.environ)
    env["MICROPYPATH"] = f".frozen:{fw / 'lib'}:{fw}:{fw / 'tests' / 'mp'}"
    r = subprocess.run([executable("micropython"), "-X", "heapsize=256K",
                        str(fw / "tests" / "mp" / "fw_driver.py"), str(state), *args],
                       env=env, capture_output=True, text=True, timeout=180, check=False)
    return r.returncode, r.stdout + r.stderr


def _boot_line(out: str) -> str:
    return next((ln for ln in out.splitlines() if ln.startswith("BOOT ")), "")


def measure_firmware(workdir: Path, fig: Figures, rounds: int, rng: random.Random) -> None:
    """A node on v2 (signed, confirmed); then unsigned (signature or payload bit-flipped),
    wrong-key and downgrade releases are served: none may become pending or boot."""
    keys, build, fw_dir = workdir / "keys", workdir / "build", workdir / "fw"
    build.mkdir(parents=True)
    _machi("release", "keygen", "--out", str(keys / "city"))
    _machi("release", "keygen", "--out", str(keys / "rogue"))

    def sign(key: str, version: int, out: Path) -> None:
        image = build / f"v{version}-{key}.bin"
        image.write_bytes(rng.randbytes(6000))
        _machi("release", "sign", "--key", str(keys / f"{key}.key"), "--version",
               str(version), "--type", "env", str(image), "-o", str(out))

    def serve(src: Path, manifest: bytes | None = None) -> None:
        fw_dir.mkdir(exist_ok=True)
        for name in ("env.bin", "env.manifest"):
            data = (src / name).read_bytes()
            if name == "env.manifest" and manifest is not None:
                data = manifest
            tmp = fw_dir / f".{name}.tmp"
            tmp.write_bytes(data)
            tmp.replace(fw_dir / name)

    sign("city", 2, workdir / "rel-v2")
    sign("city", 1, workdir / "rel-v1")
    serve(workdir / "rel-v2")
    gw = FwGateway(workdir=workdir / "gw", cloud_url=NO_CLOUD, token="t", fw_dir=fw_dir)
    pub = str(keys / "city.pub")
    state = workdir / "node"
    try:
        host, port = gw.start(timeout=60)
        code, out = _driver(state, "fetch", host, str(port), pub)
        if code != 0 or "PENDING 2" not in out:
            raise RuntimeError(f"the genuine v2 was not installed:\n{out}")
        code, out = _driver(state, "confirm")
        if "CONFIRMED True floor=2" not in out:
            raise RuntimeError(f"v2 did not confirm:\n{out}")
        for r in range(rounds):
            sign("rogue", 3 + r, workdir / f"rel-rogue{r}")
            sign("city", 3 + r, workdir / f"rel-good{r}")
            good = (workdir / f"rel-good{r}" / "env.manifest").read_bytes()
            cose = cbor2.loads(good)
            sig = bytearray(cose.value[3])
            sig[rng.randrange(len(sig))] ^= 1 << rng.randrange(8)
            no_sig = cbor2.dumps(cbor2.CBORTag(18, [*cose.value[:3], bytes(sig)]))
            payload = cbor2.loads(cose.value[2])
            payload["version"] = 100 + r  # raised by the attacker, signature kept
            raised = cbor2.dumps(cbor2.CBORTag(18, [cose.value[0], cose.value[1],
                                                    cbor2.dumps(payload), cose.value[3]]))
            zero_sig = cbor2.dumps(cbor2.CBORTag(18, [*cose.value[:3], bytes(64)]))
            cases = {"signature bit-flipped": (f"rel-good{r}", no_sig),
                     "unsigned (zero signature)": (f"rel-good{r}", zero_sig),
                     "payload changed": (f"rel-good{r}", raised),
                     "wrong key": (f"rel-rogue{r}", None),
                     "downgrade (v1, signed)": ("rel-v1", None)}
            for name, (src, manifest) in cases.items():
                serve(workdir / src, manifest)
                time.sleep(0.2)
                fig.fw_attempts[name] = fig.fw_attempts.get(name, 0) + 1
                code, out = _driver(state, "fetch", host, str(port), pub)
                reason = next((ln.split()[1].rstrip(":") for ln in out.splitlines()
                               if ln.startswith("ERROR ")), "none")
                fig.fw_reasons[reason] = fig.fw_reasons.get(reason, 0) + 1
                _, after = _driver(state, "boot")
                if code == 0 or "PENDING" in out or _boot_line(after) != "BOOT normal 1 2":
                    fig.fw_activated += 1
    finally:
        gw.stop()


# ---------------------------------------------------------------- run and print


def run(workdir: Path, reboots: int, datagrams: int, fw_rounds: int, cmd_rounds: int = 3,
        seed: int | None = None,
        progress: bool = False, max_reboot_s: float = float("inf"),
        parallel_delayed: bool = False) -> Figures:
    """All parts, one after another; with `parallel_delayed` the delayed-command part
    (its own cloud, gateway, relay and nodes; nearly all of it waiting out held ACKs and
    command ttls) runs in a thread beside the other two. The parts share no process,
    port, directory or Figures field, and only the other two draw from the seeded rng, in
    the same order either way."""
    rng = random.Random(seed)
    fig = Figures()
    t0 = time.monotonic()
    delayed: threading.Thread | None = None
    errors: list[BaseException] = []
    if parallel_delayed:
        def measure() -> None:
            try:
                measure_delayed(workdir / "delayed", fig, cmd_rounds)
            except BaseException as exc:  # re-raised in the caller's thread below
                errors.append(exc)
        delayed = threading.Thread(target=measure, name="delayed-commands")
        delayed.start()
    try:
        measure_oscore(workdir / "oscore", fig, reboots, datagrams, rng, progress,
                       max_reboot_s)
        if delayed is None:
            measure_delayed(workdir / "delayed", fig, cmd_rounds)
        measure_firmware(workdir / "firmware", fig, fw_rounds, rng)
    finally:
        if delayed is not None:
            delayed.join()
    if errors:
        raise errors[0]
    fig.seconds = time.monotonic() - t0
    return fig


def table(fig: Figures) -> str:
    fw_total = sum(fig.fw_attempts.values())
    rows = [
        ("(a) replayed captures accepted", fig.replays_accepted,
         f"{fig.replays_sent} replays over 4 phases: same gateway run, after a clean "
         f"restart, after kill -9, after one more node boot"),
        ("(b) forged / bit-flipped accepted", fig.forged_accepted,
         f"{fig.forged_sent} sent (bit flips anywhere, in the tag, fresh PIV + random "
         "ciphertext)"),
        ("(c) PIV reused, other ciphertext", fig.piv_reused_other_ciphertext,
         f"{fig.pivs} requests on the wire, {fig.distinct_pivs} distinct (kid, PIV), "
         f"{fig.reboots} kill -9 reboots"),
        ("(c) PIV reused across boots", fig.piv_reused_across_boots,
         "any (kid, PIV) seen in two node incarnations"),
        ("(d) delayed commands executed", fig.delayed_executed,
         f"{fig.delayed_sent} commands (ttl 5 s) whose 2.04 was held back 8 s, "
         f"{fig.delayed_stale} refused err:stale; control, not held: "
         f"{fig.control_executed}/{fig.control_sent} executed; by board: "
         + ", ".join(f"{k} {v['executed']}/{v['held']}"
                     for k, v in fig.delayed_by_board.items())),
        ("(e) bad firmware activated", fig.fw_activated,
         f"{fw_total} attempts: " + ", ".join(f"{k} {v}" for k, v in fig.fw_attempts.items())
         + "; refusals: " + ", ".join(f"{k} {v}" for k, v in sorted(fig.fw_reasons.items()))),
        ("(f) max response/request bytes", f"{fig.max_ratio:.2f}",
         f"{fig.hostile_sent} unauthenticated datagrams, {fig.hostile_answered} answered"),
    ]
    w = max(len(r[0]) for r in rows)
    lines = [f"{name:<{w}}  {value!s:>12}  {what}" for name, value, what in rows]
    lines.append(f"readings the node got accepted meanwhile: {fig.legit_stored}; "
                 f"gateway refusals: {json.dumps(fig.rejected, sort_keys=True)}")
    if fig.max_ratio > 1:
        lines.append(f"largest answer: {fig.worst}")
        lines.append(f"answers larger than their request: {fig.over_one}")
    lines.append(f"took {fig.seconds:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.security_figures",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--reboots", type=int, default=1000, help="node kill -9 reboots (1000)")
    p.add_argument("--datagrams", type=int, default=3000,
                   help="replays per phase, forgeries and hostile datagrams (3000)")
    p.add_argument("--fw-rounds", type=int, default=10, help="rounds of bad images (10)")
    p.add_argument("--cmd-rounds", type=int, default=10,
                   help="delayed commands (and as many controls) (10)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-reboot-s", type=float, default=float("inf"),
                   help="stop rebooting after this many seconds (the table says how many)")
    a = p.parse_args(argv)
    if min(a.reboots, a.datagrams, a.fw_rounds, a.cmd_rounds) < 1:
        p.error("--reboots, --datagrams, --fw-rounds and --cmd-rounds must be >= 1")
    with tempfile.TemporaryDirectory(prefix="machi-secfig-") as tmp:
        fig = run(Path(tmp), a.reboots, a.datagrams, a.fw_rounds, a.cmd_rounds, a.seed,
                  progress=True,
                  max_reboot_s=a.max_reboot_s)
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(table(fig))
    bad = (fig.delayed_executed or fig.replays_accepted or fig.forged_accepted
           or fig.piv_reused_other_ciphertext or fig.piv_reused_across_boots
           or fig.fw_activated or fig.max_ratio > 1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
