"""Keeps ``devices.json`` in step with the cloud (contract C4).

Every ``interval_s`` it fetches ``GET {url}/v1/gateways/{gw}/devices`` with the gateway's
token and, when the content differs, rewrites the registry file atomically (mode 0600:
it holds device keys). The :class:`~machi_gateway.registry.Registry` watcher then picks
the file up like any other edit, so a key rotation or a revocation made in the cloud is
in force here within ``interval_s`` + 1 s, without a restart. When the cloud is away the
file, and so the registry, stays as it was: nodes keep working through an outage.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path
from typing import Any

import httpx

from . import tls
from .errors import UplinkError, UplinkRefused, UplinkUnavailable
from .registry import KEY_BYTES, Device, dump_devices, write_atomically

log = logging.getLogger(__name__)


def devices_from_cloud(doc: Any) -> list[Device]:
    """The cloud's answer as Devices; entries we cannot use are skipped and logged."""
    if not isinstance(doc, dict) or not isinstance(doc.get("devices"), list):
        raise UplinkUnavailable('malformed devices answer: expected {"devices": [...]}')
    out: list[Device] = []
    for item in doc["devices"]:
        try:
            if not isinstance(item, dict):
                raise ValueError("not an object")
            key = item.get("key")
            raw = bytes.fromhex(key) if isinstance(key, str) else None
            if key is not None and (raw is None or len(raw) != KEY_BYTES):
                raise ValueError(f"key is not {2 * KEY_BYTES} hex digits")
            out.append(Device(id=item["id"], type=item.get("type") or "",
                              short_id=item.get("short_id"), key=raw,
                              revoked=bool(item.get("revoked", False))))
        except (KeyError, ValueError, TypeError) as exc:
            ident = item.get("id") if isinstance(item, dict) else item
            log.error("registry sync: skipping device %r from the cloud: %s", ident, exc)
    return out


class RegistrySync:
    """Fetches the registry; :meth:`run` forever, :meth:`sync_once` for one round."""

    def __init__(self, url: str, *, gateway: str, token: str, path: Path,
                 interval_s: float = 60.0, timeout_s: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None,
                 tls_config: tls.CloudTls | None = None) -> None:
        self.endpoint = f"{url.rstrip('/')}/v1/gateways/{gateway}/devices"
        self.path = path
        self.interval_s = interval_s
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout_s),
                                         transport=transport, follow_redirects=False,
                                         **tls.client_kwargs(url, tls_config))
        self.last_ok: float | None = None
        self.last_error: str | None = None

    async def sync_once(self) -> bool:
        """One fetch; True if the file was rewritten. Raises UplinkError on failure."""
        try:
            resp = await self._client.get(self.endpoint)
        except httpx.TimeoutException as exc:
            raise UplinkUnavailable(f"timeout on {self.endpoint}") from exc
        except httpx.TransportError as exc:
            raise UplinkUnavailable(tls.transport_error(self.endpoint, exc)) from exc
        if resp.status_code != 200:
            detail = resp.text[:200].replace("\n", " ")
            if 400 <= resp.status_code < 500:
                raise UplinkRefused(resp.status_code, detail)
            raise UplinkUnavailable(f"HTTP {resp.status_code}: {detail}")
        try:
            doc = resp.json()
        except ValueError as exc:
            raise UplinkUnavailable("malformed devices answer: not JSON") from exc
        text = dump_devices(devices_from_cloud(doc))
        try:
            current = self.path.read_text(encoding="utf-8")
        except OSError:
            current = None
        self.last_ok = asyncio.get_running_loop().time()
        if current == text:
            return False
        await asyncio.to_thread(write_atomically, self.path, text)
        log.info("registry sync: %s rewritten from the cloud", self.path)
        return True

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self.sync_once()
                failures = 0
                self.last_error = None
                delay = self.interval_s
            except UplinkError as exc:
                failures += 1
                self.last_error = str(exc)
                delay = min(self.interval_s, 2.0 ** min(failures, 6)) * (0.5 + random.random())
                log.warning("registry sync failed (%d): %s; keeping %s", failures, exc,
                            self.path)
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        await self._client.aclose()
