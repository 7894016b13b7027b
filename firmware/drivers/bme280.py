# Bosch BME280 (temperature, humidity, pressure) over I2C, register level, per the BME280
# datasheet (BST-BME280-DS002, rev. 1.6):
#   §5.4.1 id 0xD0 = 0x60 (a BMP280, 0x58, has no humidity and is refused)
#   §5.4.2 reset 0xE0 <- 0xB6;  §5.4.4 status 0xF3: bit 3 measuring, bit 0 im_update
#   §5.4.3 ctrl_hum 0xF2 (takes effect only after a write to ctrl_meas)
#   §5.4.5 ctrl_meas 0xF4 = osrs_t << 5 | osrs_p << 2 | mode (01 = forced)
#   §5.4.7-9 data 0xF7..0xFE: press[19:0], temp[19:0], hum[15:0], MSB first
#   §4.2.2 trimming: 0x88..0xA1 (dig_T1..dig_P9, LE u16/s16; dig_H1 at 0xA1) and
#          0xE1..0xE7 (dig_H2 s16, dig_H3 u8, dig_H4/dig_H5 s12 packed, dig_H6 s8)
#   §4.2.3 compensation: BME280_compensate_T_int32, BME280_compensate_P_int64 and
#          bme280_compensate_H_int32, transcribed below line for line. Python ints do not
#          overflow, and >> on a negative int is an arithmetic shift as in the C code.
#   §3.3.1/§3.5.1 forced mode: one measurement, then back to sleep (the "weather
#          monitoring" setting: x1 oversampling, filter off)
#   §9.1 measurement time max = 1.25 + 2.3*osrs_t + (2.3*osrs_p + 0.575)
#          + (2.3*osrs_h + 0.575) ms (9.3 ms at x1/x1/x1); then status is polled.
# A channel whose value is 0x80000 (T, P) / 0x8000 (H) was skipped (§4: "no data"); that
# is an error, not a value. Note: on a 32-bit port the int64 pressure formula needs long
# ints (heap) for its intermediate values; everything else reads into fixed buffers.
import time

from drivers.errors import SensorError

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_REG_CALIB_TP = const(0x88)  # 0x88..0xA1, 26 bytes (0xA0 unused, 0xA1 = dig_H1)
_REG_ID = const(0xD0)
_REG_RESET = const(0xE0)
_REG_CALIB_H = const(0xE1)  # 0xE1..0xE7, 7 bytes
_REG_CTRL_HUM = const(0xF2)
_REG_STATUS = const(0xF3)
_REG_CTRL_MEAS = const(0xF4)
_REG_CONFIG = const(0xF5)
_REG_DATA = const(0xF7)  # 0xF7..0xFE, 8 bytes
_CHIP_ID = const(0x60)
_RESET_WORD = const(0xB6)
_STATUS_MEASURING = const(0x08)
_STATUS_IM_UPDATE = const(0x01)
_MODE_FORCED = const(0x01)
_SKIPPED_20 = const(0x80000)
_SKIPPED_16 = const(0x8000)

_OSRS = {0: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5}  # oversampling factor -> register code


def _u16(b, i):
    return b[i] | b[i + 1] << 8


def _s16(b, i):
    v = b[i] | b[i + 1] << 8
    return v - 65536 if v & 0x8000 else v


def _s8(v):
    return v - 256 if v & 0x80 else v


class Calibration:
    # tp: the 26 bytes from 0x88, h: the 7 bytes from 0xE1 (datasheet Table 16)
    def __init__(self, tp, h):
        self.T1 = _u16(tp, 0)
        self.T2 = _s16(tp, 2)
        self.T3 = _s16(tp, 4)
        self.P1 = _u16(tp, 6)
        self.P2 = _s16(tp, 8)
        self.P3 = _s16(tp, 10)
        self.P4 = _s16(tp, 12)
        self.P5 = _s16(tp, 14)
        self.P6 = _s16(tp, 16)
        self.P7 = _s16(tp, 18)
        self.P8 = _s16(tp, 20)
        self.P9 = _s16(tp, 22)
        self.H1 = tp[25]
        self.H2 = _s16(h, 0)
        self.H3 = h[2]
        # dig_H4 = 0xE4[11:4] / 0xE5[3:0], dig_H5 = 0xE5[7:4] / 0xE6[11:4]; both signed 12
        # bit, the sign carried by the whole byte 0xE4 / 0xE6
        self.H4 = _s8(h[3]) * 16 | (h[4] & 0x0F)
        self.H5 = _s8(h[5]) * 16 | (h[4] >> 4)
        self.H6 = _s8(h[6])


# §4.2.3 BME280_compensate_T_int32: -> (T in 0.01 degC, t_fine)
def compensate_t(c, adc_t):
    var1 = (((adc_t >> 3) - (c.T1 << 1)) * c.T2) >> 11
    var2 = (((((adc_t >> 4) - c.T1) * ((adc_t >> 4) - c.T1)) >> 12) * c.T3) >> 14
    t_fine = var1 + var2
    return (t_fine * 5 + 128) >> 8, t_fine


