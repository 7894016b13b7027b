"""The batcher: moves readings from the durable queue to the cloud, oldest first.

A batch leaves when ``batch_max`` readings wait or the oldest has waited
``batch_age_s``. It is deleted from the queue only as the cloud's answer says: "acked"
pairs are deleted, "rejected" ones move to dead letters, anything else stays. A failed
send is retried with the *same* batch (same batch_id, same body, so the cloud can
answer it idempotently) after exponential backoff with full jitter; a 4xx is a
configuration problem (bad token, ...) and is retried the same way, loudly, never
deleting anything; a 409 means the id is burnt, so the readings go out under a new id.

A batch carries the queued readings as columns (``format = "columns"``, the default) or
splices their stored bodies into an array of reading maps (``"readings"``, for a cloud
older than columns); see :mod:`.wire`. A columnar batch the cloud refuses as malformed
(400) goes once more as rows, and if the cloud takes those, batches stay rows for
``CAP_HOLD_S`` (see :meth:`Batcher._refused`). A body damaged on disk is moved to dead
letters, with an error in the log, rather than sent. As columns, every body is decoded
(refusing what the cloud's decoder refuses) when the batch is built, so one that does not
decode or has a shape columns cannot carry is found then. Spliced, a body is found when
the batch is built if its head is wrong (cheap check), or when the cloud refuses the
batch as malformed (400) if it is not what the store writes (full check); the rest then
goes out under a new id.
Either way it can neither stop the upload loop nor get every later batch refused.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from ..config import SCHEMA, UPLINK_FORMATS, UplinkConfig, UplinkFormat
from ..errors import BatchConflict, StoreError, UplinkError, UplinkRefused
from ..store import DeadLetter, Queued, Store
from .base import Batch, Uplink
from .wire import looks_intact, to_columns, well_formed

log = logging.getLogger(__name__)

# How long the shorter batches a 413 led to (or the rows a 400 for columns led to) are
# kept before full batches (columns) are tried again: the cloud's limits may have been
# raised since (or the cloud upgraded), or the 413 came from the bytes of a few large
# readings, not from the count.
CAP_HOLD_S = 600.0
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchPolicy:
    """When to send and how to back off."""

    batch_max: int = SCHEMA["uplink"]["batch_max"].default  # the config's
    # Stored bytes per batch. A reading's body is 150-220 B, but one from a 1 KiB CoAP pack can
    # be 6.6 KB and still valid to the cloud (many measurements sharing a base unit), and
    # 2000 of those pass its 4 MiB body limit: a 413 for the same oldest batch for ever.
    batch_max_bytes: int = 1 << 20
    batch_age_s: float = 2.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    format: UplinkFormat = UPLINK_FORMATS[0]  # the config's default, columns

    def __post_init__(self) -> None:
        if self.format not in UPLINK_FORMATS:
            raise ValueError(f"format must be one of {', '.join(UPLINK_FORMATS)}, "
                             f"got {self.format!r}")
        if self.batch_max < 1 or self.batch_max_bytes < 1:
            raise ValueError("batch_max and batch_max_bytes must be >= 1")
        if self.batch_age_s < 0 or self.backoff_initial_s <= 0:
            raise ValueError("batch_age_s must be >= 0 and backoff_initial_s > 0")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")

    @classmethod
    def of(cls, up: UplinkConfig) -> BatchPolicy:
        """The policy an ``[uplink]`` section asks for (the daemon's and the benches')."""
        return cls(batch_max=up.batch_max, batch_age_s=up.batch_age_s,
                   backoff_initial_s=up.backoff_initial_s, backoff_max_s=up.backoff_max_s,
                   format=up.format)

    def backoff(self, failures: int, rng: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2^(failures-1)))."""
        cap = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** min(failures - 1, 60))
        return rng() * cap


