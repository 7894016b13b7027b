"""HTTP(S) uplink: POST {url}/v1/batches with a CBOR body and a bearer token (httpx)."""

from __future__ import annotations

import logging

import httpx

from .. import tls
from ..errors import BatchConflict, UplinkRefused, UplinkUnavailable
from .base import Batch, BatchAnswer, Uplink
from .wire import decode_answer, encode_batch

log = logging.getLogger(__name__)


class HttpUplink(Uplink):
    """One pooled httpx client; every request bounded by ``timeout_s``; TLS settings from
    ``tls_config`` (``[cloud]``, see :mod:`machi_gateway.tls`)."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
        tls_config: tls.CloudTls | None = None,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/v1/batches"
        headers = {"Content-Type": "application/cbor", "Accept": "application/cbor"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(timeout_s), transport=transport,
            follow_redirects=False, **tls.client_kwargs(url, tls_config),
        )

    async def send(self, batch: Batch) -> BatchAnswer:
        body = encode_batch(batch)
        try:
            resp = await self._client.post(self.endpoint, content=body)
        except httpx.TimeoutException as exc:
            raise UplinkUnavailable(f"timeout posting to {self.endpoint}") from exc
        except httpx.TransportError as exc:
            raise UplinkUnavailable(tls.transport_error(self.endpoint, exc)) from exc
        if resp.status_code == 200:
            return decode_answer(resp.content)
        detail = resp.text[:200].replace("\n", " ")
        if resp.status_code == 409:
            raise BatchConflict(409, detail)
        if 400 <= resp.status_code < 500:
            raise UplinkRefused(resp.status_code, detail)
        raise UplinkUnavailable(f"HTTP {resp.status_code}: {detail}")

    async def aclose(self) -> None:
        await self._client.aclose()
