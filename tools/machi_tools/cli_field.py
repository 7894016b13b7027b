"""The field subcommands of `machi`: build, flash, provision, monitor, doctor.

Each has `--json` (one JSON document on stdout; monitor: one per line) for scripts; errors go
to stderr as one line saying what to do, exit code 1 (2: bad usage, 3: a check failed).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn

FMT = argparse.RawDescriptionHelpFormatter
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CHECK = 0, 1, 2, 3

BUILD_EX = """examples:
  machi build                           unix build into build/unix (emulated boards)
  machi build --board esp32 --out build/esp32
  machi build --board esp32 --json      the manifest as JSON
"""
FLASH_EX = """examples:
  machi flash --port /dev/ttyUSB0 --firmware ESP32_GENERIC-20241129-v1.24.1.bin
  machi flash --port /dev/ttyACM0 --chip esp32s3 --firmware ESP32_GENERIC_S3.bin --baud 115200
"""
PROVISION_EX = """examples:
  machi provision --port /dev/ttyUSB0 --type env --site "Station square" --lat 36.115 \\
      --lon 137.954 --gateway-addr 192.168.4.1:5683 --cloud https://cloud.example \\
      --admin-token "$MACHI_ADMIN_TOKEN" --wifi-ssid machi-gw --wifi-key secret
  machi provision --port /dev/ttyUSB0              re-run: keeps id, type and site; updates
  machi provision --port /dev/ttyUSB0 --id light-0042 --type light --lat 36.1 --lon 137.9 \\
      --gateway-addr 10.0.0.2:5683 --json
"""
MONITOR_EX = """examples:
  machi monitor --port /dev/ttyUSB0
  machi monitor --port /dev/ttyUSB0 --json --duration 60 > node.jsonl
