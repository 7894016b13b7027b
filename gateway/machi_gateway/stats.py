"""Counters shared by the ingress side and the health endpoint.

Plain in-process counters (single event loop, no locking needed); the health module
renders them as JSON and Prometheus text.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class IngressStats:
    """What the nodes sent: accepted, duplicate, rejected by reason."""

    readings_in: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1
