"""The cloud's command endpoints (contract C3) over httpx, with our errors at the boundary."""

from __future__ import annotations

from typing import Any

import httpx

from .. import tls
from ..errors import UplinkRefused, UplinkUnavailable
from .queue import CloudCommand, StateReport

MAX_WAIT_S = 30


class CommandClient:
    """``GET /v1/gateways/{gw}/commands?wait=`` and ``POST /v1/commands/{id}/state``."""

    def __init__(self, url: str, *, gateway: str, token: str, timeout_s: float,
                 transport: httpx.AsyncBaseTransport | None = None,
                 tls_config: tls.CloudTls | None = None) -> None:
        self.base = url.rstrip("/")
        self.gateway = gateway
        self.timeout_s = timeout_s
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout_s),
                                         transport=transport, follow_redirects=False,
                                         **tls.client_kwargs(url, tls_config))

    async def _call(self, method: str, path: str, *, timeout_s: float,
                    **kw: Any) -> httpx.Response:
        url = self.base + path
        try:
            resp = await self._client.request(method, url, timeout=timeout_s, **kw)
        except httpx.TimeoutException as exc:
            raise UplinkUnavailable(f"timeout on {method} {url}") from exc
        except httpx.TransportError as exc:
            raise UplinkUnavailable(tls.transport_error(url, exc)) from exc
        if resp.status_code == 200:
            return resp
        detail = resp.text[:200].replace("\n", " ")
        if 400 <= resp.status_code < 500:
            raise UplinkRefused(resp.status_code, detail)
        raise UplinkUnavailable(f"HTTP {resp.status_code} on {method} {url}: {detail}")

    async def fetch(self, wait_s: int) -> tuple[list[CloudCommand], list[tuple[str, str]]]:
        """Long-poll for pending commands: (valid ones, [(id, why)] for invalid ones, which
        the caller reports as failed so the cloud stops offering them)."""
        wait_s = max(0, min(MAX_WAIT_S, wait_s))
        resp = await self._call("GET", f"/v1/gateways/{self.gateway}/commands",
                                params={"wait": wait_s}, timeout_s=wait_s + self.timeout_s)
        try:
            doc = resp.json()
            items = doc["commands"]
            if not isinstance(items, list):
                raise TypeError("commands is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            raise UplinkUnavailable(f"malformed commands answer: {exc!r}") from exc
        out: list[CloudCommand] = []
        bad: list[tuple[str, str]] = []
        for item in items:
            try:
                out.append(CloudCommand.from_json(item))
            except ValueError as exc:
                cid = item.get("id") if isinstance(item, dict) else None
                if isinstance(cid, str) and cid:
                    bad.append((cid, str(exc)[:200]))
        return out, bad

    async def report(self, r: StateReport) -> None:
        await self._call("POST", f"/v1/commands/{r.command}/state", timeout_s=self.timeout_s,
                         json={"state": r.state, "time": r.time, "detail": r.detail})

    async def aclose(self) -> None:
        await self._client.aclose()
