# drivers/ina219.py under the real MicroPython against a fake INA219 that does the chip's
# own arithmetic (datasheet SBOS448 §8.5: Current = Shunt * Cal / 4096 (eq. 3), Power =
# Current * Bus / 5000 (eq. 4), bus register bits 15:3 at 4 mV, shunt LSB 10 uV).
# Checked: Cal = trunc(0.04096 / (Current_LSB * R_shunt)) (eq. 1) for a 0.1 ohm shunt
# and a 100 uA LSB = 4096 (and for other shunts/LSBs), Power_LSB = 20 *
# Current_LSB (eq. 2), the power-on configuration 0x399F, signed (reverse) current, the
# OVF bit, and a lost calibration (brown-out) reported as an error, not as 0 W.
import mptest
from fakebus import ETIMEDOUT, FakeI2C, RegDevice
from mptest import eq, raises

from drivers import ina219
from drivers.errors import SensorError


class FakeINA219(RegDevice):
    def __init__(self, bus_v=12.0, amps=1.5, shunt_ohm=0.1):
        RegDevice.__init__(self)
        self.words = {0: 0x399F, 5: 0}
        self.set(bus_v, amps, shunt_ohm)
        self.ovf = False

    def set(self, bus_v, amps, shunt_ohm=0.1):
        self.bus_reg = int(round(bus_v * 1000 / 4)) << 3 | 0x2  # CNVR set
        self.shunt_reg = int(round(amps * shunt_ohm * 100000))  # 10 uV LSB

    def word(self, reg):
        cal = self.words[5]
        cur = self.shunt_reg * cal // 4096 if cal else 0  # eq. 3
        if reg == 1:
            return self.shunt_reg & 0xFFFF
        if reg == 2:
            return self.bus_reg | (1 if self.ovf else 0)
        if reg == 3:
            return abs(cur) * (self.bus_reg >> 3) // 5000 if cal else 0  # eq. 4
        if reg == 4:
            return cur & 0xFFFF
        return self.words.get(reg, 0)

    def read_reg(self, reg, n):
        w = self.word(reg)
        return bytes((w >> 8, w & 0xFF))

    def write_reg(self, reg, data):
        RegDevice.write_reg(self, reg, data)
        self.words[reg] = (data[0] << 8 | data[1]) & (0xFFFE if reg == 5 else 0xFFFF)

    def brown_out(self):
        self.words = {0: 0x399F, 5: 0}


def make(**kw):
    bus = FakeI2C()
    chip = bus.attach(0x40, FakeINA219())
    return bus, chip, ina219.INA219(bus, **kw)


def close(a, b, tol):
    if abs(a - b) > tol:
        raise AssertionError("%r != %r" % (a, b))


def test_calibration_equation():
    bus, chip, s = make()
    eq(s.cal, 4096)
    eq(chip.words[5], 4096)
    eq(chip.words[0], 0x399F)
    eq(ina219.INA219(bus, shunt_mohm=10, current_lsb_ua=1000).cal, 4096)
    eq(ina219.INA219(bus, shunt_mohm=100, current_lsb_ua=98).cal, 4178)  # 4179.59 -> even
    raises(ValueError, ina219.INA219, bus, 0x40, 1, 1)  # 40960000 > 0xFFFE


def test_readings_match_physics():
    bus, chip, s = make()
    v, vs, i, p = s.read()
    close(v, 12.0, 0.004)
    close(vs, 0.15, 1e-6)
    close(i, 1.5, 0.0001)
    close(p, 18.0, 0.002 * 2)  # Power_LSB = 20 * 100 uA = 2 mW
    chip.set(5.0, -0.25)  # reverse current
    v, vs, i, p = s.read()
    close(i, -0.25, 0.0001)
    close(v, 5.0, 0.004)
    close(p, 1.25, 0.004)


def test_overflow_is_an_error():
    bus, chip, s = make()
    chip.ovf = True
    try:
        s.read()
    except SensorError as e:
        assert "overflow" in str(e), e
    else:
        raise AssertionError("OVF accepted")


def test_lost_calibration_is_reported_then_restored():
    bus, chip, s = make()
    chip.brown_out()  # the chip now reads 0 A and 0 W: not a real zero
    try:
        s.read()
    except SensorError as e:
        assert "reset" in str(e), e
    else:
        raise AssertionError("a reset chip read as a value")
    eq(chip.words[5], 4096)  # re-programmed
    close(s.read()[2], 1.5, 0.0001)


def test_bus_failures():
    raises(SensorError, ina219.INA219, FakeI2C())
    bus, chip, s = make()
    bus.fail = ETIMEDOUT
    raises(SensorError, s.read)


def test_board_adapter():
    bus, chip, s = make()

    class Board:
        i2c = bus

    r = ina219.Sensor(Board()).read()
    eq(sorted(r), ["bus_v", "current", "power"])
    close(r["power"], 18.0, 0.004)


mptest.run(globals())
