# drivers/ultrasonic.py and drivers/vl53l0x.py under the real MicroPython.
# Ultrasonic: the trigger pulse on a fake pin, echo times scripted through a fake
#   machine.time_pulse_us; distance against the HC-SR04 datasheet rule "us / 58 = cm"
#   (within 0.5 %: the driver uses c = 331.3 + 0.606 T m/s, 343.4 m/s at 20 degC, where
#   58 us/cm means 344.8 m/s), the timeout codes -1/-2, the range limits, and the robust
#   median (median of N, pings far from it dropped, too few left -> error).
# VL53L0X: the register sequence of a single-shot ranging (SYSRANGE_START, the interrupt
#   status poll, the range at RESULT_RANGE_STATUS + 10, the interrupt clear), the model
#   id check 0xEE, "no target" (8190 mm) and a device status other than 11 (range
#   complete) as errors, and a ranging that never completes as a timeout.
import sys

import mptest
from fakebus import ETIMEDOUT, FakeClock, FakeI2C, FakePin, PulseScript, RegDevice
from mptest import eq, raises

from drivers import ultrasonic, vl53l0x
from drivers.errors import SensorError


def close(a, b, tol):
    if abs(a - b) > tol:
        raise AssertionError("%r != %r (tol %r)" % (a, b, tol))


def make_us(pulses, **kw):
    trig, echo = FakePin(), FakePin()
    p = PulseScript(pulses)
    c = FakeClock()
    return trig, p, c, ultrasonic.Ultrasonic(trig, echo, p, clock=c, **kw)


def test_ping_distance_and_trigger_pulse():
    trig, p, c, u = make_us([5800, 2900])
    close(u.ping_cm(), 100.0, 0.5)  # HC-SR04: 5800 us / 58 = 100 cm
    eq(trig.history[-3:], [0, 1, 0])
    eq(p.calls[0][0], 1)  # times the high level of the echo
    assert p.calls[0][1] > 450 * 58, p.calls[0]  # waits long enough for max range
    close(u.ping_cm(), 50.0, 0.25)
    u.temp_c = 0.0
    trig, p, c, u = make_us([5800], temp_c=0.0)
    close(u.ping_cm(), 5800 * 331.3 / 20000, 1e-6)  # colder air, slower sound


def test_ping_failures():
    for v, why in ((-1, "timeout"), (-2, "timeout"), (580, "range"), (30000, "range")):
        trig, p, c, u = make_us([v])
        try:
            u.ping_cm()
        except SensorError as e:
            assert why in str(e), (v, e)
        else:
            raise AssertionError("%d accepted" % v)


def test_median_helpers():
    eq(ultrasonic.median([3, 1, 2]), 2)
    eq(ultrasonic.median([4, 1, 3, 2]), 2.5)
    raises(ValueError, ultrasonic.median, [])
    eq(ultrasonic.robust_median([100, 101, 99, 300, None], 5), 100)
    eq(ultrasonic.robust_median([100, 300], 5, 2), None)  # no two agree
    eq(ultrasonic.robust_median([None, None], 5), None)


def test_read_cm_rejects_outliers_and_spaces_pings():
    us = [int(cm * 58) for cm in (80, 81, 200, 79, 80)]  # one echo off a bin wall
    trig, p, c, u = make_us(us)
    close(u.read_cm(5, 5.0), 80.0, 0.6)
    assert c.slept_ms >= 4 * 60  # 60 ms between pings (HC-SR04 measurement cycle)
    trig, p, c, u = make_us([-1, -1, 4640, -1, 4640])  # 3 of 5 lost: not enough
    raises(SensorError, u.read_cm, 5, 5.0)
    trig, p, c, u = make_us([-1, 4640, 4640, -1, 4640])  # 3 of 5 fine
    close(u.read_cm(5, 5.0), 80.0, 0.5)
    trig, p, c, u = make_us([2900, 4640, 8700])  # all disagree
    raises(SensorError, u.read_cm, 3, 5.0)


