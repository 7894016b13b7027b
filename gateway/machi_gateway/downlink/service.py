"""Runs the downlink: long-poll the cloud for commands, sweep expiries, report states.

Three loops in one task group, each with its own backoff, none able to stall ingress:
the core only touches the :class:`~.queue.CommandQueue` (local SQLite).

The cloud answers a long-poll at once while any command is still ``queued`` there,
and a command stays ``queued`` until its device's next uplink (a sleepy node may take
minutes): so after an answer that brought nothing new the poller waits ``idle_s``
instead of spinning.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from ..errors import UplinkError, UplinkRefused
from .cloud import CommandClient
from .push import Pusher
from .queue import CommandQueue

log = logging.getLogger(__name__)


class Downlink:
    """The downlink's background work (cancel :meth:`run` to stop)."""

    def __init__(self, queue: CommandQueue, client: CommandClient, *, wait_s: int = 25,
                 idle_s: float = 5.0, expire_every_s: float = 10.0,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 60.0,
                 rng: Callable[[], float] = random.random, push: Pusher | None = None) -> None:
        self.queue = queue
        self.push = push  # always-on nodes get new commands at once (push.py)
        self.client = client
        self.wait_s = wait_s
        self.idle_s = idle_s
        self.expire_every_s = expire_every_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._rng = rng
        self.fetched = 0
        self.reported = 0
        self.last_error: str | None = None

    def _backoff(self, failures: int) -> float:
        return self._rng() * min(self.backoff_max_s,
                                 self.backoff_initial_s * 2.0 ** min(failures - 1, 60))

    def _failed(self, what: str, exc: UplinkError, failures: int) -> float:
        self.last_error = f"{what}: {exc}"
        delay = self._backoff(failures)
        level = logging.ERROR if isinstance(exc, UplinkRefused) else logging.WARNING
        log.log(level, "downlink %s: %s (failure %d, retry in %.1f s)", what, exc, failures,
                delay)
        return delay

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._poll(), name="downlink-poll")
            tg.create_task(self._report(), name="downlink-report")
            tg.create_task(self._expire(), name="downlink-expire")
            if self.push is not None:
                tg.create_task(self.push.run(), name="downlink-push")

    async def _poll(self) -> None:
        failures = 0
        while True:
            try:
                commands, invalid = await self.client.fetch(self.wait_s)
            except UplinkError as exc:
                failures += 1
                await asyncio.sleep(self._failed("poll", exc, failures))
                continue
            failures = 0
            for cid, why in invalid:
                log.error("downlink: cloud sent an invalid command %s: %s", cid, why)
                await self.queue.refuse(cid, why)
            new = await self.queue.add(commands)
            self.fetched += new
            if new and self.push is not None:
                self.push.offer(c.device for c in commands)
            if commands and not new:
                await asyncio.sleep(self.idle_s)

    async def _report(self) -> None:
        failures = 0
        while True:
            self.queue.outbox_changed.clear()
            reports = await self.queue.pending_reports()
            if not reports:
                await self.queue.outbox_changed.wait()
                continue
            try:
                for r in reports:
                    try:
                        await self.client.report(r)
                    except UplinkRefused as exc:
                        if exc.status not in (404, 409, 422, 400):
                            raise
                        # The cloud will never take this one (unknown command, a state it
                        # will not move back to): keep the queue moving.
                        log.warning("downlink: cloud refused state %s of %s: %s",
                                    r.state, r.command, exc)
                    await self.queue.reported(r.n)
                    self.reported += 1
                failures = 0
            except UplinkError as exc:
                failures += 1
                await asyncio.sleep(self._failed("report", exc, failures))

    async def _expire(self) -> None:
        while True:
            await self.queue.expire()
            await asyncio.sleep(self.expire_every_s)
