"""Decode one SenML-CBOR pack (docs/protocol.md §2) into a :class:`Reading`.

The gateway accepts the profile the nodes speak, strictly: record 0 is the seq record
(``n = "seq"``, integer ``v``, ``bn = "<device>:"``, optional ``bt``/``bver``), records
1..n are measurements with exactly one value. Anything else raises :class:`BadReading`
whose ``reason`` is a short, countable word (it becomes a metric label and the start of
the 4.00 diagnostic), so an operator can tell a firmware bug from line noise.
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
_RECORD_LABELS = frozenset({N, U, V, VS, VB, T})
_SENML_VERSION = 10  # RFC 8428's default; a higher bver means fields we do not know
SEQ_NAME = "seq"


def _fail(reason: str, detail: str) -> BadReading:
    return BadReading(reason, f"{reason}: {detail}")


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def decode_cbor(payload: bytes) -> Any:
    """Decode exactly one CBOR item; trailing bytes are an error, not ignored."""
    fp = io.BytesIO(payload)
    try:
        item = cbor2.CBORDecoder(fp).decode()
    except (cbor2.CBORDecodeError, RecursionError) as exc:
        raise _fail("cbor", f"not well-formed CBOR ({exc})") from exc
    if fp.tell() != len(payload):
        raise _fail("cbor", f"{len(payload) - fp.tell()} trailing bytes after the pack")
    return item


def _records(pack: object) -> list[dict[int, Any]]:
    if not isinstance(pack, list):
        raise _fail("not-a-pack", f"expected a CBOR array of records, got {type(pack).__name__}")
    if not pack:
        raise _fail("not-a-pack", "empty pack")
    for i, rec in enumerate(pack):
        if not isinstance(rec, dict):
            raise _fail("not-a-record", f"record {i} is a {type(rec).__name__}, not a map")
        for key in rec:
            if isinstance(key, bool) or not isinstance(key, int):
                raise _fail("bad-label", f"record {i} has non-integer label {key!r}")
    return pack


def _meta(rec: dict[int, Any]) -> tuple[str, int, float | int | None, str | None]:
    """Check record 0 and return (device, seq, bt, bu)."""
    if BN not in rec:
        raise _fail("no-bn", "record 0 has no base name (bn)")
    bn = rec[BN]
    if not isinstance(bn, str) or not bn.endswith(":") or not DEVICE_RE.match(bn[:-1]):
        raise _fail("bad-bn", f"base name {bn!r} is not '<device>:'")
    if rec.get(N) != SEQ_NAME:
        raise _fail("no-seq", "record 0 is not the seq record (n = 'seq')")
    extra = set(rec) - _META_LABELS
    if extra:
        raise _fail("bad-label", f"seq record has unexpected labels {sorted(extra)}")
    if BVER in rec:
        bver = rec[BVER]
        if isinstance(bver, bool) or not isinstance(bver, int) or not 0 < bver <= _SENML_VERSION:
            raise _fail("bad-version", f"unsupported SenML version {bver!r}")
    if V not in rec:
        raise _fail("bad-seq", "seq record has no value")
    seq = rec[V]
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise _fail("bad-seq", f"seq must be an integer, got {type(seq).__name__}")
    if not 0 <= seq < SEQ_LIMIT:
        raise _fail("bad-seq", f"seq {seq} outside [0, 2^63)")
    bt = rec.get(BT)
    if bt is not None and not _is_number(bt):
        raise _fail("bad-time", f"base time {bt!r} is not a finite number")
    bu = rec.get(BU)
    if bu is not None and (not isinstance(bu, str) or not bu):
        raise _fail("bad-unit", f"base unit {bu!r} is not a non-empty string")
    return bn[:-1], seq, bt, bu


def _measurement(i: int, rec: dict[int, Any], bu: str | None) -> Measurement:
    if set(rec) & _BASE_LABELS:
        raise _fail("bad-label", f"record {i} carries base fields; only record 0 may")
    extra = set(rec) - _RECORD_LABELS
    if extra:
        raise _fail("bad-label", f"record {i} has unsupported labels {sorted(extra)}")
    name = rec.get(N)
    if name is None:
        raise _fail("bad-name", f"record {i} has no name")
    if not isinstance(name, str) or not NAME_RE.match(name) or name == SEQ_NAME:
        raise _fail("bad-name", f"record {i} name {name!r} is not allowed")
    unit = rec.get(U, bu)
    if unit is not None and (not isinstance(unit, str) or not unit):
        raise _fail("bad-unit", f"{name}: unit {unit!r} is not a non-empty string")
    t = rec.get(T, 0)
    if not _is_number(t) or t != 0:
        # The batch format has one time per reading, so a per-record offset would be lost.
        raise _fail("record-time", f"{name}: per-record time t={t!r} is not supported")
    present = [label for label in (V, VS, VB) if label in rec]
    if len(present) != 1:
        what = "no value" if not present else "more than one of v, vs, vb"
        raise _fail("value-count", f"{name}: {what}")
    value = rec[present[0]]
    if present[0] == V and not _is_number(value):
        raise _fail("bad-value", f"{name}: v must be a finite number, got {value!r}")
    if present[0] == VS and not isinstance(value, str):
        raise _fail("bad-value", f"{name}: vs must be text")
    if present[0] == VB and not isinstance(value, bool):
        raise _fail("bad-value", f"{name}: vb must be a boolean")
    return Measurement(name=name, unit=unit, value=value)


def decode_pack(payload: bytes, *, received: float, transport: str) -> Reading:
    """Decode ``payload`` into a Reading received at ``received`` (epoch seconds).

    Raises :class:`BadReading` (4.00) with a precise reason; never anything else for
    bad input.
    """
    records = _records(decode_cbor(payload))
    device, seq, bt, bu = _meta(records[0])
    measurements = tuple(_measurement(i, rec, bu) for i, rec in enumerate(records[1:], 1))
    names = [m.name for m in measurements]
    if len(set(names)) != len(names):
        raise _fail("duplicate-name", "a measurement name appears twice")
    return Reading(
        device=device,
        seq=seq,
        time=bt if bt is not None else received,
        received=received,
        transport=transport,
        measurements=measurements,
    )
