"""Decode one SenML-CBOR pack (docs/protocol.md §2) into its :class:`Reading` s.

The gateway accepts the profile the nodes speak, strictly: every reading starts with its
seq record (``n = "seq"``, integer ``v``, ``bn = "<device>:"``, optional ``bt``/``bver``),
followed by its measurements with exactly one value; a pack holds 1..``MAX_READINGS``
readings of one device (a node catching up on a backlog sends several at once).
Anything else raises :class:`BadReading` whose ``reason`` is a short, countable word (it
becomes a metric label and the start of the 4.00 diagnostic), so an operator can tell a
firmware bug from line noise.
"""

from __future__ import annotations

import io
import math
from typing import Any

import cbor2

from .errors import BadReading
from .model import DEVICE_RE, NAME_RE, SEQ_LIMIT, Measurement, Reading

# SenML-CBOR integer labels (RFC 8428 §6).
BVER, BN, BT, BU = -1, -2, -3, -4
N, U, V, VS, VB, S, T = 0, 1, 2, 3, 4, 5, 6
_BASE_LABELS = frozenset({BVER, BN, BT, BU})
_META_LABELS = frozenset({BVER, BN, BT, BU, N, V})
_FAST_META_LABELS = frozenset({BN, BT, BU, N, V})  # no bver: that one takes the full check
_RECORD_LABELS = frozenset({N, U, V, VS, VB, T})
_SENML_VERSION = 10  # RFC 8428's default; a higher bver means fields we do not know
SEQ_NAME = "seq"
MAX_READINGS = 16  # readings per pack (docs/protocol.md §2, "Several readings in one pack")
_INT64_MIN = -SEQ_LIMIT


def _fail(reason: str, detail: str) -> BadReading:
    return BadReading(reason, f"{reason}: {detail}")


def _is_number(x: object) -> bool:
    """A finite float or an int64: what the cloud stores (a bigger int also overflows
    ``math.isfinite``)."""
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return _INT64_MIN <= x < SEQ_LIMIT
    return isinstance(x, float) and math.isfinite(x)


def _show(x: object) -> str:
    """A short repr for a diagnostic: a hostile value (an int of 5000 digits, which repr
    refuses; 8^20 shared references, which it would walk for ever) never gets expanded."""
    if isinstance(x, bool) or x is None or isinstance(x, float):
        return repr(x)
    if isinstance(x, int):
        return repr(x) if x.bit_length() <= 64 else f"<integer of {x.bit_length()} bits>"
    if isinstance(x, str | bytes):
        return repr(x[:40]) + ("..." if len(x) > 40 else "")
    return f"<{type(x).__name__}>"


def _refuse_reference(_decoder: Any, *_: Any) -> Any:
    raise cbor2.CBORDecodeError("references (tags 25, 28, 29, 256) are not accepted")


# cbor2's shared values and string references let a few bytes stand for a structure of
# any size (and cycles): a pack has no use for them (docs/security.md "Fuzzing").
_REFERENCES = dict.fromkeys((25, 28, 29, 256), _refuse_reference)


def decode_cbor(payload: bytes) -> Any:
    """Decode exactly one CBOR item; trailing bytes are an error, not ignored."""
    fp = io.BytesIO(payload)
    try:
        item = cbor2.CBORDecoder(fp, semantic_decoders=_REFERENCES).decode()
    except (cbor2.CBORDecodeError, RecursionError) as exc:
        raise _fail("cbor", f"not well-formed CBOR ({exc})") from exc
    if fp.tell() != len(payload):
        raise _fail("cbor", f"{len(payload) - fp.tell()} trailing bytes after the pack")
    return item


