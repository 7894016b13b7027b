"""The ingress adapter interface.

An adapter listens on one transport (CoAP, LoRa, MQTT, BLE, ...), decodes what arrives
into :class:`~machi_gateway.model.Reading` and hands it to a :class:`Sink`. It knows
nothing of other adapters, the store or the uplink. The sink raises a
:class:`~machi_gateway.errors.ResponseError` (whose ``code`` the adapter maps to its own
reply) or returns a :class:`Receipt` only once the reading is durable, so the adapter may
acknowledge; the receipt carries what the acknowledgement should tell the node (the
gateway time, and the commands waiting for it: docs/protocol.md §2 and §5).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol, Self

import cbor2

from ..model import Reading

Accepted = Literal["new", "duplicate"]

#: One command as the node receives it (contract C2): ``[cid, name, args, exp]``; ``exp``
#: (unix time) is when the node must stop accepting it (protocol.md §5, freshness).
WireCommand = tuple[int, str, dict[str, Any], int]

ACK_TIME = 1
ACK_COMMANDS = 2


@dataclass(frozen=True, slots=True)
class Receipt:
    """The sink's answer: the reading is durable; tell the node ``time`` and ``commands``."""

    outcome: Accepted
    time: int
    commands: tuple[WireCommand, ...] = ()

    def payload(self) -> bytes:
        """The CF 60 body of the 2.04: ``{1: time}`` plus ``{2: [[cid, name, args, exp]...]}``
        when commands wait (contract C1/C2). A few bytes: ``a1 01 1a xxxxxxxx``."""
        doc: dict[int, Any] = {ACK_TIME: self.time}
        if self.commands:
            doc[ACK_COMMANDS] = [list(c) for c in self.commands]
        return bytes(cbor2.dumps(doc))


Fits = Callable[[Sequence[WireCommand]], bool]
"""Whether an answer has room for these commands, oldest first (the ingress knows its
frame; the queue only asks)."""


class Sink(Protocol):
    """Where adapters deliver readings (the gateway core)."""

    async def accept(self, reading: Reading, fits: Fits | None = None) -> Receipt:
        """Check and durably queue ``reading``; ``fits(commands)`` tells whether the
        answer can carry those commands (a LoRa ack within the dwell limit); without it,
        any commands fit.

        Returns a receipt whose outcome is "new" or "duplicate" (both mean: safe to
        acknowledge). Raises UnknownDevice (4.01), QueueFull/StoreUnavailable (5.03).
        The receipt's commands are marked "sent"; they are offered again with every
        later reading of that device until the node reports them, so an adapter that
        cannot carry a downlink simply ignores them.
        """
        ...

    async def accept_many(self, readings: Sequence[Reading]) -> Receipt:
        """:meth:`accept` for the 2..16 readings of one CoAP pack, all of one device: one
        commit for all of them; returns only when all are durable (outcome "new" if any
        was new), raises as :meth:`accept` if any could not be stored."""
        ...

    def rejected(self, transport: str, reason: str) -> None:
        """Count a message the adapter itself refused (bad payload, too large, ...)."""
        ...


class Ingress(abc.ABC):
    """One transport's receiver; an async context manager that listens while entered."""

    #: The ``transport`` written into every reading ("coap", "lora", ...).
    transport: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Start listening; return once ready to receive."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop listening; requests in flight may finish; idempotent."""

    @property
    @abc.abstractmethod
    def address(self) -> tuple[str, int]:
        """The bound (host, port), valid after :meth:`start` (real port if 0 was asked)."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
