# The ESP32 board: the same contract as boards/unix.py (see there) on real hardware.
#   buses     machine.I2C / UART / Pin / PWM built from the config's "board" section
#   clock     the `time` module; time() from the RTC once set (learned from the gateway)
#   state     boards/bootstate.py in RTC memory: boot reason, boot count, last error,
#             crashes in a row -> safe mode, the app's state across deep sleep
#   watchdog  machine.WDT, fed by the node loop (feed()) and while Wi-Fi connects
#   sleep     idle(ms, app): with "sleep": true (env, bin on battery) and nothing to send,
#             save the state and machine.deepsleep(ms); the wake is a fresh boot of main.py
#             (flash keeps the ring and the seq store, RTC memory the rest)
# The "board" config section (all optional):
#   {"i2c": {"id": 0, "scl": 22, "sda": 21, "freq": 100000},
#    "uart": {"id": 2, "tx": 17, "rx": 16, "baud": 9600},
#    "pins": {"pir": 27, "tilt": 26, "lamp": 25, "trig": 5, "echo": 18, "bat": 35},
#    "wifi": {"ssid": "...", "key": "..."}, "wdt_s": 30, "safe_after": 3,
#    "sensors": {"<driver module>": {...options}}}
# Sensors: each entry of "sensors" names a module in drivers/ whose class Sensor(board,
# **options) has read() -> {name: value} and raises OSError when the device fails; sensor()
# turns a failure or a missing driver into None (an error reading, never a guess).
# This file cannot run on the unix port (no machine.RTC/WDT/deepsleep there); the pure
# parts are in boards/bootstate.py and tested under MicroPython with a fake machine.
import os
import random
import sys
import time

import machine
import sun
from boards import bootstate
from boards.bootcount import count_boot

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_DEBUG = const(False)
_EPOCH_2000 = const(946684800)  # the ESP32 port's time() counts from 2000-01-01
_VALID_AFTER = const(631152000)  # 2020-01-01 in that epoch: an RTC below it is not set
_MIN_SLEEP_MS = const(2000)  # shorter waits are not worth a reboot
_CACHE_MS = const(500)  # one driver read serves the names it returns for this long


