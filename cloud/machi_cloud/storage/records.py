"""Records of the control plane (registry, commands, audit, reports) shared by every backend.

They are plain frozen dataclasses so a backend only maps columns to fields; every rule that
must hold the same on SQLite and PostgreSQL (short-id range, command states and their order,
how an audit entry is hashed) lives here or in `machi_cloud.audit`, not in SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEVICE_TYPES = ("env", "bin", "light")
TRANSPORTS = ("coap", "lora", "nbiot")
MAX_SHORT_ID = 0xFFFF  # LoRa frames carry a uint16; 0 is never allocated
COMMAND_NAMES = ("on", "off", "dim", "schedule", "interval", "config", "update")
# Forward-only: a state may be replaced only by one of a higher rank; the last three are final.
COMMAND_STATES = ("queued", "sent", "acknowledged", "executed", "failed", "expired")
FINAL_STATES = frozenset({"executed", "failed", "expired"})


def state_rank(state: str) -> int:
    """0 queued, 1 sent, 2 acknowledged, 3 for every final state."""
    return min(COMMAND_STATES.index(state), 3)


def moves_forward(current: str, new: str) -> bool:
    """True when `new` may replace `current` (states only move forward, finals stay)."""
    return current not in FINAL_STATES and state_rank(new) > state_rank(current)


@dataclass(frozen=True, kw_only=True)
class DeviceRegistration:
    """What an admin declares about a device (docs/protocol.md §6, `PUT /v1/devices/{id}`).

    `interval_s` (its sampling interval, if known) sets when it counts as stale; `personal`
    marks a device whose data must never leave through the open-data export.
    """

    device: str
    type: str
    gateway: str
    site: str | None = None
    lat: float | None = None
    lon: float | None = None
    transport: str = "coap"
    interval_s: int | None = None
    personal: bool = False

    def __post_init__(self) -> None:
        if self.type not in DEVICE_TYPES:
            raise ValueError(f"type must be one of {', '.join(DEVICE_TYPES)}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
        if (self.lat is None) != (self.lon is None):
            raise ValueError("give both lat and lon, or neither")

    def fields(self) -> dict[str, Any]:
        """The declared fields (for audit details and answers)."""
        return {
            "type": self.type,
            "gateway": self.gateway,
            "site": self.site,
            "lat": self.lat,
            "lon": self.lon,
            "transport": self.transport,
            "interval_s": self.interval_s,
            "personal": self.personal,
        }


@dataclass(frozen=True, kw_only=True)
class RegisteredDevice(DeviceRegistration):
    """A registered device: its declaration plus what the cloud allocated.

    `short_id` is unique among the devices of one gateway (1..65535). `key` is the 16-byte
    symmetric device key (OSCORE master secret / LoRa MIC key) or None; it must reach the
    gateway, so it is stored, but it is never logged nor put into the audit log.
    """

    short_id: int
    key: bytes | None = None
    revoked: bool = False
    created: float = 0.0
    updated: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.short_id <= MAX_SHORT_ID:
            raise ValueError(f"short_id must be 1..{MAX_SHORT_ID}")
        if self.key is not None and len(self.key) != 16:
            raise ValueError("key must be 16 bytes")


@dataclass(frozen=True, kw_only=True)
class Command:
    """A downlink command and where it stands (docs/protocol.md §5)."""

    id: str
    device: str
    gateway: str
    name: str
    args: Mapping[str, Any] = field(default_factory=dict)
    created: float
    expires: float
    state: str = "queued"
    updated: float = 0.0
    detail: str = ""
    actor: str = ""

    def __post_init__(self) -> None:
        if self.name not in COMMAND_NAMES:
            raise ValueError(f"name must be one of {', '.join(COMMAND_NAMES)}")
        if self.state not in COMMAND_STATES:
            raise ValueError(f"state must be one of {', '.join(COMMAND_STATES)}")
        if self.expires < self.created:
            raise ValueError("a command cannot expire before it was created")


@dataclass(frozen=True, kw_only=True)
class CommandQuery:
    """A filter over commands, newest first. `pending_at` = queued and not expired then."""

    id: str | None = None
    device: str | None = None
    gateway: str | None = None
    pending_at: float | None = None
    limit: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= 10_000:
            raise ValueError("limit must be 1..10000")


@dataclass(frozen=True)
class AuditEntry:
    """One link of the hash chain; see `machi_cloud.audit` for how `hash` is computed."""

    seq: int
    time: float
    actor: str
    action: str
    subject: str
    details: Mapping[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True, kw_only=True)
class AggregateQuery:
    """Numeric values of one metric grouped per device and time bucket of `bucket_s`."""

    metric: str
    bucket_s: int
    device: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 10_000

    def __post_init__(self) -> None:
        if self.bucket_s < 1:
            raise ValueError("bucket_s must be positive")
        if not 1 <= self.limit <= 100_000:
            raise ValueError("limit must be 1..100000")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError("since must not be later than until")


@dataclass(frozen=True)
class AggregateRow:
    """One bucket: `start` is the bucket's first second (a multiple of bucket_s)."""

    device: str
    start: int
    count: int
    mean: float
    min: float
    max: float


@dataclass(frozen=True)
class DeliveryReport:
    """Which readings of a device reached the cloud: seq range, count and the holes in it.

    `gaps` lists inclusive `(first, last)` seq ranges missing between `first_seq` and
    `last_seq` (at most the number asked for; `missing` counts all of them).
    """

    device: str
    readings: int
    first_seq: int | None
    last_seq: int | None
    missing: int
    gaps: tuple[tuple[int, int], ...] = ()
