"""The storage seam: what the API needs from a database, and nothing about which one.

`Storage` is the whole contract; `sqlite.py` implements it today and a PostgreSQL module
will sit next to it. The API imports only this module. Implementations must:

- store a batch atomically: all its new readings or none (one transaction), and record the
  batch's answer in the same transaction, so a retried batch gets the same answer;
- identify a reading by `(device, seq)`: a reading already held is a *duplicate*, never
  stored twice, and its first stored content wins;
- never block the event loop (run blocking drivers in threads, or use an async driver);
- raise `StorageUnavailable` (503: the gateway retries) for database failures and
  `BatchConflict` (409) for a `batch_id` re-used with a different body.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from operator import itemgetter
from types import TracebackType
from typing import Any, NamedTuple, Self

import cbor2

from ..batch import Reading, Rejection, Value
from ..errors import NotSupported
from .records import (
    AggregateQuery,
    AggregateRow,
    AuditEntry,
    Command,
    CommandQuery,
    DeliveryReport,
    DeviceRegistration,
    RegisteredDevice,
)

MAX_QUERY_LIMIT = 100_000


@dataclass(frozen=True)
class BatchResult:
    """What the cloud holds after a batch: the answer of docs/protocol.md §3.

    `acked` lists every distinct `(device, seq)` of the batch that is stored now or was
    before; `stored + duplicates` counts the batch's valid readings (a reading repeated
    inside one batch counts as a duplicate). `replayed` is True when this is the recorded
    answer of an earlier delivery of the same batch (it is not part of the wire answer).
    """

    batch_id: str
    stored: int
    duplicates: int
    acked: tuple[tuple[str, int], ...]
    rejected: tuple[Rejection, ...]
    replayed: bool = False

    def __post_init__(self) -> None:
        if self.stored < 0 or self.duplicates < 0:
            raise ValueError("stored and duplicates must not be negative")

    def answer(self) -> dict[str, Any]:
        """The wire answer (CBOR or JSON)."""
        return {
            **self._counts(),
            "acked": [[device, seq] for device, seq in self.acked],
            "rejected": self._rejected_answer(),
        }

    def _counts(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "stored": self.stored, "duplicates": self.duplicates}

    def _rejected_answer(self) -> list[dict[str, Any]]:
        return [{"device": r.device, "seq": r.seq, "reason": r.reason} for r in self.rejected]

    def encode(self) -> bytes:
        """`cbor2.dumps(self.answer())`, the same bytes, cheaper: cbor2 costs ~0.4 us per
        array, so the `acked` pairs are put together from one encoding of their seqs
        (`_encode_acked`); the rest goes through cbor2 as is."""
        acked = _encode_acked(self.acked)
        if acked is None:
            return cbor2.dumps(self.answer())
        head = cbor2.dumps(self._counts())
        tail = cbor2.dumps({"rejected": self._rejected_answer()})
        # a map of 3 and one of 1 (one-byte headers 0xa3, 0xa1) joined into one of 5
        return b"\xa5" + head[1:] + _ACKED_KEY + acked + tail[1:]

    def record(self) -> bytes:
        """What a storage records of the answer for a replay: `answer()` without `acked`.
        The keys would make most of it (~13 bytes a reading, a tenth of the database and of
        each commit's pages); a replay carries the same body, so `rows.replayed` gives
        them again from it (the keys of its readings that the database holds)."""
        return cbor2.dumps({**self._counts(), "rejected": self._rejected_answer()})

    @classmethod
    def from_answer(
        cls,
        answer: Mapping[str, Any],
        *,
        replayed: bool,
        acked: Iterable[tuple[str, int]] = (),
    ) -> BatchResult:
        """Rebuild a result from a recorded `answer()` or `record()` (then with the keys
        given as `acked`)."""
        return cls(
            batch_id=answer["batch_id"],
            stored=answer["stored"],
            duplicates=answer["duplicates"],
            acked=tuple((d, s) for d, s in answer.get("acked", acked)),
            rejected=tuple(
                Rejection(r["device"], r["seq"], r["reason"]) for r in answer["rejected"]
            ),
            replayed=replayed,
        )


_ACKED_KEY = cbor2.dumps("acked")
# (lowest, end) of the unsigned integers whose CBOR encoding has 1, 2, 3, 5 or 9 bytes
_UINT_SIZES = ((0, 24, 1), (24, 2**8, 2), (2**8, 2**16, 3), (2**16, 2**32, 5), (2**32, 2**64, 9))


def _encode_acked(acked: Sequence[tuple[str, int]]) -> bytes | None:
    """The CBOR array of `[device, seq]` arrays, as cbor2 encodes it, when every seq has
    the same encoded size (the usual batch: seqs of one magnitude); else None. Built from
    one cbor2 encoding of the seqs cut into equal pieces (one `struct` call) and each
    device's encoding behind the 2-array header (`_pair_heads`), put between them by one
    slice assignment: no Python step per pair."""
    if len(acked) < 2:  # `itemgetter` of one key gives no tuple
        return cbor2.dumps([list(pair) for pair in acked])
    devices, seqs = zip(*acked, strict=True)
    if not set(map(type, seqs)) <= {int} or not set(map(type, devices)) <= {str}:
        return None
    low, high = min(seqs), max(seqs)
    size = next((s for lo, end, s in _UINT_SIZES if lo <= low and high < end), 0)
    if not size:
        return None
    encoded = cbor2.dumps(seqs)
    start = len(encoded) - size * len(seqs)  # the array's header comes first
    parts: list[bytes] = [b""] * (2 * len(seqs))
    parts[0::2] = _pair_heads(devices)
    parts[1::2] = _pieces(size, len(seqs)).unpack_from(encoded, start)
    return encoded[:start] + b"".join(parts)


_PAIR_HEADS: dict[str, bytes] = {}  # device -> b"\x82" + its CBOR text, kept across batches
_PAIR_HEADS_MAX = 100_000


def _pair_heads(devices: Sequence[str]) -> tuple[bytes, ...]:
    """`b"\\x82" + cbor2.dumps(device)` of each of two or more devices. A gateway's devices
    recur batch after batch, so their encodings are kept (at most `_PAIR_HEADS_MAX`):
    a cbor2 call per distinct device would cost more than the rest of the answer."""
    get = itemgetter(*devices)
    try:
        return get(_PAIR_HEADS)  # type: ignore[no-any-return]
    except KeyError:  # new devices: this batch's own map (another thread may clear the cache)
        heads = {d: _PAIR_HEADS.get(d) or b"\x82" + cbor2.dumps(d) for d in set(devices)}
        if len(_PAIR_HEADS) + len(heads) > _PAIR_HEADS_MAX:
            _PAIR_HEADS.clear()
        _PAIR_HEADS.update(heads)
        return get(heads)  # type: ignore[no-any-return]


@lru_cache(maxsize=8)  # a few batch lengths recur (one Struct is ~2 KB per 1,000 pieces)
def _pieces(size: int, n: int) -> struct.Struct:
    """Cuts `n` pieces of `size` bytes."""
    return struct.Struct(f"{size}s" * n)


class Cursor(NamedTuple):
    """Where a page of readings ended: results are ordered by (device, seq, metric)."""

    device: str
    seq: int
    metric: str

    def encode(self) -> str:
        """An opaque, URL-safe token for the `after` query parameter."""
        raw = json.dumps([self.device, self.seq, self.metric], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """The inverse of `encode`; ValueError for anything it did not produce."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            device, seq, metric = json.loads(raw)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise ValueError("not a cursor returned by this API") from exc
        if not isinstance(device, str) or type(seq) is not int or not isinstance(metric, str):
            raise ValueError("not a cursor returned by this API")
        return cls(device, seq, metric)


@dataclass(frozen=True, kw_only=True)
class ReadingQuery:
    """A filter over stored measurements. `since` is inclusive, `until` exclusive (seconds)."""

    device: str | None = None
    metric: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 1000
    after: Cursor | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_QUERY_LIMIT}, got {self.limit}")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError("since must not be later than until")