# §4.2.3 BME280_compensate_P_int64: -> pressure in Pa as Q24.8 (value / 256 = Pa);
# 0 if the trimming would divide by zero (the datasheet's own guard)
def compensate_p(c, adc_p, t_fine):
    var1 = t_fine - 128000
    var2 = var1 * var1 * c.P6
    var2 = var2 + ((var1 * c.P5) << 17)
    var2 = var2 + (c.P4 << 35)
    var1 = ((var1 * var1 * c.P3) >> 8) + ((var1 * c.P2) << 12)
    var1 = (((1 << 47) + var1) * c.P1) >> 33
    if var1 == 0:
        return 0
    p = 1048576 - adc_p
    # C's int64 division truncates towards zero; Python's // floors
    n = ((p << 31) - var2) * 3125
    p = n // var1 if (n >= 0) == (var1 > 0) else -(-n // var1)
    var1 = (c.P9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (c.P8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (c.P7 << 4)


# §4.2.3 bme280_compensate_H_int32: -> relative humidity in %RH as Q22.10 (/1024 = %RH)
def compensate_h(c, adc_h, t_fine):
    v = t_fine - 76800
    v = ((((adc_h << 14) - (c.H4 << 20) - (c.H5 * v)) + 16384) >> 15) * (
        ((((((v * c.H6) >> 10) * (((v * c.H3) >> 11) + 32768)) >> 10) + 2097152) * c.H2
         + 8192) >> 14)
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * c.H1) >> 4)
    v = 0 if v < 0 else v
    v = 419430400 if v > 419430400 else v
    return v >> 12


class BME280:
    # i2c: machine.I2C; addr 0x76 (SDO to GND) or 0x77 (SDO to VDDIO); osrs: 1..16
    def __init__(self, i2c, addr=0x76, osrs_t=1, osrs_p=1, osrs_h=1, clock=time):
        self._i2c = i2c
        self._addr = addr
        self._clock = clock
        if osrs_t not in _OSRS or osrs_p not in _OSRS or osrs_h not in _OSRS:
            raise ValueError("bme280: oversampling must be one of 0, 1, 2, 4, 8, 16")
        self._meas = _OSRS[osrs_t] << 5 | _OSRS[osrs_p] << 2 | _MODE_FORCED
        self._hum = _OSRS[osrs_h]
        # §9.1 maximum measurement time, in us, rounded up to whole ms below
        us = 1250
        for o, extra in ((osrs_t, 0), (osrs_p, 575), (osrs_h, 575)):
            if o:
                us += 2300 * o + extra
        self._wait_ms = (us + 999) // 1000
        self._b1 = bytearray(1)
        self._data = bytearray(8)
        tp = bytearray(26)
        h = bytearray(7)
        try:
            self._readinto(_REG_ID, self._b1)
            if self._b1[0] != _CHIP_ID:
                raise SensorError("bme280: id 0x%02x" % self._b1[0])
            self._write(_REG_RESET, _RESET_WORD)
            self._wait_nvm()
            self._readinto(_REG_CALIB_TP, tp)
            self._readinto(_REG_CALIB_H, h)
        except OSError as e:
            if isinstance(e, SensorError):
                raise
            raise SensorError("bme280: bus (%s)" % e)
        self.cal = Calibration(tp, h)
        self.t_fine = 0

    def _readinto(self, reg, buf):
        self._i2c.readfrom_mem_into(self._addr, reg, buf)

    def _write(self, reg, v):
        self._b1[0] = v
        self._i2c.writeto_mem(self._addr, reg, self._b1)

    # after a reset the trimming is copied from NVM: wait while status.im_update is set
    def _wait_nvm(self):
        for _ in range(20):
            self._clock.sleep_ms(2)
            self._readinto(_REG_STATUS, self._b1)
            if not self._b1[0] & _STATUS_IM_UPDATE:
                return
        raise SensorError("bme280: timeout (nvm copy)")

    # One forced measurement -> the raw (adc_t, adc_p, adc_h)
    def read_raw(self):
        d = self._data
        try:
            self._write(_REG_CTRL_HUM, self._hum)
            self._write(_REG_CTRL_MEAS, self._meas)  # starts the forced measurement
            self._clock.sleep_ms(self._wait_ms)
            for _ in range(10):
                self._readinto(_REG_STATUS, self._b1)
                if not self._b1[0] & _STATUS_MEASURING:
                    break
                self._clock.sleep_ms(2)
            else:
                raise SensorError("bme280: timeout")
            self._readinto(_REG_DATA, d)
        except OSError as e:
            if isinstance(e, SensorError):
                raise
            raise SensorError("bme280: bus (%s)" % e)
        adc_p = d[0] << 12 | d[1] << 4 | d[2] >> 4
        adc_t = d[3] << 12 | d[4] << 4 | d[5] >> 4
        adc_h = d[6] << 8 | d[7]
        return adc_t, adc_p, adc_h

    # -> (temperature degC, pressure Pa, humidity %RH); a skipped channel is an error
    def read(self):
        adc_t, adc_p, adc_h = self.read_raw()
        if adc_t == _SKIPPED_20 or adc_p == _SKIPPED_20 or adc_h == _SKIPPED_16:
            raise SensorError("bme280: nodata")
        c = self.cal
        t, self.t_fine = compensate_t(c, adc_t)
        p = compensate_p(c, adc_p, self.t_fine)
        if p == 0:
            raise SensorError("bme280: calibration")
        return t / 100, p / 256, compensate_h(c, adc_h, self.t_fine) / 1024


# Board adapter (boards/esp32.py): "sensors": {"bme280": {"addr": 118}}
class Sensor:
    NAMES = ("temp", "pres", "hum")

    def __init__(self, board, **opts):
        if board.i2c is None:
            raise SensorError("bme280: no i2c configured")
        self.dev = BME280(board.i2c, **opts)

    def read(self):
        t, p, h = self.dev.read()
        return {"temp": t, "pres": p, "hum": h}