def _records(pack: object) -> tuple[list[dict[int, Any]], list[int]]:
    """The pack's records, checked to be maps with integer labels, and the indexes of its
    seq records (where readings start), found in the same pass."""
    if not isinstance(pack, list):
        raise _fail("not-a-pack", f"expected a CBOR array of records, got {type(pack).__name__}")
    if not pack:
        raise _fail("not-a-pack", "empty pack")
    starts = []
    for i, rec in enumerate(pack):
        if not isinstance(rec, dict):
            raise _fail("not-a-record", f"record {i} is a {type(rec).__name__}, not a map")
        for key in rec:
            if type(key) is not int:  # cbor2 makes plain ints; True/False are not labels
                raise _fail("bad-label", f"record {i} has non-integer label {_show(key)}")
        if rec.get(N) == SEQ_NAME:
            starts.append(i)
    return pack, starts


# Base names already checked ("<device>:" -> device): a pack's readings, and a node's
# every pack, repeat the same one. Bounded like _NAMES below.
_BASE_NAMES: dict[str, str] = {}


def _meta(rec: dict[int, Any]) -> tuple[str, int, float | int | None, str | None]:
    """Check record 0 and return (device, seq, bt, bu): the common valid seq record with
    as few operations as possible, anything else through :func:`_meta_checked`."""
    bn = rec.get(BN)
    seq = rec.get(V)
    if (type(bn) is str and type(seq) is int and rec.keys() <= _FAST_META_LABELS
            and rec.get(N) == SEQ_NAME and 0 <= seq < SEQ_LIMIT):
        device = _BASE_NAMES.get(bn)
        bt = rec.get(BT)
        bu = rec.get(BU)
        if (device is not None
                and (bt is None or (type(bt) is int and _INT64_MIN <= bt < SEQ_LIMIT)
                     or (type(bt) is float and math.isfinite(bt)))
                and (bu is None or (type(bu) is str and bu))):
            return device, seq, bt, bu
    device, seq, bt, bu = _meta_checked(rec)
    if len(_BASE_NAMES) >= _NAMES_MAX:
        _BASE_NAMES.clear()
    _BASE_NAMES[device + ":"] = device
    return device, seq, bt, bu


def _meta_checked(rec: dict[int, Any]) -> tuple[str, int, float | int | None, str | None]:
    """Check record 0 field by field, naming what is wrong."""
    if BN not in rec:
        raise _fail("no-bn", "record 0 has no base name (bn)")
    bn = rec[BN]
    if not isinstance(bn, str) or not bn.endswith(":") or not DEVICE_RE.match(bn[:-1]):
        raise _fail("bad-bn", f"base name {_show(bn)} is not '<device>:'")
    if rec.get(N) != SEQ_NAME:
        raise _fail("no-seq", "record 0 is not the seq record (n = 'seq')")
    if not rec.keys() <= _META_LABELS:
        shown = [_show(k) for k in sorted(set(rec) - _META_LABELS)]
        raise _fail("bad-label", f"seq record has unexpected labels {shown}")
    if BVER in rec:
        bver = rec[BVER]
        if isinstance(bver, bool) or not isinstance(bver, int) or not 0 < bver <= _SENML_VERSION:
            raise _fail("bad-version", f"unsupported SenML version {_show(bver)}")
    if V not in rec:
        raise _fail("bad-seq", "seq record has no value")
    seq = rec[V]
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise _fail("bad-seq", f"seq must be an integer, got {type(seq).__name__}")
    if not 0 <= seq < SEQ_LIMIT:
        raise _fail("bad-seq", f"seq {_show(seq)} outside [0, 2^63)")
    bt = rec.get(BT)
    if bt is not None and not _is_number(bt):
        raise _fail("bad-time", f"base time {_show(bt)} is not a number in the int64/float range")
    bu = rec.get(BU)
    if bu is not None and (not isinstance(bu, str) or not bu):
        raise _fail("bad-unit", f"base unit {_show(bu)} is not a non-empty string")
    return bn[:-1], seq, bt, bu


# Measurement names already checked (NAME_RE, not "seq"): a node sends the same few names
# in every reading, so the regex runs once per name, not once per record. Bounded: a node
# sending ever new names only costs the regex again.
_NAMES: set[str] = set()
_NAMES_MAX = 4096


def _known_name(name: str) -> bool:
    if name in _NAMES:
        return True
    if not NAME_RE.match(name) or name == SEQ_NAME:
        return False
    if len(_NAMES) >= _NAMES_MAX:
        _NAMES.clear()
    _NAMES.add(name)
    return True


