"""Fault scenarios as data, run against the real system, ending in a delivery report.

A scenario file (JSON) names the fleet, the network faults (UDP proxy between nodes and
gateway, HTTP proxy between gateway and cloud), process faults on a schedule, and a seed.
`run_scenario` starts everything (real `machi-cloud`, `machi-gateway`, MicroPython nodes and
the two fault proxies as separate processes), lets the nodes take their readings, then
compares what every node recorded (`rec` lines) with what the cloud holds and reports:
produced, stored, lost, duplicated, rejected by reason, dropped by nodes, ACK latency.

    python -m machi_tools.scenario hil_tests/scenarios/lossy-radio.json [--seed N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .procs import ManagedProcess, executable
from .system import (
    Cloud,
    CoapProfile,
    Fleet,
    Gateway,
    NodeEvent,
    fleet_specs,
    with_radio_ids,
    write_devices_file,
)

ACTIONS = {"kill_gateway", "restart_gateway", "kill_cloud", "restart_cloud", "power_cut_nodes"}


@dataclass(frozen=True)
class ProcessFault:
    """`action` once every node has at least `after_acks` acknowledged readings."""

    action: str
    after_acks: int
    down_s: float = 0.0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; use one of {sorted(ACTIONS)}")


@dataclass(frozen=True)
class Scenario:
    name: str
    nodes: dict[str, int]
    count: int
    interval_s: float = 0.1
    seed: int = 1
    coap: CoapProfile = field(default_factory=lambda: CoapProfile(ack_timeout_s=0.5))
    udp_faults: dict[str, float] = field(default_factory=dict)
    http_faults: dict[str, Any] = field(default_factory=dict)
    process_faults: tuple[ProcessFault, ...] = ()
    timeout_s: float = 180.0
    # emulated nodes per MicroPython process (firmware/multi.py); 1: one process each
    nodes_per_process: int = 1
    # how the nodes send: udp (CoAP, through the UDP fault proxy), lora (compact frames
    # through the virtual concentrator, which loses radio_loss of frames and of acks)
    transport: str = "udp"
    radio_loss: float = 0.0

    def __post_init__(self) -> None:
        if self.nodes_per_process < 1:
            raise ValueError(f"nodes_per_process must be >= 1, not {self.nodes_per_process}")

    @classmethod
    def load(cls, path: Path, *, seed: int | None = None) -> Scenario:
        data = json.loads(path.read_text())
        faults = tuple(ProcessFault(**f) for f in data.pop("process_faults", []))
        coap = CoapProfile(**data.pop("coap", {"ack_timeout_s": 0.5}))
        scenario = cls(**data, process_faults=faults, coap=coap)
        if seed is not None:
            scenario = cls(**{**scenario.__dict__, "seed": seed})
        return scenario


@dataclass
class Report:
    scenario: str
    seed: int
    produced: int = 0
    stored: int = 0
    lost: dict[str, list[int]] = field(default_factory=dict)
    duplicated: dict[str, list[int]] = field(default_factory=dict)
    unexpected: dict[str, list[int]] = field(default_factory=dict)
    # stored, not in a `rec` line, but the one reading a node was writing when its process
    # was killed: in the ring (durable) before the log line could be printed (_unlogged)
    unlogged: dict[str, list[int]] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    dropped_by_nodes: int = 0
    ack_ms: dict[str, float] = field(default_factory=dict)
    udp_proxy: dict[str, int] = field(default_factory=dict)
    http_proxy: dict[str, int] = field(default_factory=dict)
    radio: dict[str, int] = field(default_factory=dict)  # the virtual concentrator's counters
    node_exit_codes: dict[str, int | None] = field(default_factory=dict)
    gateway_resources: dict[str, float] = field(default_factory=dict)
    # the node processes: how many, peak RSS (largest and sum) and CPU time, sampled every
    # WATCH_EVERY_S while the nodes drain
    node_resources: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected) and all(
            code == 0 for code in self.node_exit_codes.values()
        )

    def summary(self) -> str:
        lost = sum(len(v) for v in self.lost.values())
        dup = sum(len(v) for v in self.duplicated.values())
        return (
            f"scenario {self.scenario} seed={self.seed}: produced {self.produced}, stored "
            f"{self.stored}, lost {lost}, duplicated {dup}, rejected {self.rejected or 0}, "
            f"written but killed before logged {sum(len(v) for v in self.unlogged.values())}, "
            f"dropped by nodes {self.dropped_by_nodes}, ACK latency ms {self.ack_ms}, "
            f"{self.seconds:.1f}s; gateway {self.gateway_resources}; "
            f"node processes {self.node_resources}; "
            f"udp proxy {self.udp_proxy}; http proxy {self.http_proxy}"
            + (f"; radio {self.radio}" if self.radio else "")
            + ("" if self.ok else f"; FAILED (rerun with --seed {self.seed}): lost={self.lost} "
               f"dup={self.duplicated} unexpected={self.unexpected} "
               f"exit={self.node_exit_codes}")
        )


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": pick(0.50), "p99": pick(0.99), "max": ordered[-1]}


def process_resources(pid: int) -> dict[str, float]:
    """Peak resident memory (MiB) and CPU time (s) of a live process, from /proc; empty
    once it has exited (a zombie's status has no memory lines: no figure, not an error)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return {}
    hwm_kib = next((int(line.split()[1]) for line in status.splitlines()
                    if line.startswith("VmHWM:")), None)
    if hwm_kib is None:
        return {}
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_s = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return {"peak_rss_mib": round(hwm_kib / 1024, 1), "cpu_s": round(cpu_s, 2)}


#: how often _watch_nodes looks whether the nodes are done and samples their /proc figures:
#: the run ends this soon after the last node exits (it was 1 s: up to a second idle per run)
WATCH_EVERY_S = 0.2


def _watch_nodes(fleet: Fleet, timeout: float) -> dict[str, float]:
    """Wait for the node processes to exit, sampling their /proc figures every
    WATCH_EVERY_S (the last sample before a process exits stands for it: peak RSS only
    grows)."""
    last: dict[str, dict[str, float]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in fleet.processes() if p.alive()]
        if not alive:
            break
        for proc in alive:
            if got := process_resources(proc.pid):
                last[proc.name] = got
        time.sleep(WATCH_EVERY_S)
    if not last:
        return {}
    rss = [r["peak_rss_mib"] for r in last.values()]
    return {"processes": len(last), "peak_rss_mib_max": max(rss),
            "peak_rss_mib_sum": round(sum(rss), 1),
            "cpu_s_sum": round(sum(r["cpu_s"] for r in last.values()), 1)}


def _proxy(name: str, module: str, workdir: Path, args: list[str]) -> ManagedProcess:
    proc = ManagedProcess(
        name=name,
        argv=[sys.executable, "-m", module, *args,
              "--ready-file", str(workdir / f"{name}.ready"),
              "--stats-file", str(workdir / f"{name}.stats")],
        log_path=workdir / "logs" / f"{name}.log",
        ready_file=workdir / f"{name}.ready",
    )
    proc.start()
    return proc


def _stats(workdir: Path, name: str) -> dict[str, int]:
    path = workdir / f"{name}.stats"
    data: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
    return data


class _Run:
    """The processes of one scenario run, stopped together whatever happens."""

    def __init__(self, scenario: Scenario, workdir: Path) -> None:
        self.s = scenario
        self.workdir = workdir
        self.cloud = Cloud(workdir=workdir)
        self.gateway: Gateway | None = None
        self.fleet: Fleet | None = None
        self.udp: ManagedProcess | None = None
        self.http: ManagedProcess | None = None

    def start(self) -> None:
        s, wd = self.s, self.workdir
        url = self.cloud.start()
        uplink = url
        if s.http_faults:
            hf = s.http_faults
            args = ["--target", url, "--seed", str(s.seed)]
            for key in ("error", "hang", "lose_response", "hang_s"):
                if key in hf:
                    args += [f"--{key.replace('_', '-')}", str(hf[key])]
            for start, end in hf.get("outages", []):
                args += ["--outage", f"{start}:{end}"]
            self.http = _proxy("httpproxy", "machi_tools.httpfaultproxy", wd, args)
            uplink = str(self.http.wait_ready()["url"])
        self.gateway = Gateway(workdir=wd, cloud_url=uplink, token=self.cloud.token,
                               batch_age_s=0.3, lora_udp=s.transport == "lora",
                               oscore="required")  # every CoAP node is protected
        specs = with_radio_ids(fleet_specs(s.nodes, interval_s=s.interval_s, count=s.count,
                                           transport=s.transport))
        write_devices_file(self.gateway.devices_path, specs)
        coap = self.gateway.start()
        self.gateway.wait_devices(len(specs))
        target = coap
        if s.udp_faults:
            args = ["--target", f"{coap[0]}:{coap[1]}", "--seed", str(s.seed)]
            for key, value in s.udp_faults.items():
                args += [f"--{key.replace('_', '-')}", str(value)]
            self.udp = _proxy("udpproxy", "machi_tools.faultproxy", wd, args)
            host, port = self.udp.wait_ready()["listen"]
            target = (str(host), int(port))
        # a node keeps draining as long as the run may last: on a slow, loaded machine a
        # lossy radio stretches the drain (every lost try doubles the wait), and a node
        # that gave up early would fail the run without having lost anything
        self.fleet = Fleet(specs=specs, workdir=wd, gateway=target, coap=s.coap,
                           drain_timeout_s=s.timeout_s, per_process=s.nodes_per_process,
                           lora_gateway=self.gateway.lora if s.transport == "lora" else None,
                           radio_loss=s.radio_loss, seed=s.seed)
        self.fleet.start()

    def apply_faults(self) -> None:
        assert self.fleet is not None and self.gateway is not None
        for fault in self.s.process_faults:
            deadline = time.monotonic() + self.s.timeout_s
            while any(len(n.acked_seqs()) < fault.after_acks for n in self.fleet.nodes):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nodes never reached {fault.after_acks} acks")
                time.sleep(0.1)
            if fault.action == "power_cut_nodes":
                # kill -9 every node mid-whatever (a write to its ring buffer, a send), then
                # power them up again: their buffered readings must still arrive
                for node in self.fleet.nodes:
                    if node.process is not None:
                        node.process.kill()
                time.sleep(fault.down_s)
                for node in self.fleet.nodes:
                    node.start()
            elif fault.action in ("kill_gateway", "restart_gateway"):
                if fault.action == "kill_gateway":
                    self.gateway.kill()
                else:
                    self.gateway.stop()
                time.sleep(fault.down_s)
                self.gateway.start()
            else:
                if fault.action == "kill_cloud":
                    self.cloud.kill()
                else:
                    self.cloud.stop()
                time.sleep(fault.down_s)
                self.cloud.start()

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        if self.udp is not None:
            self.udp.stop()
        if self.gateway is not None:
            self.gateway.stop()
        if self.http is not None:
            self.http.stop()
        self.cloud.stop()


def _cloud_seqs(client: httpx.Client, device: str) -> Counter[int]:
    rows = client.get("/v1/readings", params={"device": device, "limit": 100000}).json()
    per_metric = Counter((r["seq"], r["metric"]) for r in rows["readings"])
    # one count per seq: the number of times its most-stored measurement appears
    counts: Counter[int] = Counter()
    for (seq, _metric), n in per_metric.items():
        counts[seq] = max(counts[seq], n)
    return counts


def _unlogged(events: list[NodeEvent]) -> set[int]:
    """Seqs a node may have stored without a `rec` line: per run of its process that ended
    without a `stop` line (killed), the one after its last `rec` (or its first seq).

    The node writes a reading to its ring, then logs `rec`: a kill between the two leaves
    a durable reading the log never promised, sent after the restart. Anything else the
    cloud holds that no `rec` line names stays `unexpected` (a made-up reading).
    """
    out: set[int] = set()
    last: int | None = None
    first_seq = 0
    running = False
    for e in events:
        if e.event == "start":
            if running:
                out.add(last + 1 if last is not None else first_seq)
            running, last = True, None
            first_seq = int(e.fields.get("seq", 0))
        elif e.event == "rec":
            seq = int(e.fields["seq"])
            last = seq if last is None else max(last, seq)
        elif e.event == "stop":
            running = False
    if running:
        out.add(last + 1 if last is not None else first_seq)
    return out


def run_scenario(scenario: Scenario, workdir: Path) -> Report:
    started = time.monotonic()
    run = _Run(scenario, workdir)
    report = Report(scenario=scenario.name, seed=scenario.seed)
    try:
        run.start()
        run.apply_faults()
        assert run.fleet is not None
        report.node_resources = _watch_nodes(run.fleet, scenario.timeout_s)
        report.node_exit_codes = run.fleet.wait(timeout=10)
        expected = {n.spec.device_id: set(n.recorded_seqs()) for n in run.fleet.nodes}
        unlogged = {n.spec.device_id: _unlogged(n.events()) for n in run.fleet.nodes}
        report.produced = sum(len(v) for v in expected.values())
        with httpx.Client(base_url=run.cloud.url, timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                got = {d: _cloud_seqs(client, d) for d in expected}
                done = all(expected[d] <= set(got[d]) for d in expected)
                if done or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        for dev, seqs in expected.items():
            have = got[dev]
            report.stored += len(have)
            if missing := sorted(seqs - set(have)):
                report.lost[dev] = missing
            if dup := sorted(s for s, n in have.items() if n > 1):
                report.duplicated[dev] = dup
            not_promised = set(have) - seqs
            if killed := sorted(not_promised & unlogged[dev]):
                report.unlogged[dev] = killed
            if extra := sorted(not_promised - unlogged[dev]):
                report.unexpected[dev] = extra
        events = [e for n in run.fleet.nodes for e in n.events()]
        report.rejected = dict(Counter(e.fields.get("code", "?") for e in events
                                       if e.event == "reject"))
        report.dropped_by_nodes = sum(1 for e in events if e.event == "dropped")
        report.ack_ms = _percentiles([float(e.fields["ms"]) for e in events
                                      if e.event == "ack" and "ms" in e.fields])
        if run.gateway is not None and run.gateway.process is not None:
            report.gateway_resources = process_resources(run.gateway.process.pid)
    finally:
        run.stop()
        report.seconds = time.monotonic() - started
    report.udp_proxy = _stats(workdir, "udpproxy")
    report.radio = _stats(workdir, "vconcentrator")
    report.http_proxy = _stats(workdir, "httpproxy")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m machi_tools.scenario", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", type=Path)
    p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    executable("micropython")  # fail early with a clear message if not installed
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="machi-scenario-"))
    report = run_scenario(Scenario.load(args.scenario, seed=args.seed), workdir)
    print(report.summary())
    (workdir / "report.json").write_text(json.dumps(report.__dict__, indent=1, default=str))
    print(f"report and logs in {workdir}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
