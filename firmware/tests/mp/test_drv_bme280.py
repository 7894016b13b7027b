# drivers/bme280.py under the real MicroPython against a fake BME280 on a fake I2C bus.
#
# Reference figures. The BME280 datasheet has no worked example; its temperature and
# pressure compensation is the BMP280's, whose datasheet (BST-BMP280-DS001, §3.12
# "Calculating pressure and temperature") works one through: dig_T1..dig_P9 = 27504,
# 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000 with adc_T =
# 519888, adc_P = 415148 give t_fine = 128422, T = 25.08 degC, p = 100653.27 Pa (double
# precision; the integer version is allowed to deviate slightly). Those are asserted.
# Humidity has no published example at all: dig_H1..H6 = 75, 362, 0, 313, 50, 30 are
# typical trimming values of a real part (not a datasheet figure), and the expected %RH
# is computed here, independently of the driver, with the datasheet's double-precision
# formula (BME280 datasheet §8.1, transcribed below). Random raw values then check the
# driver's integer formulas (§4.2.3) against the §8.1 double ones over the whole range.
import random

from fakebus import ETIMEDOUT, FakeClock, FakeI2C, RegDevice
import mptest
from mptest import eq, raises

from drivers import bme280
from drivers.errors import SensorError

EXAMPLE = {"T1": 27504, "T2": 26435, "T3": -1000, "P1": 36477, "P2": -10685, "P3": 3024,
           "P4": 2855, "P5": 140, "P6": -7, "P7": 15500, "P8": -14600, "P9": 6000,
           "H1": 75, "H2": 362, "H3": 0, "H4": 313, "H5": 50, "H6": 30}
ADC_T = 519888
ADC_P = 415148
ADC_H = 30000


class Cal:
    def __init__(self, d):
        for k in d:
            setattr(self, k, d[k])


# ---- BME280 datasheet §8.1, double precision (the independent reference)
def t_double(c, adc_t):
    var1 = (adc_t / 16384.0 - c.T1 / 1024.0) * c.T2
    var2 = ((adc_t / 131072.0 - c.T1 / 8192.0) * (adc_t / 131072.0 - c.T1 / 8192.0)) * c.T3
    return (var1 + var2) / 5120.0, int(var1 + var2)