# The model's dataclasses check their fields on construction; the decoder has just checked
# the same fields more strictly, so it builds them without checking twice (those checks
# cost a third of the decoding: bench/gateway_coap.py). gateway/tests/test_senml.py holds
# the decoded objects equal to ones built through the checking constructors.
# They are set through the slots' own setters (no frozen-dataclass __setattr__ to go
# around, no attribute lookup by name).
_new = object.__new__
_SET_READING = tuple(Reading.__dict__[f].__set__ for f in (
    "device", "seq", "time", "received", "transport", "measurements", "meta"))
_set_name = Measurement.__dict__["name"].__set__
_set_unit = Measurement.__dict__["unit"].__set__
_set_value = Measurement.__dict__["value"].__set__
_NOT_FAST = object()


def _measurements(records: list[dict[int, Any]], bu: str | None, start: int = 0,
                  end: int | None = None) -> tuple[Measurement, ...]:
    """Records ``start + 1 .. end`` (a reading's, after its seq record) as measurements.
    The common valid record is checked with as few operations as possible (the CoAP
    path's hot loop: bench/gateway_coap.py); anything else takes
    :func:`_measurement_checked`, which names the problem."""
    out = []
    names = []
    known = _NAMES
    isfinite = math.isfinite
    for i in range(start + 1, len(records) if end is None else end):
        rec = records[i]
        # Its labels are ints (_records checked), so two labels that are n and a value
        # are exactly {n, value}; three with u too are {n, u, value}: no set operations.
        name = rec.get(N)
        value: Any = rec.get(V, _NOT_FAST)
        size = len(rec)
        if (type(name) is str and (size == 2 or (size == 3 and U in rec))
                and (name in known or _known_name(name))):
            unit = bu if size == 2 else rec[U]
            if unit is not None and (type(unit) is not str or not unit):
                value = _NOT_FAST
            elif value is not _NOT_FAST:
                kind = type(value)
                if not ((kind is float and isfinite(value))
                        or (kind is int and _INT64_MIN <= value < SEQ_LIMIT)):
                    value = _NOT_FAST
            elif VS in rec:
                value = rec[VS]
                if type(value) is not str:
                    value = _NOT_FAST
            elif VB in rec:
                value = rec[VB]
                if type(value) is not bool:
                    value = _NOT_FAST
        else:
            value = _NOT_FAST
        if value is _NOT_FAST:
            m = _measurement_checked(i - start, rec, bu)
            name = m.name
        else:
            m = _new(Measurement)  # = Measurement(name, unit, value): see _new above
            _set_name(m, name)
            _set_unit(m, unit)
            _set_value(m, value)
        out.append(m)
        names.append(name)
    if len(set(names)) != len(names):
        raise _fail("duplicate-name", "a measurement name appears twice")
    return tuple(out)


def _measurement_checked(i: int, rec: dict[int, Any], bu: str | None) -> Measurement:
    if set(rec) & _BASE_LABELS:
        raise _fail("bad-label", f"record {i} carries base fields; only record 0 may")
    extra = set(rec) - _RECORD_LABELS
    if extra:
        shown = [_show(k) for k in sorted(extra)]
        raise _fail("bad-label", f"record {i} has unsupported labels {shown}")
    name = rec.get(N)
    if name is None:
        raise _fail("bad-name", f"record {i} has no name")
    if not isinstance(name, str) or not NAME_RE.match(name) or name == SEQ_NAME:
        raise _fail("bad-name", f"record {i} name {_show(name)} is not allowed")
    unit = rec.get(U, bu)
    if unit is not None and (not isinstance(unit, str) or not unit):
        raise _fail("bad-unit", f"{name}: unit {_show(unit)} is not a non-empty string")
    t = rec.get(T, 0)
    if not _is_number(t) or t != 0:
        # The batch format has one time per reading, so a per-record offset would be lost.
        raise _fail("record-time", f"{name}: per-record time t={_show(t)} is not supported")
    present = [label for label in (V, VS, VB) if label in rec]
    if len(present) != 1:
        what = "no value" if not present else "more than one of v, vs, vb"
        raise _fail("value-count", f"{name}: {what}")
    value = rec[present[0]]
    if present[0] == V and not _is_number(value):
        raise _fail("bad-value",
                    f"{name}: v must be a finite float or an int64, got {_show(value)}")
    if present[0] == VS and not isinstance(value, str):
        raise _fail("bad-value", f"{name}: vs must be text")
    if present[0] == VB and not isinstance(value, bool):
        raise _fail("bad-value", f"{name}: vb must be a boolean")
    return Measurement(name=name, unit=unit, value=value)


