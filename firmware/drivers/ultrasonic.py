# JSN-SR04T / HC-SR04 style ultrasonic ranger: a trigger pulse (>= 10 us high; we give
# 20 us, which the JSN-SR04T v3 needs) starts a burst, the echo pin then stays high for
# the round-trip time. The pulse is timed by machine.time_pulse_us (passed in, so tests
# script it): it returns -2 / -1 when the echo never starts / never ends (timeout).
#   distance = t_us * c / 2, c = 331.3 + 0.606 * T m/s (speed of sound in air at T degC);
#   at 20 degC that is t_us / 58.2 cm, the HC-SR04 datasheet's "us / 58 = cm" rule.
#   range: JSN-SR04T 25..450 cm (blind zone below ~25 cm), HC-SR04 2..400 cm; a reading
#   outside [min_cm, max_cm] is an error, not a value. Pings at least 60 ms apart (the
#   HC-SR04 datasheet's measurement cycle) so an old echo is not taken for a new one.
# read_cm() takes n pings and returns the median of the pings within max_dev_cm of the
# first median (robust_median); too few valid pings is a SensorError.
import time

from drivers.errors import SensorError

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_TRIG_US = const(20)
_CYCLE_MS = const(60)


# median of the first n items of vals, sorting vals[:n] in place (no new list)
def median(vals, n=None):
    if n is None:
        n = len(vals)
    if n == 0:
        raise ValueError("median of nothing")
    for i in range(1, n):  # insertion sort: n is a handful of pings
        v = vals[i]
        j = i - 1
        while j >= 0 and vals[j] > v:
            vals[j + 1] = vals[j]
            j -= 1
        vals[j + 1] = v
    m = n // 2
    return vals[m] if n & 1 else (vals[m - 1] + vals[m]) / 2


# Median of vals after dropping the ones more than max_dev from the median of all; None
# entries (failed pings) are ignored. Fewer than min_ok survivors -> None. Reorders vals.
def robust_median(vals, max_dev, min_ok=1):
    n = 0
    for v in vals:  # move the valid ones to the front
        if v is not None:
            vals[n] = v
            n += 1
    if n < min_ok or n == 0:
        return None
    m = median(vals, n)
    k = 0
    for i in range(n):
        if abs(vals[i] - m) <= max_dev:
            vals[k] = vals[i]
            k += 1
    if k < min_ok:
        return None
    return median(vals, k)


class Ultrasonic:
    # trig: output Pin, echo: input Pin, pulse_us: machine.time_pulse_us
    def __init__(self, trig, echo, pulse_us, min_cm=25, max_cm=450, temp_c=20.0,
                 clock=time):
        self._trig = trig
        self._echo = echo
        self._pulse = pulse_us
        self._clock = clock
        self.min_cm = min_cm
        self.max_cm = max_cm
        self.temp_c = temp_c
        # the echo of the farthest target (plus margin) bounds the wait
        self._timeout_us = int(max_cm * 2 * 1.2 / 0.0331) + 1000
        trig.value(0)

    # one ping -> cm; SensorError "timeout" (no echo) or "range" (outside min..max)
    def ping_cm(self):
        t = self._trig
        c = self._clock
        t.value(0)
        c.sleep_us(2)
        t.value(1)
        c.sleep_us(_TRIG_US)
        t.value(0)
        us = self._pulse(self._echo, 1, self._timeout_us)
        if us < 0:
            raise SensorError("ultrasonic: timeout")
        cm = us * (331.3 + 0.606 * self.temp_c) / 20000
        if not self.min_cm <= cm <= self.max_cm:
            raise SensorError("ultrasonic: range")
        return cm

    # n pings, robust median (outliers beyond max_dev_cm dropped); more than half of the
    # pings must survive, else SensorError "unstable"
    def read_cm(self, n=5, max_dev_cm=5.0):
        vals = [None] * n
        for i in range(n):
            if i:
                self._clock.sleep_ms(_CYCLE_MS)
            try:
                vals[i] = self.ping_cm()
            except SensorError:
                pass
        m = robust_median(vals, max_dev_cm, n // 2 + 1)
        if m is None:
            raise SensorError("ultrasonic: unstable")
        return m


# Board adapter (boards/esp32.py): "sensors": {"ultrasonic": {"trig": 5, "echo": 18,
#   "pings": 5, "max_dev_cm": 5}} -> "distance" in cm
#   The app asks for one distance per ping (the bin's "pings" median), back to back: read()
#   keeps the 60 ms cycle between its own calls too, so an old echo is never taken.
class Sensor:
    NAMES = ("distance",)

    def __init__(self, board, trig, echo, pings=1, max_dev_cm=5.0, clock=time, **opts):
        import machine

        self._n = pings
        self._dev = max_dev_cm
        self._clock = clock
        self._last = None  # ticks_ms at the end of the last read
        self.dev = Ultrasonic(machine.Pin(trig, machine.Pin.OUT),
                              machine.Pin(echo, machine.Pin.IN), machine.time_pulse_us,
                              clock=clock, **opts)

    def read(self):
        c = self._clock
        if self._last is not None:
            wait = _CYCLE_MS - c.ticks_diff(c.ticks_ms(), self._last)
            if wait > 0:
                c.sleep_ms(wait)
        try:
            return {"distance": self.dev.read_cm(self._n, self._dev)}
        finally:
            self._last = c.ticks_ms()
