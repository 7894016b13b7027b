"""Parse and validate a gateway's CBOR batch (docs/protocol.md §3) into typed readings.

Two kinds of bad input, answered differently so one bad reading never blocks a queue:

- the *batch* is wrong (not CBOR, trailing bytes, not a map, no `gateway`/`batch_id`/
  `readings`, a reading that is not a map or has no `device` string / integer `seq`): the
  whole request is refused with `BadBatch` (400), since without an identity the gateway
  could not tell which queued reading an answer refers to;
- one *reading* is wrong (bad device id, seq out of range, bad time, bad measurement): it is
  listed in `Batch.rejected` with a reason naming the field, and the others are stored.

The readings come as an array of reading maps (`readings`) or as columns (`columns`, one
array per field and one per metric series: smaller and faster to decode). A columnar batch
means exactly the row batch it expands to (`_expand`): its shape is checked here as a whole
(a wrong shape is `BadBatch`), then each expanded reading goes through the same `_reading`
as a row, so there is one definition of a valid reading and one wording of each rejection.

Readings and measurements are NamedTuples rather than frozen dataclasses on purpose: a
batch holds up to 5000 readings and this is the ingest hot path; they are built only here,
after validation, so they need no `__post_init__` of their own.
"""

from __future__ import annotations

import io
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice, pairwise, repeat
from typing import Any, NamedTuple, overload

import cbor2

from .errors import BadBatch, TooLarge
from .settings import GATEWAY_ID

DEVICE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
METRIC_NAME = re.compile(r"^[A-Za-z0-9][-_:./A-Za-z0-9]{0,63}$")
MAX_SEQ = 2**63  # exclusive (docs/protocol.md §1)
_INT64 = 2**63
_MAX_TIME = 1e11  # seconds since the epoch: year 5138; rules out ms/us mix-ups and overflow
_MAX_UNIT = 32
_MAX_TEXT = 4096
_MAX_BATCH_ID = 64
_MAX_TRANSPORT = 32
# values per reading on average that a columnar batch may hold (at most, all series
# together): a value costs 1 byte as a column but ~8 in a reading map, so without a cap a
# 4 MiB body could make the parser check 8 times the measurements a row batch can hold
VALUES_PER_READING = 100

Value = bool | int | float | str


class Measurement(NamedTuple):
    """One named value of a reading; `value` is a number, a text or a boolean."""

    name: str
    unit: str | None
    value: Value


class Reading(NamedTuple):
    """One validated reading, identified by `(device, seq)`."""

    device: str
    seq: int
    time: int | float
    received: int | float | None
    transport: str
    measurements: tuple[Measurement, ...]


class Rejection(NamedTuple):
    """A reading that can never be stored, and why (the gateway dead-letters it)."""

    device: str
    seq: int
    reason: str


_new = tuple.__new__


class ReadingColumns(Sequence[Reading]):
    """Valid readings with plain numbers only, held column by column as the fast lane
    checked them (`fastbatch._whole_batch` for rows, `columnar.parse_columns` for a
    columnar batch), in batch order: a `Sequence[Reading]` whose
    `Reading`s are built only if someone looks at one, so a storage that can take the
    columns as they are (`storage.rows.SortedColumns`) never pays for them.

    `devices` .. `transports` have one entry per reading; `names`, `units`, `values`
    one per measurement, reading after reading, `lens[i]` of them for reading i (every
    value an int or a float, no metric twice in a reading). Only the fast lane builds it,
    after validating every field as `_reading` would; equal to the tuple of the same
    readings (and unhashable, as a list is)."""

    __slots__ = (
        "_readings", "devices", "lens", "names", "received", "seqs", "times", "transports",
        "units", "values",
    )  # fmt: skip

    def __init__(
        self,
        devices: list[str],
        seqs: list[int],
        times: list[int | float],
        received: list[int | float | None],
        transports: list[str],
        names: list[str],
        units: list[str | None],
        values: list[int | float],
        lens: list[int],
    ) -> None:
        self.devices, self.seqs, self.times = devices, seqs, times
        self.received, self.transports = received, transports
        self.names, self.units, self.values, self.lens = names, units, values, lens
        self._readings: tuple[Reading, ...] | None = None

    def readings(self) -> tuple[Reading, ...]:
        """The readings as `Reading`s (built once, on first use)."""
        if self._readings is None:
            self._readings = readings_of(
                self.devices, self.seqs, self.times, self.received, self.transports,
                self.names, self.units, self.values, self.lens,
            )  # fmt: skip
        return self._readings

    def __len__(self) -> int:
        return len(self.devices)

    @overload
    def __getitem__(self, index: int) -> Reading: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Reading, ...]: ...
    def __getitem__(self, index: int | slice) -> Reading | tuple[Reading, ...]:
        return self.readings()[index]

    def __iter__(self) -> Iterator[Reading]:
        return iter(self.readings())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ReadingColumns):
            other = other.readings()
        if isinstance(other, tuple):
            return self.readings() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ReadingColumns({self.readings()!r})"


