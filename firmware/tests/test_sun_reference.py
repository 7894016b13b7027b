"""The firmware's sunrise/sunset (lib/sun.py, NOAA's general solar position equations)
against astral, an independent implementation of NOAA's full algorithm, over two years at
three Japanese sites. The firmware module is plain Python and imports under CPython."""

from __future__ import annotations

import datetime
import importlib.util
from pathlib import Path

import astral
import pytest
from astral.sun import sun as astral_sun

_SPEC = importlib.util.spec_from_file_location(
    "firmware_sun", Path(__file__).resolve().parents[1] / "lib" / "sun.py")
assert _SPEC is not None and _SPEC.loader is not None
sun = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(sun)

SITES = {"shiojiri": (36.115, 137.954), "sapporo": (43.062, 141.354), "naha": (26.212, 127.681)}
EPOCH = datetime.date(1970, 1, 1)


@pytest.mark.parametrize("site", sorted(SITES))
def test_within_three_minutes_of_astral(site: str) -> None:
    lat, lon = SITES[site]
    obs = astral.Observer(lat, lon)
    worst = 0.0
    for k in range(0, 731, 5):
        day = datetime.date(2024, 1, 1) + datetime.timedelta(days=k)
        rise, sset = sun.rise_set((day - EPOCH).days, lat, lon)
        ref_set = astral_sun(obs, date=day)["sunset"].timestamp()
        # east of Greenwich the morning's sunrise is on the previous UTC date
        ref_rise = astral_sun(obs, date=day - datetime.timedelta(days=1))["sunrise"].timestamp()
        worst = max(worst, abs(sset - ref_set), abs(rise - ref_rise))
    print(f"{site}: worst difference {worst:.0f} s")
    assert worst < 180, worst
