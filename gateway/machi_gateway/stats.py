"""Counters shared by the ingress side and the health endpoint.

Plain in-process counters (single event loop, no locking needed); the health module
renders them as JSON and Prometheus text.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class IngressStats:
    """What the nodes sent: accepted, duplicate, rejected by reason; who was seen when."""

    readings_in: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    #: device -> receive time of its last accepted reading (new or duplicate).
    last_seen: dict[str, float] = field(default_factory=dict)
    #: transport -> readings accepted (new or duplicate) through it.
    by_transport: Counter[str] = field(default_factory=Counter)

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def seen(self, device: str, at: float, transport: str) -> None:
        self.last_seen[device] = at
        self.by_transport[transport] += 1