class ReadingRow(NamedTuple):
    """One stored measurement with its reading's identity and times."""

    device: str
    seq: int
    time: int | float
    received: int | float | None
    gateway: str
    metric: str
    unit: str | None
    value: Value


@dataclass(frozen=True)
class LatestValue:
    """The most recent value (highest seq) of one metric of one device."""

    value: Value
    unit: str | None
    time: int | float
    seq: int


@dataclass(frozen=True)
class DeviceSummary:
    """A device as the cloud knows it: when it was last seen, how much it sent, its latest."""

    device: str
    last_seen: int | float
    last_seq: int
    readings: int
    latest: Mapping[str, LatestValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.readings < 0 or self.last_seq < 0:
            raise ValueError("readings and last_seq must not be negative")


@dataclass(frozen=True)
class StorageStats:
    """Totals for the health endpoint."""

    devices: int
    readings: int
    batches: int


class Storage(ABC):
    """An open database of readings; use as `async with storage:` (open, then close)."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and create or migrate the schema; idempotent."""

    @abstractmethod
    async def close(self) -> None:
        """Finish running work and release connections; idempotent."""

    @abstractmethod
    async def store_batch(
        self,
        *,
        gateway: str,
        batch_id: str,
        body_hash: bytes,
        readings: Sequence[Reading],
        rejected: Sequence[Rejection] = (),
    ) -> BatchResult:
        """Store a batch's readings atomically and record (and return) its answer.

        `(gateway, batch_id)` seen before with the same `body_hash` returns the recorded
        answer with `replayed=True` and changes nothing; with another hash it raises
        `BatchConflict`. `rejected` (found by the parser) is recorded in the answer as is.
        `readings` from the parser's fast lane is a `batch.ReadingColumns`: a backend may
        write it from its columns (`rows.SortedColumns`, as SQLite does) or iterate it.
        """

    @abstractmethod
    async def readings(self, query: ReadingQuery) -> list[ReadingRow]:
        """Measurements matching `query`, ordered by (device, seq, metric), at most `limit`."""

    @abstractmethod
    async def devices(self) -> list[DeviceSummary]:
        """Every device that has stored a reading, ordered by id, with its latest values."""

    @abstractmethod
    async def stats(self) -> StorageStats:
        """Cheap totals; raises `StorageUnavailable` when the database cannot answer."""

    # -- control plane: registry, commands, audit, reports ----------------------------------
    # Each change below appends its audit entry (built with `machi_cloud.audit.chain_entry`
    # and the helpers next to it) in the same transaction as the change, after the newest
    # entry: `seq` unique and gapless even with several instances on one database. These
    # have default bodies (501) only so a backend can be ported one method at a time.

    async def put_device(
        self, reg: DeviceRegistration, *, actor: str, now: float
    ) -> tuple[RegisteredDevice, bool]:
        """Create or update a registration; (device, created). A new device, or one moved to
        another gateway, gets the lowest free `short_id` of its gateway (1..65535; raise
        `ShortIdsExhausted` when none is left); its key and `revoked` stay. Audit:
        `audit.device_change`, appended only when something changed."""
        raise NotSupported(f"{type(self).__name__} has no device registry yet")

    async def set_device_key(
        self, device: str, key: bytes | None, *, actor: str, now: float
    ) -> RegisteredDevice:
        """Replace the device's key (`key` None: revoke it, `revoked` True; a new key clears
        `revoked`). `NotFound` for an unregistered device. Audit: `audit.key_change`."""
        raise NotSupported(f"{type(self).__name__} has no device registry yet")

    async def registry(
        self, *, gateway: str | None = None, device: str | None = None
    ) -> list[RegisteredDevice]:
        """Registered devices (optionally of one gateway, or one device), ordered by id."""
        raise NotSupported(f"{type(self).__name__} has no device registry yet")

    async def add_command(self, cmd: Command, *, actor: str) -> Command:
        """Store a new command (state queued). Audit: `audit.command_created`."""
        raise NotSupported(f"{type(self).__name__} has no commands yet")

    async def commands(self, query: CommandQuery) -> list[Command]:
        """Commands matching `query`, newest first (`pending_at`: oldest first)."""
        raise NotSupported(f"{type(self).__name__} has no commands yet")

    async def advance_command(
        self, cmd_id: str, state: str, *, detail: str, actor: str, now: float
    ) -> tuple[Command, bool]:
        """Move a command to `state` if that is forward (`records.moves_forward`), else leave
        it; (command as it is now, changed). `NotFound` for an unknown id. Audit:
        `audit.command_moved`, only when changed."""
        raise NotSupported(f"{type(self).__name__} has no commands yet")

    async def expire_commands(self, now: float) -> int:
        """Mark queued commands whose `expires` <= now as expired (actor
        `audit.SYSTEM_EXPIRY`, one audit entry each); how many."""
        raise NotSupported(f"{type(self).__name__} has no commands yet")

    async def audit_log(self, *, after: int = 0, limit: int = 1000) -> list[AuditEntry]:
        """Audit entries with seq > `after`, in seq order, at most `limit`."""
        raise NotSupported(f"{type(self).__name__} has no audit log yet")

    async def aggregate(self, query: AggregateQuery) -> list[AggregateRow]:
        """Numeric values (not text, not booleans) of `query.metric` per device and bucket
        `floor(time / bucket_s) * bucket_s`, ordered by (device, start)."""
        raise NotSupported(f"{type(self).__name__} has no aggregation yet")

    async def delivery(self, device: str, *, max_gaps: int = 1000) -> DeliveryReport:
        """Seq range, count and missing ranges of a device's stored readings."""
        raise NotSupported(f"{type(self).__name__} has no delivery report yet")

    async def watch_commands(self, wake: Callable[[str], None]) -> bool:
        """From now on call `wake(gateway)` (on the event loop) whenever a command for
        `gateway` is queued through *any* instance on this database; idempotent per `wake`.
        False when the backend cannot tell (the caller then re-checks by polling)."""
        return False

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
