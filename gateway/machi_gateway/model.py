"""The one reading model every ingress adapter produces and the uplink sends.

A reading is identified by ``(device, seq)`` (docs/protocol.md §1). The model is
transport-neutral; ``to_wire``/``from_wire`` give the cloud batch item of §3, which is
also how the store keeps a queued reading, so a batch is built without re-encoding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEVICE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][-_:./A-Za-z0-9]*$")
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
