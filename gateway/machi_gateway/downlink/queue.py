"""The per-device command queue (contracts C2/C3), durable in its own SQLite file.

Life of a command, as the cloud sees it through the reports we send:

``queued`` (fetched; the cloud already knows) -> ``sent`` (first put into an ACK) ->
``acknowledged`` (the node sent a *later* reading: nodes move on to the next seq only
after a 2.04, so that ACK reached it) -> ``executed`` / ``failed`` (the node reported
``cmd/<cid>`` = ``ok`` / ``err:...``), or ``expired`` (``expires`` passed before the node
reported). Until the node reports, the command rides in every ACK to that device: an ACK
can be lost, and a node that rebooted before executing gets it again (nodes answer a cid
they already executed with its old result).

State changes to report go to an outbox table in the same transaction, so a report is
never lost by a crash; :class:`~machi_gateway.downlink.service.Downlink` drains it.
Every write is committed with ``synchronous=FULL`` before the ACK that depends on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import cbor2

from ..errors import StoreError
from ..ingress.base import Fits, WireCommand
from ..model import DEVICE_RE

log = logging.getLogger(__name__)

T = TypeVar("T")

NAMES = frozenset({"on", "off", "dim", "schedule", "interval", "config", "update"})
OPEN_STATES = ("queued", "sent", "acknowledged")
CID_MODULUS = 256  # cids stay one CBOR byte (0..23) most of the time, two at worst
# each ACK gives a command an `exp` of at most now + this (protocol.md §5): the node
# refuses it ("err:stale") after that by its clock, so a held-back delivery is not executed
EXP_S = 120

SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,           -- the cloud's id
    device TEXT NOT NULL,
    cid INTEGER NOT NULL,
    name TEXT NOT NULL,
    args BLOB NOT NULL,            -- CBOR map
    created REAL NOT NULL,
    expires REAL NOT NULL,
    state TEXT NOT NULL,
    sent_seq INTEGER,              -- seq of the reading whose ACK first carried it
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_open ON commands (device, state);
CREATE TABLE IF NOT EXISTS cids (device TEXT PRIMARY KEY, next INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    command TEXT NOT NULL,
    state TEXT NOT NULL,
    time REAL NOT NULL,
    detail TEXT NOT NULL
);
"""

_KEEP_CLOSED_S = 7 * 86400  # closed commands stay known this long (the cloud may resend)


@dataclass(frozen=True, slots=True)
class CloudCommand:
    """One item of ``GET /v1/gateways/{gw}/commands`` (contract C3)."""

    id: str
    device: str
    name: str
    args: Mapping[str, Any] = field(default_factory=dict)
    created: float = 0.0
    expires: float = float("inf")

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not 1 <= len(self.id) <= 128:
            raise ValueError(f"bad command id {self.id!r}")
        if not isinstance(self.device, str) or not DEVICE_RE.match(self.device):
            raise ValueError(f"command {self.id}: bad device {self.device!r}")
        if self.name not in NAMES:
            raise ValueError(f"command {self.id}: unknown name {self.name!r}")
        if not isinstance(self.args, Mapping) or not all(isinstance(k, str) for k in self.args):
            raise ValueError(f"command {self.id}: args must be a map with text keys")

    @classmethod
    def from_json(cls, item: Any) -> CloudCommand:
        if not isinstance(item, dict):
            raise ValueError(f"command is not an object: {item!r}")
        try:
            expires = item.get("expires")
            return cls(id=item["id"], device=item["device"], name=item["name"],
                       args=item.get("args") or {}, created=float(item.get("created") or 0),
                       expires=float("inf") if expires is None else float(expires))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"command {item!r}: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class StateReport:
    """One row of the outbox: ``POST /v1/commands/{command}/state``."""

    n: int
    command: str
    state: str
    time: float
    detail: str


