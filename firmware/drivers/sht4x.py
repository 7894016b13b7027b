# Sensirion SHT40/41/45 humidity and temperature over I2C, per the SHT4x datasheet
# (Sensirion): one-byte commands, the same 6-byte readout and CRC-8 as the SHT3x
# (sht3x.crc8: poly 0x31, init 0xFF, CRC(0xBEEF) = 0x92):
#   0xFD measure T & RH with high precision (max duration about 8.3 ms; we wait 9)
#   0x89 read serial number (2 words + CRCs; read once at start: presence check)
#   RH = -6 + 125 * S_RH / (2^16 - 1) %, cropped to 0..100 as the datasheet advises;
#   T = -45 + 175 * S_T / (2^16 - 1) degC
import time

from drivers.errors import SensorError
from drivers.sht3x import words

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_CMD_MEASURE_HIGH = const(0xFD)
_CMD_SERIAL = const(0x89)
_MEAS_MS = const(9)


class SHT4x:
    def __init__(self, i2c, addr=0x44, clock=time):
        self._i2c = i2c
        self._addr = addr
        self._clock = clock
        self._cmd = bytearray(1)
        self._buf = bytearray(6)
        hi, lo = self._transfer(_CMD_SERIAL, 1)
        self.serial = hi << 16 | lo

    def _transfer(self, cmd, wait_ms):
        self._cmd[0] = cmd
        try:
            self._i2c.writeto(self._addr, self._cmd)
            self._clock.sleep_ms(wait_ms)
            self._i2c.readfrom_into(self._addr, self._buf)
        except OSError as e:
            raise SensorError("sht4x: bus (%s)" % e)
        return words(self._buf, "sht4x")

    def read_raw(self):
        return self._transfer(_CMD_MEASURE_HIGH, _MEAS_MS)

    # -> (temperature degC, relative humidity %)
    def read(self):
        st, srh = self.read_raw()
        rh = -6 + 125 * srh / 65535
        return -45 + 175 * st / 65535, min(100.0, max(0.0, rh))


# Board adapter (boards/esp32.py): "sensors": {"sht4x": {}}
class Sensor:
    NAMES = ("temp", "hum")

    def __init__(self, board, **opts):
        if board.i2c is None:
            raise SensorError("sht4x: no i2c configured")
        self.dev = SHT4x(board.i2c, **opts)

    def read(self):
        t, h = self.dev.read()
        return {"temp": t, "hum": h}
