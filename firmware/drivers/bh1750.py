# ROHM BH1750FVI ambient light sensor over I2C, per its datasheet (ROHM, rev. D):
#   instruction set: 0x00 power down, 0x01 power on, 0x07 reset, one-time H-resolution
#   0x20 (1 lx), H-resolution mode2 0x21 (0.5 lx), L-resolution 0x23 (4 lx); the
#   one-time modes power the chip down by themselves after the measurement.
#   measurement time: H-res max 180 ms, L-res max 24 ms at the default MTreg 69; it
#   scales with MTreg.
#   result: 2 bytes, MSB first; lux = count / 1.2 (H-res; mode2 halves it), times
#   69 / MTreg (the datasheet's example: 0x8390 -> 28067 lx; "sensitivity adjustment").
#   MTreg: 0b01000_MT[7:5] then 0b011_MT[4:0], range 31..254.
# The chip has no CRC and no id register: a missing chip shows up as a NACK (OSError).
import time

from drivers.errors import SensorError

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_POWER_ON = const(0x01)
_MT_DEFAULT = const(69)
# mode name -> (opcode, max ms at MTreg 69, lux divisor x10 so the math stays integral)
_MODES = {"h": (0x20, 180, 12), "h2": (0x21, 180, 24), "l": (0x23, 24, 12)}


class BH1750:
    # addr 0x23 (ADDR low) or 0x5C (ADDR high); mode "h", "h2" or "l"; mt: MTreg 31..254
    def __init__(self, i2c, addr=0x23, mode="h", mt=_MT_DEFAULT, clock=time):
        if mode not in _MODES:
            raise ValueError("bh1750: mode must be h, h2 or l")
        if not 31 <= mt <= 254:
            raise ValueError("bh1750: mt must be 31..254")
        self._i2c = i2c
        self._addr = addr
        self._clock = clock
        self._op, ms, self._div = _MODES[mode]
        self._mt = mt
        self._wait_ms = (ms * mt + _MT_DEFAULT - 1) // _MT_DEFAULT
        self._cmd = bytearray(1)
        self._buf = bytearray(2)
        try:
            self._send(_POWER_ON)
            if mt != _MT_DEFAULT:
                self._send(0x40 | mt >> 5)
                self._send(0x60 | (mt & 0x1F))
        except OSError as e:
            raise SensorError("bh1750: bus (%s)" % e)

    def _send(self, op):
        self._cmd[0] = op
        self._i2c.writeto(self._addr, self._cmd)

    # one-time measurement -> raw count
    def read_raw(self):
        try:
            self._send(self._op)
            self._clock.sleep_ms(self._wait_ms)
            self._i2c.readfrom_into(self._addr, self._buf)
        except OSError as e:
            raise SensorError("bh1750: bus (%s)" % e)
        return self._buf[0] << 8 | self._buf[1]

    # -> illuminance in lx
    def read(self):
        return self.read_raw() * 10 * _MT_DEFAULT / (self._div * self._mt)


# Board adapter (boards/esp32.py): "sensors": {"bh1750": {"addr": 35}}
class Sensor:
    NAMES = ("lux",)

    def __init__(self, board, **opts):
        if board.i2c is None:
            raise SensorError("bh1750: no i2c configured")
        self.dev = BH1750(board.i2c, **opts)

    def read(self):
        return {"lux": self.dev.read()}