def p_double(c, adc_p, t_fine):
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * c.P6 / 32768.0
    var2 = var2 + var1 * c.P5 * 2.0
    var2 = var2 / 4.0 + c.P4 * 65536.0
    var1 = (c.P3 * var1 * var1 / 524288.0 + c.P2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * c.P1
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = c.P9 * p * p / 2147483648.0
    var2 = p * c.P8 / 32768.0
    return p + (var1 + var2 + c.P7) / 16.0


def h_double(c, adc_h, t_fine):
    v = t_fine - 76800.0
    v = (adc_h - (c.H4 * 64.0 + c.H5 / 16384.0 * v)) * (
        c.H2 / 65536.0 * (1.0 + c.H6 / 67108864.0 * v * (1.0 + c.H3 / 67108864.0 * v)))
    v = v * (1.0 - c.H1 * v / 524288.0)
    return min(100.0, max(0.0, v))


# ---- the chip: registers as in datasheet Table 16 / §5.4, forced-mode behaviour
def le16(regs, at, v):
    v &= 0xFFFF
    regs[at] = v & 0xFF
    regs[at + 1] = v >> 8


class FakeBME280(RegDevice):
    def __init__(self, cal=EXAMPLE, adc=(ADC_T, ADC_P, ADC_H), chip_id=0x60, busy_reads=2):
        RegDevice.__init__(self)
        r = self.regs
        r[0xD0] = chip_id
        for i, k in enumerate(("T1", "T2", "T3", "P1", "P2", "P3", "P4", "P5", "P6", "P7",
                               "P8", "P9")):
            le16(r, 0x88 + 2 * i, cal[k])
        r[0xA1] = cal["H1"]
        le16(r, 0xE1, cal["H2"])
        r[0xE3] = cal["H3"]
        r[0xE4] = (cal["H4"] >> 4) & 0xFF
        r[0xE5] = (cal["H4"] & 0x0F) | (cal["H5"] & 0x0F) << 4
        r[0xE6] = (cal["H5"] >> 4) & 0xFF
        r[0xE7] = cal["H6"] & 0xFF
        self.adc = adc
        self.busy_reads = busy_reads
        self.busy = 0
        self.nvm = 0
        self.measurements = 0
        self.stuck = False

    def on_write(self, reg, v):
        if reg == 0xE0 and v == 0xB6:
            self.nvm = 1  # im_update set for one status read
        if reg == 0xF4 and v & 3 == 1:  # forced mode: measure, then back to sleep
            self.busy = self.busy_reads
            self.regs[0xF4] = v & 0xFC
            self.measurements += 1
            self.hum_at_start = self.regs[0xF2]

    def on_read(self, reg):
        if reg == 0xF3:
            st = 0
            if self.nvm:
                st |= 1
                self.nvm -= 1
            if self.busy or self.stuck:
                st |= 8
                self.busy -= 1 if self.busy else 0
                if not self.busy and not self.stuck:
                    self._result()
            self.regs[0xF3] = st

    def _result(self):
        t, p, h = self.adc
        r = self.regs
        r[0xF7], r[0xF8], r[0xF9] = p >> 12, (p >> 4) & 0xFF, (p & 0xF) << 4
        r[0xFA], r[0xFB], r[0xFC] = t >> 12, (t >> 4) & 0xFF, (t & 0xF) << 4
        r[0xFD], r[0xFE] = h >> 8, h & 0xFF


def make(addr=0x76, **kw):
    bus = FakeI2C()
    chip = bus.attach(addr, FakeBME280(**kw))
    clock = FakeClock()
    return bus, chip, clock


def near(a, b, tol, what=""):
    if abs(a - b) > tol:
        raise AssertionError("%s: %r vs %r (tolerance %r)" % (what, a, b, tol))


def test_datasheet_example_integer_formulas():
    c = Cal(EXAMPLE)
    t, t_fine = bme280.compensate_t(c, ADC_T)
    eq(t_fine, 128422, "t_fine (BMP280 DS §3.12)")
    eq(t, 2508, "T in 0.01 degC (25.08)")
    p = bme280.compensate_p(c, ADC_P, t_fine)
    near(p / 256, 100653.27, 0.1, "p Pa (BMP280 DS §3.12)")
    # the double formulas agree with the datasheet figures too (the reference is sound)
    td, tf = t_double(c, ADC_T)
    eq(tf, 128422)
    near(td, 25.08, 0.005, "T double")
    # the datasheet's 100653.27 comes from the untruncated t_fine (128422.287...); with
    # the truncated one the double formula gives 100653.258
    near(p_double(c, ADC_P, td * 5120), 100653.27, 0.005, "p double")
    near(p_double(c, ADC_P, tf), 100653.27, 0.02, "p double, int t_fine")


def test_humidity_integer_vs_double():
    c = Cal(EXAMPLE)
    h = bme280.compensate_h(c, ADC_H, 128422) / 1024
    ref = h_double(c, ADC_H, 128422)
    near(h, ref, 0.01, "RH")
    near(ref, 55.0, 0.1, "the example lands mid-range")
    eq(bme280.compensate_h(c, 60000, 128422), 100 * 1024)  # clamped at 100 %RH
    eq(bme280.compensate_h(c, 0, 128422), 0)  # and at 0


def test_integer_formulas_track_double_over_range():
    c = Cal(EXAMPLE)
    random.seed(3)
    worst = [0, 0, 0]
    for _ in range(300):
        adc_t = random.randint(380000, 640000)  # about -20 .. 60 degC with this trim
        adc_p = random.randint(250000, 500000)
        adc_h = random.randint(15000, 45000)
        t, t_fine = bme280.compensate_t(c, adc_t)
        td, tf = t_double(c, adc_t)
        worst[0] = max(worst[0], abs(t / 100 - td))
        worst[1] = max(worst[1], abs(bme280.compensate_p(c, adc_p, t_fine) / 256
                                     - p_double(c, adc_p, tf)))
        worst[2] = max(worst[2], abs(bme280.compensate_h(c, adc_h, t_fine) / 1024
                                     - h_double(c, adc_h, tf)))
    print("worst |int - double|: T %.4f degC, P %.3f Pa, H %.4f %%RH" % tuple(worst))
    near(worst[0], 0, 0.01, "T")  # integer T has 0.01 degC steps
    near(worst[1], 0, 1.0, "P")  # datasheet: the int64 version is ~1 Pa or better
    near(worst[2], 0, 0.02, "H")


def test_calibration_readout_signs():
    cal = dict(EXAMPLE)
    cal.update({"H2": -300, "H4": -1234, "H5": -2027, "H6": -1, "H1": 200, "H3": 255})
    bus, chip, clock = make(cal=cal)
    s = bme280.BME280(bus, clock=clock)
    for k in cal:
        eq(getattr(s.cal, k), cal[k], k)


def test_read_through_the_bus():
    bus, chip, clock = make()
    s = bme280.BME280(bus, clock=clock)
    t, p, h = s.read()
    eq(t, 25.08)
    near(p, 100653.27, 0.1, "p")
    near(h, h_double(Cal(EXAMPLE), ADC_H, 128422), 0.01, "h")
    eq(s.t_fine, 128422)
    eq(chip.measurements, 1)


def test_forced_mode_register_sequence():
    bus, chip, clock = make()
    s = bme280.BME280(bus, clock=clock)
    eq(chip.writes[0], (0xE0, 0xB6))  # soft reset first
    chip.writes.clear()
    slept = clock.slept_ms
    s.read()
    # ctrl_hum first (it only takes effect with the following ctrl_meas write), then
    # ctrl_meas = osrs_t x1 | osrs_p x1 | forced = 0b001_001_01
    eq(chip.writes, [(0xF2, 0x01), (0xF4, 0x25)])
    eq(chip.hum_at_start, 0x01)
    assert clock.slept_ms - slept >= 10  # §9.1: 9.3 ms max at x1/x1/x1, rounded up
    # x16 temperature, x4 pressure, humidity skipped
    bus, chip, clock = make()
    s = bme280.BME280(bus, osrs_t=16, osrs_p=4, osrs_h=0, clock=clock)
    chip.writes.clear()
    chip.adc = (ADC_T, ADC_P, 0x8000)
    raises(SensorError, s.read)  # a skipped channel reads 0x8000: no value
    eq(chip.writes, [(0xF2, 0x00), (0xF4, 5 << 5 | 3 << 2 | 1)])
    raises(ValueError, bme280.BME280, bus, 0x76, 3)


def test_wrong_chip_is_refused():
    bus, chip, clock = make(chip_id=0x58)  # a BMP280: no humidity
    try:
        bme280.BME280(bus, clock=clock)
    except SensorError as e:
        assert "id 0x58" in str(e), e
        assert isinstance(e, OSError)
    else:
        raise AssertionError("BMP280 accepted")


def test_missing_chip_and_bus_faults():
    bus, chip, clock = make(addr=0x77)  # nothing at 0x76
    raises(SensorError, bme280.BME280, bus, 0x76, 1, 1, 1, clock)
    s = bme280.BME280(bus, addr=0x77, clock=clock)
    bus.fail = ETIMEDOUT  # the bus hangs mid-life
    try:
        s.read()
    except SensorError as e:
        assert "bus" in str(e), e
    else:
        raise AssertionError("no error")
    bus.fail = None
    eq(s.read()[0], 25.08)  # and it recovers when the bus does


def test_measurement_that_never_ends_and_skipped_data():
    bus, chip, clock = make()
    s = bme280.BME280(bus, clock=clock)
    chip.stuck = True
    raises(SensorError, s.read)
    chip.stuck = False
    chip.adc = (0x80000, ADC_P, ADC_H)  # temperature skipped
    raises(SensorError, s.read)
    chip.adc = (ADC_T, 0x80000, ADC_H)
    raises(SensorError, s.read)


def test_board_adapter():
    bus, chip, clock = make()

    class Board:
        i2c = bus

    d = bme280.Sensor(Board(), clock=clock)
    r = d.read()
    eq(sorted(r), sorted(d.NAMES))
    eq(r["temp"], 25.08)

    class NoBus:
        i2c = None

    raises(SensorError, bme280.Sensor, NoBus())


mptest.run(globals())
