"""`machi demo`: the whole pipeline on this machine, with a live summary in the terminal.

Starts the cloud (SQLite), the gateway and a small fleet of emulated nodes running the real
firmware on the real MicroPython interpreter, then polls the cloud's API and shows what has
arrived. Ctrl-C (or `--duration`) stops the nodes first, then the gateway (which flushes its
queue to the cloud), then the cloud.

Every node is registered with the cloud as `machi provision` would do it: the cloud assigns
its short id and issues its key, both go into the gateway's devices file and the node's
`oscore` config section, and the gateway runs with `oscore = "required"`: every reading
travels OSCORE-protected (docs/security.md §2.9).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .system import (
    Cloud,
    Fleet,
    Gateway,
    fleet_specs,
    new_token,
    register_on_map,
    stop_system,
    write_devices_file,
)

SHOWN_METRICS = ("temp", "hum", "pm25", "fill", "lamp", "dim", "power", "bat")


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    env: int = 3
    bins: int = 3
    lights: int = 2
    interval_s: float = 2.0
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if min(self.env, self.bins, self.lights) < 0 or self.interval_s <= 0:
            raise ValueError("counts must be >= 0 and the interval > 0")


def _fmt_value(v: dict[str, Any]) -> str:
    value = v.get("value")
    unit = v.get("unit") or ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.1f}{unit}"
    return f"{value}{unit}"


def summary_table(devices: list[dict[str, Any]], expected: list[str], now: float) -> Table:
    """One row per expected node: what the cloud holds for it."""
    by_id = {d["device"]: d for d in devices}
    table = Table(title="readings stored in the cloud", expand=False)
    for col in ("device", "readings", "last seq", "age", "latest values"):
        table.add_column(col)
    for dev in expected:
        d = by_id.get(dev)
        if d is None:
            table.add_row(dev, "0", "-", "-", Text("waiting...", style="yellow"))
            continue
        latest = d.get("latest") or {}
        values = "  ".join(
            f"{m}={_fmt_value(latest[m])}" for m in SHOWN_METRICS if m in latest
        )
        age = now - float(d["last_seen"]) if d.get("last_seen") else float("nan")
        table.add_row(dev, str(d["readings"]), str(d["last_seq"]), f"{age:.0f}s", values)
    return table


def run_demo(options: DemoOptions, console: Console) -> int:
    workdir = options.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    specs = fleet_specs(
        {"env": options.env, "bin": options.bins, "light": options.lights},
        interval_s=options.interval_s,
    )
    expected = [s.device_id for s in specs]
    admin, operator = new_token(12), new_token(12)
    cloud = Cloud(workdir=workdir,
                  api_tokens=f"demo-admin=admin:{admin},demo-operator=operator:{operator}")
    gateway: Gateway | None = None
    fleet: Fleet | None = None
    started = time.monotonic()
    first_all: float | None = None
    try:
        with console.status("starting the cloud (machi-cloud, SQLite)..."):
            url = cloud.start()
        console.print(f"[green]cloud[/] {url}   dashboard: {url}/   API docs: {url}/docs")
        specs = register_on_map(url, admin, cloud.gateway_id, specs)
        console.print(f"       operator token for the dashboard's streetlight controls: {operator}")
        gateway = Gateway(workdir=workdir, cloud_url=url, token=cloud.token, downlink=True,
                          oscore="required")
        write_devices_file(gateway.devices_path, specs)
        with console.status("starting the gateway (machi-gateway, CoAP)..."):
            coap = gateway.start()
        console.print(
            f"[green]gateway[/] coap://{coap[0]}:{coap[1]}/r   health: {gateway.health_url}/healthz"
        )
        console.print("[green]OSCORE on[/]: every node has its own key and short id from the "
                      "cloud; the gateway requires OSCORE (plain CoAP is refused)")
        fleet = Fleet(specs=specs, workdir=workdir, gateway=coap)
        fleet.start()
        console.print(
            f"[green]fleet[/] {len(specs)} emulated nodes (real firmware on micropython): "
            + ", ".join(expected)
        )
        console.print(f"logs and state in {workdir}   (Ctrl-C stops everything)")
        with httpx.Client(base_url=url, timeout=5) as client, Live(
            console=console, refresh_per_second=2, transient=False
        ) as live:
            while options.duration_s is None or time.monotonic() - started < options.duration_s:
                devices = client.get("/v1/devices").json()["devices"]
                reporting = {d["device"] for d in devices if d.get("readings")}
                if first_all is None and reporting >= set(expected):
                    first_all = time.monotonic() - started
                elapsed = time.monotonic() - started
                headline = Text(
                    f"{len(reporting & set(expected))}/{len(expected)} nodes reporting, "
                    f"{sum(d.get('readings', 0) for d in devices)} readings, {elapsed:.0f}s"
                    + (f" (all nodes in after {first_all:.1f}s)" if first_all else ""),
                    style="bold",
                )
                live.update(Group(headline, summary_table(devices, expected, time.time())))
                dead = [n.spec.device_id for n in fleet.nodes if not n.process or
                        not n.process.alive()]
                if dead:
                    console.print(f"[red]nodes exited early:[/] {dead}\n{fleet.logs()}")
                    return 1
                time.sleep(1.0)
        console.print()
    except KeyboardInterrupt:
        console.print("\nstopping (Ctrl-C)...")
    finally:
        stop_system(cloud, gateway, fleet)
    if first_all is None:
        console.print("[red]not every node reached the cloud[/]")
        return 1
    console.print(f"[green]stopped cleanly[/]; all nodes reached the cloud in {first_all:.1f}s")
    return 0