def readings_of(
    devices: list[str],
    seqs: list[int],
    times: list[int | float],
    received: list[int | float | None],
    transports: list[str],
    names: list[str],
    units: list[str | None],
    values: Sequence[Value],
    lens: list[int],
) -> tuple[Reading, ...]:
    """Readings from checked columns laid out as `ReadingColumns` holds them (values of any
    kind), without the NamedTuple constructors: one Python step per reading."""
    it = map(_new, repeat(Measurement), zip(names, units, values, strict=True))
    groups = [tuple(islice(it, k)) for k in lens]
    fields = (devices, seqs, times, received, transports)
    return tuple(map(_new, repeat(Reading), zip(*fields, groups, strict=True)))


@dataclass(frozen=True)
class Batch:
    """A well-formed batch: the readings to store and those rejected on validation.

    `readings` is a tuple, or `ReadingColumns` from the fast lane (equal to the tuple)."""

    gateway: str
    batch_id: str
    readings: Sequence[Reading]
    rejected: tuple[Rejection, ...]

    def __post_init__(self) -> None:
        if not GATEWAY_ID.match(self.gateway):
            raise ValueError(f"gateway id {self.gateway!r} must match {GATEWAY_ID.pattern}")
        if not 1 <= len(self.batch_id) <= _MAX_BATCH_ID:
            raise ValueError(f"batch_id must be 1..{_MAX_BATCH_ID} characters")


def _refuse_reference(*_: Any) -> Any:
    raise cbor2.CBORDecodeError("references (CBOR tags 25, 28, 29, 256) are not accepted")


def _bignum(negative: bool) -> Any:
    def decode(value: Any, _immutable: bool) -> int:
        if not isinstance(value, bytes) or len(value) > _MAX_BIGNUM:
            raise cbor2.CBORDecodeError(f"a bignum must be a byte string of at most "
                                        f"{_MAX_BIGNUM} bytes")
        n = int.from_bytes(value, "big")
        return -1 - n if negative else n
    return decode


# Hostile-input hardening (docs/security.md "Fuzzing"): cbor2's shared values and string
# references let a few bytes stand for any number of readings or texts (a "billion laughs"
# for validation and storage); non-text map keys can be made to share one hash
# (k * (2^61 - 1)), making map decoding quadratic; an integer of over 4300 digits cannot be
# echoed in a JSON answer. 1024 bytes hold any integer a gateway can have queued.
_MAX_BIGNUM = 1024
_SEMANTIC = {2: _bignum(False), 3: _bignum(True),
             **dict.fromkeys((25, 28, 29, 256), _refuse_reference)}


def decode_cbor(body: bytes) -> Any:
    """Exactly one well-formed CBOR item; anything else is `BadBatch`."""
    if not body:
        raise BadBatch("the body is empty: send one CBOR map (docs/protocol.md §3)")
    fp = io.BytesIO(body)
    try:
        obj = cbor2.CBORDecoder(
            fp, semantic_decoders=_SEMANTIC, strict_hashable_types=True
        ).decode()
    except cbor2.CBORDecodeError as exc:
        raise BadBatch(f"the body is not well-formed CBOR: {exc}") from exc
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise BadBatch(f"the body is not CBOR we can decode: {exc}") from exc
    if fp.tell() != len(body):
        raise BadBatch(
            f"{len(body) - fp.tell()} trailing byte(s) after the CBOR item: "
            "the body must be exactly one CBOR map"
        )
    return obj


