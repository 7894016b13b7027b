# Streetlight (mains powered): lamp on/off and dimming 0-100 % through the board's PWM
# dimmer, ambient light, PIR motion that brightens the lamp for motion_hold_s, power draw,
# and a dusk-to-dawn schedule computed locally from lat/lon (lib/sun.py).
#
# Modes: "auto" (the schedule: lit while the sun is down, at idle_dim, at motion_dim after
# motion), "on" (lit at `level`), "off". Commands (protocol.md §5): on, off, dim {"level"},
# schedule {"mode"}, config {key: value}; "interval" is the node's.
# FAIL-SAFE: in "on"/"off" (set by the network) with no valid contact (a 2.xx from the
# gateway) for failsafe_s, the light goes back to "auto", so a lost or hostile network
# never leaves a street dark or lit all day. Without a known time (no clock, nothing
# learned yet) "auto" decides from the ambient light instead (on below on_below_lx).
import sun
from quant import q

# (the defaults and the modes are literals where they are used, not module-level names:
# each name is a qstr on the node's heap, firmware/README.md, budgets)


class App:
    def __init__(self, board, cfg=None):
        c = {"lat": 36.115, "lon": 137.954, "idle_dim": 40, "motion_dim": 100,
             "motion_hold_s": 30.0, "failsafe_s": 3600.0, "on_below_lx": 50.0, "tick_s": 0.5}
        for k in cfg or {}:
            if k not in c:
                raise ValueError("app.%s: unknown key for light" % k)
            c[k] = cfg[k]
        self.cfg = c
        self.board = board
        self.clock = board.clock
        self.poll_ms = int(c["tick_s"] * 1000)
        self.mode = "auto"
        self.level = 100  # lit level in "on" mode
        self.lamp = False
        self.dim = 0
        self.motion_ms = None  # ticks of the last motion
        self.moved = False  # motion since the last reading
        self.contact_ms = self.clock.ticks_ms()  # boot counts as contact: the timer starts
        self.failsafes = 0
        self._apply(0)

    def contact(self, ms):
        self.contact_ms = ms

    def _dark(self, t):
        if t is None:
            lux = self.board.sensor("lux")
            return lux is not None and lux < self.cfg["on_below_lx"]
        return sun.dark(t, self.cfg["lat"], self.cfg["lon"])

    def _apply(self, level):
        level = max(0, min(100, int(level)))
        self.dim = level
        self.lamp = level > 0
        self.board.dimmer.set(level)

    # control: every tick_s. True when the lamp went on or off (reported at once)
    def poll(self, t, ms):
        c = self.cfg
        clock = self.clock
        if self.mode != "auto" and clock.ticks_diff(ms, self.contact_ms) > c["failsafe_s"] * 1000:
            self.mode = "auto"
            self.failsafes += 1
        if self.board.sensor("motion"):
            self.motion_ms = ms
            self.moved = True
        was = self.lamp
        if self.mode == "off":
            level = 0  # type: float
        elif self.mode == "on":
            level = self.level
        elif self._dark(t):
            near = self.motion_ms is not None and \
                clock.ticks_diff(ms, self.motion_ms) < c["motion_hold_s"] * 1000
            level = c["motion_dim"] if near else c["idle_dim"]
        else:
            level = 0
        self._apply(level)
        return self.lamp != was

    def sample(self, t):
        self.poll(t, self.clock.ticks_ms())
        s = self.board.sensor
        out = [("lamp", None, self.lamp), ("dim", "%", self.dim)]  # type: list
        lux = s("lux")
        if lux is not None:
            out.append(("lux", "lx", q(lux)))
        p = s("power")
        if p is not None:
            out.append(("power", "W", q(p, 2)))
        out.append(("motion", None, self.moved))
        self.moved = False
        if self.mode != "auto":
            out.append(("mode", None, self.mode))
        if lux is None or p is None:
            out.append(("err", None, ("lux" if lux is None else "") +
                        ("," if lux is None and p is None else "") + ("power" if p is None else "")))
        return out

    def command(self, name, args):
        if name == "on":
            self.mode = "on"
        elif name == "off":
            self.mode = "off"
        elif name == "dim":
            lv = args.get("level")
            if not isinstance(lv, (int, float)) or not 0 <= lv <= 100:
                return "err:level"
            self.level = int(lv)
            self.mode = "on" if lv else "off"
        elif name == "schedule":
            m = args.get("mode")
            if m not in ("auto", "on", "off"):
                return "err:mode"
            self.mode = m
        elif name == "config":
            for k in args:
                if k not in self.cfg or not isinstance(args[k], (int, float)):
                    return "err:key"
            for k in args:
                self.cfg[k] = args[k]
            self.poll_ms = int(self.cfg["tick_s"] * 1000)
        else:
            return "err:unsupported"
        return "ok"  # the lamp follows at the next tick (tick_s)

    def state(self):
        return {"mode": self.mode, "level": self.level}

    def restore(self, st):
        self.mode = st.get("mode", "auto")
        self.level = st.get("level", 100)
