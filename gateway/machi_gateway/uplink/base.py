"""The uplink interface: deliver one batch, report what the cloud kept.

An uplink sends a :class:`Batch` and returns the cloud's :class:`BatchAnswer`, or raises
:class:`~machi_gateway.errors.UplinkUnavailable` (retry the same batch later),
:class:`~machi_gateway.errors.BatchConflict` (409: resend under a new id) or
:class:`~machi_gateway.errors.UplinkRefused` (other 4xx: configuration problem). It never
touches the store: the batcher deletes exactly what the answer acknowledges.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from ..store import DeadLetter, Queued


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch as sent; a retry re-sends the very same object (same id, same body).

    The batcher fills it with queued items. With ``columns`` (the CBOR of the batch's
    ``"columns"`` map, built from the items' bodies by :func:`.wire.to_columns`) that is
    the body's content, and ``readings`` says which queued readings it holds; without,
    the stored bodies are spliced into a ``"readings"`` array as they are.
    """

    gateway: str
    batch_id: str
    readings: tuple[Queued, ...]
    columns: bytes | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.batch_id) <= 64:
            raise ValueError("batch_id must be 1..64 characters")
        if not self.readings:
            raise ValueError("a batch holds at least one reading")


@dataclass(frozen=True, slots=True)
class BatchAnswer:
    """The cloud's answer: the identities it holds, and those it will never take."""

    batch_id: str
    acked: tuple[tuple[str, int], ...]
    rejected: tuple[DeadLetter, ...]


class Uplink(abc.ABC):
    """Sends batches to the cloud; an async context manager owning its connections."""

    @abc.abstractmethod
    async def send(self, batch: Batch) -> BatchAnswer:
        """Deliver ``batch`` once (no retries here; the batcher owns the retry policy)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release connections."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
