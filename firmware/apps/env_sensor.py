# Environmental sensor (Shiojiri-style): climate, air quality, light and the battery.
# Sampled every interval; with report-on-change thresholds ({"temp": 0.5, ...} in the app
# config) a reading goes out only when a value moved at least its threshold since the last
# report, or when heartbeat_s passed without one (so the cloud can tell "steady" from
# "dead"). No thresholds: every sample is a reading.
from quant import q, with_err

# name, unit, quantisation bits (steps of 2**-bits, float16-exact; 0 = integer)
_METRICS = (("temp", "Cel", 2), ("hum", "%RH", 2), ("pres", "Pa", 0), ("pm25", "ug/m3", 0),
            ("pm10", "ug/m3", 0), ("lux", "lx", 0), ("bat", "V", 6))
_CONFIG = ("thresholds", "heartbeat_s")


class App:
    poll_ms = 0  # nothing urgent between samples

    def __init__(self, board, cfg=None):
        cfg = cfg or {}
        for k in cfg:
            if k not in _CONFIG:
                raise ValueError("app.%s: unknown key for env" % k)
        self.board = board
        self.thresholds = {}
        self._set_thresholds(cfg.get("thresholds", {}))
        self.heartbeat_s = cfg.get("heartbeat_s", 900)
        self.last = {}  # name -> value last reported
        self.last_t = None  # time of the last report
        self.skipped = 0

    def _set_thresholds(self, th):
        names = [m[0] for m in _METRICS]
        for k in th:
            if k not in names or not isinstance(th[k], (int, float)) or th[k] < 0:
                raise ValueError("thresholds.%s: not a metric or not >= 0" % k)
        self.thresholds = dict(th)

    def _changed(self, values, t):
        if not self.thresholds or not self.last:
            return True
        if t is not None and self.last_t is not None and t - self.last_t >= self.heartbeat_s:
            return True
        for name in self.thresholds:
            v = values.get(name)
            old = self.last.get(name)
            if (v is None) != (old is None):
                return True  # a sensor failed or came back
            if v is not None and abs(v - old) >= self.thresholds[name]:
                return True
        return False

    def sample(self, t):
        s = self.board.sensor
        values = {}
        out = []
        failed = []
        for name, unit, bits in _METRICS:
            v = s(name)
            if v is None:
                failed.append(name)  # an error reading, never a made-up value
                continue
            v = q(v, bits)
            values[name] = v
            out.append((name, unit, v))
        if not self._changed(values, t):
            self.skipped += 1
            return None
        self.last = values
        self.last_t = t
        return with_err(out, failed)

    def poll(self, t, ms):
        return False

    def contact(self, ms):
        pass

    def command(self, name, args):
        if name != "config":
            return "err:unsupported"
        for k in args:
            if k not in _CONFIG:
                return "err:key"
        try:
            if "thresholds" in args:
                self._set_thresholds(args["thresholds"])
        except (ValueError, TypeError):
            return "err:value"
        if "heartbeat_s" in args:
            hb = args["heartbeat_s"]
            if not isinstance(hb, (int, float)) or hb <= 0:
                return "err:value"
            self.heartbeat_s = hb
        return "ok"

    # survives deep sleep in RTC memory (boards/esp32.py)
    def state(self):
        return {"last": self.last, "last_t": self.last_t}

    def restore(self, st):
        self.last = st.get("last", {})
        self.last_t = st.get("last_t")
