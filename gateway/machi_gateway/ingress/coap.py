"""CoAP ingress (docs/protocol.md §2): an aiocoap server with one resource, ``/r``.

Checks run in the documented order: size (4.13 + Size1), Content-Format (4.15), SenML
decode (4.00 + diagnostic), then the sink (registry 4.01, queue 5.03 + Max-Age);
2.04 only after the commit. Every refusal is counted by reason and logged in one line
naming the peer; nothing a node sends can stop the server.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import aiocoap
import aiocoap.error
import aiocoap.resource
from aiocoap.numbers.codes import Code

from ..errors import (
    ListenError,
    PayloadTooLarge,
    ResponseError,
    StoreUnavailable,
    UnsupportedFormat,
)
from ..senml import decode_pack
from .base import Ingress, Sink

log = logging.getLogger(__name__)

SENML_CBOR = 112
CBOR = 60
PATH = ("r",)


def coap_code(code: str) -> Code:
    """Map our ``"c.dd"`` code strings to aiocoap's Code."""
    cls, detail = code.split(".")
    return Code((int(cls) << 5) | int(detail))


def _peer(request: aiocoap.Message) -> str:
    """The sender, for log lines only (formatting it costs: not on the 2.04 path)."""
    return str(request.remote.hostinfo)


class ReadingResource(aiocoap.resource.Resource):  # type: ignore[misc]  # untyped lib
    """``/r``: POST one SenML-CBOR reading. Other methods get 4.05 from aiocoap."""

    def __init__(self, sink: Sink, *, max_payload: int) -> None:
        super().__init__()
        self.sink = sink
        self.max_payload = max_payload

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        # This resource is the server's whole site: routing the one path here skips
        # aiocoap's Site, which copies every request and rebuilds its URI (a third of
        # the per-request cost in bench/gateway_coap.py).
        if request.opt.uri_path != PATH:
            return aiocoap.Message(code=aiocoap.NOT_FOUND)
        response: aiocoap.Message = await super().render(request)
        return response

    async def needs_blockwise_assembly(self, request: Any) -> bool:
        # A reading must fit in one datagram; a Block1 transfer is refused with 4.13
        # rather than buffered, so a node cannot make us hold partial uploads.
        return False

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        try:
            size = len(request.payload)
            if (request.opt.block1 is not None or size > self.max_payload
                    or (request.opt.size1 or 0) > self.max_payload):
                raise PayloadTooLarge("too-large", f"payload over {self.max_payload} bytes")
            if request.opt.content_format != SENML_CBOR:
                raise UnsupportedFormat(
                    "wrong-format",
                    f"content-format {request.opt.content_format} is not {SENML_CBOR}",
                )
            reading = decode_pack(request.payload, received=time.time(), transport="coap")
        except ResponseError as exc:
            self.sink.rejected("coap", exc.reason)
            peer = _peer(request)
            log.warning("coap %s from %s: %s", exc.code, peer, exc.detail,
                        extra={"peer": peer, "reason": exc.reason, "code": exc.code})
            return self._error(exc, request)
        try:
            receipt = await self.sink.accept(reading)
        except ResponseError as exc:
            peer = _peer(request)
            log.warning("coap %s from %s (%s seq %d): %s",
                        exc.code, peer, reading.device, reading.seq, exc.detail,
                        extra={"peer": peer, "reason": exc.reason, "code": exc.code,
                               "device": reading.device, "seq": reading.seq})
            return self._error(exc, request)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("coap 2.04 %s %s seq %d from %s (%d commands)", receipt.outcome,
                      reading.device, reading.seq, _peer(request), len(receipt.commands))
        # Time (and the node's commands) ride in the ACK the node waits for anyway.
        return aiocoap.Message(code=aiocoap.CHANGED, payload=receipt.payload(),
                               content_format=CBOR)

    def _error(self, exc: ResponseError, request: aiocoap.Message) -> aiocoap.Message:
        msg = aiocoap.Message(code=coap_code(exc.code))
        if isinstance(exc, PayloadTooLarge):
            msg.opt.size1 = self.max_payload
        elif isinstance(exc, StoreUnavailable):
            msg.opt.max_age = exc.retry_after_s
        else:
            # No amplification: an error answer to an unauthenticated request is never
            # larger than the request. The answer is header + token + 0xff + diagnostic,
            # so the diagnostic gets what the request spent beyond its header and token.
            spent = len(request.opt.encode()) + (1 + len(request.payload) if request.payload else 0)
            limit = spent - 1
            msg.payload = exc.detail.encode("utf-8")[: max(0, min(limit, self.max_payload))]
        return msg


class CoapIngress(Ingress):
    """The CoAP server; ``port=0`` binds a free port, reported by :attr:`address`."""

    transport = "coap"

    def __init__(self, sink: Sink, *, host: str, port: int, max_payload: int) -> None:
        self.sink = sink
        self.host = host
        self.port = port
        self.max_payload = max_payload
        self._ctx: aiocoap.Context | None = None
        self._bound: tuple[str, int] | None = None

    async def start(self) -> None:
        site = ReadingResource(self.sink, max_payload=self.max_payload)
        try:
            self._ctx = await aiocoap.Context.create_server_context(
                site, bind=(self.host, self.port), transports=["udp6"], loggername="machi.coap"
            )
        except (OSError, aiocoap.error.Error) as exc:
            raise ListenError(
                f"cannot listen for CoAP on [{self.host}]:{self.port}: {exc}"
            ) from exc
        self._bound = (self.host, self._local_port(self._ctx))
        log.info("coap listening on [%s]:%d", *self._bound)

    @staticmethod
    def _local_port(ctx: aiocoap.Context) -> int:
        # aiocoap binds the socket itself; its udp6 transport object is the only place
        # the kernel-chosen port is visible (Context has no public accessor in 0.4).
        for tman in ctx.request_interfaces:
            mman = getattr(tman, "token_interface", None)
            iface = getattr(mman, "message_interface", None)
            transport = getattr(iface, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is not None:
                return int(sock.getsockname()[1])
        raise RuntimeError("cannot find the bound CoAP port in aiocoap's context")

    async def stop(self) -> None:
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            await ctx.shutdown()
            log.info("coap stopped")

    @property
    def address(self) -> tuple[str, int]:
        if self._bound is None:
            raise RuntimeError("CoAP ingress not started")
        return self._bound
