# The ESP32 board (boards/esp32.py) under the unix port with a fake `machine`: boot reason
# mapping, boot/wake counting, crash counting into safe mode, the last error carried
# across a reset into the status reading, RTC time in the port's 2000 epoch, deep sleep
# keeping the app state, the PWM dimmer, and sensors failing into None.
import sys
import time

import mptest
from mptest import eq, raises


class Slept(Exception):
    pass


class FakeMachine:
    PWRON_RESET = 1
    HARD_RESET = 2
    WDT_RESET = 3
    DEEPSLEEP_RESET = 4
    SOFT_RESET = 5

    def __init__(self):
        self.rtc_mem = b""
        self.cause = 1
        self.wdt = []
        self.pwm = []
        self.slept = []
        self.dt = None
        m = self

        class RTC:
            def memory(self, data=None):
                if data is None:
                    return m.rtc_mem
                m.rtc_mem = bytes(data)

            def datetime(self, tup):
                m.dt = tup

        class WDT:
            def __init__(self, timeout):
                self.timeout = timeout
                self.fed = 0
                m.wdt.append(self)

            def feed(self):
                self.fed += 1

        class Pin:
            IN = 0

            def __init__(self, n, mode=None):
                self.n = n

            def value(self):
                return 1 if self.n == 27 else 0

        class PWM:
            def __init__(self, pin, freq, duty_u16):
                self.duty = duty_u16
                m.pwm.append(self)

            def duty_u16(self, d):
                self.duty = d

        self.RTC = RTC
        self.WDT = WDT
        self.Pin = Pin
        self.PWM = PWM

    def reset_cause(self):
        return self.cause

    def deepsleep(self, ms):
        self.slept.append(ms)
        raise Slept()


M = FakeMachine()
sys.modules["machine"] = M


class FakeDriver:
    # drivers.fakebme: Sensor(board, **opts).read() -> {name: value}
    class Sensor:
        NAMES = ("temp", "hum")
        fail = False

        def __init__(self, board, addr=0x76):
            self.addr = addr

        def read(self):
            if FakeDriver.Sensor.fail:
                raise OSError(19)  # ENODEV: not on the bus
            return {"temp": 21.5, "hum": 40.0}


sys.modules["drivers.fakebme"] = FakeDriver

from boards import bootstate  # noqa: E402
from boards import esp32  # noqa: E402

N = [0]


def board(cause, **bc):
    M.cause = cause
    N[0] += 1
    cfg = {"device_id": "env-0001", "state_dir": "/tmp/mp-esp32-%d" % N[0], "sleep": True,
           "board": bc}
    return esp32.Board(cfg)


def test_reason_mapping():
    eq([bootstate.reason(c, M) for c in (1, 2, 3, 4, 5, 99)],
       ["power", "hard", "wdt", "deepsleep", "soft", "unknown"])


def test_state_codec_rejects_garbage():
    st = bootstate.fresh(3)
    eq(bootstate.decode(bootstate.encode(st)), st)
    eq(bootstate.decode(b""), None)
    eq(bootstate.decode(bytes(64)), None)
    raw = bytearray(bootstate.encode(st))
    raw[-3] ^= 1
    eq(bootstate.decode(raw), None)


def test_crashes_in_a_row_then_safe_mode_and_recovery():
    M.rtc_mem = b""
    b = board(M.PWRON_RESET)
    eq((b.why, b.st["crashes"], b.safe_mode, b.st["running"]), ("power", 0, False, 1))
    eq(b._wdt.timeout, 30000)
    b.record_error(ValueError("bad thing"))
    for k in (1, 2):
        b = board(M.WDT_RESET)  # reset while running
        eq((b.st["crashes"], b.safe_mode), (k, False))
    b = board(M.SOFT_RESET)
    eq((b.st["crashes"], b.safe_mode, b._wdt), (3, True, None))  # no watchdog in safe mode
    d = dict((n, v) for n, u, v in b.status())
    eq(d["err_last"], "ValueError: bad thing")
    eq(d["reset"], "soft")
    # a clean stop (or deep sleep) in between breaks the chain
    b = board(M.HARD_RESET, safe_after=5)
    eq(b.safe_mode, False)
    b.stopped()
    b = board(M.HARD_RESET)
    eq((b.st["crashes"], b.safe_mode), (0, False))


def test_deep_sleep_keeps_app_state_and_counts_wakes():
    M.rtc_mem = b""
    b = board(M.PWRON_RESET)
    boots = b.st["boots"]
    mono = b.mono_ms()

    class App:
        def state(self):
            return {"last": {"temp": 21.5}}

        def restore(self, st):
            self.got = st

    b.idle(500, App(), 500)  # too short to be worth a reboot
    eq(M.slept, [])
    raises(Slept, b.idle, 60000, App(), 900000)  # an alarm check in 60 s, sample in 900
    eq(M.slept, [60000])
    b2 = board(M.DEEPSLEEP_RESET)
    eq(b2.resume_ms(), 840000)
    eq((b2.why, b2.st["crashes"], b2.st["wakes"], b2.st["boots"]), ("deepsleep", 0, 2, boots))
    eq(b2.boot_id, b.boot_id)  # the same power cycle: buffered ticks stay meaningful
    eq(time.ticks_diff(b2.mono_ms(), mono) >= 60000, True)
    a = App()
    b2.restore_app(a)
    eq(a.got, {"last": {"temp": 21.5}})


def test_time_in_the_2000_epoch():
    b = board(M.PWRON_RESET)
    b.set_time(1795390000)  # 2026-11-22 23:26:40 UTC
    eq(M.dt[:3], (2026, 11, 22))
    eq(M.dt[3:7], (6, 23, 26, 40))  # a Sunday (Monday = 0)


def test_dimmer_and_sensors():
    b = board(M.PWRON_RESET, pins={"lamp": 25, "pir": 27, "motion": 27},
              sensors={"fakebme": {"addr": 0x77}, "nosuchdriver": {}})
    b.dimmer.set(50)
    eq(M.pwm[-1].duty, 32767)
    eq(b.sensor("temp"), 21.5)
    eq(b.sensor("motion"), True)
    eq(b.sensor("pm25"), None)  # no driver provides it
    eq(b.st["err"].startswith("ImportError"), True)  # the missing driver, remembered
    FakeDriver.Sensor.fail = True
    b._cache_at -= 10000  # the cached read is stale
    eq(b.sensor("hum"), None)
    eq(b.st["err"].startswith("OSError"), True)
    FakeDriver.Sensor.fail = False
    b.feed()
    eq(b._wdt.fed, 1)


mptest.run(globals())
