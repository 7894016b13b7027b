"""The profile table (rule id -> ordered metrics with unit and scale), loaded from
``profiles.json`` beside this module: data, so the firmware's copy can be checked against it.

A metric travels as the integer ``k = round((value - offset) / step)``; the gateway
computes ``offset + k * step`` and rounds it to the decimals of ``step`` and ``offset``, so
``0.02`` steps give ``4.0`` and not ``4.000000000000001``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

KINDS = ("num", "bool", "enum", "flags")


@dataclass(frozen=True, slots=True)
class Metric:
    """One position in a profile's array."""

    name: str
    unit: str | None
    kind: str
    step: float = 1
    offset: float = 0
    values: tuple[str, ...] = ()
    optional: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"metric {self.name!r}: kind must be one of {KINDS}")
        if self.kind in ("enum", "flags") and not self.values:
            raise ValueError(f"metric {self.name!r}: {self.kind} needs values")
        if self.kind == "flags" and len(self.values) > 32:
            raise ValueError(f"metric {self.name!r}: at most 32 flags")
        if not self.step > 0:
            raise ValueError(f"metric {self.name!r}: step must be > 0")

    @property
    def decimals(self) -> int:
        """Decimal places a decoded value is rounded to (those of step and offset)."""
        exps = [Decimal(repr(x)).normalize().as_tuple().exponent for x in (self.step, self.offset)]
        return max([0, *(-e for e in exps if isinstance(e, int))])

    def encode(self, value: Any) -> int | None:
        """The scaled integer for ``value`` (None = null: no value)."""
        if self.kind == "num":
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            return round((value - self.offset) / self.step)
        if self.kind == "bool":
            return 1 if value else 0
        if self.kind == "enum":
            return self.values.index(value) if value in self.values else None
        mask = 0
        if isinstance(value, str):
            for part in value.split(","):
                if part in self.values:
                    mask |= 1 << self.values.index(part)
        return mask or None

    def decode(self, k: int) -> float | int | str | bool | None:
        """The value of ``k``; None if ``k`` means "absent" (an empty flag set).

        Raises ValueError when ``k`` is out of the metric's range."""
        if self.kind == "num":
            v = round(self.offset + k * self.step, self.decimals)
            return int(v) if v == int(v) else v
        if self.kind == "bool":
            if k not in (0, 1):
                raise ValueError(f"{self.name}: {k} is not 0 or 1")
            return k == 1
        if self.kind == "enum":
            if not 0 <= k < len(self.values):
                raise ValueError(f"{self.name}: no value number {k}")
            return self.values[k]
        if k < 0 or k >> len(self.values):
            raise ValueError(f"{self.name}: flag bits {k:#x} out of range")
        if k == 0:
            return None
        return ",".join(v for i, v in enumerate(self.values) if k >> i & 1)


@dataclass(frozen=True, slots=True)
class Profile:
    id: int
    name: str
    metrics: tuple[Metric, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.id <= 127:
            raise ValueError(f"profile {self.name!r}: id must be 1..127")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"profile {self.name!r}: duplicate metric names")


def parse(doc: Any) -> dict[int, Profile]:
    """The profiles of a ``profiles.json`` document, by id."""
    out: dict[int, Profile] = {}
    for p in doc["profiles"]:
        metrics = tuple(
            Metric(name=m["n"], unit=m.get("u"), kind=m["kind"], step=m.get("step", 1),
                   offset=m.get("offset", 0), values=tuple(m.get("values", ())),
                   optional=bool(m.get("optional", False)))
            for m in p["metrics"])
        prof = Profile(id=p["id"], name=p["name"], metrics=metrics)
        if prof.id in out:
            raise ValueError(f"duplicate profile id {prof.id}")
        out[prof.id] = prof
    return out


def table_json() -> Any:
    """The raw ``profiles.json`` document."""
    text = resources.files(__package__).joinpath("profiles.json").read_text(encoding="utf-8")
    return json.loads(text)


@cache
def table() -> dict[int, Profile]:
    """The shipped profiles, by id (loaded once)."""
    return parse(table_json())


def by_name(name: str) -> Profile:
    for p in table().values():
        if p.name == name:
            return p
    raise KeyError(name)


@cache
def results() -> tuple[str, ...]:
    """The command results sent as one-byte codes (their index), from ``profiles.json``."""
    doc = table_json()
    codes = tuple(str(r) for r in doc.get("results", ()))
    if len(set(codes)) != len(codes) or len(codes) > 24:
        raise ValueError("profiles.json results: at most 24, each once (one CBOR byte)")
    return codes
