"""What the LoRa-family adapters (packet forwarder, serial modem, ChirpStack) share: the
compact-frame decoder they are given, and the downlink body they send.

The decoder is injected (contract C6: ``machi_gateway.lora.frame.decode``) so each adapter
is tested with a stub as well as with the real one, and no adapter imports another.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Protocol

from ..model import Reading
from ..registry import Device
from .base import Receipt

Lookup = Callable[[int], Device | None]


class FrameDecoder(Protocol):
    """``decode(payload, *, registry_lookup, received, transport) -> Reading``; raises
    :class:`~machi_gateway.errors.BadReading` (reason "bad-mic", ...) or
    :class:`~machi_gateway.errors.UnknownDevice` for frames it cannot accept."""

    def __call__(self, payload: bytes, *, registry_lookup: Lookup, received: float,
                 transport: str) -> Reading: ...


def default_decoder() -> FrameDecoder:
    """The project's compact-frame decoder, imported only when an adapter is enabled."""
    module = importlib.import_module("machi_gateway.lora.frame")
    decode: FrameDecoder = module.decode
    return decode


#: Builds the downlink body for a device from a receipt that carries commands.
DownlinkEncoder = Callable[[str, Receipt], bytes]


def ack_downlink(device: str, receipt: Receipt) -> bytes:
    """The default downlink body: the same CBOR map as the CoAP 2.04 payload
    (``{1: time, 2: [[cid, name, args]...]}``). Radio adapters send it only when commands
    wait: airtime is scarce and the time alone is not worth a transmission."""
    return receipt.payload()