def parse_batch(body: bytes, *, max_readings: int) -> Batch:
    """Decode and validate a batch; raises `BadBatch` (400) or `TooLarge` (413)."""
    obj = decode_cbor(body)
    if not isinstance(obj, dict):
        raise BadBatch(
            "the body must be a CBOR map with keys gateway, batch_id and readings (or columns); "
            f"got {_kind(obj)}"
        )
    gateway = obj.get("gateway")
    if not isinstance(gateway, str) or not GATEWAY_ID.match(gateway):
        raise BadBatch(f'"gateway" must be a gateway id matching {GATEWAY_ID.pattern}')
    batch_id = obj.get("batch_id")
    if not isinstance(batch_id, str) or not 1 <= len(batch_id) <= _MAX_BATCH_ID:
        raise BadBatch(f'"batch_id" must be a text string of 1..{_MAX_BATCH_ID} characters')
    if ("readings" in obj) == ("columns" in obj):
        raise BadBatch(
            'send exactly one of "readings" (an array of reading maps) or "columns" (the '
            f"columnar form), not {'both' if 'readings' in obj else 'neither'} "
            "(docs/protocol.md §3)"
        )
    items: Iterable[Any]
    if "columns" in obj:
        items = _columns(obj["columns"], max_readings)
    else:
        items = obj["readings"]
        if not isinstance(items, list):
            raise BadBatch(f'"readings" must be an array of reading maps, got {_kind(items)}')
        _check_count(len(items), max_readings)
    readings: list[Reading] = []
    rejected: list[Rejection] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadBatch(f"readings[{index}] must be a map, got {_kind(item)}")
        device = item.get("device")
        seq = item.get("seq")
        if not isinstance(device, str) or type(seq) is not int:
            raise BadBatch(
                f'readings[{index}] has no identity: "device" must be a text string and '
                '"seq" an integer'
            )
        try:
            readings.append(_reading(device, seq, item))
        except _Invalid as exc:
            rejected.append(Rejection(device, seq, str(exc)))
    return Batch(
        gateway=gateway, batch_id=batch_id, readings=tuple(readings), rejected=tuple(rejected)
    )


def _check_count(n: int, max_readings: int) -> None:
    if n > max_readings:
        raise TooLarge(
            f"the batch has {n} readings; at most {max_readings} are accepted per batch: split it"
        )


class _Series(NamedTuple):
    """One checked series of a columnar batch: what each of its measurements has in common
    (`template`: "n" and "u" as given), its value kind, values, and the readings they
    belong to (`indices`; None: every reading, in order)."""

    template: dict[Any, Any]
    kind: str
    values: list[Any]
    indices: list[int] | None


def _columns(columns: Any, max_readings: int) -> Iterator[dict[str, Any]]:
    """The row items a columnar batch stands for, after checking its shape as a whole
    (`BadBatch` naming the column or series; `TooLarge` past `max_readings` readings or
    `VALUES_PER_READING` values per reading). The items are made one by one as the caller
    asks for them, so a batch is never held twice."""
    if not isinstance(columns, dict):
        raise BadBatch(
            '"columns" must be a map of arrays (device, seq, time, received, transport) and '
            f"of series (m), got {_kind(columns)}"
        )
    devices = columns.get("device")
    if not isinstance(devices, list):
        raise BadBatch(f'"columns.device" must be an array of device ids, got {_kind(devices)}')
    n = len(devices)
    _check_count(n, max_readings)
    seqs = _column(columns, "seq", n)
    for k, (device, seq) in enumerate(zip(devices, seqs, strict=True)):
        if not isinstance(device, str) or type(seq) is not int:
            raise BadBatch(
                f"reading {k} has no identity: columns.device[{k}] must be a text string and "
                f"columns.seq[{k}] an integer"
            )
    times = _column(columns, "time", n)
    received = _column(columns, "received", n) if "received" in columns else None
    transports = _column(columns, "transport", n) if "transport" in columns else None
    ms = columns.get("m")
    if not isinstance(ms, list):
        raise BadBatch(
            '"columns.m" must be an array of series maps ({"n", "u", "v" or "vs" or "vb", '
            f'"i"}}), got {_kind(ms)}'
        )
    series = [_series(j, s, n) for j, s in enumerate(ms)]
    values = sum(len(s.values) for s in series)
    if values > VALUES_PER_READING * max_readings:
        raise TooLarge(
            f"the batch has {values} values in its series; at most "
            f"{VALUES_PER_READING * max_readings} ({VALUES_PER_READING} for each of the "
            f"{max_readings} readings a batch may have) are accepted: split it"
        )
    return _expand(devices, seqs, times, received, transports, series)