class Dimmer:
    def __init__(self, pin, freq=1000):
        self._pwm = machine.PWM(machine.Pin(pin), freq=freq, duty_u16=0)
        self.level = 0

    def set(self, percent):
        self.level = percent
        self._pwm.duty_u16(percent * 65535 // 100)


class NoDimmer:
    level = 0

    def set(self, percent):
        self.level = percent


class Board:
    name = "esp32"

    def __init__(self, cfg):
        bc = cfg.get("board", {})
        self.cfg = bc
        self.dev = cfg["device_id"]
        self.clock = time
        b = os.urandom(4)
        random.seed(b[0] << 24 | b[1] << 16 | b[2] << 8 | b[3])
        self.rng = random
        self.state_dir = cfg["state_dir"]
        try:
            os.mkdir(self.state_dir)
        except OSError:
            pass
        self._rtc = machine.RTC()
        self.why = bootstate.reason(machine.reset_cause(), machine)
        prev = bootstate.decode(self._rtc.memory())
        boots = prev.get("boots", 0) if prev and self.why != "power" else count_boot(self.state_dir)
        self.st, self.safe_mode = bootstate.on_boot(prev, self.why, boots,
                                                    bc.get("safe_after", bootstate.SAFE_AFTER))
        self._save()
        self.boot_id = self.st["boots"] & 0xFFFF
        self.sleep = cfg.get("sleep", False)
        self._wdt = None if self.safe_mode else machine.WDT(timeout=int(bc.get("wdt_s", 30) * 1000))
        pins = bc.get("pins", {})
        self._pins = pins
        self.i2c = self.uart = None
        if "i2c" in bc:
            c = bc["i2c"]
            self.i2c = machine.I2C(c.get("id", 0), scl=machine.Pin(c["scl"]),
                                   sda=machine.Pin(c["sda"]), freq=c.get("freq", 100000))
        if "uart" in bc:
            c = bc["uart"]
            self.uart = machine.UART(c.get("id", 2), baudrate=c.get("baud", 9600),
                                     tx=c["tx"], rx=c["rx"], timeout=100)
        self.dimmer = Dimmer(pins["lamp"]) if "lamp" in pins else NoDimmer()
        self._drivers = []
        self._cache = {}
        self._cache_at = 0
        for mod in bc.get("sensors", {}):
            try:
                m = __import__("drivers." + mod, None, None, ["Sensor"])
                self._drivers.append(m.Sensor(self, **bc["sensors"][mod]))
            except Exception as e:  # a missing/broken driver: its values read as errors
                self.record_error(e)

    # ---- state in RTC memory

    def _save(self):
        self._rtc.memory(bootstate.encode(self.st))

    def record_error(self, e):
        self.st["err"] = bootstate.error_text(e) if isinstance(e, BaseException) else str(e)[:48]
        self._save()

    def stopped(self):
        self.st["running"] = 0  # a clean stop is not a crash
        self._save()

    def restore_app(self, app):
        if self.st.get("app") and hasattr(app, "restore"):
            app.restore(self.st["app"])

    def status(self):
        out = [("boots", None, self.st["boots"]), ("reset", None, self.why),
               ("wakes", None, self.st["wakes"])]
        if self.st["err"]:
            out.append(("err_last", None, self.st["err"]))
        return out

    # ---- time

    def time(self):
        t = time.time()
        return t + _EPOCH_2000 if t >= _VALID_AFTER else None

    def set_time(self, t):
        # the date by integer arithmetic (no gmtime: its epoch differs between ports)
        days = t // 86400
        y, mo, d = sun.civil(days)
        s = t % 86400
        self._rtc.datetime((y, mo, d, (days + 3) % 7, s // 3600, s // 60 % 60, s % 60, 0))

    def mono_ms(self):
        return time.ticks_add(time.ticks_ms(), self.st["slept"])

    # ---- the node loop's hooks

    def feed(self):
        if self._wdt:
            self._wdt.feed()

    def idle(self, ms, app, due_ms):
        if not self.sleep or ms < _MIN_SLEEP_MS:
            return
        self.st["app"] = app.state() if hasattr(app, "state") else {}
        self.st["due"] = due_ms - ms  # a wake for an alarm check is not a sample time
        self.st["running"] = 0
        self.st["slept"] = time.ticks_add(self.st["slept"], ms)  # + ticks_ms of this wake
        self.st["slept"] = time.ticks_add(self.st["slept"], time.ticks_ms())
        self._save()
        machine.deepsleep(ms)  # does not return: the wake runs main.py again

    # ms from now to the next sample (0: sample at once, e.g. after power-on)
    def resume_ms(self):
        return max(0, self.st.get("due", 0)) if self.why == "deepsleep" else 0

    # ---- sensors

    def sensor(self, name):
        now = time.ticks_ms()
        if time.ticks_diff(now, self._cache_at) > _CACHE_MS:
            self._cache = {}
            self._cache_at = now
        if name in self._cache:
            return self._cache[name]
        if name in ("motion", "tilt") and name in self._pins:
            return machine.Pin(self._pins[name], machine.Pin.IN).value() == 1
        for d in self._drivers:
            if name in getattr(d, "NAMES", ()):
                try:
                    self._cache.update(d.read())
                except (OSError, ValueError) as e:
                    self.record_error(e)
                    return None
                return self._cache.get(name)
        return None

    # ---- transport and log

    def wait_transport(self, log):
        w = self.cfg.get("wifi")
        if not w:
            return True
        import network

        sta = network.WLAN(network.STA_IF)
        sta.active(True)
        backoff = 1000
        for _ in range(8):
            if not sta.isconnected():
                sta.connect(w["ssid"], w.get("key", ""))
            for _ in range(100):
                if sta.isconnected():
                    return True
                self.feed()
                time.sleep_ms(100)
            log("W %s wifi retry backoff_ms=%d" % (self.dev, backoff))
            self.feed()
            time.sleep_ms(backoff)
            backoff = min(backoff * 2, 20000)
        return False

    def log(self, line):
        sys.stdout.write(line)
        sys.stdout.write("\n")
