"""The core every ingress adapter delivers into: registry check, then the durable queue."""

from __future__ import annotations

from .errors import ResponseError, UnknownDevice
from .ingress.base import Accepted
from .model import Reading
from .registry import Registry
from .stats import IngressStats
from .store import Store


class Core:
    """Implements :class:`~machi_gateway.ingress.base.Sink` for all adapters."""

    def __init__(self, registry: Registry, store: Store, stats: IngressStats) -> None:
        self.registry = registry
        self.store = store
        self.stats = stats

    async def accept(self, reading: Reading) -> Accepted:
        try:
            if reading.device not in self.registry:
                raise UnknownDevice("unknown-device",
                                    f"device {reading.device!r} is not registered here")
            outcome = await self.store.add(reading)
        except ResponseError as exc:
            self.stats.reject(exc.reason)
            raise
        if outcome == "new":
            self.stats.readings_in += 1
        else:
            self.stats.duplicates += 1
        return outcome

    def rejected(self, transport: str, reason: str) -> None:
        self.stats.reject(reason)
