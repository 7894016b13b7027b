# TI INA219 current / power monitor over I2C, per its datasheet (SBOS448G):
#   registers (16 bit, MSB first): 0x00 configuration, 0x01 shunt voltage (signed,
#   LSB 10 uV), 0x02 bus voltage (bits 15:3, LSB 4 mV; bit 1 CNVR, bit 0 OVF = math
#   overflow: current and power are invalid), 0x03 power, 0x04 current (signed),
#   0x05 calibration (bit 0 always 0).
#   §8.5 programming: Cal = trunc(0.04096 / (Current_LSB * R_shunt)) (equation 1),
#   Power_LSB = 20 * Current_LSB (eq. 2); the chip then computes
#   Current = Shunt * Cal / 4096 (eq. 3) and Power = Current * Bus / 5000 (eq. 4).
#   configuration default 0x399F: 32 V bus range, PGA /8 (+-320 mV), 12-bit ADCs,
#   shunt and bus continuous; bit 15 resets the chip.
# The current and power registers read 0 until the calibration is programmed, and a
# brown-out resets it: each read checks the calibration register, re-programs it if it
# was lost and reports that reading as an error, so a reset never reads as "0 W".
# Integers on the way in (shunt in milliohm, LSB in microampere), so trunc() in equation 1
# never meets a float that lands a hair below a whole number.
from drivers.errors import SensorError

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_REG_CONFIG = const(0x00)
_REG_SHUNT = const(0x01)
_REG_BUS = const(0x02)
_REG_POWER = const(0x03)
_REG_CURRENT = const(0x04)
_REG_CAL = const(0x05)
_CONFIG_DEFAULT = const(0x399F)
_BUS_OVF = const(0x0001)


def _s16(v):
    return v - 65536 if v & 0x8000 else v


class INA219:
    # shunt_mohm: shunt resistance in milliohm; current_lsb_ua: the current register's
    # LSB in microampere (choose >= max expected current / 32768, a round number)
    def __init__(self, i2c, addr=0x40, shunt_mohm=100, current_lsb_ua=100,
                 config=_CONFIG_DEFAULT):
        cal = 40960000 // (current_lsb_ua * shunt_mohm)  # eq. 1 in integer units
        if not 1 <= cal <= 0xFFFE:
            raise ValueError("ina219: calibration %d out of range: change current_lsb_ua" % cal)
        self._i2c = i2c
        self._addr = addr
        self.cal = cal & 0xFFFE
        self.current_lsb_ua = current_lsb_ua
        self._config = config
        self._buf = bytearray(2)
        try:
            self._write(_REG_CONFIG, config)
            self._write(_REG_CAL, self.cal)
        except OSError as e:
            raise SensorError("ina219: bus (%s)" % e)

    def _read(self, reg):
        self._i2c.readfrom_mem_into(self._addr, reg, self._buf)
        return self._buf[0] << 8 | self._buf[1]

    def _write(self, reg, v):
        self._buf[0] = v >> 8
        self._buf[1] = v & 0xFF
        self._i2c.writeto_mem(self._addr, reg, self._buf)

    # -> (bus volts, shunt volts, current A, power W)
    def read(self):
        try:
            if self._read(_REG_CAL) != self.cal:  # lost in a reset: reprogram, report
                self._write(_REG_CONFIG, self._config)
                self._write(_REG_CAL, self.cal)
                raise SensorError("ina219: reset")
            bus = self._read(_REG_BUS)
            shunt = _s16(self._read(_REG_SHUNT))
            cur = _s16(self._read(_REG_CURRENT))
            pwr = self._read(_REG_POWER)
        except OSError as e:
            if isinstance(e, SensorError):
                raise
            raise SensorError("ina219: bus (%s)" % e)
        if bus & _BUS_OVF:
            raise SensorError("ina219: overflow")
        lsb = self.current_lsb_ua
        return ((bus >> 3) * 4 / 1000, shunt / 100000, cur * lsb / 1000000,
                pwr * 20 * lsb / 1000000)


# Board adapter (boards/esp32.py): "sensors": {"ina219": {"shunt_mohm": 100}}
class Sensor:
    NAMES = ("power", "current", "bus_v")

    def __init__(self, board, **opts):
        if board.i2c is None:
            raise SensorError("ina219: no i2c configured")
        self.dev = INA219(board.i2c, **opts)

    def read(self):
        v, _, i, p = self.dev.read()
        return {"power": p, "current": i, "bus_v": v}
