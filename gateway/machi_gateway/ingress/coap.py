"""CoAP ingress (docs/protocol.md §2): an aiocoap server with one resource, ``/r``.

Checks run in the documented order: size (4.13 + Size1), Content-Format (4.15), SenML
decode (4.00 + diagnostic), then the sink (registry 4.01, queue 5.03 + Max-Age);
2.04 only after the commit. Every refusal is counted by reason and logged in one line
naming the peer; nothing a node sends can stop the server.

OSCORE (docs/security.md §2): with ``oscore`` "optional" or "required" the resource sits
behind aiocoap's ``OscoreSiteWrapper`` with contexts from the registry
(:mod:`.oscore_ctx`); the wrapper answers what fails OSCORE itself (4.01 unknown kid or
replay, 4.00 decryption failed, protected 4.01 + Echo after a restart). A protected
reading must name the device of its context, else 4.01 (``oscore-identity``): a node
cannot post in another's name. "required" refuses plain requests with 4.01
(``oscore-required``); "off" serves plain CoAP only, as before.
"""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.error
import aiocoap.resource
from aiocoap.message import Direction
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import ACK, CON, RST
from aiocoap.pipe import Pipe, error_to_message, run_driving_pipe
from aiocoap.tokenmanager import TokenManager
from aiocoap.transports.udp6 import UDP6EndpointAddress

from ..errors import (
    ListenError,
    PayloadTooLarge,
    ResponseError,
    StoreUnavailable,
    UnknownDevice,
    UnsupportedFormat,
)
from ..registry import Registry
from ..senml import decode_readings
from .base import Ingress, Sink

log = logging.getLogger(__name__)

SENML_CBOR = 112
CBOR = 60
PATH = ("r",)
OSCORE_MODES = ("off", "optional", "required")


def _oscore_device(request: aiocoap.Message) -> str | None:
    """The device whose OSCORE context unprotected ``request``; None for plain CoAP."""
    ctx = getattr(request.remote, "security_context", None)
    device = getattr(ctx, "device", None)
    return device if isinstance(device, str) else None


def coap_code(code: str) -> Code:
    """Map our ``"c.dd"`` code strings to aiocoap's Code."""
    cls, detail = code.split(".")
    return Code((int(cls) << 5) | int(detail))


def _peer(request: aiocoap.Message) -> str:
    """The sender, for log lines only (formatting it costs: not on the 2.04 path)."""
    return str(request.remote.hostinfo)


def _refuse_non_utf8_options() -> None:
    """Make a string option that is not UTF-8 an unparsable message, as aiocoap means it.

    aiocoap's ``StringOption.decode`` lets ``UnicodeDecodeError`` escape ``Message.decode``,
    whose callers only catch ``UnparsableMessage``: a 10-byte datagram with a Uri-Path of
    ``ff fe`` then raised into the event loop with a traceback in the log, per datagram
    (found by gateway/tests/test_fuzz_parsers.py). Patched once, idempotently, here rather
    than in a fork; the datagram is then dropped like any other unparsable one.
    """
    from aiocoap import optiontypes

    decode = optiontypes.StringOption.decode
    if getattr(decode, "_machi_utf8_checked", False):
        return

    def checked(self: Any, rawdata: bytes) -> None:
        try:
            decode(self, rawdata)
        except UnicodeDecodeError as exc:
            raise aiocoap.error.UnparsableMessage(f"option is not UTF-8: {exc}") from exc

    checked._machi_utf8_checked = True  # type: ignore[attr-defined]
    optiontypes.StringOption.decode = checked


