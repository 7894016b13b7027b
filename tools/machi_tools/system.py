"""The whole pipeline on one machine: cloud, gateway and a fleet of emulated nodes.

Used by `machi demo`, `machi fleet` and `hil_tests/`. Each part is started as the real
program an operator would run (`machi-cloud`, `machi-gateway`, `micropython firmware/main.py`)
with files written into one working directory, so a failed run leaves everything to inspect:
configs, databases, node state and one log per process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .procs import ManagedProcess, ProcessError, executable, firmware_dir

NODE_TYPES = {"env": "env", "bin": "bin", "light": "light"}
#: how an emulated node's readings leave: CoAP over UDP, LoRa compact frames through a
#: virtual concentrator (vconcentrator.py), CoAP through an emulated NB-IoT modem
TRANSPORTS = ("udp", "lora", "nbiot")
_LOG_LINE = re.compile(r"^(?P<level>[IWE]) (?P<device>\S+) (?P<event>\w+)(?P<rest>.*)$")
_KV = re.compile(r"(\w+)=(\S+)")


def new_token(nbytes: int) -> str:
    """A random URL-safe token that does not start with "-": people paste tokens after
    options (`--admin-token X`), and argparse would take "-abc..." for an option."""
    while True:
        token = secrets.token_urlsafe(nbytes)
        if not token.startswith("-"):
            return token


@dataclass(frozen=True)
class CoapProfile:
    """CoAP retransmission parameters for emulated nodes (RFC 7252 defaults)."""

    ack_timeout_s: float = 2.0
    ack_random_factor: float = 1.5
    max_retransmit: int = 4

    def __post_init__(self) -> None:
        if self.ack_timeout_s <= 0 or self.ack_random_factor < 1 or self.max_retransmit < 0:
            raise ValueError(f"invalid CoAP profile {self}")


@dataclass(frozen=True)
class NodeSpec:
    """One emulated node: its identity and how it behaves."""

    device_id: str
    type: str
    interval_s: float = 2.0
    count: int = 0
    seed: int = 1
    transport: str = "udp"
    # the registry's short id and device key (32 hex digits): a LoRa node's address and MIC
    # key (with_radio_ids), a CoAP node's OSCORE Sender ID and master secret (fleet_specs)
    short_id: int | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.type not in NODE_TYPES:
            raise ValueError(f"node type must be one of {sorted(NODE_TYPES)}, not {self.type!r}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, "
                             f"not {self.transport!r}")
        if self.short_id is not None and not 0 <= self.short_id <= 0xFFFF:
            raise ValueError(f"short id of {self.device_id} must be 0..65535")
        if self.key is not None and not re.fullmatch(r"[0-9a-f]{32}", self.key):
            raise ValueError(f"key of {self.device_id} must be 32 lowercase hex digits")
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", self.device_id):
            raise ValueError(f"bad device id {self.device_id!r}")
        if self.interval_s <= 0 or self.count < 0:
            raise ValueError(f"interval must be > 0 and count >= 0 ({self.device_id})")


# short ids by type, so that specs made by separate fleet_specs() calls never share one
_SHORT_ID_BASE = {"env": 0x0000, "bin": 0x4000, "light": 0x8000}
_SHORT_IDS_PER_TYPE = 0x3FFF


def fleet_short_id(node_type: str, number: int) -> int:
    """The short id of `<type>-<number>` in an emulated fleet (unique across types)."""
    if node_type not in _SHORT_ID_BASE:
        raise ValueError(f"node type must be one of {sorted(NODE_TYPES)}, not {node_type!r}")
    if not 1 <= number <= _SHORT_IDS_PER_TYPE:
        raise ValueError(f"{node_type}-{number:04d}: numbers 1..{_SHORT_IDS_PER_TYPE} get a "
                         "short id (keys=False for a fleet without keys)")
    return _SHORT_ID_BASE[node_type] + number


def fleet_specs(
    counts: dict[str, int], *, interval_s: float = 2.0, count: int = 0, first: int = 1,
    transport: str = "udp", keys: bool = True,
) -> list[NodeSpec]:
    """Nodes named `<type>-0001`, `<type>-0002`, ... for each type in `counts`.

    With `keys` (the default) every node gets a short id and a fresh random key: a CoAP
    node then talks OSCORE to the gateway (docs/security.md §2.9), a LoRa node uses them
    for its frames. Write the same specs to the gateway's devices file."""
    specs = []
    for node_type, n in counts.items():
        for i in range(first, first + n):
            specs.append(
                NodeSpec(
                    device_id=f"{node_type}-{i:04d}",
                    type=node_type,
                    interval_s=interval_s,
                    count=count,
                    seed=i,
                    transport=transport,
                    short_id=fleet_short_id(node_type, i) if keys else None,
                    key=secrets.token_hex(16) if keys else None,
                )
            )
    return specs


