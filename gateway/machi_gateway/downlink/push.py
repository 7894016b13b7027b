"""Push a new command at once to an always-on node (protocol.md §5 "Push", issue #4).

A sleepy node gets its commands in the ACK of its next reading; a streetlight is mains
powered and listens all the time, so an operator switching a district's lights should not
wait for the next reading interval. For a device of an always-on type (registry ``type``
in :data:`ALWAYS_ON_TYPES`) the gateway sends each open command as soon as it is fetched:
a CoAP **CON POST /c**, Content-Format 60, payload CBOR ``[cid, name, args, exp]``, from
the CoAP server's own socket (the node's socket is connected to it, and a NAT in between
has the binding of the node's last reading) to the address the node's last accepted
reading came from (recorded by the ingress, :attr:`CoapIngress.peers`).

With OSCORE (the node's last reading was protected) the request is protected with the
**same** security context the ingress unprotected that reading with
(:class:`~machi_gateway.ingress.oscore_ctx.DeviceContext`): the gateway is then the OSCORE
client, kid empty, and its sender sequence numbers are the ones reserved in blocks in
``oscore-seq.json`` before use, so no nonce is reused across restarts. A node that has
rebooted answers with a protected 4.01 carrying an Echo value; the request is sent once
more with it. The answer (2.04, payload the result text ``ok``/``err:...``) moves the
command like a ``cmd/<cid>`` report over the ACK path: queued/sent -> acknowledged ->
executed/failed, in one transaction with its outbox rows.

Nothing is lost when a push fails (no answer after the RFC 7252 retransmissions, an error
code, an answer that does not unprotect, no address known yet): the command stays open and
rides in the next ACK as before. A command pushed and also offered in an ACK is executed
once: the node remembers cids it executed and answers a repeat with the old result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiocoap
import aiocoap.error
import cbor2
from aiocoap import oscore
from aiocoap.numbers.constants import Reliable

from ..ingress.coap import CoapIngress
from ..registry import Registry
from .queue import EXP_S, CommandQueue

log = logging.getLogger(__name__)

ALWAYS_ON_TYPES = frozenset({"light"})
PATH = ("c",)
CBOR = 60
_TRIED = 4096  # command ids pushed already (each is pushed once; the ACK path retries)


@dataclass(frozen=True, slots=True)
class OpenCommand:
    """A command waiting for its result, as it goes on the wire."""

    id: str
    cid: int
    name: str
    args: dict[str, Any]
    expires: float

    def wire(self, now: float) -> bytes:
        return cbor2.dumps([self.cid, self.name, self.args, int(min(self.expires, now + EXP_S))])


def _tuning(ack_timeout_s: float, max_retransmit: int) -> Reliable:
    """RFC 7252 §4.2 retransmission of the push (aiocoap's CON layer does it)."""
    t = Reliable()
    t.ACK_TIMEOUT = ack_timeout_s
    t.MAX_RETRANSMIT = max_retransmit
    return t


class Pusher:
    """Sends new commands to always-on nodes at once; :meth:`run` as a background task."""

    def __init__(self, queue: CommandQueue, registry: Registry, *,
                 types: Iterable[str] = ALWAYS_ON_TYPES, ack_timeout_s: float = 2.0,
                 max_retransmit: int = 4, clock: Callable[[], float] = time.time) -> None:
        if ack_timeout_s <= 0 or not 0 <= max_retransmit <= 20:
            raise ValueError("push: ack_timeout_s must be > 0, max_retransmit 0..20")
        self.queue = queue
        self.registry = registry
        self.types = frozenset(types)
        self.tuning = _tuning(ack_timeout_s, max_retransmit)
        self._clock = clock
        self._context: aiocoap.Context | None = None
        self._peers: dict[str, Any] = {}
        self._wake: asyncio.Queue[str] = asyncio.Queue()
        self._busy: set[str] = set()
        self._again: set[str] = set()
        self._tried: OrderedDict[str, None] = OrderedDict()
        self.pushed = 0  # commands whose push was answered with a result
        self.failed = 0  # pushes without a usable answer (left to the ACK path)

    def attach(self, ingress: CoapIngress) -> None:
        """The started CoAP server: its socket sends the push (the node's socket is
        connected to it), its ``peers`` map names where each node's last reading came from."""
        if ingress.context is None:
            raise RuntimeError("push: the CoAP ingress is not started")
        self._context = ingress.context
        self._peers = ingress.peers

    def offer(self, devices: Iterable[str]) -> None:
        """New commands for these devices were queued."""
        for d in set(devices):
            self._wake.put_nowait(d)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                device = await self._wake.get()
                if device in self._busy:
                    self._again.add(device)  # pushed once the current round ends
                    continue
                self._busy.add(device)
                tg.create_task(self._rounds(device), name=f"push-{device}")

    async def _rounds(self, device: str) -> None:
        try:
            while True:
                self._again.discard(device)
                try:
                    await self.push_device(device)
                except Exception:  # one bad push must not stop the others
                    log.exception("push to %s failed", device)
                if device not in self._again:
                    return
        finally:
            self._busy.discard(device)

    def pushable(self, device: str) -> bool:
        dev = self.registry.get(device)
        return (dev is not None and not dev.revoked and dev.type in self.types
                and self._context is not None and device in self._peers)

    async def push_device(self, device: str) -> int:
        """Push the device's open commands not pushed before, one request each, oldest
        first; stop at the first that gets no answer. Returns how many got a result."""
        if not self.pushable(device):
            return 0
        done = 0
        for row in await self.queue.open_for(device, self._clock()):
            cmd = OpenCommand(*row)
            if cmd.id in self._tried:
                continue
            self._tried[cmd.id] = None
            while len(self._tried) > _TRIED:
                self._tried.popitem(last=False)
            result = await self._push(device, cmd)
            if result is None:
                self.failed += 1
                break  # unreachable or asleep: this and the rest go in the next ACK
            self.pushed += 1
            if await self.queue.apply_result(cmd.id, result):
                done += 1
            log.info("push %s cid %d (%s) to %s: %s", cmd.id, cmd.cid, cmd.name, device,
                     result)
        return done

    async def _push(self, device: str, cmd: OpenCommand) -> str | None:
        """One command, CON with retransmissions; its result, or None (left queued)."""
        assert self._context is not None
        remote = self._peers[device]
        security = getattr(remote, "security_context", None)
        address = getattr(remote, "underlying_address", remote)
        msg = aiocoap.Message(code=aiocoap.POST, uri_path=PATH, content_format=CBOR,
                              payload=cmd.wire(self._clock()), transport_tuning=self.tuning)
        for attempt in range(2):  # the second only after an Echo challenge
            try:
                out, request_id = (msg, None) if security is None else security.protect(msg)
            except oscore.ContextUnavailable as exc:  # sequence numbers exhausted
                log.error("push %s to %s: cannot protect (%s)", cmd.id, device, exc)
                return None
            out.remote = address
            try:
                resp = await self._context.request(out, handle_blockwise=False).response
            except (aiocoap.error.Error, OSError) as exc:
                log.info("push %s to %s: no answer (%s); left for the next ACK",
                         cmd.id, device, type(exc).__name__)
                return None
            if security is not None:
                try:
                    resp, _ = security.unprotect(resp, request_id)
                except (oscore.ProtectionInvalid, oscore.NotAProtectedMessage) as exc:
                    log.warning("push %s to %s: answer %s does not unprotect (%s)",
                                cmd.id, device, resp.code, exc)
                    return None
                if resp.code == aiocoap.UNAUTHORIZED and resp.opt.echo and attempt == 0:
                    msg.opt.echo = resp.opt.echo  # the node rebooted: prove freshness
                    continue
            if resp.code != aiocoap.CHANGED:
                log.warning("push %s to %s: %s %r; left for the next ACK", cmd.id, device,
                            resp.code, resp.payload[:60])
                return None
            return resp.payload.decode("utf-8", "replace")[:200] or "ok"
        return None
