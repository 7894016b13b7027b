# drivers/sht3x.py and drivers/sht4x.py under the real MicroPython against fake chips.
# Datasheet figures checked: the CRC-8 example CRC(0xBEEF) = 0x92 (SHT3x-DIS "Checksum
# Calculation", also in the SHT4x datasheet), the conversion formulas' end points (raw 0 ->
# -45 degC / 0 %RH, raw 0xFFFF -> 130 degC / 100 %RH; SHT4x RH -6..119 cropped to 0..100),
# the single-shot high-repeatability command 0x2400 and the SHT4x 0xFD command. The fake
# computes its CRCs with a table-driven CRC-8 of its own, not the driver's function.
import mptest
from fakebus import ENODEV, ETIMEDOUT, CmdDevice, FakeClock, FakeI2C
from mptest import eq, raises

from drivers import sht3x, sht4x
from drivers.errors import SensorError


def _table():
    t = bytearray(256)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c << 1) ^ 0x31 if c & 0x80 else c << 1
        t[i] = c & 0xFF
    return t


TABLE = _table()


def crc_ref(data):
    c = 0xFF
    for b in data:
        c = TABLE[c ^ b]
    return c


def word(v):
    b = bytes((v >> 8, v & 0xFF))
    return b + bytes((crc_ref(b),))


class FakeSHT(CmdDevice):
    # measure: the command that starts a measurement; the next read returns raw (st, srh)
    def __init__(self, measure, raw=(0x6666, 0x8000), ident=(0x1234, 0x5678)):
        CmdDevice.__init__(self)
        self.measure = measure
        self.raw = raw
        self.ident = ident  # status word (SHT3x) / serial number (SHT4x)
        self.out = b""
        self.nack = 0  # reads NACKed (measurement still running)
        self.corrupt = None  # index of a byte to flip in the next readout

    def write(self, data):
        CmdDevice.write(self, data)
        data = bytes(data)
        if data == self.measure:
            self.out = word(self.raw[0]) + word(self.raw[1])
        elif data in (b"\xf3\x2d",):
            self.out = word(self.ident[0])
        elif data == b"\x89":
            self.out = word(self.ident[0]) + word(self.ident[1])

    def read(self, n):
        if self.nack:
            self.nack -= 1
            raise OSError(ENODEV)
        out = bytearray(self.out[:n])
        if self.corrupt is not None:
            out[self.corrupt] ^= 0x01
            self.corrupt = None
        return out


def make3(**kw):
    bus = FakeI2C()
    chip = bus.attach(0x44, FakeSHT(b"\x24\x00", **kw))
    clock = FakeClock()
    return bus, chip, clock, sht3x.SHT3x(bus, clock=clock)


def make4(**kw):
    bus = FakeI2C()
    chip = bus.attach(0x44, FakeSHT(b"\xfd", **kw))
    clock = FakeClock()
    return bus, chip, clock, sht4x.SHT4x(bus, clock=clock)


def close(a, b, tol=1e-6):
    if abs(a - b) > tol:
        raise AssertionError("%r != %r" % (a, b))


def test_crc_datasheet_example():
    eq(sht3x.crc8(b"\xbe\xef"), 0x92)
    eq(crc_ref(b"\xbe\xef"), 0x92)
    for v in (0, 1, 0x1234, 0x8000, 0xFFFF, 0xBEEF, 0x6666):
        b = bytes((v >> 8, v & 0xFF))
        eq(sht3x.crc8(b), crc_ref(b), hex(v))


def test_sht3x_conversion_end_points():
    for raw, t, rh in ((0, -45.0, 0.0), (0xFFFF, 130.0, 100.0), (0x6666, None, None)):
        bus, chip, clock, s = make3(raw=(raw, raw))
        got = s.read()
        if t is None:
            t = -45 + 175 * 0x6666 / 65535
            rh = 100 * 0x6666 / 65535
        close(got[0], t)
        close(got[1], rh)


def test_sht3x_command_and_wait():
    bus, chip, clock, s = make3()
    eq(s.status, 0x1234)  # presence: status register read, CRC-checked
    chip.commands.clear()
    t0 = clock.slept_ms
    s.read()
    eq(chip.commands, [b"\x24\x00"])
    assert clock.slept_ms - t0 >= 15  # Table 4: 15 ms max at high repeatability


def test_sht3x_bad_crc_is_an_error():
    for i in (0, 1, 2, 3, 4, 5):  # any byte of either word or its CRC
        bus, chip, clock, s = make3()
        chip.corrupt = i
        try:
            s.read()
        except SensorError as e:
            assert "crc" in str(e), e
        else:
            raise AssertionError("corrupt byte %d accepted" % i)
        close(s.read()[0], -45 + 175 * 0x6666 / 65535)  # the next clean reading is fine


def test_sht3x_missing_nack_and_timeout():
    bus = FakeI2C()
    raises(SensorError, sht3x.SHT3x, bus)  # nobody at 0x44
    bus, chip, clock, s = make3()
    chip.nack = 1  # measurement not finished: the read is NACKed
    raises(SensorError, s.read)
    bus.fail = ETIMEDOUT
    raises(SensorError, s.read)
    bus.fail = None
    s.read()
    bus2 = FakeI2C()
    c2 = bus2.attach(0x44, FakeSHT(b"\x24\x00"))
    c2.corrupt = 2  # status CRC broken at start: not trusted as present
    raises(SensorError, sht3x.SHT3x, bus2)


def test_sht4x():
    bus, chip, clock, s = make4(ident=(0x0A0B, 0x0C0D))
    eq(s.serial, 0x0A0B0C0D)
    chip.commands.clear()
    t, rh = s.read()
    eq(chip.commands, [b"\xfd"])
    close(t, -45 + 175 * 0x6666 / 65535)
    close(rh, -6 + 125 * 0x8000 / 65535)
    chip.raw = (0xFFFF, 0xFFFF)
    eq(s.read(), (130.0, 100.0))  # RH 119 % cropped
    chip.raw = (0, 0)
    eq(s.read(), (-45.0, 0.0))  # RH -6 % cropped
    chip.corrupt = 4
    raises(SensorError, s.read)
    raises(SensorError, sht4x.SHT4x, FakeI2C())


def test_board_adapters():
    bus, chip, clock, s = make3()

    class Board:
        i2c = bus

    r = sht3x.Sensor(Board(), clock=clock).read()
    eq(sorted(r), ["hum", "temp"])
    bus.devices[0x44] = FakeSHT(b"\xfd")
    r = sht4x.Sensor(Board(), clock=clock).read()
    eq(sorted(r), ["hum", "temp"])


mptest.run(globals())
