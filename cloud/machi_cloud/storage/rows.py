"""What every backend does the same between its SQL and the records: rows in, rows out.

The SQL (and its dialect) stays in each backend; what lies around it does not depend on
the database and lives here once, so SQLite and PostgreSQL cannot drift apart: column
lists, row -> record mappers, record -> row values, filters, the derived records (a
registration's allocation, an expired command, a delivery report) and the errors they
raise. Rows are any sequence (a `sqlite3` tuple or an `asyncpg.Record`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from itertools import chain, compress, islice, repeat
from operator import and_, eq, ge, itemgetter
from typing import Any

import cbor2

from .. import audit
from ..batch import Reading, ReadingColumns
from ..errors import BatchConflict, NotFound, ShortIdsExhausted
from .base import BatchResult
from .records import (
    MAX_SHORT_ID,
    AuditEntry,
    Command,
    DeliveryReport,
    DeviceRegistration,
    RegisteredDevice,
)

REG_COLUMNS = (
    "device, type, gateway, site, lat, lon, transport, interval_s, personal, short_id, key,"
    " revoked, created, updated"
)
CMD_COLUMNS = "id, device, gateway, name, args, created, expires, state, updated, detail, actor"
AUDIT_COLUMNS = "seq, time, actor, action, subject, details, prev_hash, hash"


class Params:
    """The arguments of one SQL statement, collected in the order the text is built.

    `numbered` selects the placeholder style: `$1, $2, ...` (asyncpg) or `?` (sqlite3);
    with `?` the arguments must be added in the order their placeholders appear.
    """

    def __init__(self, *, numbered: bool) -> None:
        self.numbered = numbered
        self.args: list[Any] = []

    def __call__(self, value: Any) -> str:
        """Add `value` and return its placeholder; a tuple becomes `(p1, p2, ...)`."""
        if isinstance(value, tuple):
            return "(" + ", ".join(self(v) for v in value) + ")"
        self.args.append(value)
        return f"${len(self.args)}" if self.numbered else "?"

    def where(self, *conditions: str | tuple[str, Any]) -> str:
        """`" WHERE c1 AND c2 ..."` (or "" when none is left). A string is kept as is; a
        `(left, value)` pair, e.g. `("device =", device)`, becomes `left <placeholder>`
        only when `value` is not None (an absent filter)."""
        kept: list[str] = []
        for c in conditions:
            if isinstance(c, str):
                kept.append(c)
            elif c[1] is not None:
                kept.append(f"{c[0]} {self(c[1])}")
        return " WHERE " + " AND ".join(kept) if kept else ""


# -- batches ----------------------------------------------------------------------------------


def recorded(
    gateway: str, batch_id: str, body_hash: bytes, recorded_hash: bytes, answer: bytes
) -> dict[str, Any]:
    """The recorded answer of a batch seen before (`BatchResult.record`, or an older
    file's whole `answer()`); `BatchConflict` for another body."""
    if bytes(recorded_hash) != body_hash:
        raise BatchConflict(
            f"batch_id {batch_id!r} of gateway {gateway!r} was already used for a "
            "different body; give every new batch a new batch_id"
        )
    doc: dict[str, Any] = cbor2.loads(answer)
    return doc


def replay_keys(doc: dict[str, Any], keys: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """The keys a replay must look up: the distinct `keys` of its readings in batch order
    (the same body, so the same readings), or none when the record has `acked`."""
    return [] if "acked" in doc else list(dict.fromkeys(keys))


def replayed(
    doc: dict[str, Any], keys: Sequence[tuple[str, int]], held: Iterable[tuple[str, int]]
) -> BatchResult:
    """The answer of a replay: the recorded one, its `acked` being those of the batch's
    `keys` that the database holds (`held`), which are the first delivery's: it acked every
    valid reading, stored or held before. Looked up rather than assumed, so the answer
    stays true if the parser's rules changed between the two deliveries."""
    found = set(held)
    return BatchResult.from_answer(doc, replayed=True, acked=[k for k in keys if k in found])


def first_of_each(readings: Sequence[Reading]) -> dict[tuple[str, int], Reading]:
    """The batch's readings by `(device, seq)` in batch order, the first of a repeated key
    winning (a repeat inside one batch is a duplicate, as one of an earlier batch)."""
    keys = [(r[0], r[1]) for r in readings]
    unique = dict(zip(keys, readings, strict=True))
    if len(unique) == len(keys):
        return unique
    first: dict[tuple[str, int], Reading] = {}
    for key, r in zip(keys, readings, strict=True):
        if key not in first:
            first[key] = r
    return first


_DEVICE_METRIC = itemgetter(0, 2)


def in_key_order(unique: dict[tuple[str, int], Reading]) -> list[Reading]:
    """The readings of `first_of_each` in `(device, seq)` order: the tables' key order, so
    inserts go to one B-tree page after another rather than all over; and for each
    device a later reading is a newer one, so "the last one wins" picks the newest."""
    return [unique[k] for k in sorted(unique)]


def newest(measurements: Sequence[tuple[Any, ...]]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """The newest row per (device, metric) of measurement rows whose first columns are
    `(device, seq, metric, ...)`, in key order (`in_key_order`): the last of each wins."""
    return dict(zip(map(_DEVICE_METRIC, measurements), measurements, strict=True))


def device_rows(ordered: Sequence[Reading]) -> list[tuple[Any, ...]]:
    """`(device, first_seen, last_seen, last_seq, readings)` per device, from new readings
    in key order (`in_key_order`); seen is when the gateway received it, else its time."""
    devices: dict[str, list[Any]] = {}  # device -> [first_seen, last_seen, last_seq, n]
    for device, seq, t, rc, _, _ in ordered:
        seen = t if rc is None else rc
        stats = devices.get(device)
        if stats is None:
            devices[device] = [seen, seen, seq, 1]
            continue
        if seen < stats[0]:
            stats[0] = seen
        elif seen > stats[1]:
            stats[1] = seen
        stats[2] = seq
        stats[3] += 1
    return [(d, *s) for d, s in devices.items()]


# compact JSON; non-ASCII text kept as is (SQLite and `json.loads` read both forms alike)
_JSON = json.JSONEncoder(ensure_ascii=False, check_circular=False, separators=(",", ":")).encode


def m_text(measurements: Sequence[tuple[Any, ...]]) -> str:
    """A reading's `(metric, unit, value)` measurements as the JSON text of SQLite's
    `samples.m`: `[[metric, unit, value], ...]` in the reading's order, unit null when
    absent, value a JSON number (`repr` of the int or float, so 21 and 21.0 stay apart),
    text, true or false (the parser refused NaN and infinities)."""
    return _JSON(measurements)


def _picker(order: list[int]) -> Callable[[Sequence[Any]], Sequence[Any]]:
    """`pick(seq)`: the items of `seq` at the indices `order` (C-level)."""
    if len(order) > 1:
        return itemgetter(*order)
    return lambda seq: tuple(seq[i] for i in order)


def _device_of_key(item: tuple[tuple[str, str], int]) -> str:
    """The device of a `((device, metric), index)` item."""
    return item[0][0]


def _same(seq: Sequence[Any]) -> Sequence[Any]:
    """The pick of a batch already in key order: every item, as it is."""
    return seq


def _template(shape: Iterable[tuple[str, str | None]]) -> str:
    """The `%` template of `m_text` for measurements of this (metric, unit) shape: a `%r`
    where each value goes (`repr` of an int or a float is its JSON)."""
    heads = (f"[{_JSON(n)},{_JSON(u)},".replace("%", "%%") + "%r]" for n, u in shape)
    return "[" + ",".join(heads) + "]"


def _m_texts_of(c: ReadingColumns) -> list[str]:
    """`m_text` of each reading of `c`, in batch order, with no Python step per reading:
    one template per distinct (metric, unit) shape, every value put in by one `%` for
    the whole batch, the result cut at NULs (JSON text escapes every control character,
    so a raw NUL can only be a cut). Every value is an int or a float."""
    n, lens = len(c.lens), c.lens
    if not n:
        return []
    k = _same_metrics(c)
    if k is not None and c.units == c.units[:k] * n:
        # the usual batch: every reading has the same metrics with the same units
        templates: Iterable[str] = [_template(zip(c.names[:k], c.units[:k], strict=True))] * n
    else:
        pairs = iter(list(zip(c.names, c.units, strict=True)))
        shapes = list(map(tuple, map(islice, repeat(pairs), lens)))
        made = {s: _template(s) for s in set(shapes)}
        templates = map(made.__getitem__, shapes)
    return ("\0".join(templates) % tuple(c.values)).split("\0")


def _same_metrics(c: ReadingColumns) -> int | None:
    """k when every reading of `c` has the same k metrics in the same order, else None."""
    n, lens = len(c.lens), c.lens
    if not n or lens.count(lens[0]) != n:
        return None
    k = lens[0]
    return k if c.names == c.names[:k] * n else None


class SortedColumns:
    """What a storage derives from a batch's readings, taken from `ReadingColumns` with
    no Python step per reading: its keys, and the readings in key order `(device, seq)`
    as columns. The rest is derived when asked for, from the batch's own columns and the
    key order's indices (SQLite asks for `m` texts and latest rows, PostgreSQL for
    measurement rows): nothing is built per measurement that the storage does not take,
    and a batch already in key order is not reordered.

    `of(readings)` is None unless they are `ReadingColumns` (the parser's fast lane) with
    no key twice (the generic path handles the first-wins rule then). `only(keys)` keeps
    the readings with those keys (the new ones). Every method gives what the per-reading
    helpers above give for the same readings (`tests/test_column_path.py` and
    `tests/test_sorted_columns.py` compare them)."""

    __slots__ = (
        "_by_device", "_groups", "_last", "_order", "_pick", "_source", "acked", "devices",
        "received", "seqs", "times", "transports",
    )  # fmt: skip

    def __init__(
        self,
        acked: tuple[tuple[str, int], ...],
        source: ReadingColumns,
        order: list[int] | None,
        by_device: bool = False,
    ) -> None:
        """`order`: the indices in `source` of the readings kept, in key order (None: all
        of them, already in key order); `by_device`: it is the stable sort of all of
        them by device (each device's readings in batch order are in key order)."""
        self.acked = acked  # the keys in batch order
        self._source = source
        self._order = order
        self._by_device = by_device
        self._pick = _same if order is None else _picker(order)
        pick, c = self._pick, source
        self.devices, self.seqs = pick(c.devices), pick(c.seqs)
        self.times, self.received = pick(c.times), pick(c.received)
        self.transports = pick(c.transports)
        self._groups: Sequence[tuple[tuple[Any, ...], ...]] | None = None
        self._last: list[int] | None = None

    @classmethod
    def of(cls, readings: Sequence[Reading]) -> SortedColumns | None:
        if type(readings) is not ReadingColumns:
            return None
        c = readings
        n = len(c.devices)
        acked = tuple(zip(c.devices, c.seqs, strict=True))
        # a stable sort by device is key order when each device's seqs rise through the
        # batch (the usual batch), and then no key is there twice
        order: list[int] | None = sorted(range(n), key=c.devices.__getitem__)
        if order == list(range(n)):
            order = None
        sorted_ = cls(acked, c, order, by_device=True)
        d_s, q_s = sorted_.devices, sorted_.seqs
        if not any(map(and_, map(eq, d_s, d_s[1:]), map(ge, q_s, q_s[1:]))):
            return sorted_
        if len(dict.fromkeys(acked)) != n:
            return None
        return cls(acked, c, sorted(range(n), key=acked.__getitem__))

    def only(self, keys: Iterable[tuple[str, int]]) -> SortedColumns:
        """The readings whose key is in `keys`, in the same order."""
        wanted = set(keys)
        mask = map(wanted.__contains__, zip(self.devices, self.seqs, strict=True))
        order = range(len(self._source)) if self._order is None else self._order
        return SortedColumns(self.acked, self._source, list(compress(order, mask)))

    def __len__(self) -> int:
        return len(self.devices)

    def _ends(self) -> list[int]:
        """The index of each device's last reading (in key order a device's readings
        follow one another), made once."""
        if self._last is None:
            devices = self.devices
            self._last = list(dict(zip(devices, range(len(devices)), strict=True)).values())
        return self._last

    @property
    def groups(self) -> Sequence[tuple[tuple[Any, ...], ...]]:
        """Each reading's `(device, seq, metric, time, unit, value)` rows, in key order."""
        if self._groups is None:
            c = self._source
            n, lens = len(c.lens), c.lens
            groups: list[tuple[tuple[Any, ...], ...]]
            if n and lens.count(lens[0]) == n:  # k each: each device and seq k times over
                k = lens[0]
                devices: list[Any] = [None] * (n * k)
                seqs, times = devices.copy(), devices.copy()
                for j in range(k):
                    devices[j::k] = c.devices
                    seqs[j::k] = c.seqs
                    times[j::k] = c.times
                flat = zip(devices, seqs, c.names, times, c.units, c.values, strict=True)
                groups = list(zip(*[flat] * k, strict=True)) if k else [()] * n
            else:
                flat = zip(
                    chain.from_iterable(map(repeat, c.devices, lens)),
                    chain.from_iterable(map(repeat, c.seqs, lens)),
                    c.names,
                    chain.from_iterable(map(repeat, c.times, lens)),
                    c.units,
                    c.values,
                    strict=True,
                )
                groups = list(map(tuple, map(islice, repeat(flat), lens)))
            self._groups = self._pick(groups)
        return self._groups

    def sample_rows(self, *extra: Any, m: Sequence[str] | None = None) -> list[tuple[Any, ...]]:
        """`(device, seq, time, received, transport, *extra)` per reading, and its `m`
        text last when `m` (one per reading, from `m_texts`) is given (SQLite)."""
        columns = (self.devices, self.seqs, self.times, self.received, self.transports)
        last = () if m is None else (m,)
        return list(zip(*columns, *map(repeat, extra), *last))  # noqa: B905 (repeat is endless)

    def measurement_rows(self) -> list[tuple[Any, ...]]:
        """`(device, seq, metric, time, unit, value)` per measurement, in key order."""
        return list(chain.from_iterable(self.groups))

    def m_texts(self) -> Sequence[str]:
        """`m_text` of each reading's measurements, in key order (`_m_texts_of`)."""
        return self._pick(_m_texts_of(self._source))

    def latest_rows(self) -> list[tuple[Any, ...]]:
        """`(device, metric, seq, time, unit, value)` of the newest measurement per
        (device, metric), ordered as `newest` orders them."""
        k = _same_metrics(self._source)
        if k:  # the newest reading of each device has them all: k rows from each
            last = self._ends()
            order, c = self._order, self._source
            mine = last if order is None else list(map(order.__getitem__, last))
            at = _picker(last)
            at_flat = _picker([o * k + j for o in mine for j in range(k)])

            def each(column: Sequence[Any]) -> Iterable[Any]:
                return chain.from_iterable(map(repeat, at(column), repeat(k)))

            names = c.names[:k] * len(last)
            columns = (each(self.devices), names, each(self.seqs), each(self.times))
            return list(zip(*columns, at_flat(c.units), at_flat(c.values), strict=True))
        if k == 0:
            return []
        if self._by_device and self._groups is None:  # else the groups are there to take
            return self._newest_by_device()
        newest_rows = newest(self.measurement_rows()).values()
        return [(d, n, q, t, u, v) for d, q, n, t, u, v in newest_rows]

    def _newest_by_device(self) -> list[tuple[Any, ...]]:
        """`latest_rows` of a batch whose readings of each device are in key order: the
        last of each (device, metric) in batch order is the newest, and a stable sort by
        device of the first ones gives `newest`'s order. One Python step per latest row,
        none per measurement (any metrics, a mixed fleet or sparse series)."""
        c = self._source
        owner = list(chain.from_iterable(map(repeat, range(len(c.lens)), c.lens)))
        keys = zip(map(c.devices.__getitem__, owner), c.names, strict=True)
        last = dict(zip(keys, range(len(owner)), strict=True))
        items: Iterable[tuple[tuple[str, str], int]] = last.items()
        if self._order is not None:
            items = sorted(items, key=_device_of_key)
        seqs, times, units, values = c.seqs, c.times, c.units, c.values
        return [
            (d, n, seqs[owner[i]], times[owner[i]], units[i], values[i]) for (d, n), i in items
        ]

    def device_rows(self) -> list[tuple[Any, ...]]:
        """As `device_rows` of the same readings in key order."""
        received = self.received
        if None not in received:
            seen: Sequence[Any] = received
        elif received.count(None) == len(received):
            seen = self.times
        else:
            seen = [t if rc is None else rc for t, rc in zip(self.times, received, strict=True)]
        seqs, out = self.seqs, []
        first = 0  # in key order each device's readings follow one another
        for i in self._ends():
            mine = seen[first : i + 1]
            out.append((self.devices[i], min(mine), max(mine), seqs[i], i + 1 - first))
            first = i + 1
        return out


# -- audit ------------------------------------------------------------------------------------


def audit_values(e: AuditEntry) -> tuple[Any, ...]:
    """An entry as the values of `AUDIT_COLUMNS` (details as canonical JSON text)."""
    details = audit.canonical(e.details).decode()
    return (e.seq, e.time, e.actor, e.action, e.subject, details, e.prev_hash, e.hash)


def audit_entry(row: Sequence[Any]) -> AuditEntry:
    """A row of `AUDIT_COLUMNS` as an entry."""
    seq, t, actor, action, subject, details, prev, digest = row
    return AuditEntry(seq, t, actor, action, subject, json.loads(details), prev, digest)


# -- registry ---------------------------------------------------------------------------------


def registered_device(row: Sequence[Any]) -> RegisteredDevice:
    """A row of `REG_COLUMNS` as a device (SQLite's 0/1 flags become booleans)."""
    (device, type_, gw, site, lat, lon, transport, interval_s, personal, short_id, key,
     revoked, created, updated) = row  # fmt: skip
    return RegisteredDevice(
        device=device,
        type=type_,
        gateway=gw,
        site=site,
        lat=lat,
        lon=lon,
        transport=transport,
        interval_s=interval_s,
        personal=bool(personal),
        short_id=short_id,
        key=None if key is None else bytes(key),
        revoked=bool(revoked),
        created=created,
        updated=updated,
    )


def device_values(d: RegisteredDevice) -> tuple[Any, ...]:
    """A device as the values of `REG_COLUMNS`."""
    return (
        d.device, d.type, d.gateway, d.site, d.lat, d.lon, d.transport, d.interval_s,
        d.personal, d.short_id, d.key, d.revoked, d.created, d.updated,
    )  # fmt: skip


def free_short_id(used: Iterable[int], gateway: str) -> int:
    """The lowest short id of `gateway` not in `used`; `ShortIdsExhausted` if none is left."""
    taken = set(used)
    for candidate in range(1, MAX_SHORT_ID + 1):
        if candidate not in taken:
            return candidate
    raise ShortIdsExhausted(
        f"gateway {gateway!r} already has {MAX_SHORT_ID} devices (LoRa short ids are 16-bit): "
        "put new devices on another gateway"
    )


def declared(
    reg: DeviceRegistration, old: RegisteredDevice | None, short_id: int, now: float
) -> RegisteredDevice:
    """`reg` registered: its key, `revoked` and creation time stay those of `old`."""
    return RegisteredDevice(
        **{**reg.fields(), "device": reg.device},
        short_id=short_id,
        key=old.key if old else None,
        revoked=old.revoked if old else False,
        created=old.created if old else now,
        updated=now,
    )


def the_device(found: Sequence[RegisteredDevice], device: str) -> RegisteredDevice:
    """The one device a registry lookup found; `NotFound` when it found none."""
    if not found:
        raise NotFound(
            f"device {device!r} is not registered: register it first with PUT /v1/devices/{device}"
        )
    return found[0]


# -- commands ---------------------------------------------------------------------------------


def command(row: Sequence[Any]) -> Command:
    """A row of `CMD_COLUMNS` as a command (args stored as JSON text)."""
    cid, device, gw, name, args, created, expires, state, updated, detail, actor = row
    return Command(
        id=cid,
        device=device,
        gateway=gw,
        name=name,
        args=json.loads(args),
        created=created,
        expires=expires,
        state=state,
        updated=updated,
        detail=detail,
        actor=actor,
    )


def command_values(cmd: Command, actor: str) -> tuple[Any, ...]:
    """A new command, created by `actor`, as the values of `CMD_COLUMNS`."""
    return (
        cmd.id, cmd.device, cmd.gateway, cmd.name, audit.canonical(dict(cmd.args)).decode(),
        cmd.created, cmd.expires, cmd.state, cmd.updated, cmd.detail, actor,
    )  # fmt: skip


def the_command(found: Sequence[Command], cmd_id: str) -> Command:
    """The one command a lookup by id found; `NotFound` when it found none."""
    if not found:
        raise NotFound(f"there is no command {cmd_id!r}: use an id returned by the cloud")
    return found[0]


def expired(old: Command, now: float) -> Command:
    """`old` expired at `now` (it was still queued when its time ran out)."""
    return replace(old, state="expired", detail="not fetched before it expired", updated=now)


# -- reports ----------------------------------------------------------------------------------


def delivery_report(
    device: str, n: int, first: int | None, last: int | None, gaps: Iterable[Sequence[int]]
) -> DeliveryReport:
    """The report from a device's count, seq range and (first, last) missing ranges."""
    missing = 0 if n == 0 or first is None or last is None else (last - first + 1) - n
    return DeliveryReport(
        device=device,
        readings=n,
        first_seq=first,
        last_seq=last,
        missing=missing,
        gaps=tuple((a, b) for a, b in gaps),
    )
