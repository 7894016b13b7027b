# drivers/bh1750.py under the real MicroPython against a fake BH1750FVI.
# Datasheet figures checked (ROHM BH1750FVI): the measurement example 0x8390 -> 28067 lx
# (33680 / 1.2 = 28066.7), the one-time opcodes 0x20 / 0x21 / 0x23 after power on 0x01,
# the MTreg split 0b01000_MT[7:5] / 0b011_MT[4:0] and the lux scaling by 69 / MTreg,
# mode2's half-lux step, and the maximum measurement times (H 180 ms, L 24 ms) waited.
import mptest
from fakebus import ENODEV, ETIMEDOUT, CmdDevice, FakeClock, FakeI2C
from mptest import eq, raises

from drivers import bh1750
from drivers.errors import SensorError


class FakeBH1750(CmdDevice):
    def __init__(self, count=0x8390):
        CmdDevice.__init__(self)
        self.count = count
        self.result = None

    def write(self, data):
        CmdDevice.write(self, data)
        if data[0] in (0x20, 0x21, 0x23):
            self.result = bytes((self.count >> 8, self.count & 0xFF))

    def read(self, n):
        if self.result is None:
            raise OSError(ENODEV)
        return self.result


def make(**kw):
    bus = FakeI2C()
    chip = bus.attach(0x23, FakeBH1750())
    clock = FakeClock()
    return bus, chip, clock, bh1750.BH1750(bus, clock=clock, **kw)


def close(a, b, tol=0.01):
    if abs(a - b) > tol:
        raise AssertionError("%r != %r" % (a, b))


def test_datasheet_example():
    bus, chip, clock, s = make()
    eq(chip.commands, [b"\x01"])  # power on
    t0 = clock.slept_ms
    close(s.read(), 28066.67)
    eq(round(s.read()), 28067)
    eq(chip.commands[1:], [b"\x20", b"\x20"])  # one-time H-resolution each time
    assert clock.slept_ms - t0 >= 2 * 180


def test_modes_and_mtreg():
    bus, chip, clock, s = make(mode="l")
    t0 = clock.slept_ms
    close(s.read(), 33680 / 1.2)
    eq(chip.commands[-1], b"\x23")
    eq(clock.slept_ms - t0, 24)
    bus, chip, clock, s = make(mode="h2")
    close(s.read(), 33680 / 1.2 / 2)
    eq(chip.commands[-1], b"\x21")
    bus, chip, clock, s = make(mt=138)  # twice the default sensitivity
    eq(chip.commands[:3], [b"\x01", bytes((0x40 | 138 >> 5,)), bytes((0x60 | 138 & 31,))])
    t0 = clock.slept_ms
    close(s.read(), 33680 / 1.2 * 69 / 138)
    eq(clock.slept_ms - t0, 360)  # time scales with MTreg
    raises(ValueError, bh1750.BH1750, bus, 0x23, "x")
    raises(ValueError, bh1750.BH1750, bus, 0x23, "h", 30)


def test_failures():
    raises(SensorError, bh1750.BH1750, FakeI2C())  # nothing on the bus
    bus, chip, clock, s = make()
    bus.fail = ETIMEDOUT
    raises(SensorError, s.read)
    bus.fail = None
    chip.count = 0
    eq(s.read(), 0.0)  # darkness is a value; a failure never is


def test_board_adapter():
    bus, chip, clock, s = make()

    class Board:
        i2c = bus

    r = bh1750.Sensor(Board(), clock=clock).read()
    eq(list(r), ["lux"])
    close(r["lux"], 28066.67)


mptest.run(globals())
