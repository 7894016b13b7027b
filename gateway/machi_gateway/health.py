"""A tiny HTTP server for ``GET /healthz`` (JSON) and ``GET /metrics`` (Prometheus text).

Hand-written on ``asyncio.start_server`` so the gateway needs no web framework on a
Raspberry Pi; it answers one request per connection and bounds every read.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from .errors import ListenError

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 5.0
_MAX_HEADER_BYTES = 8192


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """The gateway's state at one instant."""

    gateway: str
    queue_depth: int
    readings_in: int
    duplicates: int
    rejected: Mapping[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    uplink_sent: int = 0
    uplink_batches: int = 0
    uplink_last_ok: float | None = None
    uplink_last_error: str | None = None
    uplink_failures: int = 0
    devices: int = 0
    #: seconds the oldest queued reading has waited (0 with an empty queue).
    uplink_lag_s: float = 0.0
    #: device -> receive time of its last accepted reading.
    last_seen: Mapping[str, float] = field(default_factory=dict)
    by_transport: Mapping[str, int] = field(default_factory=dict)
    commands_open: int = 0
    command_reports_pending: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "gateway": self.gateway,
            "queue_depth": self.queue_depth,
            "readings_in": self.readings_in,
            "duplicates": self.duplicates,
            "rejected": dict(sorted(self.rejected.items())),
            "dead_letters": self.dead_letters,
            "devices": self.devices,
            "by_transport": dict(sorted(self.by_transport.items())),
            "last_seen": dict(sorted(self.last_seen.items())),
            "commands": {"open": self.commands_open,
                         "reports_pending": self.command_reports_pending},
            "uplink": {
                "backlog": self.queue_depth,
                "lag_s": round(self.uplink_lag_s, 3),
                "last_ok": self.uplink_last_ok,
                "last_error": self.uplink_last_error,
                "sent": self.uplink_sent,
                "batches": self.uplink_batches,
                "failures": self.uplink_failures,
            },
        }

    def to_prometheus(self) -> str:
        p = "machi_gateway_"
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {p}{name} {help_}")
            lines.append(f"# TYPE {p}{name} {kind}")
            lines.extend(f"{p}{name}{labels} {value:g}" for labels, value in samples)

        metric("queue_depth", "gauge", "Readings waiting for upload.", [("", self.queue_depth)])
        metric("readings_in_total", "counter", "New readings stored.", [("", self.readings_in)])
        metric("duplicates_total", "counter", "Duplicate readings acknowledged again.",
               [("", self.duplicates)])
        metric("rejected_total", "counter", "Requests refused, by reason.",
               [(f'{{reason="{r}"}}', n) for r, n in sorted(self.rejected.items())])
        metric("dead_letters", "gauge", "Readings the cloud rejected for good.",
               [("", self.dead_letters)])
        metric("devices", "gauge", "Registered devices.", [("", self.devices)])
        metric("uplink_sent_total", "counter", "Readings acknowledged by the cloud.",
               [("", self.uplink_sent)])
        metric("uplink_batches_total", "counter", "Batches acknowledged by the cloud.",
               [("", self.uplink_batches)])
        metric("uplink_failures", "gauge", "Consecutive failed uploads.",
               [("", self.uplink_failures)])
        metric("uplink_lag_seconds", "gauge", "Age of the oldest reading waiting for upload.",
               [("", self.uplink_lag_s)])
        metric("readings_by_transport_total", "counter", "Readings accepted, by transport.",
               [(f'{{transport="{t}"}}', n) for t, n in sorted(self.by_transport.items())])
        metric("device_last_seen_timestamp_seconds", "gauge",
               "When each device's last reading was received.",
               [(f'{{device="{d}"}}', t) for d, t in sorted(self.last_seen.items())])
        metric("commands_open", "gauge", "Commands waiting for their node.",
               [("", self.commands_open)])
        metric("command_reports_pending", "gauge", "Command states not yet sent to the cloud.",
               [("", self.command_reports_pending)])
        if self.uplink_last_ok is not None:
            metric("uplink_last_ok_timestamp_seconds", "gauge", "Time of the last good upload.",
                   [("", self.uplink_last_ok)])
        return "\n".join(lines) + "\n"


class HealthServer:
    """Serves snapshots from ``snapshot()``; an async context manager."""

    def __init__(self, snapshot: Callable[[], Snapshot | Awaitable[Snapshot]], *, host: str,
                 port: int) -> None:
        self.snapshot = snapshot
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._bound: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._bound is None:
            raise RuntimeError("health server not started")
        return self._bound

    async def __aenter__(self) -> Self:
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            raise ListenError(f"cannot listen for health on {self.host}:{self.port}: {exc}") \
                from exc
        port = self._server.sockets[0].getsockname()[1]
        self._bound = (self.host, int(port))
        log.info("health listening on %s:%d", *self._bound)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            status, ctype, body = await self._route(head)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
            )
            async with asyncio.timeout(_READ_TIMEOUT_S):
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError) as exc:
            log.debug("health: dropped a client: %r", exc)
        finally:
            writer.close()
            try:
                async with asyncio.timeout(_READ_TIMEOUT_S):
                    await writer.wait_closed()
            except (TimeoutError, ConnectionError):
                pass

    async def _route(self, head: bytes) -> tuple[str, str, bytes]:
        if len(head) > _MAX_HEADER_BYTES:
            return "431 Request Header Fields Too Large", "text/plain", b"too large\n"
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3:
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, target, _ = parts
        path = target.split("?", 1)[0]
        if path not in ("/healthz", "/metrics"):
            return "404 Not Found", "text/plain", b"not found\n"
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        got = self.snapshot()
        snap = await got if inspect.isawaitable(got) else got
        if path == "/healthz":
            return "200 OK", "application/json", json.dumps(snap.to_json()).encode() + b"\n"
        return "200 OK", "text/plain; version=0.0.4", snap.to_prometheus().encode()