def parse_mix(text: str) -> dict[tuple[str, str], int]:
    """`env:lora=3,bin:nbiot=2,light=1` -> {(type, transport): n}; transport udp if left out.
    ValueError names the part that is wrong."""
    out: dict[tuple[str, str], int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        what, sep, n = part.partition("=")
        node_type, _, transport = what.partition(":")
        transport = transport or "udp"
        if not sep or not n.isdigit():
            raise ValueError(f"{part!r}: expected TYPE[:TRANSPORT]=N")
        if node_type not in NODE_TYPES or transport not in TRANSPORTS:
            raise ValueError(f"{part!r}: type is one of {', '.join(NODE_TYPES)}, transport one "
                             f"of {', '.join(TRANSPORTS)}")
        out[(node_type, transport)] = out.get((node_type, transport), 0) + int(n)
    if not out:
        raise ValueError("empty mix")
    return out


def mix_specs(mix: dict[tuple[str, str], int], *, interval_s: float = 2.0, count: int = 0,
              first: int = 1) -> list[NodeSpec]:
    """Specs for a mix; numbering runs on per type, whatever the transport."""
    specs: list[NodeSpec] = []
    next_no: dict[str, int] = {}
    for (node_type, transport), n in mix.items():
        start = next_no.get(node_type, first)
        specs += fleet_specs({node_type: n}, interval_s=interval_s, count=count, first=start,
                             transport=transport)
        next_no[node_type] = start + n
    return with_radio_ids(specs)


def with_radio_ids(specs: list[NodeSpec]) -> list[NodeSpec]:
    """Give every LoRa node without one a unique short id and a fresh random key."""
    used = {s.short_id for s in specs if s.short_id is not None}
    out = []
    nxt = 1
    for s in specs:
        if s.transport == "lora" and (s.short_id is None or s.key is None):
            while nxt in used:
                nxt += 1
            used.add(nxt)
            s = replace(s, short_id=s.short_id if s.short_id is not None else nxt,
                        key=s.key or secrets.token_hex(16))
        out.append(s)
    return out


def write_devices_file(path: Path, specs: Iterable[NodeSpec]) -> None:
    """The gateway's device registry (it re-reads the file when it changes)."""
    data = {"devices": [{"id": s.device_id, "type": s.type,
                         **({"short_id": s.short_id} if s.short_id is not None else {}),
                         **({"key": s.key} if s.key is not None else {})} for s in specs]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.chmod(0o600)  # it may hold device keys
    tmp.replace(path)


@dataclass
class Cloud:
    """`machi-cloud` on a free loopback port with a fresh SQLite database."""

    workdir: Path
    gateway_id: str = "gw-01"
    token: str = field(default_factory=lambda: new_token(24))
    process: ManagedProcess | None = None
    url: str = ""
    port: int = 0  # 0: a free port at first start; a restart keeps the port it got
    # people's tokens, "name=ROLE:TOKEN,..." (MACHI_CLOUD_API_TOKENS), e.g. an admin for
    # `machi provision`; empty: none
    api_tokens: str = ""
    # serve HTTPS directly (`--tls-cert/--tls-key`, PEM files); None: plain HTTP
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def start(self, timeout: float = 30.0) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(
            name="cloud",
            argv=[
                executable("machi-cloud"),
                "--db", str(self.workdir / "cloud.sqlite"),
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--ready-file", str(self.workdir / "cloud.ready"),
                *(["--tls-cert", str(self.tls_cert), "--tls-key", str(self.tls_key)]
                  if self.tls_cert is not None and self.tls_key is not None else []),
            ],
            log_path=self.workdir / "logs" / "cloud.log",
            ready_file=self.workdir / "cloud.ready",
            env={"MACHI_CLOUD_GATEWAY_TOKENS": f"{self.gateway_id}={self.token}",
                 **({"MACHI_CLOUD_API_TOKENS": self.api_tokens} if self.api_tokens else {})},
        )
        self.process.start()
        self.url = str(self.process.wait_ready(timeout)["url"])
        self.port = int(self.url.rsplit(":", 1)[1])
        return self.url

    def stop(self) -> int | None:
        return self.process.stop() if self.process else None

    def kill(self) -> None:
        if self.process:
            self.process.kill()


@dataclass
class Gateway:
    """`machi-gateway` with a generated TOML config, its queue in `workdir/gateway`."""

    workdir: Path
    cloud_url: str
    token: str
    gateway_id: str = "gw-01"
    batch_max: int = 500
    batch_age_s: float = 0.5
    coap_port: int = 0
    # fetch the device registry from the cloud (C4) every sync_interval_s, not only the file
    devices_sync: bool = False
    sync_interval_s: float = 1.0
    # long-poll the cloud for commands and deliver them in the nodes' ACKs (C2/C3)
    downlink: bool = False
    downlink_idle_s: float = 0.5
    # the long-poll wait the gateway asks of the cloud ([downlink] wait_s, 0..30 s). Short
    # (it was 10 s) so that no stop in a test waits on a held poll, whichever process
    # stops first (the cloud answers held polls when it stops); a command created
    # meanwhile still ends the wait at once
    downlink_wait_s: int = 2
    # the Semtech UDP packet-forwarder server, for LoRa nodes behind a virtual concentrator
    lora_udp: bool = False
    lora_port: int = 0
    # [coap] oscore: "off", "optional" (plain and protected) or "required" (docs/gateway.md)
    oscore: str = "optional"
    # [cloud] TLS trust for an https:// cloud_url: a CA/self-signed PEM file, SPKI pins
    ca_file: Path | None = None
    pins: tuple[str, ...] = ()
    # [gateway] data_dir (the queue, OSCORE state); None: workdir/gateway. A test puts it on
    # a small filesystem of its own to fill the disk (hil_tests/test_full_disk.py)
    data_dir: Path | None = None
    # [queue] retry_after_s, the Max-Age of a 5.03; None: the gateway's default
    retry_after_s: int | None = None
    process: ManagedProcess | None = None
    coap: tuple[str, int] = ("127.0.0.1", 0)
    lora: tuple[str, int] = ("127.0.0.1", 0)
    health_url: str = ""

    @property
    def config_path(self) -> Path:
        return self.workdir / "gateway.toml"

    @property
    def devices_path(self) -> Path:
        return self.workdir / "devices.json"

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.devices_path.exists():
            write_devices_file(self.devices_path, [])
        self.config_path.write_text(
            "\n".join(
                [
                    "[gateway]",
                    f'id = "{self.gateway_id}"',
                    f'data_dir = "{self.data_dir or self.workdir / "gateway"}"',
                    "[coap]",
                    'host = "127.0.0.1"',
                    f"port = {self.coap_port}",
                    f'oscore = "{self.oscore}"',
                    # every emulated node (and the fault proxy) sends from 127.0.0.1: one
                    # source for the whole fleet, unlike a real district
                    "rate_per_source = 0",
                    "[devices]",
                    f'file = "{self.devices_path}"',
                    *(["sync = true", f"sync_interval_s = {self.sync_interval_s}"]
                      if self.devices_sync else []),
                    "[uplink]",
                    f'url = "{self.cloud_url}"',
                    f'token = "{self.token}"',
                    f"batch_max = {self.batch_max}",
                    f"batch_age_s = {self.batch_age_s}",
                    "backoff_initial_s = 0.2",
                    "backoff_max_s = 2.0",
                    "timeout_s = 5",
                    *(["[queue]", f"retry_after_s = {self.retry_after_s}"]
                      if self.retry_after_s is not None else []),
                    *(["[cloud]", *([f'ca_file = "{self.ca_file}"'] if self.ca_file else []),
                       f"pin_sha256 = {json.dumps(list(self.pins))}"]
                      if self.ca_file or self.pins else []),
                    *(["[downlink]", "enabled = true", f"wait_s = {self.downlink_wait_s}",
                       f"idle_s = {self.downlink_idle_s}"] if self.downlink else []),
                    *(["[lora_udp]", "enabled = true", 'host = "127.0.0.1"',
                       f"port = {self.lora_port}", "confirm = true"] if self.lora_udp else []),
                    "[health]",
                    'host = "127.0.0.1"',
                    "port = 0",
                    "",
                ]
            )
        )

    def start(self, timeout: float = 30.0) -> tuple[str, int]:
        self.write_config()
        ready = self.workdir / "gateway.ready"
        self.process = ManagedProcess(
            name="gateway",
            argv=[
                executable("machi-gateway"),
                "--config", str(self.config_path),
                "--ready-file", str(ready),
            ],
            log_path=self.workdir / "logs" / "gateway.log",
            ready_file=ready,
        )
        self.process.start()
        info = self.process.wait_ready(timeout)
        host, port = info["coap"]
        self.coap = (str(host), int(port))
        self.health_url = str(info["health"])
        # a restart keeps the port the nodes were configured with
        self.coap_port = self.coap[1]
        if self.lora_udp:
            lhost, lport = info["lora_udp"]
            self.lora = (str(lhost), int(lport))
            self.lora_port = self.lora[1]
        return self.coap

    def stop(self) -> int | None:
        return self.process.stop(timeout=15) if self.process else None

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.health_url}/healthz", timeout=5) as resp:
            data: dict[str, Any] = json.load(resp)
        return data

    def wait_devices(self, n: int, timeout: float = 10.0) -> None:
        """Wait until the gateway has (re)loaded a registry of `n` devices."""
        deadline = time.monotonic() + timeout
        while (known := self.health().get("devices")) != n:
            if time.monotonic() > deadline:
                raise ProcessError(f"gateway knows {known} devices, expected {n}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process:
            self.process.kill()


@dataclass(frozen=True)
class NodeEvent:
    """One parsed log line of a node (see firmware/main.py for the format)."""

    level: str
    device: str
    event: str
    fields: dict[str, str]


def parse_node_log(text: str) -> Iterator[NodeEvent]:
    for line in text.splitlines():
        m = _LOG_LINE.match(line.strip())
        if m:
            yield NodeEvent(
                level=m["level"],
                device=m["device"],
                event=m["event"],
                fields=dict(_KV.findall(m["rest"])),
            )


@dataclass
class Node:
    """One emulated node: the real firmware on the real MicroPython unix port."""

    spec: NodeSpec
    workdir: Path
    gateway: tuple[str, int]
    coap: CoapProfile = CoapProfile()
    heapsize: str = "256K"
    drain_timeout_s: float = 60.0
    process: ManagedProcess | None = None
    radio: tuple[str, int] | None = None  # LoRa: the virtual concentrator's radio side
    uart: str | None = None  # NB-IoT: the emulated modem's pty
    lora_budget_s: float = 36.0  # LoRa: airtime allowed per hour (1 % duty cycle)

    @property
    def config_path(self) -> Path:
        return self.workdir / "nodes" / f"{self.spec.device_id}.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "logs" / f"{self.spec.device_id}.log"

    def config(self) -> dict[str, Any]:
        spec = self.spec
        where = self.gateway
        extra: dict[str, Any] = {}
        if spec.transport == "lora":
            if self.radio is None or spec.short_id is None or spec.key is None:
                raise ValueError(f"{spec.device_id}: a LoRa node needs a radio address, "
                                 "a short id and a key (with_radio_ids)")
            where = self.radio  # the emulated radio sends its frames to the concentrator
            extra = {"transport": "lora", "lora": {"short_id": spec.short_id, "key": spec.key,
                                                   "budget_s": self.lora_budget_s}}
        elif spec.transport == "nbiot":
            if self.uart is None:
                raise ValueError(f"{spec.device_id}: an NB-IoT node needs its modem's pty")
            extra = {"transport": "nbiot", "nbiot": {"uart": self.uart}}
        if spec.transport != "lora" and spec.key is not None and spec.short_id is not None:
            # CoAP (UDP or NB-IoT) with a key: OSCORE (docs/security.md §2.9)
            extra["oscore"] = {"key": spec.key, "short_id": spec.short_id}
        return {
            **extra,
            "device_id": self.spec.device_id,
            "type": self.spec.type,
            "gateway": {"host": where[0], "port": where[1]},
            "interval_s": self.spec.interval_s,
            "count": self.spec.count,
            "drain_timeout_s": self.drain_timeout_s,
            "state_dir": str(self.workdir / "state" / self.spec.device_id),
            "seed": self.spec.seed,
            "coap": {
                "ack_timeout_s": self.coap.ack_timeout_s,
                "ack_random_factor": self.coap.ack_random_factor,
                "max_retransmit": self.coap.max_retransmit,
            },
        }

    def start(self) -> None:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        (self.workdir / "state" / self.spec.device_id).mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=1))
        self.process = ManagedProcess(
            name=self.spec.device_id,
            argv=[
                executable("micropython"),
                "-X", f"heapsize={self.heapsize}",
                str(firmware_dir() / "main.py"),
                str(self.config_path),
            ],
            log_path=self.log_path,
            stop_signal=signal.SIGINT,
        )
        self.process.start()

    def events(self) -> list[NodeEvent]:
        try:
            return list(parse_node_log(self.log_path.read_text(errors="replace")))
        except FileNotFoundError:
            return []

    def recorded_seqs(self) -> list[int]:
        """Every seq the node accepted (`rec` lines): the readings it promised to deliver."""
        return [int(e.fields["seq"]) for e in self.events() if e.event == "rec"]

    def acked_seqs(self) -> list[int]:
        return [int(e.fields["seq"]) for e in self.events() if e.event == "ack"]

    def exit_code(self) -> int | None:
        """The node's exit code, None while it runs."""
        return self.process.returncode() if self.process else None


