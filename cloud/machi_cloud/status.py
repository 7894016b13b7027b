"""A device as people see it: its registration merged with what its readings tell.

Battery is the latest `bat` measurement, firmware the latest text `fw`. Health:

- `silent`: registered, never seen;
- `stale`: last seen longer ago than 3 sampling intervals (`interval_s` of the
  registration) or, when the interval is not known, 10 minutes;
- `ok` otherwise.

`low_battery` is separate (a stale device may have a fine battery): the latest `bat` below
3.4 V (unit `V`, a Li-ion cell near empty) or below 20 (unit `%`).
"""

from __future__ import annotations

from typing import Any

from .storage import DeviceSummary, LatestValue
from .storage.records import RegisteredDevice

STALE_INTERVALS = 3
STALE_DEFAULT_S = 600.0
LOW_BATTERY = {"V": 3.4, "%": 20.0}


def health(reg: RegisteredDevice | None, summary: DeviceSummary | None, now: float) -> str:
    if summary is None:
        return "silent"
    limit = (
        STALE_INTERVALS * reg.interval_s if reg is not None and reg.interval_s else STALE_DEFAULT_S
    )
    return "stale" if now - summary.last_seen > limit else "ok"


def low_battery(bat: LatestValue | None) -> bool:
    if bat is None or isinstance(bat.value, (bool, str)):
        return False
    threshold = LOW_BATTERY.get(bat.unit or "")
    return threshold is not None and bat.value < threshold


def _latest(v: LatestValue) -> dict[str, Any]:
    return {"value": v.value, "unit": v.unit, "time": v.time}


def device_view(
    device: str, reg: RegisteredDevice | None, summary: DeviceSummary | None, now: float
) -> dict[str, Any]:
    """The JSON of one device in `GET /v1/devices` (never its key)."""
    latest = dict(summary.latest) if summary else {}
    bat = latest.get("bat")
    fw = latest.get("fw")
    view: dict[str, Any] = {
        "device": device,
        "last_seen": summary.last_seen if summary else None,
        "last_seq": summary.last_seq if summary else None,
        "readings": summary.readings if summary else 0,
        "latest": {m: _latest(v) for m, v in latest.items()},
        "registered": reg is not None,
        "type": reg.type if reg else None,
        "gateway": reg.gateway if reg else None,
        "site": reg.site if reg else None,
        "lat": reg.lat if reg else None,
        "lon": reg.lon if reg else None,
        "transport": reg.transport if reg else None,
        "interval_s": reg.interval_s if reg else None,
        "short_id": reg.short_id if reg else None,
        "has_key": reg is not None and reg.key is not None,
        "revoked": reg.revoked if reg else False,
        "battery": _latest(bat) if bat else None,
        "low_battery": low_battery(bat),
        "firmware": fw.value if fw is not None and isinstance(fw.value, str) else None,
        "health": health(reg, summary, now),
    }
    return view


def fleet_view(
    registered: list[RegisteredDevice], summaries: list[DeviceSummary], now: float
) -> list[dict[str, Any]]:
    """Every registered or seen device, ordered by id."""
    regs = {r.device: r for r in registered}
    seen = {s.device: s for s in summaries}
    return [device_view(d, regs.get(d), seen.get(d), now) for d in sorted(set(regs) | set(seen))]