class CommandQueue:
    """Commands waiting for (or riding to) their device; an async context manager."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time,
                 per_ack: int = 4) -> None:
        self.path = Path(path)
        self.per_ack = per_ack
        self._clock = clock
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        # Devices with open commands: the per-reading fast path needs no SQL at all.
        self._open: Counter[str] = Counter()
        self.outbox = 0
        self.outbox_changed = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="machi-commands")
        try:
            await self._run(self._open_db)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._executor is None:
            return
        try:
            await self._run(self._close_db)
        finally:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _open_db(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(SCHEMA)
            placeholders = ",".join("?" * len(OPEN_STATES))
            for device, n in conn.execute(
                f"SELECT device, COUNT(*) FROM commands WHERE state IN ({placeholders}) "
                "GROUP BY device", OPEN_STATES):
                self._open[device] = n
            self.outbox = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open command queue {self.path}: {exc}") from exc
        self._conn = conn

    def _close_db(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError("the command queue is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._conn
        if db is None:
            raise StoreError("the command queue is closed")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"command queue: {exc}") from exc
        return out

    def _report(self, db: sqlite3.Connection, command: str, state: str, detail: str = "") -> None:
        now = self._clock()
        db.execute("UPDATE commands SET state = ?, updated = ? WHERE id = ?",
                   (state, now, command))
        db.execute("INSERT INTO outbox (command, state, time, detail) VALUES (?, ?, ?, ?)",
                   (command, state, now, detail))
        self.outbox += 1

    def _reported(self) -> None:
        self.outbox_changed.set()

    # ---- from the cloud ----------------------------------------------------------

    @property
    def open_commands(self) -> int:
        return sum(self._open.values())

    async def add(self, commands: Sequence[CloudCommand]) -> int:
        """Queue commands fetched from the cloud; ones already known are ignored."""
        def job(db: sqlite3.Connection) -> list[str]:
            added: list[str] = []
            for c in commands:
                if db.execute("SELECT 1 FROM commands WHERE id = ?", (c.id,)).fetchone():
                    continue
                cid = self._next_cid(db, c.device)
                db.execute(
                    "INSERT INTO commands (id, device, cid, name, args, created, expires, "
                    "state, updated) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
                    (c.id, c.device, cid, c.name, cbor2.dumps(dict(c.args)), c.created,
                     min(c.expires, 1e18), self._clock()))
                added.append(c.device)
            return added
        added = await self._run(self._tx, job) if commands else []
        self._open.update(added)
        for c in commands:
            log.info("command %s for %s: %s %s", c.id, c.device, c.name, dict(c.args))
        return len(added)

    def _next_cid(self, db: sqlite3.Connection, device: str) -> int:
        row = db.execute("SELECT next FROM cids WHERE device = ?", (device,)).fetchone()
        start = row[0] if row else 0
        placeholders = ",".join("?" * len(OPEN_STATES))
        used = {r[0] for r in db.execute(
            f"SELECT cid FROM commands WHERE device = ? AND state IN ({placeholders})",
            (device, *OPEN_STATES))}
        for i in range(CID_MODULUS):
            cid = (start + i) % CID_MODULUS
            if cid not in used:
                break
        else:
            raise StoreError(f"{device}: {CID_MODULUS} commands open, no cid left")
        db.execute("INSERT INTO cids (device, next) VALUES (?, ?) ON CONFLICT (device) "
                   "DO UPDATE SET next = excluded.next", (device, (cid + 1) % CID_MODULUS))
        return cid

    # ---- toward the node ---------------------------------------------------------

    def has_open(self, device: str) -> bool:
        return self._open.get(device, 0) > 0

    async def on_reading(self, device: str, seq: int, results: Mapping[int, str],
                         fits: Fits | None = None) -> tuple[WireCommand, ...]:
        """A reading from ``device`` arrived: apply its ``cmd/<cid>`` results, move
        commands along, and return those to put in this reading's ACK (marked sent).

        ``fits(commands)``: whether the answer has room for them (a LoRa ack within the
        dwell limit, docs/protocol-lora.md §8); commands that do not fit stay as they are
        (a queued one is not marked sent: it never went on air) and ride on a later ACK,
        in order."""
        if not results and not self.has_open(device):
            return ()
        def job(db: sqlite3.Connection) -> tuple[tuple[WireCommand, ...], int]:
            return self._on_reading(db, device, seq, results, fits)

        done: tuple[tuple[WireCommand, ...], int] = await self._run(self._tx, job)
        out, closed = done
        self._closed(device, closed)
        self._reported()
        return out

    def _closed(self, device: str, n: int) -> None:
        self._open[device] -= n
        if self._open[device] <= 0:
            del self._open[device]

    def _close_with(self, db: sqlite3.Connection, command: str, state: str,
                    result: str) -> None:
        """The node's result for a sent command: every state in between (states only move
        forward, one by one), then executed ("ok", "ok:<detail>" e.g. an update's
        "ok:pending") or failed."""
        if state == "queued":
            self._report(db, command, "sent")
        if state != "acknowledged":
            self._report(db, command, "acknowledged")
        if result == "ok" or result.startswith("ok:"):
            self._report(db, command, "executed", result.removeprefix("ok")[1:200])
        else:
            self._report(db, command, "failed", result.removeprefix("err:")[:200])

    async def apply_result(self, command: str, result: str) -> bool:
        """A result that came outside a reading (a pushed command's answer, push.py): the
        same moves as a ``cmd/<cid>`` report. False when the command is closed already."""
        def job(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT device, state FROM commands WHERE id = ?",
                             (command,)).fetchone()
            if row is None or row[1] not in OPEN_STATES:
                return None
            self._close_with(db, command, row[1], result)
            return str(row[0])

        device = await self._run(self._tx, job)
        if device is None:
            return False
        self._closed(device, 1)
        self._reported()
        return True

    async def open_for(self, device: str, now: float
                       ) -> list[tuple[str, int, str, dict[str, Any], float]]:
        """``device``'s commands without a result and not expired, oldest first:
        (id, cid, name, args, expires)."""
        def job() -> list[tuple[str, int, str, dict[str, Any], float]]:
            assert self._conn is not None
            placeholders = ",".join("?" * len(OPEN_STATES))
            rows = self._conn.execute(
                f"SELECT id, cid, name, args, expires FROM commands WHERE device = ? AND "
                f"state IN ({placeholders}) AND expires > ? ORDER BY created, rowid",
                (device, *OPEN_STATES, now)).fetchall()
            return [(r[0], r[1], r[2], cbor2.loads(r[3]), r[4]) for r in rows]
        return await self._run(job)

    def _on_reading(self, db: sqlite3.Connection, device: str, seq: int,
                    results: Mapping[int, str], fits: Fits | None = None
                    ) -> tuple[tuple[WireCommand, ...], int]:
        now = self._clock()
        closed = 0
        full = False
        placeholders = ",".join("?" * len(OPEN_STATES))
        rows = db.execute(
            f"SELECT id, cid, name, args, expires, state, sent_seq FROM commands "
            f"WHERE device = ? AND state IN ({placeholders}) ORDER BY created, rowid",
            (device, *OPEN_STATES)).fetchall()
        out: list[WireCommand] = []
        for cid_, cid, name, args, expires, state, sent_seq in rows:
            if cid in results and state != "queued":  # a queued one was never sent: a
                self._close_with(db, cid_, state, results[cid])  # result for it is stale
                closed += 1
                continue
            if expires <= now:
                self._report(db, cid_, "expired")
                closed += 1
                continue
            if state == "sent" and sent_seq is not None and seq > sent_seq:
                self._report(db, cid_, "acknowledged")
            if len(out) < self.per_ack and not full:
                decoded: dict[str, Any] = cbor2.loads(args)
                wire: WireCommand = (cid, name, decoded, int(min(expires, now + EXP_S)))
                if fits is not None and not fits([*out, wire]):
                    full = True  # this one and every later one wait: order is kept
                    continue
                if state == "queued":
                    self._report(db, cid_, "sent")
                    db.execute("UPDATE commands SET sent_seq = ? WHERE id = ?", (seq, cid_))
                out.append(wire)
        for cid in set(results) - {r[1] for r in rows if r[5] != "queued"}:
            log.info("%s reported cmd/%d = %r for no open command; ignored",
                     device, cid, results[cid])
        return tuple(out), closed

    async def expire(self) -> int:
        """Expire open commands past ``expires``; forget closed ones after a week."""
        def job(db: sqlite3.Connection) -> list[str]:
            now = self._clock()
            placeholders = ",".join("?" * len(OPEN_STATES))
            rows = db.execute(
                f"SELECT id, device FROM commands WHERE expires <= ? AND state IN "
                f"({placeholders})", (now, *OPEN_STATES)).fetchall()
            for cid_, _ in rows:
                self._report(db, cid_, "expired")
            db.execute(f"DELETE FROM commands WHERE updated < ? AND state NOT IN "
                       f"({placeholders})", (now - _KEEP_CLOSED_S, *OPEN_STATES))
            return [d for _, d in rows]
        devices = await self._run(self._tx, job)
        for d in devices:
            self._closed(d, 1)
        if devices:
            log.info("%d commands expired", len(devices))
            self._reported()
        return len(devices)

    # ---- toward the cloud ----------------------------------------------------------

    async def pending_reports(self, n: int = 50) -> list[StateReport]:
        def job() -> list[StateReport]:
            assert self._conn is not None
            return [StateReport(*r) for r in self._conn.execute(
                "SELECT n, command, state, time, detail FROM outbox ORDER BY n LIMIT ?", (n,))]
        return await self._run(job)

    async def reported(self, n: int) -> None:
        """The cloud took outbox row ``n``. The count changes on the worker thread, as
        every other change of it does: ``self.outbox -= await ...`` read the count before
        the await, so a report queued meanwhile (``refuse``) was lost from it and
        ``outbox`` never came back to 0."""
        def job(db: sqlite3.Connection) -> None:
            self.outbox -= db.execute("DELETE FROM outbox WHERE n = ?", (n,)).rowcount
        await self._run(self._tx, job)

    async def state_of(self, command: str) -> str | None:
        def job() -> str | None:
            assert self._conn is not None
            row = self._conn.execute("SELECT state FROM commands WHERE id = ?",
                                     (command,)).fetchone()
            return None if row is None else str(row[0])
        return await self._run(job)

    async def refuse(self, command: str, why: str) -> None:
        """A command the cloud sent that we cannot queue: report it failed, once."""
        def job(db: sqlite3.Connection) -> None:
            if db.execute("SELECT 1 FROM outbox WHERE command = ?", (command,)).fetchone():
                return
            db.execute("INSERT INTO outbox (command, state, time, detail) VALUES (?, ?, ?, ?)",
                       (command, "failed", self._clock(), why))
            self.outbox += 1
        await self._run(self._tx, job)
        self._reported()
