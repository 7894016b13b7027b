"""The whole pipeline on one machine: cloud, gateway and a fleet of emulated nodes.

Used by `machi demo`, `machi fleet` and `hil_tests/`. Each part is started as the real
program an operator would run (`machi-cloud`, `machi-gateway`, `micropython firmware/main.py`)
with files written into one working directory, so a failed run leaves everything to inspect:
configs, databases, node state and one log per process.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import ManagedProcess, ProcessError, executable, firmware_dir

NODE_TYPES = {"env": "env", "bin": "bin", "light": "light"}
_LOG_LINE = re.compile(r"^(?P<level>[IWE]) (?P<device>\S+) (?P<event>\w+)(?P<rest>.*)$")
_KV = re.compile(r"(\w+)=(\S+)")


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

    def __post_init__(self) -> None:
        if self.type not in NODE_TYPES:
            raise ValueError(f"node type must be one of {sorted(NODE_TYPES)}, not {self.type!r}")
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", self.device_id):
            raise ValueError(f"bad device id {self.device_id!r}")
        if self.interval_s <= 0 or self.count < 0:
            raise ValueError(f"interval must be > 0 and count >= 0 ({self.device_id})")


def fleet_specs(
    counts: dict[str, int], *, interval_s: float = 2.0, count: int = 0, first: int = 1
) -> list[NodeSpec]:
    """Nodes named `<type>-0001`, `<type>-0002`, ... for each type in `counts`."""
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
                )
            )
    return specs


def write_devices_file(path: Path, specs: Iterable[NodeSpec]) -> None:
    """The gateway's device registry (it re-reads the file when it changes)."""
    data = {"devices": [{"id": s.device_id, "type": s.type} for s in specs]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


@dataclass
class Cloud:
    """`machi-cloud` on a free loopback port with a fresh SQLite database."""

    workdir: Path
    gateway_id: str = "gw-01"
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    process: ManagedProcess | None = None
    url: str = ""
    port: int = 0  # 0: a free port at first start; a restart keeps the port it got
    # people's tokens, "name=ROLE:TOKEN,..." (MACHI_CLOUD_API_TOKENS), e.g. an admin for
    # `machi provision`; empty: none
    api_tokens: str = ""

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
    process: ManagedProcess | None = None
    coap: tuple[str, int] = ("127.0.0.1", 0)
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
                    f'data_dir = "{self.workdir / "gateway"}"',
                    "[coap]",
                    'host = "127.0.0.1"',
                    f"port = {self.coap_port}",
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
                    *(["[downlink]", "enabled = true", "wait_s = 10",
                       f"idle_s = {self.downlink_idle_s}"] if self.downlink else []),
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

    @property
    def config_path(self) -> Path:
        return self.workdir / "nodes" / f"{self.spec.device_id}.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "logs" / f"{self.spec.device_id}.log"

    def config(self) -> dict[str, Any]:
        return {
            "device_id": self.spec.device_id,
            "type": self.spec.type,
            "gateway": {"host": self.gateway[0], "port": self.gateway[1]},
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


@dataclass
class Fleet:
    """Many nodes, started and stopped together."""

    specs: list[NodeSpec]
    workdir: Path
    gateway: tuple[str, int]
    coap: CoapProfile = CoapProfile()
    drain_timeout_s: float = 60.0
    nodes: list[Node] = field(default_factory=list)

    def start(self) -> None:
        for spec in self.specs:
            node = Node(spec=spec, workdir=self.workdir, gateway=self.gateway, coap=self.coap,
                        drain_timeout_s=self.drain_timeout_s)
            node.start()
            self.nodes.append(node)

    def wait(self, timeout: float) -> dict[str, int | None]:
        """Wait for nodes with a `count` to finish; returns exit codes (None: still running)."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            assert node.process is not None
            remaining = max(0.1, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(remaining)
        return {n.spec.device_id: (n.process.returncode() if n.process else None)
                for n in self.nodes}

    def stop(self) -> None:
        for node in self.nodes:  # all at once, then wait for each
            if node.process is not None:
                node.process.signal(signal.SIGINT)
        for node in self.nodes:
            if node.process is not None:
                node.process.stop(timeout=10, signalled=True)

    def logs(self) -> str:
        return "\n".join(f"--- {n.spec.device_id}\n{n.process.log_tail(15) if n.process else ''}"
                         for n in self.nodes)


__all__ = [
    "Cloud", "CoapProfile", "Fleet", "Gateway", "Node", "NodeEvent", "NodeSpec",
    "ProcessError", "fleet_specs", "parse_node_log", "write_devices_file",
]