def _heapsize(nodes: int) -> str:
    """MicroPython heap for `nodes` nodes in one process: ~90 KB of loaded code plus 7.5 KB
    per node measured, 15 KB with OSCORE (docs/hil.md), with room to spare."""
    return f"{256 + 32 * nodes}K"


@dataclass(eq=False)
class NodeGroup:
    """Several emulated nodes in one MicroPython process (`firmware/multi.py`), so that a
    1,000-node fleet needs tens of processes, not a thousand. The nodes share the process's
    log; it is parsed as it grows and split by the device id every line carries."""

    name: str
    workdir: Path
    members: list[GroupedNode] = field(default_factory=list)
    process: ManagedProcess | None = None
    _offset: int = 0
    _events: dict[str, list[NodeEvent]] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.workdir / "nodes" / f"{self.name}.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "logs" / f"{self.name}.log"

    def start(self) -> None:
        """Start (or, after a power cut, start again) the process running every member."""
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        configs = [m.config() for m in self.members]
        for cfg in configs:
            Path(cfg["state_dir"]).mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps({"nodes": configs}, indent=1))
        # a power cut may have stopped a line half-written: the next run starts a new one
        with contextlib.suppress(FileNotFoundError), open(self.log_path, "rb+") as log:
            if log.seek(0, os.SEEK_END) > 0:
                log.seek(-1, os.SEEK_END)
                if log.read(1) != b"\n":
                    log.write(b"\n")
        if self.process is None:
            self.process = ManagedProcess(
                name=self.name,
                argv=[
                    executable("micropython"),
                    "-X", f"heapsize={_heapsize(len(self.members))}",
                    str(firmware_dir() / "multi.py"),
                    str(self.config_path),
                ],
                log_path=self.log_path,
                stop_signal=signal.SIGINT,
            )
        self.process.start()
        for m in self.members:
            m.process = self.process

    def events(self, device: str) -> list[NodeEvent]:
        """Every line of `device` so far (only the new part of the log is read)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            data = b""
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        self._offset += end
        for e in parse_node_log(data[:end].decode(errors="replace")):
            self._events.setdefault(e.device, []).append(e)
        return self._events.get(device, [])

    def exit_code(self, device: str) -> int | None:
        """`code=` of the device's `stop` line in the last run, else the process's code."""
        rc = self.process.returncode() if self.process else None
        if rc is None:
            return None
        code: int | None = rc
        for e in self.events(device):
            if e.event == "start":
                code = rc  # an earlier run's stop line does not count
            elif e.event == "stop" and "code" in e.fields:
                code = int(e.fields["code"])
        return code


@dataclass(eq=False)
class GroupedNode(Node):
    """A node of a NodeGroup: the same interface as Node, its process shared."""

    group: NodeGroup | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        assert self.group is not None
        return self.group.log_path

    def start(self) -> None:
        """Power the node up: starts the group's process unless it runs already."""
        assert self.group is not None
        if self.process is None or not self.process.alive():
            self.group.start()

    def events(self) -> list[NodeEvent]:
        assert self.group is not None
        return list(self.group.events(self.spec.device_id))

    def exit_code(self) -> int | None:
        assert self.group is not None
        return self.group.exit_code(self.spec.device_id)


