# Virtual sensors for emulated nodes: every value is a pure function of (seed, time), so a
# run is reproducible and two nodes with different seeds look different. Physical, not
# app, quantities: the apps decide what to report (e.g. the streetlight decides when its
# lamp is on from the ambient light it reads here).
#
# A node config may carry "scenario": {name: number} to override parameters below (e.g.
# {"temp_mean": 30, "fill_rate_per_h": 50}), or {"fixed": {"temp": 21.5}} to pin a sensor.
import math

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_DAY = const(86400)
_MASK = const(0x7FFFFFFF)

DEFAULTS = {
    "temp_mean": 18.0,  # Cel, daily sinusoid around it
    "temp_swing": 6.0,  # Cel, half the day/night difference
    "temp_noise": 0.3,
    "hum_mean": 60.0,  # %RH, moves against temperature
    "hum_swing": 15.0,
    "pres_mean": 101325.0,  # Pa
    "pres_swing": 800.0,  # slow weather, period of 5 days
    "pm25_mean": 12.0,  # ug/m3, traffic peaks morning and evening
    "pm_noise": 3.0,
    "lux_max": 50000.0,  # lx at noon
    "sunrise_h": 6.0,  # local hours (UTC + tz_h)
    "sunset_h": 18.0,
    "tz_h": 9.0,  # Japan
    "bat_full": 4.15,  # V; drains linearly, then a new battery
    "bat_empty": 3.3,
    "bat_days": 180.0,
    "fill_rate_per_h": 4.0,  # % per hour the bin fills
    "fill_empty_at": 95.0,  # % at which the truck empties it
    "tilt_per_day": 0.5,  # expected tilt events per day (a knocked-over bin)
    "motion_per_h": 6.0,  # expected pedestrians per hour near a streetlight
    "bin_depth_cm": 120.0,  # distance sensor to the bin's floor
    "ping_noise_cm": 1.0,  # each ping: noise, and now and then a stray echo
    "ping_outlier": 0.1,  # share of pings that hit the wall / a fly (a wrong distance)
    "fire_at": 0.0,  # Unix time from which the bin burns (temp 90 Cel); 0 = never
}


def _mix(a, b):
    # a small integer hash (xorshift-multiply), the same on every port with 32-bit masking
    h = (a * 0x9E3779B1 + b * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    h ^= h >> 12
    h = (h * 0x297A2D39) & 0xFFFFFFFF
    h ^= h >> 15
    return h & _MASK


class Scenario:
    def __init__(self, seed=1, overrides=None):
        self.seed = seed
        p = dict(DEFAULTS)
        self.fixed = {}
        if overrides:
            for k in overrides:
                if k == "fixed":
                    self.fixed = overrides[k]
                elif k in p:
                    p[k] = float(overrides[k])
                else:
                    raise ValueError("scenario: unknown key %r" % k)
        self.p = p
        # per-node phase offsets so a fleet is not in lockstep
        self._phase = (_mix(seed, 7) % 1000) / 1000.0
        self._pings = 0  # successive pings at one instant differ

    # uniform in [0, 1), deterministic in (seed, channel, slot)
    def _u(self, channel, slot):
        return _mix(_mix(self.seed, channel), slot) / 2147483648.0

    # smooth-ish noise in [-1, 1): interpolated between per-minute random points
    def _noise(self, channel, t):
        slot = int(t // 60)
        f = (t - slot * 60) / 60.0
        a = self._u(channel, slot)
        b = self._u(channel, slot + 1)
        return 2.0 * (a + (b - a) * f) - 1.0

    def _hour(self, t):
        return ((t / 3600.0 + self.p["tz_h"]) % 24.0 + 24.0) % 24.0

    def daylight(self, t):
        # 0 at night, a half sine between sunrise and sunset
        p = self.p
        h = self._hour(t)
        if h <= p["sunrise_h"] or h >= p["sunset_h"]:
            return 0.0
        return math.sin(math.pi * (h - p["sunrise_h"]) / (p["sunset_h"] - p["sunrise_h"]))

    def read(self, name, t):
        if name in self.fixed:
            return self.fixed[name]
        return getattr(self, "_" + name)(t)

    def _temp(self, t):
        p = self.p
        if p["fire_at"] and t >= p["fire_at"]:
            return 90.0
        # coolest at 5:00, warmest at 17:00 local
        day = math.cos(2 * math.pi * (self._hour(t) - 17.0) / 24.0)
        return p["temp_mean"] + p["temp_swing"] * day + p["temp_noise"] * self._noise(1, t)

    def _hum(self, t):
        p = self.p
        day = math.cos(2 * math.pi * (self._hour(t) - 17.0) / 24.0)
        h = p["hum_mean"] - p["hum_swing"] * day + 2.0 * self._noise(2, t)
        return min(100.0, max(0.0, h))

    def _pres(self, t):
        p = self.p
        w = math.sin(2 * math.pi * (t / (5.0 * _DAY) + self._phase))
        return p["pres_mean"] + p["pres_swing"] * w + 20.0 * self._noise(3, t)

    def _pm25(self, t):
        p = self.p
        h = self._hour(t)
        rush = math.exp(-((h - 8.0) ** 2) / 2.0) + math.exp(-((h - 18.0) ** 2) / 2.0)
        return max(0.0, p["pm25_mean"] * (1.0 + rush) + p["pm_noise"] * self._noise(4, t))

    def _pm10(self, t):
        return self._pm25(t) * 1.6 + 2.0 + self._noise(5, t)

    def _lux(self, t):
        # daylight, clouds, and a street lamp's spill at night
        cloud = 0.6 + 0.4 * (self._noise(6, t) * 0.5 + 0.5)
        return max(2.0, self.p["lux_max"] * self.daylight(t) * cloud)

    def _bat(self, t):
        p = self.p
        life = p["bat_days"] * _DAY
        used = ((t / life) + self._phase) % 1.0
        return p["bat_full"] - (p["bat_full"] - p["bat_empty"]) * used

    def _fill(self, t):
        # rises at fill_rate_per_h from 0, emptied when it would pass fill_empty_at
        p = self.p
        period = p["fill_empty_at"] / p["fill_rate_per_h"] * 3600.0
        return p["fill_empty_at"] * ((t / period + self._phase) % 1.0)

    def _tilt(self, t):
        # knocked over for a 10-minute slot now and then
        return self._u(8, int(t // 600)) < self.p["tilt_per_day"] / 144.0

    def _motion(self, t):
        # someone passed in this 10-second slot
        return self._u(9, int(t // 10)) < self.p["motion_per_h"] / 360.0

    def _distance(self, t):
        # one ultrasonic ping at the bin's contents (fill level from _fill)
        p = self.p
        self._pings += 1
        u = self._u(10, self._pings + int(t) * 7919)
        if u < p["ping_outlier"]:
            return 5.0 + 100.0 * u / p["ping_outlier"]  # a stray echo
        d = p["bin_depth_cm"] * (1.0 - self.read("fill", t) / 100.0)
        return d + p["ping_noise_cm"] * (2.0 * self._u(11, self._pings) - 1.0)