class _MessageManager(MessageManager):  # type: ignore[misc]  # untyped lib
    """aiocoap's message layer with a compact duplicate cache (same answers).

    RFC 7252 §4.5: a request seen again from the same endpoint with the same message id
    within EXCHANGE_LIFETIME (247 s) is a duplicate; a CON duplicate gets the answer sent
    the first time (nothing, while that is still being prepared). aiocoap keeps, per
    request, the answer's ``Message`` (which holds the request, both option sets and the
    remote: some 60 objects the cyclic GC tracks) and a ``call_later`` timer (a
    ``TimerHandle`` and a ``partial`` on the loop's heap) to forget it. Under load that is
    a few hundred thousand tracked objects that every collection of the older
    generations walks (docs/benchmarks.md, "Steady load"). Here the cache holds the
    answer's encoded bytes under ``(address, message id)`` (no tracked object once the
    GC has seen it), and one FIFO of deadlines replaces the timers: entries are dropped
    in arrival order when the next request comes, before that request is looked up, so
    a duplicate is recognised exactly as long as before (an idle gateway keeps the last
    lifetime's entries until traffic resumes: no more than that traffic left). A
    duplicate's answer is decoded from those bytes again (a rare path): the same bytes
    on the wire as before.
    """

    def __init__(self, token_manager: Any) -> None:
        super().__init__(token_manager)
        self._recent_messages: dict[Any, bytes | None] = {}
        self._expiry: collections.deque[tuple[float, Any]] = collections.deque()
        self._clock = self.loop.time  # the loop's clock (a test moves this one alone)

    @staticmethod
    def _dedup_key(remote: Any, mid: int) -> Any:
        # a UDP6 remote equals another by its socket address without the scope id
        # (UDP6EndpointAddress.__eq__); keying on that tuple keeps no remote object alive
        if type(remote) is UDP6EndpointAddress:
            return (remote.sockaddr[:-1], mid)
        return (remote, mid)

    def _deduplicate_message(self, message: aiocoap.Message) -> bool:
        recent = self._recent_messages
        expiry = self._expiry
        now = self._clock()
        while expiry and expiry[0][0] <= now:
            del recent[expiry.popleft()[1]]
        key = self._dedup_key(message.remote, message.mid)
        if key in recent:
            answer = recent[key]
            if message.mtype is CON:
                if answer is not None:
                    self.log.info("Duplicate CON received, sending old response again")
                    again = aiocoap.Message.decode(answer, message.remote.as_response_address())
                    again.direction = Direction.OUTGOING
                    self._send_via_transport(again)
                else:
                    self.log.info("Duplicate CON received, no response to send yet")
            else:
                self.log.info("Duplicate NON, ACK or RST received")
            return True
        recent[key] = None
        expiry.append((now + message.transport_tuning.EXCHANGE_LIFETIME, key))
        return False

    def _store_response_for_duplicates(self, message: aiocoap.Message) -> None:
        # Only an ACK or RST carries the request's message id; any other message sent
        # (a push request to a node, a separate response) has an id of the gateway's own,
        # which may equal a node's recent request id and must not replace its answer.
        if message.mtype is not ACK and message.mtype is not RST:
            return
        key = self._dedup_key(message.remote, message.mid)
        if key in self._recent_messages:
            self._recent_messages[key] = message.encode()


class _TokenManager(TokenManager):  # type: ignore[misc]  # untyped lib
    """aiocoap's token layer, whose per-request state is freed when the request ends.

    aiocoap's ``process_request`` makes a reference cycle per request: its ``on_event``
    closure holds ``stop``, a ``partial`` holding ``on_event`` (and the pipe, and through
    the closure the request with its options and remote), so each served request is
    left as cyclic garbage for the GC to find (about 20 tracked objects a request under
    bench/gateway_coap.py). The same code here, except that the end of the request's
    interest drops ``stop`` from the closure: the cycle is broken and reference counting
    frees the request at once.
    """

    def process_request(self, request: aiocoap.Message) -> None:
        key = (request.token, request.remote)
        if key in self.incoming_requests:
            self.log.debug("Incoming request overrides existing request")
            (_, old_stop) = self.incoming_requests.pop(key)
            old_stop()
        pipe = Pipe(request, self.log)
        stop: Any = None

        def on_event(ev: Any) -> bool | None:
            if ev.message is not None:
                m = ev.message
                m.token = request.token
                m.remote = request.remote.as_response_address()
                m.request = request
                self.token_interface.send_message(m, stop)
            else:
                self.log.error("Requests shouldn't receive errors at the level of a "
                               "TokenManager any more, but this did: %s", ev)
            if not ev.is_last:
                return True
            return None

        def on_end() -> None:
            nonlocal stop
            if key in self.incoming_requests:
                del self.incoming_requests[key]
            stop = None  # the cycle on_event -> stop -> on_event ends here

        stop = pipe.on_event(on_event)
        pipe.on_interest_end(on_end)
        self.incoming_requests[key] = (pipe, stop)
        self.context.render_to_pipe(pipe)


