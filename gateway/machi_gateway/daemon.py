"""Builds the gateway from its config and runs it as one task tree until told to stop.

Shutdown order matters for the end-to-end promise: stop the ingress first (no new ACKs),
cancel the upload loop, give the uplink one bounded last flush, then close the store
(WAL checkpoint). Anything still queued is sent after the next start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path

from .config import Config
from .core import Core
from .health import HealthServer, Snapshot
from .ingress.coap import CoapIngress
from .registry import Registry
from .stats import IngressStats
from .store import Store
from .uplink.batcher import Batcher, BatchPolicy
from .uplink.http import HttpUplink

log = logging.getLogger(__name__)


def _local_host(host: str, *, v6_dual_stack: bool) -> str:
    """An address a client on this machine can use to reach a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "127.0.0.1" if v6_dual_stack else "::1"
    return host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def write_ready_file(path: Path, *, coap: tuple[str, int], health: tuple[str, int]) -> None:
    """Atomically (tmp + rename) announce where the gateway listens."""
    doc = {
        "coap": [_local_host(coap[0], v6_dual_stack=True), coap[1]],
        "health": f"http://{_url_host(_local_host(health[0], v6_dual_stack=False))}:{health[1]}",
        "pid": os.getpid(),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def remove_ready_file(path: Path) -> None:
    """The gateway no longer listens: a stale ready file would mislead the orchestrator."""
    path.unlink(missing_ok=True)


async def run(config: Config, *, ready_file: Path | None = None,
              stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set); returns the exit status."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await _run(config, ready_file, stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if ready_file is not None:
            remove_ready_file(ready_file)
    log.info("gateway %s stopped", config.gateway_id)
    return 0


async def _run(config: Config, ready_file: Path | None, stop: asyncio.Event) -> None:
    registry = Registry(config.devices_file)
    await asyncio.to_thread(registry.reload_if_changed)
    stats = IngressStats()
    up = config.uplink
    async with (
        Store(config.queue_file, max_readings=config.queue.max_readings,
              retry_after_s=config.queue.retry_after_s,
              dedup_window_s=config.queue.dedup_window_s) as store,
        HttpUplink(up.url, token=up.token, timeout_s=up.timeout_s) as uplink,
    ):
        batcher = Batcher(store, uplink, gateway=config.gateway_id, policy=BatchPolicy(
            batch_max=up.batch_max, batch_age_s=up.batch_age_s,
            backoff_initial_s=up.backoff_initial_s, backoff_max_s=up.backoff_max_s))

        def snapshot() -> Snapshot:
            return Snapshot(
                gateway=config.gateway_id, queue_depth=store.depth,
                readings_in=stats.readings_in, duplicates=stats.duplicates,
                rejected=dict(stats.rejected), dead_letters=store.dead_letters,
                uplink_sent=batcher.sent, uplink_batches=batcher.batches,
                uplink_last_ok=batcher.last_ok, uplink_last_error=batcher.last_error,
                uplink_failures=batcher.failures, devices=len(registry),
            )

        core = Core(registry, store, stats)
        async with asyncio.TaskGroup() as tg:
            upload = tg.create_task(batcher.run(), name="uplink")
            watch = tg.create_task(registry.watch(), name="registry")
            async with (
                HealthServer(snapshot, host=config.health.host, port=config.health.port)
                as health,
                CoapIngress(core, host=config.coap.host, port=config.coap.port,
                            max_payload=config.coap.max_payload) as coap,
            ):
                if ready_file is not None:
                    write_ready_file(ready_file, coap=coap.address, health=health.address)
                log.info("gateway %s ready: %d devices, %d readings queued",
                         config.gateway_id, len(registry), store.depth)
                # Leave when asked to; if a background task dies, the TaskGroup cancels us.
                await stop.wait()
                log.info("shutting down: closing ingress")
            upload.cancel()
            watch.cancel()
        await batcher.drain(up.drain_timeout_s)
    log.info("queue closed with %d readings waiting", store.depth)