def _column(columns: dict[Any, Any], key: str, n: int) -> list[Any]:
    """`columns[key]`, an array of one entry per reading, else `BadBatch`."""
    col = columns.get(key)
    if not isinstance(col, list) or len(col) != n:
        got = f"{len(col)} entries" if isinstance(col, list) else _kind(col)
        raise BadBatch(
            f'"columns.{key}" must be an array of one entry per reading ({n}, as '
            f'"columns.device"), got {got}'
        )
    return col


def _series(j: int, s: Any, n: int) -> _Series:
    """Series `j` checked as a whole (its values are checked per reading, by `_reading`)."""
    if not isinstance(s, dict):
        raise BadBatch(f"columns.m[{j}] must be a series map, got {_kind(s)}")
    name = s.get("n")
    named = isinstance(name, str) and METRIC_NAME.match(name)
    label = f"columns.m[{j}] ({name})" if named else f"columns.m[{j}]"
    kinds = value_keys(s)
    if len(kinds) != 1:
        raise BadBatch(
            f"{label} must have exactly one value array (v, vs or vb); has "
            f"{', '.join(kinds) or 'none'}"
        )
    kind = kinds[0]
    values = s[kind]
    if not isinstance(values, list):
        raise BadBatch(f"{label}.{kind} must be an array of values, got {_kind(values)}")
    indices = s.get("i")
    if "i" not in s:
        if len(values) != n:
            raise BadBatch(
                f'{label}.{kind} has {len(values)} values for {n} readings: without "i" a '
                "series has one value per reading"
            )
    elif not (
        isinstance(indices, list)
        and all(type(i) is int for i in indices)
        and all(a < b for a, b in pairwise(indices))
        and (not indices or (indices[0] >= 0 and indices[-1] < n))
    ):
        raise BadBatch(
            f"{label}.i must be an array of strictly increasing reading indices, each below "
            f"{n} (the number of readings)"
        )
    elif len(indices) != len(values):
        raise BadBatch(f"{label}.{kind} has {len(values)} values for {len(indices)} indices (i)")
    template = {key: s[key] for key in ("n", "u") if key in s}
    return _Series(template, kind, values, indices)


def _expand(
    devices: list[Any],
    seqs: list[Any],
    times: list[Any],
    received: list[Any] | None,
    transports: list[Any] | None,
    series: list[_Series],
) -> Iterator[dict[str, Any]]:
    """Reading k as the row format has it: its measurements, in series order, are the
    entries of the series that name k (docs/protocol.md §3, "Equivalence")."""
    slots: list[list[int]] = [[] for _ in devices]  # which series name each reading
    for j, s in enumerate(series):
        for k in range(len(devices)) if s.indices is None else s.indices:
            slots[k].append(j)
    cursors = [0] * len(series)  # of the sparse series: the next value to take
    for k, device in enumerate(devices):
        m = []
        for j in slots[k]:
            s = series[j]
            if s.indices is None:
                value = s.values[k]
            else:
                value = s.values[cursors[j]]
                cursors[j] += 1
            m.append({**s.template, s.kind: value})
        item = {"device": device, "seq": seqs[k], "time": times[k], "m": m}
        if received is not None and received[k] is not None:
            item["received"] = received[k]
        if transports is not None:
            item["transport"] = transports[k]
        yield item


class _Invalid(Exception):
    """Internal: one reading is invalid; the message becomes its rejection reason."""


