"""The ingress adapter interface.

An adapter listens on one transport (CoAP, LoRa, MQTT, BLE, ...), decodes what arrives
into :class:`~machi_gateway.model.Reading` and hands it to a :class:`Sink`. It knows
nothing of other adapters, the store or the uplink. The sink raises a
:class:`~machi_gateway.errors.ResponseError` (whose ``code`` the adapter maps to its own
reply) or returns only once the reading is durable, so the adapter may acknowledge.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Literal, Protocol, Self

from ..model import Reading

Accepted = Literal["new", "duplicate"]


class Sink(Protocol):
    """Where adapters deliver readings (the gateway core)."""

    async def accept(self, reading: Reading) -> Accepted:
        """Check and durably queue ``reading``.

        Returns "new" or "duplicate" (both mean: safe to acknowledge). Raises
        UnknownDevice (4.01), QueueFull/StoreUnavailable (5.03).
        """
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