def _reading(records: list[dict[int, Any]], start: int, end: int, received: float,
             transport: str) -> tuple[Reading, float | int | None, str | None]:
    """One reading, ``records[start:end]``: its seq record then its measurements; also
    returns its bt and bu."""
    device, seq, bt, bu = _meta(records[start])
    measurements = _measurements(records, bu, start, end)
    reading = _new(Reading)  # = Reading(...): see _new above
    _SET_READING[0](reading, device)
    _SET_READING[1](reading, seq)
    _SET_READING[2](reading, bt if bt is not None else received)
    _SET_READING[3](reading, received)
    _SET_READING[4](reading, transport)
    _SET_READING[5](reading, measurements)
    _SET_READING[6](reading, {})
    return reading, bt, bu


def decode_readings(payload: bytes, *, received: float, transport: str) -> list[Reading]:
    """Decode ``payload`` into its readings (1..MAX_READINGS, in pack order).

    Every record named ``seq`` starts a reading. The pack is taken whole or not at all:
    any bad reading raises :class:`BadReading` (4.00) for the request. A reading's base
    fields are its own; so that a generic SenML reader (where ``bt``/``bu`` carry over to
    later records, RFC 8428 §4.5.1) reads the same, a reading may not omit a ``bt`` or
    ``bu`` that an earlier reading of the pack set (``base-carry``).
    """
    if (isinstance(received, bool) or not isinstance(received, int | float)
            or not math.isfinite(received) or not isinstance(transport, str) or not transport):
        raise ValueError("received must be a finite number, transport a non-empty string")
    records, starts = _records(decode_cbor(payload))
    if not starts or starts[0] != 0:
        # record 0 is not a seq record: _meta names what is wrong with it
        starts = [0, *starts]
    if len(starts) > MAX_READINGS:
        raise _fail("too-many-readings",
                    f"{len(starts)} readings in one pack, at most {MAX_READINGS}")
    readings: list[Reading] = []
    had_bt = had_bu = False
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(records)
        try:
            reading, bt, bu = _reading(records, start, end, received, transport)
        except BadReading as exc:
            if len(starts) == 1:
                raise
            raise _fail(exc.reason, f"reading {k + 1} of {len(starts)}: "
                        f"{exc.detail.removeprefix(exc.reason + ': ')}") from exc
        if readings and reading.device != readings[0].device:
            raise _fail("mixed-device", f"reading {k + 1} is from {reading.device}, "
                        f"the pack from {readings[0].device}")
        if (had_bt and bt is None) or (had_bu and bu is None):
            raise _fail("base-carry", f"reading {k + 1} omits the bt/bu of an earlier "
                        "reading (a SenML reader would carry it over)")
        had_bt = had_bt or bt is not None
        had_bu = had_bu or bu is not None
        readings.append(reading)
    return readings


def decode_pack(payload: bytes, *, received: float, transport: str) -> Reading:
    """Decode a pack of exactly one reading (received at ``received``, epoch seconds).

    Raises :class:`BadReading` (4.00) with a precise reason; never anything else for
    bad input. :func:`decode_readings` takes packs of several readings.
    """
    readings = decode_readings(payload, received=received, transport=transport)
    if len(readings) != 1:
        raise _fail("several-readings", f"{len(readings)} readings where one was expected")
    return readings[0]