def _reading(device: str, seq: int, item: dict[Any, Any]) -> Reading:
    if not DEVICE_ID.match(device):
        raise _Invalid(f"device id must match {DEVICE_ID.pattern}")
    if not 0 <= seq < MAX_SEQ:
        raise _Invalid("seq must be an unsigned integer below 2^63")
    time = _timestamp(item.get("time"), "time")
    if time is None:
        raise _Invalid('"time" is missing: the sample time in seconds since the Unix epoch')
    received = _timestamp(item.get("received"), "received")
    transport = item.get("transport", "unknown")
    if not isinstance(transport, str) or not 1 <= len(transport) <= _MAX_TRANSPORT:
        raise _Invalid(f'"transport" must be a text string of 1..{_MAX_TRANSPORT} characters')
    ms = item.get("m")
    if not isinstance(ms, list):
        raise _Invalid('"m" must be an array of measurement maps')
    measurements = tuple(_measurement(i, m) for i, m in enumerate(ms))
    if len(measurements) > 1:
        names = [m.name for m in measurements]
        if len(set(names)) != len(names):  # (Counter: a reading may hold thousands)
            twice = sorted(n for n, count in Counter(names).items() if count > 1)
            raise _Invalid(f"metric {twice[0]!r} appears more than once in m")
    return Reading(device, seq, time, received, transport, measurements)


def _timestamp(value: Any, key: str) -> int | float | None:
    if value is None:
        return None
    kind = type(value)
    if kind is int or kind is float:
        if not 0 <= value < _MAX_TIME:  # also false for NaN
            shown = repr(value) if kind is float or value.bit_length() <= 64 else (
                f"an integer of {value.bit_length()} bits")  # reasons stay short
            raise _Invalid(f'"{key}" must be seconds since the Unix epoch, got {shown}')
        return value  # type: ignore[no-any-return]
    raise _Invalid(f'"{key}" must be a number (seconds since the Unix epoch), got {_kind(value)}')


def _measurement(index: int, m: Any) -> Measurement:
    if not isinstance(m, dict):
        raise _Invalid(f"m[{index}] must be a map, got {_kind(m)}")
    name = m.get("n")
    if not isinstance(name, str) or not METRIC_NAME.match(name):
        raise _Invalid(f"m[{index}].n must be a metric name matching {METRIC_NAME.pattern}")
    unit = m.get("u")
    if unit is not None and (not isinstance(unit, str) or not 1 <= len(unit) <= _MAX_UNIT):
        raise _Invalid(f"m[{index}].u ({name}) must be a SenML unit text of 1..{_MAX_UNIT} chars")
    present = value_keys(m)
    if len(present) != 1:
        raise _Invalid(
            f"m[{index}] ({name}) must have exactly one of v, vs, vb; has "
            f"{', '.join(present) or 'none'}"
        )
    key = present[0]
    value = m[key]
    kind = type(value)
    if key == "v":
        if kind is int:
            if not -_INT64 <= value < _INT64:
                raise _Invalid(f"m[{index}].v ({name}) is outside the 64-bit integer range")
        elif kind is float:
            if not math.isfinite(value):
                raise _Invalid(f"m[{index}].v ({name}) must be a finite number, got {value!r}")
        else:
            raise _Invalid(f"m[{index}].v ({name}) must be a number, got {_kind(value)}")
    elif key == "vs":
        if kind is not str or len(value) > _MAX_TEXT:
            raise _Invalid(f"m[{index}].vs ({name}) must be a text of at most {_MAX_TEXT} chars")
    elif kind is not bool:
        raise _Invalid(f"m[{index}].vb ({name}) must be true or false, got {_kind(value)}")
    return Measurement(name, unit, value)


def value_keys(m: dict[Any, Any]) -> list[str]:
    """Which of a measurement's (or a series') value keys v, vs, vb it has: exactly one
    is valid."""
    return [k for k in ("v", "vs", "vb") if k in m]


def _kind(value: Any) -> str:
    """How a decoded CBOR value is named in error messages (CBOR terms, not Python's)."""
    if value is None:
        return "null (or a missing key)"
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a text string",
        bytes: "a byte string",
        list: "an array",
        dict: "a map",
    }
    return names.get(type(value), f"a {type(value).__name__}")
