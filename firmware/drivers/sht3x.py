# Sensirion SHT30/31/35 humidity and temperature over I2C, per the SHT3x-DIS datasheet
# (Sensirion), by section title:
#   "Measurement Commands for Single Shot Data Acquisition Mode": high repeatability,
#     clock stretching disabled = 0x2400; the result is read after the measurement time
#     (Table 4: max 15 ms at high repeatability; we wait 16). A read before the end is
#     NACKed (-> SensorError).
#   "Readout of Measurement Results": T MSB, T LSB, CRC, RH MSB, RH LSB, CRC
#   "Checksum Calculation": CRC-8, polynomial 0x31 (x^8 + x^5 + x^4 + 1), init 0xFF,
#     no reflection, no final XOR; example: CRC(0xBEEF) = 0x92
#   "Conversion of Signal Output": RH = 100 * S_RH / (2^16 - 1) %,
#     T = -45 + 175 * S_T / (2^16 - 1) degC
#   "Status Register": command 0xF32D, 2 bytes + CRC (read once at start: presence)
# Both words are checked; a bad CRC is a SensorError, never a value.
import time

from drivers.errors import SensorError

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_MEAS_MS = const(16)  # Table 4: 15 ms max at high repeatability, plus a margin


# CRC-8/Sensirion over buf[i:i + n] (bitwise: 12 bytes a reading do not need a table)
def crc8(buf, i=0, n=2):
    crc = 0xFF
    for k in range(i, i + n):
        crc ^= buf[k]
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


# The two CRC-protected words of a 6-byte readout -> (word1, word2); bad CRC raises
def words(buf, name):
    if crc8(buf, 0) != buf[2] or crc8(buf, 3) != buf[5]:
        raise SensorError(name + ": crc")
    return buf[0] << 8 | buf[1], buf[3] << 8 | buf[4]


class SHT3x:
    # addr 0x44 (ADDR pin low) or 0x45
    def __init__(self, i2c, addr=0x44, clock=time):
        self._i2c = i2c
        self._addr = addr
        self._clock = clock
        self._cmd = bytearray(2)
        self._buf = bytearray(6)
        self._st = memoryview(self._buf)[:3]
        self.status = self._status()

    def _send(self, cmd):
        self._cmd[0] = cmd >> 8
        self._cmd[1] = cmd & 0xFF
        self._i2c.writeto(self._addr, self._cmd)

    def _status(self):
        try:
            self._send(0xF32D)
            self._i2c.readfrom_into(self._addr, self._st)
        except OSError as e:
            raise SensorError("sht3x: bus (%s)" % e)
        b = self._buf
        if crc8(b, 0) != b[2]:
            raise SensorError("sht3x: crc")
        return b[0] << 8 | b[1]

    # -> (raw S_T, raw S_RH), both CRC-checked
    def read_raw(self):
        try:
            self._send(0x2400)
            self._clock.sleep_ms(_MEAS_MS)
            self._i2c.readfrom_into(self._addr, self._buf)
        except OSError as e:
            raise SensorError("sht3x: bus (%s)" % e)
        return words(self._buf, "sht3x")

    # -> (temperature degC, relative humidity %)
    def read(self):
        st, srh = self.read_raw()
        return -45 + 175 * st / 65535, 100 * srh / 65535


# Board adapter (boards/esp32.py): "sensors": {"sht3x": {"addr": 68}}
class Sensor:
    NAMES = ("temp", "hum")

    def __init__(self, board, **opts):
        if board.i2c is None:
            raise SensorError("sht3x: no i2c configured")
        self.dev = SHT3x(board.i2c, **opts)

    def read(self):
        t, h = self.dev.read()
        return {"temp": t, "hum": h}
