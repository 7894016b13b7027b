"""The core every ingress adapter delivers into: registry check, command results, the
durable queue, then what the ACK should carry (time, commands)."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable, Sequence

from .downlink.queue import CommandQueue
from .errors import ResponseError, UnknownDevice
from .ingress.base import Accepted, Fits, Receipt, WireCommand
from .model import Reading
from .registry import Registry
from .stats import IngressStats
from .store import Store

log = logging.getLogger(__name__)

_CMD_RE = re.compile(r"^cmd/(\d{1,5})$")

Listener = Callable[[Reading], None]


def split_command_results(reading: Reading) -> tuple[Reading, dict[int, str]]:
    """Strip ``cmd/<cid>`` records (contract C2) from a reading: they are command states,
    not measurements. Returns the reading without them and ``{cid: "ok" | "err:..."}``."""
    results: dict[int, str] = {}
    for m in reading.measurements:  # a loop, not any(<generator>): on every reading's path
        if m.name.startswith("cmd/"):
            break
    else:
        return reading, results  # the common case, without a regex per measurement
    kept = []
    for m in reading.measurements:
        match = _CMD_RE.match(m.name)
        if match is None:
            kept.append(m)
            continue
        value = m.value if isinstance(m.value, str) else f"err:bad report {m.value!r}"
        results[int(match.group(1))] = value
    if not results:
        return reading, results
    return dataclasses.replace(reading, measurements=tuple(kept)), results


class Core:
    """Implements :class:`~machi_gateway.ingress.base.Sink` for all adapters."""

    def __init__(self, registry: Registry, store: Store, stats: IngressStats, *,
                 commands: CommandQueue | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.store = store
        self.stats = stats
        self.commands = commands
        self._clock = clock
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(reading)`` for every *new* durable reading (local integrations;
        it must not block: hand the reading to a queue)."""
        self._listeners.append(listener)

    async def accept(self, reading: Reading, fits: Fits | None = None) -> Receipt:
        try:
            self._check_registered(reading.device)
            reading, results = split_command_results(reading)
            outcome = await self.store.add(reading)
        except ResponseError as exc:
            self.stats.reject(exc.reason)
            raise
        commands: tuple[WireCommand, ...] = ()
        if self.commands is not None:
            # Committed before the ACK too: a result the node saw acknowledged is kept.
            commands = await self.commands.on_reading(reading.device, reading.seq, results,
                                                      fits)
        self.stats.seen(reading.device, reading.received, reading.transport)
        self._stored(reading, outcome)
        return Receipt(outcome=outcome, time=int(self._clock()), commands=commands)

    async def accept_many(self, readings: Sequence[Reading]) -> Receipt:
        """:meth:`accept` for the readings of one pack (one device): one commit for all,
        one receipt; its outcome is "new" if any reading was new."""
        if len(readings) == 1:
            return await self.accept(readings[0])
        try:
            device = readings[0].device
            self._check_registered(device)
            split = [split_command_results(r) for r in readings]
            outcomes = await self.store.add_many([r for r, _ in split])
        except ResponseError as exc:
            self.stats.reject(exc.reason)
            raise
        results: dict[int, str] = {}
        for _, res in split:
            results.update(res)
        commands: tuple[WireCommand, ...] = ()
        if self.commands is not None:
            commands = await self.commands.on_reading(device, split[-1][0].seq, results)
        last = readings[-1]
        self.stats.seen(device, last.received, last.transport)
        for (reading, _), added in zip(split, outcomes, strict=True):
            self._stored(reading, added)
        outcome: Accepted = "new" if "new" in outcomes else "duplicate"
        return Receipt(outcome=outcome, time=int(self._clock()), commands=commands)

    def _check_registered(self, device: str) -> None:
        """4.01 for a device this gateway does not know, or one revoked."""
        if device not in self.registry:
            dev = self.registry.get(device)
            if dev is not None and dev.revoked:
                raise UnknownDevice("revoked", f"device {device!r} is revoked")
            raise UnknownDevice("unknown-device", f"device {device!r} is not registered here")

    def _stored(self, reading: Reading, outcome: Accepted) -> None:
        """Count a durable reading; a new one also goes to the local integrations."""
        if outcome != "new":
            self.stats.duplicates += 1
            return
        self.stats.readings_in += 1
        for listener in self._listeners:
            try:
                listener(reading)
            except Exception:  # a local integration must never cost an ACK
                log.exception("reading listener failed")

    def rejected(self, transport: str, reason: str) -> None:
        self.stats.reject(reason)
