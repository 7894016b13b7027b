"""``machi-gateway --config FILE [--check-config] [--ready-file PATH]``.

Exit status: 0 clean stop (or a valid config with --check-config), 2 bad config or
usage, 1 a runtime failure (cannot bind, cannot open the queue, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import config as config_mod
from . import daemon, gctune, logs
from .errors import ConfigError, GatewayError

log = logging.getLogger("machi_gateway")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="machi-gateway",
        description="machi gateway: CoAP ingress -> durable queue -> cloud uplink",
    )
    p.add_argument("--config", "-c", type=Path, required=True, help="TOML config file")
    p.add_argument("--check-config", action="store_true",
                   help="validate the config, print a summary and exit (0 ok, 2 bad)")
    p.add_argument("--ready-file", type=Path, default=None,
                   help='when listening, write {"coap": [host, port], "health": url, "pid": n} '
                        "here atomically")
    return p


def _errors(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _errors(sub)]
    return [exc]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as exc:
        print(f"machi-gateway: config error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(cfg.summary())
        print("config ok")
        return 0
    logs.setup(cfg.log.level, cfg.log.format)
    gctune.tune()
    try:
        return asyncio.run(daemon.run(cfg, ready_file=args.ready_file))
    except KeyboardInterrupt:
        return 0
    except (GatewayError, BaseExceptionGroup) as exc:
        for err in _errors(exc):
            if isinstance(err, GatewayError):
                log.error("fatal: %s", err)
            else:
                log.error("fatal: %r", err, exc_info=err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