class _Context(aiocoap.Context):  # type: ignore[misc]  # untyped lib
    """aiocoap's server context, minus a ``%r`` of every request, with the compact
    duplicate cache of :class:`_MessageManager` and the cycle-free token layer of
    :class:`_TokenManager`.

    ``Context.render_to_pipe`` names each request's task ``"Rendering for %r" % request``:
    the Message repr formats the remote, which parses its address with ``ipaddress`` and
    looks up the interface name, for a name nobody reads (a tenth of the gateway's
    per-request time under bench/gateway_coap.py's profile). Same pipes, same error
    handling, an unnamed task.
    """

    def render_to_pipe(self, pipe: Any) -> None:
        run_driving_pipe(error_to_message(pipe, self.log), self._render_to_pipe(pipe))

    async def _append_tokenmanaged_messagemanaged_transport(
            self, message_interface_constructor: Any) -> None:
        # aiocoap's own, with _TokenManager and _MessageManager
        tman = _TokenManager(self)
        mman = _MessageManager(tman)
        transport = await message_interface_constructor(mman)
        mman.message_interface = transport
        tman.token_interface = mman
        self.request_interfaces.append(tman)


class ReadingResource(aiocoap.resource.Resource):  # type: ignore[misc]  # untyped lib
    """``/r``: POST one SenML-CBOR pack of 1..16 readings. Other methods get 4.05."""

    def __init__(self, sink: Sink, *, max_payload: int, oscore: str = "off",
                 others: Any = None) -> None:
        super().__init__()
        self.sink = sink
        self.max_payload = max_payload
        self.oscore = oscore
        self.others = others  # renders every other path (ingress/firmware.py: /fw/...)
        self.peers: dict[str, Any] = {}  # device -> remote of its last 2.04 (downlink/push.py)

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        # This resource is the server's whole site: routing the one path here skips
        # aiocoap's Site, which copies every request and rebuilds its URI (a third of
        # the per-request cost in bench/gateway_coap.py).
        if request.opt.uri_path != PATH:
            if self.others is not None:
                return await self.others.render(request)
            return aiocoap.Message(code=aiocoap.NOT_FOUND)
        if request.code != aiocoap.POST:
            # aiocoap's own 4.05 carries "Error: Method not allowed!": 31 bytes for a
            # 6-byte DELETE. An answer to an unauthenticated request is never larger than
            # the request (docs/security.md §1.3), so ours is bare.
            self.sink.rejected("coap", "method")
            return aiocoap.Message(code=aiocoap.METHOD_NOT_ALLOWED)
        # render_post directly, not through aiocoap's method dispatch (a str() of the
        # code and a getattr per request); what that dispatch adds to a response it
        # renders is copied here: the request's No-Response option.
        response = await self.render_post(request)
        if response.opt.no_response is None:
            response.opt.no_response = request.opt.no_response
        return response

    async def needs_blockwise_assembly(self, request: Any) -> bool:
        # A reading must fit in one datagram; a Block1 transfer is refused with 4.13
        # rather than buffered, so a node cannot make us hold partial uploads.
        return False

    async def render_to_pipe(self, pipe: Any) -> None:
        # aiocoap's Resource does this after awaiting needs_blockwise_assembly(), which
        # is always False here: one coroutine less per request.
        pipe.add_response(await self.render(pipe.request), is_last=True)

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
            secured = _oscore_device(request) if self.oscore != "off" else None
            if secured is None and self.oscore == "required":
                raise UnknownDevice("oscore-required", "OSCORE required")
            readings = decode_readings(request.payload, received=time.time(), transport="coap")
            reading = readings[0]  # a pack's readings are all of one device
            if secured is not None and reading.device != secured:
                raise UnknownDevice("oscore-identity",
                                    f"OSCORE context is {secured}'s, not {reading.device}'s")
        except ResponseError as exc:
            self.sink.rejected("coap", exc.reason)
            peer = _peer(request)
            log.warning("coap %s from %s: %s", exc.code, peer, exc.detail,
                        extra={"peer": peer, "reason": exc.reason, "code": exc.code})
            return self._error(exc, request)
        try:
            # several readings (a node's backlog): one commit, one 2.04 for all of them
            receipt = await (self.sink.accept(reading) if len(readings) == 1
                             else self.sink.accept_many(readings))
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
        self.peers[reading.device] = request.remote
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

    def __init__(self, sink: Sink, *, host: str, port: int, max_payload: int,
                 oscore: str = "off", registry: Registry | None = None,
                 oscore_seq_file: Path | None = None, others: Any = None,
                 rate_per_source: float = 0.0, rate_burst: int = 400) -> None:
        if oscore not in OSCORE_MODES:
            raise ValueError(f"oscore must be one of {', '.join(OSCORE_MODES)}, got {oscore!r}")
        if oscore != "off" and (registry is None or oscore_seq_file is None):
            raise ValueError("OSCORE needs the registry and a sequence file")
        self.sink = sink
        self.host = host
        self.port = port
        self.max_payload = max_payload
        self.oscore = oscore
        self.registry = registry
        self.oscore_seq_file = oscore_seq_file
        self.others = others
        self.rate_per_source = rate_per_source  # 0: no limit (ingress/ratelimit.py)
        self.rate_burst = rate_burst
        self.credentials: Any = None  # oscore_ctx.RegistryCredentials when OSCORE is on
        self.peers: dict[str, Any] = {}  # device -> remote of its last 2.04 (downlink/push.py)
        self._ctx: aiocoap.Context | None = None
        self._bound: tuple[str, int] | None = None

    def _site(self) -> Any:
        resource = ReadingResource(self.sink, max_payload=self.max_payload, oscore=self.oscore,
                                   others=self.others)
        resource.peers = self.peers
        if self.oscore == "off":
            return resource
        # imported only when used: the wrapper pulls in aiocoap's OSCORE and EDHOC code
        from .oscore_ctx import CountingSiteWrapper, RegistryCredentials

        assert self.registry is not None and self.oscore_seq_file is not None
        sink = self.sink
        self.credentials = RegistryCredentials(self.registry, self.oscore_seq_file,
                                               lambda reason: sink.rejected("coap", reason))
        return CountingSiteWrapper(resource, self.credentials)

    async def start(self) -> None:
        _refuse_non_utf8_options()
        site = self._site()
        if self.rate_per_source > 0:
            from .ratelimit import RateLimitedSite, TokenBuckets

            sink = self.sink
            site = RateLimitedSite(site, TokenBuckets(self.rate_per_source, self.rate_burst),
                                   lambda reason: sink.rejected("coap", reason))
        try:
            self._ctx = await _Context.create_server_context(
                site, bind=(self.host, self.port), transports=["udp6"], loggername="machi.coap"
            )
        except (OSError, aiocoap.error.Error) as exc:
            raise ListenError(
                f"cannot listen for CoAP on [{self.host}]:{self.port}: {exc}"
            ) from exc
        self._bound = (self.host, self._local_port(self._ctx))
        log.info("coap listening on [%s]:%d (oscore %s)", *self._bound, self.oscore)

    @property
    def context(self) -> aiocoap.Context | None:
        """The running server's context: downlink/push.py sends from its socket."""
        return self._ctx

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
            if self.credentials is not None:  # no request is taken any more: exact windows
                try:
                    self.credentials.save_windows()
                except OSError as exc:  # e.g. a full disk: not saved is safe (Echo at start)
                    log.error("oscore: replay windows not saved (%s): nodes get an Echo "
                              "challenge after the restart", exc)
            log.info("coap stopped")

    @property
    def address(self) -> tuple[str, int]:
        if self._bound is None:
            raise RuntimeError("CoAP ingress not started")
        return self._bound
