"""`machi`: the technician's command line: build, flash, provision, monitor, doctor; and the
demo and emulated fleet.

Exit codes: 0 success, 1 the job failed (the message says why and what to do), 2 bad usage,
3 `doctor` found something to fix / the board's self-test failed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from rich.console import Console

from .procs import ProcessError

EXAMPLES = """\
examples:
  machi build --board esp32 --out build/esp32   compile the firmware, write manifest.json
  machi flash --port /dev/ttyUSB0 --firmware ESP32_GENERIC-v1.24.bin
  machi provision --port /dev/ttyUSB0 --type env --site "Main St 4" --lat 36.11 --lon 137.95 \\
        --gateway-addr 192.168.4.1:5683 --cloud https://machi.example --admin-token $TOKEN
  machi monitor --port /dev/ttyUSB0
  machi doctor --port /dev/ttyUSB0 --gateway-health http://192.168.4.1:8080 --cloud URL
  machi demo                                  cloud + gateway + 8 emulated nodes, live summary
  machi demo --duration 30 --env 5            stop by itself after 30 s
  machi fleet --gateway 127.0.0.1:5683 --env 10 --bin 5 --devices-file devices.json
  machi fleet --gateway 127.0.0.1:5683 --lora-gateway 127.0.0.1:1700 --env 0 \\
        --mix env:lora=3,bin:nbiot=2,light=1 --radio-loss 0.1 --devices-file devices.json
                                              3 LoRa env nodes behind a virtual concentrator,
                                              2 NB-IoT bins through emulated modems, 1 UDP light
  machi fleet --gateway 127.0.0.1:5683 --env 4 --transport lora --lora-gateway 127.0.0.1:1700
  machi fleet --gateway 127.0.0.1:5683 --env 5 --loss 0.2 --duplicate 0.1 --reorder 0.1 \\
        --delay 0.05 --seed 3                   UDP nodes through the fault proxy
"""


def _gateway_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _add_fleet_counts(p: argparse.ArgumentParser, env: int, bins: int, lights: int) -> None:
    p.add_argument("--env", type=int, default=env, help=f"env sensors (default {env})")
    p.add_argument("--bin", type=int, default=bins, dest="bins",
                   help=f"waste bins (default {bins})")
    p.add_argument("--light", type=int, default=lights, dest="lights",
                   help=f"streetlights (default {lights})")
    p.add_argument("--interval", type=float, default=2.0,
                   help="seconds between samples (default 2)")


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability 0..1, got {text!r}")
    return value


def _mix(text: str) -> dict[tuple[str, str], int]:
    from .system import parse_mix

    try:
        return parse_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_fleet_transports(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("transports (how the nodes send)")
    t.add_argument("--transport", choices=("udp", "lora", "nbiot"), default="udp",
                   help="for the --env/--bin/--light nodes (default udp: CoAP over UDP)")
    t.add_argument("--mix", type=_mix, default={}, metavar="TYPE[:TRANSPORT]=N,...",
                   help="more nodes by type and transport, e.g. env:lora=3,bin:nbiot=2,light=1 "
                        "(transport udp if left out; numbering continues after the counts)")
    t.add_argument("--lora-gateway", type=_gateway_addr, default=None, metavar="HOST:PORT",
                   help="the gateway's Semtech UDP port ([lora_udp]); LoRa nodes reach it "
                        "through a virtual concentrator that this command starts")
    t.add_argument("--radio-loss", type=_probability, default=0.0, metavar="P",
                   help="share of LoRa frames and of acks lost on the air (default 0)")
    t.add_argument("--lora-budget", type=float, default=36.0, metavar="S",
                   help="LoRa airtime each node may use per hour, seconds (default 36: a 1 %% "
                        "duty cycle; set what your regulator allows)")
    f = p.add_argument_group("faults (UDP and NB-IoT nodes: a fault proxy before --gateway)")
    f.add_argument("--loss", type=_probability, default=0.0, metavar="P",
                   help="share of datagrams lost, each direction")
    f.add_argument("--duplicate", type=_probability, default=0.0, metavar="P",
                   help="share of datagrams delivered twice")
    f.add_argument("--reorder", type=_probability, default=0.0, metavar="P",
                   help="share of datagrams held back behind a later one")
    f.add_argument("--delay", type=float, default=0.0, metavar="S",
                   help="seconds added to every datagram")
    f.add_argument("--seed", type=int, default=1, help="one seed for every fault (default 1)")


#: the gateway checks its devices file each second (gateway/machi_gateway/registry.py)
REGISTRY_SETTLE_S = 2.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="machi",
        description="Build, provision, monitor and emulate machi sensor nodes.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run cloud, gateway and an emulated fleet on this machine",
                          epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_fleet_counts(demo, 3, 3, 2)
    demo.add_argument("--workdir", type=Path, default=None,
                      help="where configs, databases and logs go (default run/demo-<time>)")
    demo.add_argument("--duration", type=float, default=None,
                      help="stop after this many seconds (default: until Ctrl-C)")

    fleet = sub.add_parser("fleet", help="run emulated nodes (real firmware on micropython)",
                           epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    fleet.add_argument("--gateway", type=_gateway_addr, required=True, metavar="HOST:PORT",
                       help="the gateway's CoAP address")
    _add_fleet_counts(fleet, 1, 0, 0)
    fleet.add_argument("--count", type=int, default=0,
                       help="readings per node, then exit (default 0: run until Ctrl-C)")
    fleet.add_argument("--workdir", type=Path, default=Path("run/fleet"),
                       help="node configs, state and logs (default run/fleet)")
    fleet.add_argument("--devices-file", type=Path, default=None,
                       help="also write the gateway's device registry (JSON) here")
    fleet.add_argument("--registry-wait", type=float, default=REGISTRY_SETTLE_S, metavar="S",
                       help="seconds to wait after writing --devices-file, for the gateway "
                            f"to load it (default {REGISTRY_SETTLE_S:g}; it checks each second)")
    fleet.add_argument("--ack-timeout", type=float, default=2.0,
                       help="CoAP ACK_TIMEOUT in seconds (default 2, RFC 7252)")
    _add_fleet_transports(fleet)
    from .cli_field import add_field_commands

    add_field_commands(sub)
    from .release import add_release_command

    add_release_command(sub)
    audit = sub.add_parser("audit", help="check the cloud's hash-chained audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="detect edited, deleted or reordered audit entries (exit 1 if any)")
    where = verify.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="the machi-cloud SQLite file")
    where.add_argument("--database-url", help="the machi-cloud PostgreSQL database URL")
    return parser


def cmd_audit_verify(args: argparse.Namespace, console: Console) -> int:
    """`machi audit verify` is the cloud's own checker, so there is one implementation."""
    try:
        from machi_cloud.audit import main as audit_main
    except ImportError:
        console.print("[red]error:[/] the cloud package is not installed: pip install '.[cloud]'")
        return 1
    if args.database_url:
        return audit_main(["--database-url", args.database_url])
    return audit_main(["--db", args.db])


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from .demo import DemoOptions, run_demo

    workdir = args.workdir or Path("run") / time.strftime("demo-%Y%m%d-%H%M%S")
    options = DemoOptions(workdir=workdir.resolve(), env=args.env, bins=args.bins,
                          lights=args.lights, interval_s=args.interval,
                          duration_s=args.duration)
    return run_demo(options, console)


