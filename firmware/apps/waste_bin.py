# Waste bin: fill level in % from an ultrasonic/ToF distance to the contents and the
# configured bin depth, temperature (fire), tilt (knocked over) and the battery.
# Between samples the bin checks every check_s for alarms, which go out AT ONCE rather
# than at the next interval: fire (temperature >= fire_c), full (fill crossing full_pct
# upwards), tilt (knocked over or put back up), emptied (fill fell by empty_drop points).
# Each alarm is latched with hysteresis so one event is one urgent reading.
from quant import q, with_err

_DEFAULTS = {"depth_cm": 120.0, "pings": 5, "full_pct": 80.0, "fire_c": 60.0, "check_s": 60.0,
             "empty_drop": 30.0, "outlier_cm": 10.0}


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if not n:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


# Median of the pings after dropping failed ones (None) and those more than outlier_cm
# from the first median (echoes off the bin wall, a fly): None when fewer than half remain.
def robust_distance(pings, outlier_cm):
    ok = [p for p in pings if p is not None and p >= 0]
    m = median(ok)
    if m is None:
        return None
    near = [p for p in ok if abs(p - m) <= outlier_cm]
    if 2 * len(near) < len(pings):
        return None
    return median(near)


def fill_pct(distance_cm, depth_cm):
    return min(100.0, max(0.0, 100.0 * (depth_cm - distance_cm) / depth_cm))


class App:
    def __init__(self, board, cfg=None):
        c = dict(_DEFAULTS)
        for k in cfg or {}:
            if k not in c:
                raise ValueError("app.%s: unknown key for bin" % k)
            c[k] = cfg[k]
        if c["depth_cm"] <= 0 or c["pings"] < 1:
            raise ValueError("app.depth_cm and app.pings must be > 0")
        self.cfg = c
        self.board = board
        self.poll_ms = int(c["check_s"] * 1000)
        self.fire = False
        self.full = False
        self.tilt = None
        self.fill = None  # last measured
        self.events = []  # waiting for the next reading

    def measure_fill(self):
        pings = [self.board.sensor("distance") for _ in range(int(self.cfg["pings"]))]
        d = robust_distance(pings, self.cfg["outlier_cm"])
        return None if d is None else fill_pct(d, self.cfg["depth_cm"])

    # check the alarms; True when one fired (the node then samples at once)
    def poll(self, t, ms):
        c = self.cfg
        fired = False
        temp = self.board.sensor("temp")
        if temp is not None:
            if not self.fire and temp >= c["fire_c"]:
                self.fire = True
                fired = self._event("fire")
            elif self.fire and temp < c["fire_c"] - 5:
                self.fire = False
        fill = self.measure_fill()
        if fill is not None:
            if not self.full and fill >= c["full_pct"]:
                self.full = True
                fired = self._event("full")
            elif self.full and fill < c["full_pct"] - 10:
                self.full = False
            if self.fill is not None and fill <= self.fill - c["empty_drop"]:
                fired = self._event("emptied")
            self.fill = fill
        tilt = self.board.sensor("tilt")
        if tilt is not None:
            tilt = bool(tilt)
            if self.tilt is not None and tilt != self.tilt:
                fired = self._event("tilt" if tilt else "upright")
            self.tilt = tilt
        return fired

    def _event(self, name):
        if name not in self.events:
            self.events.append(name)
        return True

    def sample(self, t):
        s = self.board.sensor
        out = []  # type: list
        failed = []
        fill = self.measure_fill()
        if fill is None:
            failed.append("fill")
        else:
            out.append(("fill", "%", q(fill)))
        temp = s("temp")
        if temp is None:
            failed.append("temp")
        else:
            out.append(("temp", "Cel", q(temp, 2)))
        tilt = s("tilt")
        if tilt is None:
            failed.append("tilt")
        else:
            out.append(("tilt", None, bool(tilt)))
        bat = s("bat")
        if bat is None:
            failed.append("bat")
        else:
            out.append(("bat", "V", q(bat, 6)))
        if self.events:
            out.append(("event", None, ",".join(self.events)))
            self.events = []
        return with_err(out, failed)

    def contact(self, ms):
        pass

    def command(self, name, args):
        if name != "config":
            return "err:unsupported"
        for k in args:
            v = args[k]
            if k not in self.cfg or not isinstance(v, (int, float)) or v <= 0:
                return "err:value"
        for k in args:
            self.cfg[k] = args[k]
        self.poll_ms = int(self.cfg["check_s"] * 1000)
        return "ok"

    def state(self):
        return {"fire": self.fire, "full": self.full, "tilt": self.tilt, "fill": self.fill,
                "events": self.events}

    def restore(self, st):
        self.fire = st.get("fire", False)
        self.full = st.get("full", False)
        self.tilt = st.get("tilt")
        self.fill = st.get("fill")
        self.events = st.get("events", [])