@dataclass
class Fleet:
    """Many nodes, started and stopped together."""

    specs: list[NodeSpec]
    workdir: Path
    gateway: tuple[str, int]
    coap: CoapProfile = CoapProfile()
    drain_timeout_s: float = 60.0
    nodes: list[Node] = field(default_factory=list)
    # nodes per MicroPython process: 1 = a process each (firmware/main.py); more runs them
    # in groups (firmware/multi.py, NodeGroup)
    per_process: int = 1
    groups: list[NodeGroup] = field(default_factory=list)
    # LoRa nodes: the gateway's Semtech UDP port, where the virtual concentrator forwards
    lora_gateway: tuple[str, int] | None = None
    radio_loss: float = 0.0  # share of LoRa frames (and acks) lost on the air
    lora_budget_s: float = 36.0  # LoRa airtime per node and hour (the regulator's share)
    seed: int = 1
    concentrator: ManagedProcess | None = None
    radio: tuple[str, int] | None = None  # the concentrator's radio side, once started
    modems: dict[str, ManagedProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.per_process < 1:
            raise ValueError(f"per_process must be >= 1, not {self.per_process}")
        if self.per_process > 1 and any(s.transport != "udp" for s in self.specs):
            # firmware/lib/multinode.py: the LoRa radio and the NB-IoT modem block
            raise ValueError("only udp nodes can share a process (per_process > 1)")

    def _start_groups(self) -> None:
        for first in range(0, len(self.specs), self.per_process):
            group = NodeGroup(name=f"group-{first // self.per_process + 1:03d}",
                              workdir=self.workdir)
            for spec in self.specs[first:first + self.per_process]:
                group.members.append(GroupedNode(
                    spec=spec, workdir=self.workdir, gateway=self.gateway, coap=self.coap,
                    drain_timeout_s=self.drain_timeout_s, group=group, radio=self.radio,
                    lora_budget_s=self.lora_budget_s,
                    uart=self._start_modem(spec) if spec.transport == "nbiot" else None))
            group.start()
            self.groups.append(group)
            self.nodes.extend(group.members)

    def processes(self) -> list[ManagedProcess]:
        """Every node process, each once (a group's is shared by its nodes)."""
        seen: dict[int, ManagedProcess] = {}
        for n in self.nodes:
            if n.process is not None:
                seen.setdefault(id(n.process), n.process)
        return list(seen.values())

    def start(self) -> None:
        self.radio = self._start_concentrator()
        if self.per_process > 1:
            self._start_groups()
            return
        for spec in self.specs:
            uart = self._start_modem(spec) if spec.transport == "nbiot" else None
            node = Node(spec=spec, workdir=self.workdir, gateway=self.gateway, coap=self.coap,
                        drain_timeout_s=self.drain_timeout_s, radio=self.radio, uart=uart,
                        lora_budget_s=self.lora_budget_s)
            node.start()
            self.nodes.append(node)

    def _start_concentrator(self) -> tuple[str, int] | None:
        """The virtual concentrator in front of the gateway, if any node is a LoRa one."""
        if not any(s.transport == "lora" for s in self.specs):
            return None
        if self.lora_gateway is None:
            raise ValueError("LoRa nodes need the gateway's Semtech UDP port (lora_gateway)")
        host, port = self.lora_gateway
        self.concentrator = _helper(
            "vconcentrator", self.workdir,
            ["--gateway", f"{host}:{port}", "--seed", str(self.seed),
             "--up-loss", str(self.radio_loss), "--down-loss", str(self.radio_loss)])
        lhost, lport = self.concentrator.wait_ready()["listen"]
        return str(lhost), int(lport)

    def _start_modem(self, spec: NodeSpec) -> str:
        """An emulated NB-IoT modem (a pty) for one node; its socket goes where the node's
        AT+QIOPEN says: the gateway's CoAP port (or the fault proxy before it)."""
        name = f"modem-{spec.device_id}"
        proc = _helper("emumodem", self.workdir, [], name=name)
        self.modems[spec.device_id] = proc
        return str(proc.wait_ready()["pty"])

    def radio_stats(self) -> dict[str, int]:
        """The virtual concentrator's counters (written when it stops)."""
        path = self.workdir / "vconcentrator.stats"
        data: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
        return data

    def wait(self, timeout: float) -> dict[str, int | None]:
        """Wait for nodes with a `count` to finish; returns exit codes (None: still running)."""
        deadline = time.monotonic() + timeout
        for proc in self.processes():
            remaining = max(0.1, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(remaining)
        return {n.spec.device_id: n.exit_code() for n in self.nodes}

    def stop(self) -> None:
        # one SIGINT per process (a second would cut a node's clean shutdown short), all at
        # once, then wait for each
        for proc in self.processes():
            proc.signal(signal.SIGINT)
        for proc in self.processes():
            proc.stop(timeout=10 + len(self.nodes) // 100, signalled=True)
        for helper in (self.concentrator, *self.modems.values()):
            if helper is not None:
                helper.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(15)}" for p in self.processes())


def start_fault_proxy(workdir: Path, target: tuple[str, int], *, seed: int = 1,
                      **faults: float) -> tuple[ManagedProcess, tuple[str, int]]:
    """The UDP fault proxy (faultproxy.py) in front of `target`: (process, its address)."""
    args = ["--target", f"{target[0]}:{target[1]}", "--seed", str(seed)]
    for key, value in faults.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    proc = _helper("faultproxy", workdir, args, name="udpproxy")
    host, port = proc.wait_ready()["listen"]
    return proc, (str(host), int(port))


def _helper(module: str, workdir: Path, args: list[str], *, name: str = "") -> ManagedProcess:
    """A `python -m machi_tools.<module>` helper process with a ready file and stats file."""
    name = name or module
    proc = ManagedProcess(
        name=name,
        argv=[sys.executable, "-m", f"machi_tools.{module}", *args,
              "--ready-file", str(workdir / f"{name}.ready"),
              "--stats-file", str(workdir / f"{name}.stats")],
        log_path=workdir / "logs" / f"{name}.log",
        ready_file=workdir / f"{name}.ready",
    )
    proc.start()
    return proc


__all__ = [
    "TRANSPORTS", "Cloud", "CoapProfile", "Fleet", "Gateway", "GroupedNode", "Node",
    "NodeEvent", "NodeGroup", "NodeSpec",
    "ProcessError", "fleet_short_id", "fleet_specs", "mix_specs", "parse_mix", "parse_node_log",
    "provisioned_system", "register_on_map", "start_fault_proxy", "stop_system",
    "with_radio_ids", "write_devices_file",
]


def stop_system(cloud: Cloud, gateway: Gateway | None = None, fleet: Fleet | None = None) -> None:
    """Stop what was started, nodes first (nothing more to send), then the gateway (it
    flushes its queue), then the cloud (it answers the gateway to the end)."""
    try:
        if fleet is not None:
            fleet.stop()
    finally:
        try:
            if gateway is not None:
                gateway.stop()
        finally:
            cloud.stop()


# Shiojiri, Nagano: the nodes are laid out on a small grid around the city hall
_ORIGIN = (36.1150, 137.9540)


def register_on_map(url: str, admin_token: str, gateway_id: str,
                    specs: list[NodeSpec], site: str = "demo") -> list[NodeSpec]:
    """Register every node with the cloud, with coordinates, so the dashboard's map and the
    streetlight controls have something to show, and have the cloud issue its key (as
    `machi provision` does for real ones). Returns the specs with the cloud's short id and
    key: the node's OSCORE identity."""
    from .cloudapi import CloudClient  # an HTTP client only where nodes get registered

    out = []
    with CloudClient(url, admin_token) as cloud:
        for i, spec in enumerate(specs):
            lat = _ORIGIN[0] + (i // 3) * 0.004 - 0.004
            lon = _ORIGIN[1] + (i % 3) * 0.005 - 0.005
            reg = cloud.register(spec.device_id, {
                "type": spec.type, "gateway": gateway_id, "site": site, "lat": round(lat, 5),
                "lon": round(lon, 5), "transport": "coap"})
            if reg.short_id is None:
                raise RuntimeError(f"the cloud gave {spec.device_id} no short id")
            out.append(replace(spec, short_id=reg.short_id, key=reg.key.hex()))
    return out


@contextlib.contextmanager
def provisioned_system(
    workdir: Path, counts: dict[str, int], *, admin_token: str, api_tokens: str,
    interval_s: float, gateway_type: type[Gateway] | None = None, **gateway_options: Any,
) -> Iterator[tuple[Cloud, Gateway, Fleet]]:
    """A cloud, a gateway that syncs its devices and commands from it, and a fleet whose
    nodes were registered as `machi provision` does (the cloud's key and short id go to the
    node for OSCORE and, by the registry sync, to the gateway); all stopped on exit."""

    cloud = Cloud(workdir=workdir, api_tokens=api_tokens)
    gateway: Gateway | None = None
    fleet: Fleet | None = None
    try:
        cloud.start()
        specs = register_on_map(cloud.url, admin_token, cloud.gateway_id,
                                fleet_specs(counts, interval_s=interval_s), site="hil")
        gateway = (gateway_type or Gateway)(
            workdir=workdir, cloud_url=cloud.url, token=cloud.token, devices_sync=True,
            downlink=True, batch_age_s=0.3, **gateway_options)
        gateway.start()
        gateway.wait_devices(len(specs))
        fleet = Fleet(specs=specs, workdir=workdir, gateway=gateway.coap,
                      coap=CoapProfile(ack_timeout_s=0.5))
        fleet.start()
        yield cloud, gateway, fleet
    finally:
        stop_system(cloud, gateway, fleet)