@dataclass(slots=True)
class _Held(Generic[_T]):
    """A setting the cloud's answers forced on the batches (fewer readings after a 413,
    rows after a 400 for columns), kept ``CAP_HOLD_S`` and then dropped, so that the usual
    one is tried again."""

    value: _T | None = None
    until: float = 0.0

    def get(self, now: float) -> _T | None:
        if self.value is not None and now >= self.until:
            self.value = None
        return self.value

    def hold(self, value: _T | None, now: float) -> None:
        self.value, self.until = value, now + CAP_HOLD_S


def _stored_bytes(batch: Batch) -> int:
    """The bytes of ``batch``'s stored readings (its body less the map's few head bytes)."""
    return sum(len(q.body) for q in batch.readings)


def _within(items: list[Queued], budget: int) -> list[Queued]:
    """The oldest ``items`` whose bodies add up to at most ``budget`` bytes (at least one,
    or a reading larger than the budget would never leave): large readings go out in
    fewer per batch instead of passing the cloud's body limit."""
    total = 0
    for i, q in enumerate(items):
        total += len(q.body)
        if total > budget:
            return items[:max(i, 1)]
    return items


class Batcher:
    """Runs the upload loop (:meth:`run`) and a bounded last flush (:meth:`drain`)."""

    def __init__(
        self,
        store: Store,
        uplink: Uplink,
        *,
        gateway: str,
        policy: BatchPolicy,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.uplink = uplink
        self.gateway = gateway
        self.policy = policy
        self._clock = clock
        self._rng = rng
        self._batch: Batch | None = None  # kept across retries (same batch_id)
        self._checked: str | None = None  # id of a batch the full check found clean
        self._cap: _Held[int] = _Held()  # readings per batch the cloud took, after a 413
        self._rows: _Held[bool] = _Held()  # the cloud took rows after refusing columns
        self._rows_trial: str | None = None  # id of the row batch sent after that refusal
        self._largest_ok = 0  # stored bytes of the largest batch the cloud has taken
        self.failures = 0
        self.sent = 0
        self.batches = 0
        self.last_ok: float | None = None
        self.last_error: str | None = None

    @property
    def backlog(self) -> int:
        return self.store.depth

    async def run(self) -> None:
        """Upload forever; cancel to stop (an interrupted batch is kept for :meth:`drain`)."""
        while True:
            if self._batch is None:
                await self._wait_until_due()
            try:
                await self._send_one()
            except (UplinkError, StoreError) as exc:
                # StoreError: the queue could not record the answer (disk full): the same
                # batch goes again once it can; the cloud answers it idempotently
                await asyncio.sleep(self._failed(exc))

    async def drain(self, timeout_s: float) -> None:
        """At shutdown: try to send what is queued, for at most ``timeout_s``."""
        if self.store.depth == 0 or timeout_s <= 0:
            return
        try:
            async with asyncio.timeout(timeout_s):
                while self.store.depth > 0:
                    await self._send_one()
        except TimeoutError:
            log.info("uplink: last flush stopped after %.1f s, %d readings stay queued",
                     timeout_s, self.store.depth)
        except (UplinkError, StoreError) as exc:
            self._failed(exc)
            log.info("uplink: last flush failed, %d readings stay queued", self.store.depth)
        else:
            log.info("uplink: last flush sent everything")

    async def _wait_until_due(self) -> None:
        while True:
            self.store.changed.clear()  # before looking, so no commit is missed
            wait: float | None = None
            if self.store.depth >= self._most():
                return
            if self.store.depth > 0:
                oldest = await self.store.oldest_received()
                if oldest is not None:
                    wait = self.policy.batch_age_s - (self._clock() - oldest)
                    if wait <= 0:
                        return
            try:
                async with asyncio.timeout(wait):
                    await self.store.changed.wait()
            except TimeoutError:
                pass

    def _most(self) -> int:
        """Readings in a full batch: ``batch_max``, or fewer since a 413 (so a batch that
        long leaves at once instead of waiting ``batch_age_s``) until ``CAP_HOLD_S`` after
        that 413."""
        cap = self._cap.get(self._clock())
        return self.policy.batch_max if cap is None else cap

    async def _next_batch(self) -> Batch | None:
        queued = _within(await self.store.queued(self._most()), self.policy.batch_max_bytes)
        if not queued:
            return None
        columns: bytes | None = None
        if self.policy.format == "columns" and not self._rows.get(self._clock()):
            readings, columns, unfit = to_columns(queued)
            await self._dead_letter(unfit)
        else:
            readings = await self._keep_intact(queued, looks_intact)
        if not readings:
            return None
        number = await self.store.next_batch_number()
        return Batch(gateway=self.gateway, batch_id=f"{self.gateway}-{number:012d}",
                     readings=tuple(readings), columns=columns)

    async def _send_one(self) -> None:
        if self._batch is None:
            self._batch = await self._next_batch()
            if self._batch is None:
                return
        batch = self._batch
        try:
            answer = await self.uplink.send(batch)
        except BatchConflict:
            self._batch = None  # the id is burnt: the same readings go out under a new one
            raise
        except UplinkRefused as exc:
            if exc.status == 413:
                await self._too_large(batch, exc)
            elif exc.status == 400:
                await self._refused(batch, exc)
            raise
        if batch.batch_id == self._rows_trial:
            self._took_rows()
        keys = {r.key for r in batch.readings}
        acked = [k for k in answer.acked if k in keys]
        rejected = [d for d in answer.rejected if (d.device, d.seq) in keys]
        deleted = await self.store.ack(acked)
        dead = await self.store.dead_letter(rejected)
        self._batch = None
        for d in rejected:
            log.error("uplink: cloud rejected %s seq %d (%s); moved to dead letters",
                      d.device, d.seq, d.reason)
        missing = len(keys) - len(set(acked)) - len({(d.device, d.seq) for d in rejected})
        if missing > 0:
            log.warning("uplink: batch %s: %d readings neither acked nor rejected; they stay "
                        "queued", batch.batch_id, missing)
        if not acked and not rejected:
            raise UplinkError(f"batch {batch.batch_id}: the answer acknowledges nothing")
        self._largest_ok = max(self._largest_ok, _stored_bytes(batch))
        self.sent += deleted
        self.batches += 1
        self.failures = 0
        self.last_ok = self._clock()
        log.info("uplink: batch %s: %d acked, %d rejected, %d waiting",
                 batch.batch_id, deleted, dead, self.store.depth)

    async def _keep_intact(
        self, items: Sequence[Queued], check: Callable[[Queued], bool]
    ) -> list[Queued]:
        """``items`` whose stored body passes ``check``; the others go to dead letters."""
        verdicts = [check(q) for q in items]
        if all(verdicts):
            return list(items)
        await self._dead_letter([(q, "corrupt queue body")
                                 for q, ok in zip(items, verdicts, strict=True) if not ok])
        return [q for q, ok in zip(items, verdicts, strict=True) if ok]

    async def _dead_letter(self, bad: Sequence[tuple[Queued, str]]) -> None:
        """Move queued items that cannot be sent (a corrupt body, one too large for the
        cloud) to dead letters, each with its reason, so that no batch meets them again."""
        if not bad:
            return
        for q, why in bad:
            log.error("uplink: the queued body of %s seq %s cannot be sent (%.60s); moved to "
                      "dead letters: %s", q.device, q.seq, repr(q.body), why)
        moved = await self.store.dead_letter([DeadLetter(q.device, q.seq, why) for q, why in bad])
        if moved < len(bad):  # else the next batch would meet them again, at once
            raise StoreError(f"{len(bad) - moved} queue rows that cannot be sent could not be "
                             "moved to dead letters")

    async def _refused(self, batch: Batch, exc: UplinkRefused) -> None:
        """400: the cloud finds the batch malformed. As columns, the likely cause is a
        cloud older than columns (gateways upgraded first), not a stored body (each was
        decoded, and its values checked, when the batch was built): the same readings go
        once as rows, under a new id (:meth:`_took_rows` if the cloud takes them), rather
        than the batch being held back until someone changes the configuration while
        the queue fills up. Spliced, a stored body may be the cause: the bad ones go to
        dead letters and the others out under a new id (as columns again, unless held
        on rows)."""
        if batch.columns is not None:
            number = await self.store.next_batch_number()
            self._batch = replace(batch, batch_id=f"{self.gateway}-{number:012d}", columns=None)
            self._rows_trial = self._batch.batch_id
            log.warning("uplink: the cloud refused columnar batch %s as malformed (%s); "
                        "sending its readings as rows, as batch %s", batch.batch_id, exc,
                        self._batch.batch_id)
            return
        self._rows_trial = None  # refused as rows too: not a cloud older than columns
        if await self._drop_malformed(batch):
            self._batch = None  # the others go out under a new id

    def _took_rows(self) -> None:
        """The cloud took as rows the readings it refused as columns: it is older than
        columnar batches. Rows for ``CAP_HOLD_S``, then columns are tried again."""
        self._rows_trial = None
        self._rows.hold(True, self._clock())
        log.error("uplink: the cloud does not take columnar batches: upgrade it; sending "
                  "rows for now (columns are tried again in %.0f s; [uplink] format = "
                  "\"readings\" stops trying)", CAP_HOLD_S)

    async def _drop_malformed(self, batch: Batch) -> bool:
        """After a 400: dead-letter the batch's items that fail the full check (too dear
        for every batch: ~35 µs a reading on the event loop); True if there were any.
        A batch found clean is not checked again on its next 400s (a 400 that lasts is a
        cloud problem then, retried with backoff)."""
        if batch.batch_id == self._checked:
            return False
        queued = list(batch.readings)
        if len(await self._keep_intact(queued, well_formed)) < len(queued):
            return True
        self._checked = batch.batch_id
        return False

    async def _too_large(self, batch: Batch, exc: UplinkRefused) -> None:
        """413: the cloud takes fewer readings or bytes per batch than this one had (its
        `[limits]` below this gateway's `batch_max`, or readings larger than it allows).
        Resent as it was, the batch would be refused for ever and hold back the queue; so
        batches are halved (for ``CAP_HOLD_S``). A single reading the cloud still refuses
        goes to dead letters if it is larger than any batch the cloud has taken (then it
        was the cause, and full batches resume); if not, the cloud's or a proxy's limit
        was lowered, a configuration problem like a 401: the reading stays queued and is
        retried with backoff, loudly."""
        n = len(batch.readings)
        if n > 1:
            self._batch = None  # fewer readings, under a new id
            self._cap.hold(n // 2, self._clock())
            log.error("uplink: the cloud refused a batch of %d readings as too large; "
                      "sending at most %d per batch for %.0f s (check [uplink] batch_max "
                      "against the cloud's [limits])", n, n // 2, CAP_HOLD_S)
            return
        size = _stored_bytes(batch)
        if size <= self._largest_ok:  # self._batch stays: the same batch again, later
            log.error("uplink: the cloud refuses one reading of %d bytes as too large, "
                      "though it took %d bytes in one batch before: check its [limits] "
                      "and any proxy in front of it; the reading stays queued",
                      size, self._largest_ok)
            return
        self._batch = None
        self._cap = _Held()
        await self._dead_letter([(batch.readings[0], f"too large: {exc}")])

    def _failed(self, exc: UplinkError | StoreError) -> float:
        self.failures += 1
        self.last_error = str(exc)
        delay = self.policy.backoff(self.failures, self._rng)
        level = logging.ERROR if isinstance(exc, UplinkRefused) else logging.WARNING
        log.log(level, "uplink: %s (failure %d, %d waiting, retry in %.1f s)",
                exc, self.failures, self.store.depth, delay)
        return delay