class FakeMachine:
    class Pin:
        IN = 1
        OUT = 3

        def __init__(self, n, mode):
            self.n = n
            self.mode = mode
            self.v = 0

        def value(self, v=None):
            if v is not None:
                self.v = v
            return self.v

    def __init__(self, pulses):
        self.time_pulse_us = PulseScript(pulses)


def test_board_adapter_builds_pins():
    sys.modules["machine"] = FakeMachine([5800] * 3)
    try:
        s = ultrasonic.Sensor(None, trig=5, echo=18, pings=3, clock=FakeClock())
        eq(s.dev._trig.n, 5)
        eq(s.dev._echo.mode, FakeMachine.Pin.IN)
        close(s.read()["distance"], 100.0, 0.5)
    finally:
        del sys.modules["machine"]


class FakeVL53L0X(RegDevice):
    def __init__(self, mm=734, status=11, busy=3):
        RegDevice.__init__(self)
        self.regs[0xC0] = 0xEE
        self.regs[0x91] = 0x3C  # stop variable
        self.regs[0x84] = 0x11
        self.mm = mm
        self.status = status
        self.busy = busy
        self.left = 0
        self.stuck = False
        self.starts = 0

    def on_write(self, reg, v):
        if reg == 0x00 and v == 0x01 and self.regs[0x80] == 0 and self.regs[0xFF] == 0:
            self.starts += 1
            self.left = self.busy
            self.regs[0x13] = 0
        if reg == 0x0B and v == 0x01:
            self.regs[0x13] = 0

    def on_read(self, reg):
        if reg == 0x00 and self.regs[0x00] & 1 and not self.stuck:
            if self.left:
                self.left -= 1
            else:
                self.regs[0x00] = 0
                self.regs[0x13] = 0x04  # new sample ready
                self.regs[0x14] = self.status << 3
                self.regs[0x1E] = self.mm >> 8
                self.regs[0x1F] = self.mm & 0xFF


def make_tof(**kw):
    bus = FakeI2C()
    chip = bus.attach(0x29, FakeVL53L0X(**kw))
    c = FakeClock()
    return bus, chip, c, vl53l0x.VL53L0X(bus, clock=c)


def test_vl53l0x_init_and_single_shot():
    bus, chip, c, s = make_tof()
    eq(chip.regs[0x88], 0x00)
    eq(chip.regs[0x0A], 0x04)
    eq(chip.regs[0x84], 0x01)  # interrupt active low: bit 4 cleared, others kept
    chip.writes.clear()
    eq(s.read_mm(), 734)
    eq(chip.starts, 1)
    eq(chip.writes[:8], [(0x80, 1), (0xFF, 1), (0x00, 0), (0x91, 0x3C), (0x00, 1),
                         (0xFF, 0), (0x80, 0), (0x00, 1)])
    eq(chip.writes[-1], (0x0B, 0x01))  # interrupt cleared after the read


def test_vl53l0x_errors():
    bus, chip, c, s = make_tof(mm=8190)
    raises(SensorError, s.read_mm)  # no target
    chip.mm = 500
    chip.status = 4  # MSRC no target
    try:
        s.read_mm()
    except SensorError as e:
        assert "status 4" in str(e), e
    else:
        raise AssertionError("status 4 accepted")
    chip.status = 11
    eq(s.read_mm(), 500)
    chip.stuck = True
    raises(SensorError, s.read_mm)
    chip.stuck = False
    bus.fail = ETIMEDOUT
    raises(SensorError, s.read_mm)
    raises(SensorError, vl53l0x.VL53L0X, FakeI2C())  # absent
    bus2 = FakeI2C()
    bus2.attach(0x29, FakeVL53L0X()).regs[0xC0] = 0xAA  # some other chip
    raises(SensorError, vl53l0x.VL53L0X, bus2)


def test_vl53l0x_board_adapter():
    bus, chip, c, s = make_tof()

    class Board:
        i2c = bus

    eq(vl53l0x.Sensor(Board(), clock=c).read(), {"distance": 73.4})


mptest.run(globals())
