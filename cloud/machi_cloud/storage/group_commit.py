"""Group commit for SQLite's one writer: the batches that wait for the writer thread are
stored in one transaction, with one commit (one fsync under `synchronous=FULL`) for all.

Why: a commit here costs 1.5-2.5 ms (the WAL pages and the fsync), 3-5 µs per reading of
a 500-reading batch, about as much as inserting its rows. A city's cloud serves many
gateways at once: while the writer commits one batch, the event loop parses the next ones,
and those then share the next commit. A batch that finds the writer idle is committed at
once, alone, as before: no batch waits for company.

A job that fails gives its exception as its answer. If it had changed rows, or the
database failed under it (SQLite may then roll the whole transaction back itself), it is
taken out and the others run again in a new transaction, so it is undone alone (one that
fails before writing, as a 409 does, costs the others nothing). Not savepoints: SQLite copies every
page a savepoint's statements change into a statement journal, which made a lone batch
16-19 % slower. No result leaves before the commit that holds it: a failed commit fails
every job of the group, and nothing of it is stored (the gateways retry; nothing was
acked).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..errors import StorageUnavailable

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]
_Waiting = tuple[Job[Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class GroupCommit(Generic[T]):
    """`await run(job)`: `job(conn)` on the writer thread, in a transaction it may share
    with the jobs queued beside it (at most `max_group`).

    `submit(fn)` puts `fn` on the writer thread (a one-thread executor's `submit`);
    `connection()`, called there, gives the writer's connection; `name` words errors."""

    def __init__(
        self,
        submit: Callable[[Callable[[], None]], object],
        connection: Callable[[], sqlite3.Connection],
        *,
        name: str,
        max_group: int = 32,
    ) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self._submit = submit
        self._connection = connection
        self._name = name
        self._max = max_group
        self._lock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self.sizes: list[int] = []  # the last 100 groups' sizes, the most recent last (tests)

    async def run(self, job: Job[T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._waiting.append((job, future, loop))
            # the writer is told once per group: a drain is queued or running while any wait
            idle = len(self._waiting) == 1
        if idle:
            self._start()
        return await future

    def _start(self) -> None:
        """Queue a drain; if the executor is shut down, fail what waits (nothing ran)."""
        try:
            self._submit(self._drain)
        except RuntimeError:
            with self._lock:
                stranded, self._waiting = self._waiting, []
            for _, future, loop in stranded:
                _settle(loop, future, None, StorageUnavailable("the storage is closed"))

    def _drain(self) -> None:
        """On the writer thread: one group, committed once. If more wait, another drain is
        queued behind whatever else the writer was given meanwhile (a device change, a
        command), so a steady ingest never starves those; only when the executor is shut
        down (a close) does this drain go on itself, so nothing queued is stranded."""
        while True:
            with self._lock:
                group, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
                more = bool(self._waiting)
            if not group:
                return
            self.sizes = [*self.sizes[-99:], len(group)]
            try:
                outcomes = self._commit(group)
            except Exception as exc:  # a bug or a broken connection: never leave a caller waiting
                failed: BaseException = self._unavailable(exc)
                outcomes = [(None, failed)] * len(group)
            for (_, future, loop), (result, error) in zip(group, outcomes, strict=True):
                _settle(loop, future, result, error)
            if not more:  # a job queued since found the list empty and queued its own drain
                return
            try:
                self._submit(self._drain)
                return
            except RuntimeError:  # shut down: finish the queue here
                continue

    def _commit(self, group: list[_Waiting]) -> list[tuple[Any, BaseException | None]]:
        """Each job's (result, exception). A job that raises something other than a
        database error, having changed no row (a 409 found before writing), just gives its
        answer; any other failing job is taken out, the transaction rolled back (if SQLite
        has not done so itself, as it does on a full disk) and the rest run again in a new
        one (a job depends only on the database it finds, not on an earlier run of
        itself). A failed commit fails them all."""
        outcomes: list[tuple[Any, BaseException | None]] = [(None, None)] * len(group)
        pending = list(range(len(group)))
        while pending:
            try:
                conn = self._connection()
                if conn.in_transaction:  # left open by a failure the last time round
                    conn.rollback()
                conn.execute("BEGIN IMMEDIATE")
            except (sqlite3.Error, StorageUnavailable) as exc:
                return self._all_failed(outcomes, pending, exc)
            try:
                for i in list(pending):
                    before = conn.total_changes
                    try:
                        outcomes[i] = (group[i][0](conn), None)
                    except Exception as exc:  # this job's answer
                        outcomes[i] = (None, self._as_error(exc))
                        pending.remove(i)
                        if (isinstance(exc, sqlite3.Error) or conn.total_changes != before
                                or not conn.in_transaction):
                            # it wrote, or SQLite itself rolled the transaction back (a full
                            # disk, an I/O error): the others run again in a new one
                            if conn.in_transaction:
                                conn.rollback()
                            break
                else:
                    conn.commit()
                    return outcomes
            except BaseException as exc:  # the commit failed: nothing of the group is stored
                if conn.in_transaction:
                    conn.rollback()
                return self._all_failed(outcomes, pending, exc)
        return outcomes

    def _all_failed(
        self,
        outcomes: list[tuple[Any, BaseException | None]],
        pending: list[int],
        exc: BaseException,
    ) -> list[tuple[Any, BaseException | None]]:
        failed = self._as_error(exc)
        for i in pending:
            outcomes[i] = (None, failed)
        return outcomes

    def _as_error(self, exc: BaseException) -> BaseException:
        return self._unavailable(exc) if isinstance(exc, sqlite3.Error) else exc

    def _unavailable(self, exc: BaseException) -> StorageUnavailable:
        if isinstance(exc, StorageUnavailable):
            return exc
        failed = StorageUnavailable(f"database error on {self._name}: {exc}")
        failed.__cause__ = exc
        return failed


def _settle(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    def settle() -> None:
        if future.done():  # the caller gave up (cancelled); the outcome stands in the db
            return
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the caller's loop is closed: nobody is left to tell
        pass
