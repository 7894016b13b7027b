"""Builds the gateway from its config and runs it as one task tree until told to stop.

Shutdown order matters for the end-to-end promise: stop the ingress first (no new ACKs),
cancel the upload loop, give the uplink one bounded last flush, then close the store
(WAL checkpoint). Anything still queued is sent after the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path

from .config import Config
from .core import Core
from .downlink.cloud import CommandClient
from .downlink.push import Pusher
from .downlink.queue import CommandQueue
from .downlink.service import Downlink
from .health import HealthServer, Snapshot
from .ingress.base import Ingress
from .ingress.coap import CoapIngress
from .ingress.frames import default_decoder
from .local_mqtt import LocalMqtt
from .registry import Registry
from .registry_sync import RegistrySync
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


def write_ready_file(path: Path, *, coap: tuple[str, int], health: tuple[str, int],
                     lora_udp: tuple[str, int] | None = None) -> None:
    """Atomically (tmp + rename) announce where the gateway listens."""
    doc: dict[str, object] = {
        "coap": [_local_host(coap[0], v6_dual_stack=True), coap[1]],
        "health": f"http://{_url_host(_local_host(health[0], v6_dual_stack=False))}:{health[1]}",
        "pid": os.getpid(),
    }
    if lora_udp is not None:  # the Semtech UDP port (a virtual concentrator needs it)
        doc["lora_udp"] = [_local_host(lora_udp[0], v6_dual_stack=False), lora_udp[1]]
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


def _adapters(config: Config, core: Core, registry: Registry) -> list[Ingress]:
    """The optional ingress adapters the config enables (CoAP is always on)."""
    out: list[Ingress] = []
    lora_family = config.lora_udp.enabled or config.serial.enabled or config.chirpstack.enabled
    decode = default_decoder() if lora_family else None
    if config.lora_udp.enabled:
        from .ingress.semtech import SemtechIngress
        assert decode is not None
        out.append(SemtechIngress(core, decode=decode, registry_lookup=registry.by_short_id,
                                  host=config.lora_udp.host, port=config.lora_udp.port,
                                  rx_delay_s=config.lora_udp.rx_delay_s,
                                  tx_power=config.lora_udp.tx_power,
                                  confirm=config.lora_udp.confirm))
    if config.serial.enabled:
        from .ingress.serial_modem import SerialModemIngress
        assert decode is not None
        out.append(SerialModemIngress(core, decode=decode,
                                      registry_lookup=registry.by_short_id,
                                      port=config.serial.port,
                                      baudrate=config.serial.baudrate))
    if config.chirpstack.enabled:
        from .ingress.chirpstack import ChirpstackIngress
        assert decode is not None
        cs = config.chirpstack
        out.append(ChirpstackIngress(core, decode=decode, registry_lookup=registry.by_short_id,
                                     host=cs.host, port=cs.port, username=cs.username,
                                     password=cs.password, topic=cs.topic))
    if config.ble.enabled:
        from .ingress.ble import BleIngress
        out.append(BleIngress(core, state_file=config.ble_state_file))
    return out


def _firmware(config: Config) -> object | None:
    """The /fw/<type>/... resource when ``[firmware] dir`` is set (ingress/firmware.py)."""
    if config.firmware_dir is None:
        return None
    from .ingress.firmware import FirmwareResource

    return FirmwareResource(config.firmware_dir)


async def _run(config: Config, ready_file: Path | None, stop: asyncio.Event) -> None:
    registry = Registry(config.devices_file)
    await asyncio.to_thread(registry.reload_if_changed)
    stats = IngressStats()
    up = config.uplink
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(Store(
            config.queue_file, max_readings=config.queue.max_readings,
            retry_after_s=config.queue.retry_after_s,
            dedup_window_s=config.queue.dedup_window_s, max_bytes=config.queue.max_bytes))
        uplink = await stack.enter_async_context(
            HttpUplink(up.url, token=up.token, timeout_s=up.timeout_s,
                       tls_config=config.cloud))
        commands: CommandQueue | None = None
        downlink: Downlink | None = None
        pusher: Pusher | None = None
        if config.downlink.enabled:
            commands = await stack.enter_async_context(
                CommandQueue(config.commands_file, per_ack=config.downlink.per_ack))
            client = CommandClient(up.url, gateway=config.gateway_id, token=up.token,
                                   timeout_s=up.timeout_s, tls_config=config.cloud)
            stack.push_async_callback(client.aclose)
            dl = config.downlink
            if dl.push:
                pusher = Pusher(commands, registry, ack_timeout_s=dl.push_ack_timeout_s,
                                max_retransmit=dl.push_max_retransmit)
            downlink = Downlink(commands, client, wait_s=config.downlink.wait_s, push=pusher,
                                idle_s=config.downlink.idle_s,
                                backoff_initial_s=up.backoff_initial_s,
                                backoff_max_s=up.backoff_max_s)
        sync: RegistrySync | None = None
        if config.devices_sync:
            sync = RegistrySync(up.url, gateway=config.gateway_id, token=up.token,
                                path=config.devices_file,
                                interval_s=config.devices_sync_interval_s,
                                timeout_s=up.timeout_s, tls_config=config.cloud)
            stack.push_async_callback(sync.aclose)
        batcher = Batcher(store, uplink, gateway=config.gateway_id, policy=BatchPolicy.of(up))

        async def snapshot() -> Snapshot:
            oldest = await store.oldest_received() if store.depth else None
            return Snapshot(
                gateway=config.gateway_id, queue_depth=store.depth,
                readings_in=stats.readings_in, duplicates=stats.duplicates,
                rejected=dict(stats.rejected), dead_letters=store.dead_letters,
                uplink_sent=batcher.sent, uplink_batches=batcher.batches,
                uplink_last_ok=batcher.last_ok, uplink_last_error=batcher.last_error,
                uplink_failures=batcher.failures, devices=len(registry),
                uplink_lag_s=max(0.0, time.time() - oldest) if oldest is not None else 0.0,
                last_seen=dict(stats.last_seen), by_transport=dict(stats.by_transport),
                commands_open=commands.open_commands if commands else 0,
                command_reports_pending=commands.outbox if commands else 0,
            )

        core = Core(registry, store, stats, commands=commands)
        async with asyncio.TaskGroup() as tg:
            background = [tg.create_task(batcher.run(), name="uplink"),
                          tg.create_task(registry.watch(), name="registry")]
            if downlink is not None:
                background.append(tg.create_task(downlink.run(), name="downlink"))
            if sync is not None:
                background.append(tg.create_task(sync.run(), name="registry-sync"))
            async with contextlib.AsyncExitStack() as ingress:
                if config.mqtt_local.enabled:
                    m = config.mqtt_local
                    local = await ingress.enter_async_context(LocalMqtt(
                        host=m.host, port=m.port, username=m.username, password=m.password,
                        prefix=m.prefix, discovery_prefix=m.discovery_prefix))
                    core.subscribe(local.offer)
                health = await ingress.enter_async_context(
                    HealthServer(snapshot, host=config.health.host, port=config.health.port))
                coap = await ingress.enter_async_context(
                    CoapIngress(core, host=config.coap.host, port=config.coap.port,
                                max_payload=config.coap.max_payload,
                                rate_per_source=config.coap.rate_per_source,
                                rate_burst=config.coap.rate_burst,
                                oscore=config.coap.oscore, registry=registry,
                                oscore_seq_file=config.data_dir / "oscore-seq.json",
                                others=_firmware(config)))
                if pusher is not None:
                    pusher.attach(coap)
                adapters = _adapters(config, core, registry)
                for adapter in adapters:
                    await ingress.enter_async_context(adapter)
                if ready_file is not None:
                    # _adapters puts the Semtech ingress first when it is enabled
                    write_ready_file(ready_file, coap=coap.address, health=health.address,
                                     lora_udp=adapters[0].address
                                     if config.lora_udp.enabled else None)
                log.info("gateway %s ready: %d devices, %d readings queued",
                         config.gateway_id, len(registry), store.depth)
                # Leave when asked to; if a background task dies, the TaskGroup cancels us.
                await stop.wait()
                log.info("shutting down: closing ingress")
            for task in background:
                task.cancel()
        await batcher.drain(up.drain_timeout_s)
    log.info("queue closed with %d readings waiting", store.depth)