def cmd_fleet(args: argparse.Namespace, console: Console) -> int:
    from .system import CoapProfile, Fleet, mix_specs, start_fault_proxy, write_devices_file

    mix = {(t, args.transport): n for t, n in
           (("env", args.env), ("bin", args.bins), ("light", args.lights)) if n}
    for key, n in args.mix.items():
        mix[key] = mix.get(key, 0) + n
    specs = mix_specs(mix, interval_s=args.interval, count=args.count) if mix else []
    if not specs:
        console.print("[red]no nodes asked for[/]: give --env/--bin/--light counts or --mix")
        return 2
    if any(s.transport == "lora" for s in specs) and args.lora_gateway is None:
        console.print("[red]LoRa nodes need --lora-gateway HOST:PORT[/] (the gateway's "
                      "[lora_udp] port)")
        return 2
    if not 0 < args.lora_budget <= 3600:
        console.print("[red]--lora-budget must be 0 < S <= 3600[/]")
        return 2
    if not 0 <= args.registry_wait <= 60:
        console.print("[red]--registry-wait must be 0 <= S <= 60[/]")
        return 2
    if args.devices_file:
        write_devices_file(args.devices_file, specs)
        console.print(f"device registry written to {args.devices_file}; waiting "
                      f"{args.registry_wait:g} s for the gateway to load it")
        # A node whose first request came before the gateway re-read the file got 4.01
        # (unprotected, under OSCORE), and CoAP deduplication answers its retransmissions
        # the same way: it waited out its whole retransmission window (93 s by default).
        time.sleep(args.registry_wait)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    target, proxy = args.gateway, None
    if args.loss or args.duplicate or args.reorder or args.delay:
        proxy = start_fault_proxy(workdir, args.gateway, seed=args.seed, loss=args.loss,
                                  duplicate=args.duplicate, reorder=args.reorder,
                                  delay=args.delay)
        target = proxy[1]
        console.print(f"fault proxy on {target[0]}:{target[1]} -> {args.gateway[0]}:"
                      f"{args.gateway[1]}")
    fleet = Fleet(specs=specs, workdir=workdir, gateway=target,
                  coap=CoapProfile(ack_timeout_s=args.ack_timeout),
                  lora_gateway=args.lora_gateway, radio_loss=args.radio_loss,
                  lora_budget_s=args.lora_budget, seed=args.seed)
    try:
        fleet.start()
    except Exception:
        fleet.stop()
        if proxy is not None:
            proxy[0].stop()
        raise
    by = {t: sum(1 for s in specs if s.transport == t) for t in ("udp", "lora", "nbiot")}
    console.print(f"{len(specs)} nodes ({', '.join(f'{n} {t}' for t, n in by.items() if n)}) "
                  f"-> coap://{args.gateway[0]}:{args.gateway[1]}/r, logs in {args.workdir}/logs")
    try:
        while any(n.process and n.process.alive() for n in fleet.nodes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        fleet.stop()
        if proxy is not None:
            proxy[0].stop()
    failed = 0
    for node in fleet.nodes:
        rec, acked = node.recorded_seqs(), node.acked_seqs()
        code = node.process.returncode() if node.process else None
        ok = code in (0, -15) and set(rec) <= set(acked)
        failed += not ok
        console.print(f"{node.spec.device_id}: {len(rec)} recorded, {len(set(acked))} acked, "
                      f"exit {code}" + ("" if ok else "  [red]<- check its log[/]"))
    return 1 if failed else 0


def _terminate_like_interrupt(signum: int, frame: object) -> None:
    """SIGTERM (systemd, CI, `kill`) stops the demo or fleet as gracefully as Ctrl-C."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate_like_interrupt)
    console = Console()
    try:
        if args.command == "demo":
            return cmd_demo(args, console)
        if args.command == "fleet":
            return cmd_fleet(args, console)
        if args.command == "audit":
            return cmd_audit_verify(args, console)
        if args.command == "release":
            from .release import run_release

            return run_release(args, console)
        from .cli_field import run_field_command

        return run_field_command(args, console)
    except ProcessError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
