"""The one reading model every ingress adapter produces and the uplink sends.

A reading is identified by ``(device, seq)`` (docs/protocol.md §1). The model is
transport-neutral; ``to_wire``/``from_wire`` give the cloud batch item of §3, which is
also how the store keeps a queued reading, so a batch of rows (``[uplink] format =
"readings"``) is built without re-encoding; a columnar batch decodes the stored bodies.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2

# \Z, not $: "$" also matches before a final newline, which let "env-0001\n" through.
DEVICE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}\Z")
NAME_RE = re.compile(r"^[A-Za-z0-9][-_:./A-Za-z0-9]*\Z")
SEQ_LIMIT = 2**63

Value = float | int | str | bool


@dataclass(frozen=True, slots=True)
class Measurement:
    """One named value; ``unit`` is a SenML unit or None."""

    name: str
    unit: str | None
    value: Value

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise ValueError(f"bad measurement name {self.name!r}")
        if self.unit is not None and (not isinstance(self.unit, str) or not self.unit):
            raise ValueError(f"bad unit {self.unit!r} for {self.name!r}")
        if not isinstance(self.value, float | int | str | bool):
            raise ValueError(f"bad value type {type(self.value).__name__} for {self.name!r}")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise ValueError(f"non-finite value for {self.name!r}")

    def to_wire(self) -> dict[str, Any]:
        """The cloud form: ``{"n", "u"?, "v" | "vs" | "vb"}``."""
        out: dict[str, Any] = {"n": self.name}
        if self.unit is not None:
            out["u"] = self.unit
        if isinstance(self.value, bool):
            out["vb"] = self.value
        elif isinstance(self.value, str):
            out["vs"] = self.value
        else:
            out["v"] = self.value
        return out

    @classmethod
    def from_wire(cls, item: dict[str, Any]) -> Measurement:
        value = item["vb"] if "vb" in item else item["vs"] if "vs" in item else item["v"]
        return cls(name=item["n"], unit=item.get("u"), value=value)


@dataclass(frozen=True, slots=True)
class Reading:
    """A sample from one device.

    ``time`` is the node's sample time (seconds since the epoch) or, for a node
    without a clock, the receive time; ``received`` is when the gateway accepted it.
    ``meta`` holds what the radio told us about the frame (``rssi``, ``snr``, ``freq``,
    ``gateway_eui``, ``dev_eui``, ``fcnt``, ...): useful locally (metrics, local MQTT),
    but not part of the reading's identity nor of the cloud batch (docs/protocol.md §3
    has no field for it), so it is not stored in the queue either.
    """

    device: str
    seq: int
    time: float | int
    received: float
    transport: str
    measurements: tuple[Measurement, ...]
    meta: Mapping[str, Value] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not DEVICE_RE.match(self.device):
            raise ValueError(f"bad device id {self.device!r}")
        if not isinstance(self.meta, Mapping) or not all(
            isinstance(k, str) and isinstance(v, float | int | str | bool)
            for k, v in self.meta.items()
        ):
            raise ValueError("meta must map text keys to numbers, text or booleans")
        if isinstance(self.seq, bool) or not isinstance(self.seq, int):
            raise ValueError("seq must be an integer")
        if not 0 <= self.seq < SEQ_LIMIT:
            raise ValueError(f"seq {self.seq} out of range [0, 2^63)")
        for label, t in (("time", self.time), ("received", self.received)):
            if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
                raise ValueError(f"{label} must be a finite number")
        if not isinstance(self.transport, str) or not self.transport:
            raise ValueError("transport must be a non-empty string")
        if not isinstance(self.measurements, tuple) or not all(
            isinstance(m, Measurement) for m in self.measurements
        ):
            raise ValueError("measurements must be a tuple of Measurement")

    @property
    def key(self) -> tuple[str, int]:
        """The identity the gateway and the cloud deduplicate on."""
        return (self.device, self.seq)

    def to_wire(self) -> dict[str, Any]:
        """The batch item of docs/protocol.md §3."""
        return {
            "device": self.device,
            "seq": self.seq,
            "time": self.time,
            "received": self.received,
            "transport": self.transport,
            "m": [m.to_wire() for m in self.measurements],
        }

    @classmethod
    def from_wire(cls, item: dict[str, Any]) -> Reading:
        return cls(
            device=item["device"],
            seq=item["seq"],
            time=item["time"],
            received=item["received"],
            transport=item["transport"],
            measurements=tuple(Measurement.from_wire(m) for m in item["m"]),
        )


# ---- the queue's body: cbor2.dumps(reading.to_wire()), from cached pieces ---------------
#
# The store encodes every reading it queues, on the core that also serves CoAP: building
# the to_wire() dicts and encoding them (cbor2 spends ~0.7 us per container) was a third
# of the store's CPU per reading (bench/gateway_coap.py). A node sends the same device,
# names and units every time, so their CBOR (with the map headers and keys) is cached and
# only the values are encoded per reading, numbers with struct. The result is byte for
# byte ``cbor2.dumps(reading.to_wire())`` (gateway/tests/test_model_wire.py holds them
# equal); anything unusual (a subclass, a big int, a non-finite float) is encoded by
# cbor2 itself.

_PIECES_MAX = 4096  # per cache: new devices or names only cost refilling it
_HEADS: dict[str, bytes] = {}
_TAILS: dict[str, bytes] = {}
_MEAS: dict[tuple[str, str | None, type], bytes] = {}
_dumps = cbor2.dumps
_KEY_SEQ = _dumps("seq")
_KEY_TIME = _dumps("time")
_KEY_RECEIVED = _dumps("received")
_VALUE_KEY = {float: "v", int: "v", str: "vs", bool: "vb"}
_F64 = struct.Struct(">Bd").pack
_U8 = struct.Struct(">BB").pack
_U16 = struct.Struct(">BH").pack
_U32 = struct.Struct(">BI").pack
_U64 = struct.Struct(">BQ").pack
_INF = math.inf


def cbor_head(major: int, n: int) -> bytes:
    """The CBOR head of major type ``major`` (shifted) and argument ``0 <= n < 2**64``."""
    if n < 24:
        return bytes((major | n,))
    if n < 0x100:
        return _U8(major | 24, n)
    if n < 0x10000:
        return _U16(major | 25, n)
    if n < 0x100000000:
        return _U32(major | 26, n)
    return _U64(major | 27, n)


def _number(v: Any) -> bytes:
    """A float or int exactly as cbor2 encodes it (floats: always 8 bytes)."""
    kind = type(v)
    if kind is float and -_INF < v < _INF:
        return _F64(0xFB, v)
    if kind is int and -0x10000000000000000 <= v < 0x10000000000000000:
        return cbor_head(0x00, v) if v >= 0 else cbor_head(0x20, -1 - v)
    return _dumps(v)


def _head(device: str) -> bytes:
    """The map header (6 items) and ``"device": <device>``, cached."""
    if len(_HEADS) >= _PIECES_MAX:
        _HEADS.clear()
    head = _HEADS[device] = b"\xa6" + _dumps("device") + _dumps(device)
    return head


def identity_prefix(device: str, seq: int) -> bytes:
    """How the stored body of ``(device, seq)`` starts: the map head, ``"device": device,
    "seq": seq`` (the head per device cached). The uplink checks a queued body against it
    before splicing it."""
    return (_HEADS.get(device) or _head(device)) + _KEY_SEQ + _number(seq)


def _tail(transport: str) -> bytes:
    """``"transport": <transport>, "m":``, cached."""
    if len(_TAILS) >= _PIECES_MAX:
        _TAILS.clear()
    tail = _TAILS[transport] = _dumps("transport") + _dumps(transport) + _dumps("m")
    return tail


def _measurement_head(name: str, unit: str | None, kind: type) -> bytes:
    """``{"n": name, "u": unit (if any), <"v" | "vs" | "vb">:`` of one measurement, cached."""
    parts = [b"\xa2" if unit is None else b"\xa3", _dumps("n"), _dumps(name)]
    if unit is not None:
        parts += [_dumps("u"), _dumps(unit)]
    parts.append(_dumps(_VALUE_KEY[kind]))
    if len(_MEAS) >= _PIECES_MAX:
        _MEAS.clear()
    head = _MEAS[(name, unit, kind)] = b"".join(parts)
    return head


def encode_wire(reading: Reading) -> bytes:
    """``cbor2.dumps(reading.to_wire())``, cheaper: the store's body of a queued reading."""
    device, transport, ms = reading.device, reading.transport, reading.measurements
    if type(device) is not str or type(transport) is not str or len(ms) >= 24:
        return _dumps(reading.to_wire())
    parts = [identity_prefix(device, reading.seq), _KEY_TIME, _number(reading.time),
             _KEY_RECEIVED, _number(reading.received),
             _TAILS.get(transport) or _tail(transport), bytes((0x80 | len(ms),))]
    append = parts.append
    for m in ms:
        value: Any = m.value
        name, unit = m.name, m.unit
        kind = type(value)
        if (kind not in _VALUE_KEY or type(name) is not str
                or (unit is not None and type(unit) is not str)):
            append(_dumps(m.to_wire()))
            continue
        append(_MEAS.get((name, unit, kind)) or _measurement_head(name, unit, kind))
        if kind is float and -_INF < value < _INF:
            append(_F64(0xFB, value))
        elif kind is bool:
            append(b"\xf5" if value else b"\xf4")
        elif kind is str:
            append(_dumps(value))
        else:
            append(_number(value))
    return b"".join(parts)
