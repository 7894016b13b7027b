"""Parse and validate a gateway's CBOR batch (docs/protocol.md §3) into typed readings.

Two kinds of bad input, answered differently so one bad reading never blocks a queue:

- the *batch* is wrong (not CBOR, trailing bytes, not a map, no `gateway`/`batch_id`/
  `readings`, a reading that is not a map or has no `device` string / integer `seq`): the
  whole request is refused with `BadBatch` (400), since without an identity the gateway
  could not tell which queued reading an answer refers to;
- one *reading* is wrong (bad device id, seq out of range, bad time, bad measurement): it is
  listed in `Batch.rejected` with a reason naming the field, and the others are stored.

Readings and measurements are NamedTuples rather than frozen dataclasses on purpose: a
batch holds up to 5000 readings and this is the ingest hot path; they are built only here,
after validation, so they need no `__post_init__` of their own.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice, repeat
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
    checked them (`fastbatch._whole_batch`), in batch order: a `Sequence[Reading]` whose
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
            values = zip(self.names, self.units, self.values, strict=True)
            it = map(_new, repeat(Measurement), values)
            groups = [tuple(islice(it, k)) for k in self.lens]
            fields = (self.devices, self.seqs, self.times, self.received, self.transports)
            self._readings = tuple(
                map(_new, repeat(Reading), zip(*fields, groups, strict=True))
            )
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
            f"the body must be a CBOR map with keys gateway, batch_id, readings; got {_kind(obj)}"
        )
    gateway = obj.get("gateway")
    if not isinstance(gateway, str) or not GATEWAY_ID.match(gateway):
        raise BadBatch(f'"gateway" must be a gateway id matching {GATEWAY_ID.pattern}')
    batch_id = obj.get("batch_id")
    if not isinstance(batch_id, str) or not 1 <= len(batch_id) <= _MAX_BATCH_ID:
        raise BadBatch(f'"batch_id" must be a text string of 1..{_MAX_BATCH_ID} characters')
    items = obj.get("readings")
    if not isinstance(items, list):
        raise BadBatch(f'"readings" must be an array of reading maps, got {_kind(items)}')
    if len(items) > max_readings:
        raise TooLarge(
            f"the batch has {len(items)} readings; at most {max_readings} are accepted per "
            "batch: split it"
        )
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
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
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
    present = [k for k in ("v", "vs", "vb") if k in m]
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