"""
COMMISSION_EX = """examples:
  machi commission --address C4:DE:E2:11:22:33 --config node-config.json
  (the config is the board's config.json, e.g. one written by machi provision on a bench board)
"""
DOCTOR_EX = """examples:
  machi doctor --port /dev/ttyUSB0
  machi doctor --gateway-health http://192.168.4.1:8080 --cloud https://cloud.example
  machi doctor --port /dev/ttyUSB0 --cloud https://cloud.example --json
"""


def _addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _lat(text: str) -> float:
    v = float(text)
    if not -90 <= v <= 90:
        raise argparse.ArgumentTypeError(f"latitude must be -90..90, got {v}")
    return v


def _lon(text: str) -> float:
    v = float(text)
    if not -180 <= v <= 180:
        raise argparse.ArgumentTypeError(f"longitude must be -180..180, got {v}")
    return v


def add_field_commands(sub: Any) -> None:
    p = sub.add_parser("build", help="compile the firmware to .mpy with a manifest",
                       epilog=BUILD_EX, formatter_class=FMT)
    p.add_argument("--board", choices=("unix", "esp32"), default="unix")
    p.add_argument("--out", type=Path, default=None, help="default build/<board>")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("flash", help="erase an ESP32 and write MicroPython (esptool)",
                       epilog=FLASH_EX, formatter_class=FMT)
    p.add_argument("--port", required=True)
    p.add_argument("--firmware", type=Path, default=Path("micropython.bin"),
                   help="the MicroPython image (.bin) for the chip")
    p.add_argument("--chip", default="esp32",
                   choices=("esp32", "esp32s2", "esp32s3", "esp32c3", "esp32c6", "esp32c2"))
    p.add_argument("--baud", type=int, default=460800)
    p.add_argument("--no-erase", action="store_true", help="write without erasing first")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("provision", help="identity, firmware, config, registration, self-test",
                       epilog=PROVISION_EX, formatter_class=FMT)
    p.add_argument("--port", required=True)
    p.add_argument("--type", choices=("env", "bin", "light"),
                   help="required the first time")
    p.add_argument("--id", dest="device_id", help="device id (default: kept, or <type>-<hex>)")
    p.add_argument("--site", help="where it is mounted (free text on the label)")
    p.add_argument("--lat", type=_lat)
    p.add_argument("--lon", type=_lon)
    p.add_argument("--gateway", default="gw-01", help="the gateway id that serves it")
    p.add_argument("--gateway-addr", type=_addr, metavar="HOST:PORT",
                   help="the gateway's CoAP address (required the first time)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between samples")
    p.add_argument("--cloud", help="cloud URL: register the device and get its key")
    p.add_argument("--admin-token", default=os.environ.get("MACHI_ADMIN_TOKEN"),
                   help="admin bearer token (default $MACHI_ADMIN_TOKEN)")
    p.add_argument("--build-dir", type=Path, help="use this `machi build` output")
    p.add_argument("--wifi-ssid")
    p.add_argument("--wifi-key")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="seconds to wait for the board's prompt (default 10)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("monitor", help="serial console with decoded, coloured log lines",
                       epilog=MONITOR_EX, formatter_class=FMT)
    p.add_argument("--port", required=True)
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    p.add_argument("--lines", type=int, default=None, help="stop after N log lines")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = sub.add_parser("commission", help="send a node its config over Bluetooth LE",
                       epilog=COMMISSION_EX, formatter_class=FMT)
    p.add_argument("--address", required=True, help="the node's BLE address")
    p.add_argument("--config", type=Path, required=True, help="the config.json to send")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per answer")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("doctor", help="check a node, the gateway and the cloud",
                       epilog=DOCTOR_EX, formatter_class=FMT)
    p.add_argument("--port")
    p.add_argument("--gateway-health", metavar="URL", help="the gateway's health address")
    p.add_argument("--cloud", metavar="URL")
    p.add_argument("--token", default=os.environ.get("MACHI_ADMIN_TOKEN"),
                   help="a token for the cloud (default $MACHI_ADMIN_TOKEN)")
    p.add_argument("--device", help="device id to look up (default: the board's)")
    p.add_argument("--json", action="store_true")


def _fail(console: Console, message: str, as_json: bool, code: int = EXIT_FAILED) -> int:
    err = Console(stderr=True)
    err.print(f"[red]error:[/] {message}", highlight=False)
    if as_json:
        print(json.dumps({"ok": False, "error": message}))
    return code


def cmd_build(args: argparse.Namespace, console: Console) -> int:
    from .build import BuildError, build

    out = args.out or Path("build") / args.board
    try:
        with console.status(f"compiling for {args.board}...") as status:
            manifest = build(args.board, out,
                             progress=lambda f: status.update(f"compiling {f}"))
    except BuildError as exc:
        return _fail(console, f"build failed: {exc}", args.json)
    if args.json:
        print(json.dumps({"ok": True, "out": str(out), **manifest.to_json()}))
    else:
        size = sum(int(e["size"]) for e in manifest.files.values())
        console.print(f"[green]built[/] {len(manifest.files)} files, {size} bytes, "
                      f"firmware {manifest.version} for {args.board} -> {out}/manifest.json")
    return EXIT_OK


def cmd_flash(args: argparse.Namespace, console: Console) -> int:
    from .flash import FlashError, flash

    try:
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.percentage:>5.1f}%"), console=console,
                      disable=args.json) as bar:
            tasks: dict[str, Any] = {}

            def progress(what: str, pct: float) -> None:
                if what not in tasks:
                    tasks[what] = bar.add_task(what, total=100)
                bar.update(tasks[what], completed=pct)

            result = flash(args.port, args.firmware, chip=args.chip, baud=args.baud,
                           erase=not args.no_erase, progress=progress)
    except FlashError as exc:
        return _fail(console, f"flash failed: {exc}", args.json)
    if args.json:
        print(json.dumps({"ok": True, "port": result.port, "chip": result.chip,
                          "firmware": result.firmware, "offset": result.offset}))
    else:
        console.print(f"[green]flashed[/] {result.firmware} to the {result.chip} on "
                      f"{result.port} at {hex(result.offset)}; next: machi provision")
    return EXIT_OK


def label(result: Any, console: Console) -> None:
    import io

    import segno

    loc = "-" if result.lat is None else f"{result.lat:.5f}, {result.lon:.5f}"
    text = (f"[bold]{result.device}[/]\ntype     {result.type}\nsite     {result.site or '-'}\n"
            f"location {loc}\ngateway  {result.gateway}\nfirmware {result.firmware}")
    console.print(Panel(text, title="machi node", expand=False))
    qr = io.StringIO()
    segno.make(result.qr_text(), error="m").terminal(out=qr, compact=True)
    console.print(qr.getvalue(), highlight=False, markup=False)


def cmd_provision(args: argparse.Namespace, console: Console) -> int:
    from .boardlink import BoardError
    from .build import BuildError
    from .cloudapi import CloudError
    from .provision import ProvisionOptions, SelfTestError, provision

    if args.cloud and not args.admin_token:
        return _fail(console, "--cloud needs --admin-token (or MACHI_ADMIN_TOKEN)", args.json,
                     EXIT_USAGE)
    opts = ProvisionOptions(
        port=args.port, type=args.type, site=args.site, lat=args.lat, lon=args.lon,
        device_id=args.device_id, gateway_id=args.gateway, gateway_addr=args.gateway_addr,
        cloud=args.cloud, admin_token=args.admin_token, interval_s=args.interval,
        build_dir=args.build_dir, wifi_ssid=args.wifi_ssid, wifi_key=args.wifi_key,
        connect_timeout_s=args.connect_timeout)
    if (args.lat is None) != (args.lon is None):
        return _fail(console, "give both --lat and --lon", args.json, EXIT_USAGE)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"), console=console,
                      disable=args.json, transient=True) as bar:
            current: dict[str, Any] = {}

            def file_progress(rel: str, done: int, total: int) -> None:
                if current.get("rel") != rel:
                    if "task" in current:
                        bar.remove_task(current["task"])
                    current.update(rel=rel, task=bar.add_task(f"copy {rel}", total=total))
                bar.update(current["task"], completed=done)

            def step(text: str) -> None:
                if not args.json:
                    console.print(f"[cyan]>[/] {text}")

            result = provision(opts, step=step, file_progress=file_progress)
    except ValueError as exc:
        return _fail(console, str(exc), args.json, EXIT_USAGE)
    except SelfTestError as exc:
        return _fail(console, str(exc), args.json, EXIT_CHECK)
    except (BoardError, BuildError, CloudError) as exc:
        return _fail(console, str(exc), args.json)
    if args.json:
        print(json.dumps({"ok": True, **result.to_json(), "qr": result.qr_text()}))
        return EXIT_OK
    what = "updated" if result.updated else "provisioned"
    reg = ("registered (new)" if result.created else "registration updated") \
        if result.registered else "[yellow]NOT registered[/] (no --cloud)"
    console.print(f"[green]{what}[/] in {result.took_s:.1f}s: {len(result.copied)} files "
                  f"copied, {result.unchanged} unchanged; {reg}; self-test passed "
                  f"({result.selftest.get('modules')} modules)")
    label(result, console)
    return EXIT_OK


def cmd_monitor(args: argparse.Namespace, console: Console) -> int:
    from .boardlink import BoardError
    from .monitor import lines, render, to_json_line

    end = None if args.duration is None else time.monotonic() + args.duration
    n = 0
    try:
        for line in lines(args.port, baud=args.baud,
                          stop=lambda: end is not None and time.monotonic() > end):
            if args.json:
                print(to_json_line(line), flush=True)
            else:
                console.print(render(line), highlight=False)
            n += line.level is not None
            if args.lines is not None and n >= args.lines:
                break
    except BoardError as exc:
        return _fail(console, str(exc), args.json)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace, console: Console) -> int:
    from .doctor import doctor

    if not (args.port or args.gateway_health or args.cloud):
        return _fail(console, "nothing to check: give --port, --gateway-health and/or --cloud",
                     args.json, EXIT_USAGE)
    with console.status("checking..."):
        checks = doctor(args.port, args.gateway_health, args.cloud, args.token, args.device)
    bad = [c for c in checks if c.status != "ok"]
    if args.json:
        print(json.dumps({"ok": not bad, "checks": [c.to_json() for c in checks]}))
    else:
        marks = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}
        for c in checks:
            console.print(f"{marks[c.status]} {c.name}: {c.detail}", highlight=False)
            if c.fix:
                console.print(f"       [italic]fix:[/] {c.fix}", highlight=False)
        console.print("[green]all good[/]" if not bad else f"{len(bad)} thing(s) to fix")
    return EXIT_CHECK if any(c.status == "fail" for c in checks) else EXIT_OK


def cmd_commission(args: argparse.Namespace, console: Console) -> int:
    import asyncio

    from .commission import BleLink, CommissionError, commission

    try:
        doc = args.config.read_bytes()
        json.loads(doc)
    except OSError as exc:
        return _fail(console, f"cannot read {args.config}: {exc.strerror}", args.json)
    except ValueError as exc:
        return _fail(console, f"{args.config} is not JSON: {exc}", args.json)

    async def run() -> int:
        async with BleLink(args.address) as link:
            return await commission(link, doc, wait_s=args.timeout)

    try:
        with console.status(f"commissioning {args.address} over BLE..."):
            frames = asyncio.run(run())
    except CommissionError as exc:
        return _fail(console, str(exc), args.json)
    except Exception as exc:  # bleak's errors: no adapter, not found, connection lost
        return _fail(console, f"Bluetooth: {exc or type(exc).__name__}: is the adapter on "
                     "(`bluetoothctl power on`) and the node advertising (in range, in "
                     "commissioning mode)?", args.json)
    if args.json:
        print(json.dumps({"ok": True, "address": args.address, "frames": frames}))
    else:
        console.print(f"[green]commissioned[/] {args.address}: {len(doc)} bytes in {frames} "
                      "frames; the node stored config.json")
    return EXIT_OK


def run_field_command(args: argparse.Namespace, console: Console) -> int:
    commands = {"build": cmd_build, "flash": cmd_flash, "provision": cmd_provision,
                "monitor": cmd_monitor, "doctor": cmd_doctor, "commission": cmd_commission}
    handler = commands.get(args.command)
    if handler is None:
        return EXIT_USAGE
    if getattr(args, "json", False):
        # progress and status go to stderr so stdout is only the JSON document
        console = Console(stderr=True, quiet=True)
    return handler(args, console)

