"""A node's side of an OSCORE request over a plain socket, for the gateway's OSCORE tests:
protect a POST /r with a node-side context and exchange the datagram with the gateway."""

from __future__ import annotations

import asyncio
import itertools
import socket
from typing import Any

import aiocoap
from aiocoap.message import Direction

from machi_gateway.ingress.oscore_ctx import NodeSideContext

TIMEOUT = 20.0
_mids = itertools.count(0x3000)


def next_mid() -> int:
    """A message id no other request of the test run has used."""
    return next(_mids) & 0xFFFF


def protect(ctx: NodeSideContext, payload: bytes, echo: bytes | None = None
            ) -> tuple[bytes, Any]:
    """The protected CON POST /r (a fresh message id) and its request id."""
    msg = aiocoap.Message(code=aiocoap.POST, uri_path=("r",), content_format=112,
                          payload=payload)
    if echo is not None:
        msg.opt.echo = echo
    msg.direction = Direction.OUTGOING
    outer, request_id = ctx.protect(msg)
    outer.mid, outer.token, outer.mtype = next_mid(), b"\x01\x02", aiocoap.CON
    return bytes(outer.encode()), request_id


def _exchange(port: int, data: bytes) -> aiocoap.Message:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(data, ("127.0.0.1", port))
        return aiocoap.Message.decode(s.recv(2048))


async def exchange(port: int, data: bytes) -> aiocoap.Message:
    """Send one datagram to the gateway on loopback and decode its answer."""
    return await asyncio.to_thread(_exchange, port, data)
