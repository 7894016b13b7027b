# ST VL53L0X time-of-flight ranger over I2C: one single-shot ranging at register level.
# ST publishes no register map, only its C API (STSW-IMG005); the register names and
# sequences here are the ones that API uses (as documented by Pololu's vl53l0x-arduino,
# which ports it to plain register writes).
#   identify: 0xC0 (IDENTIFICATION_MODEL_ID) = 0xEE
#   init (simplified, see below): 0x88 <- 0x00 (I2C standard mode), read the
#     "stop variable" at 0x91 behind the 0x80/0xFF/0x00 page sequence, GPIO interrupt
#     "new sample ready" (0x0A <- 0x04, active low: 0x84 bit 4 cleared), clear (0x0B).
#   single shot: the stop-variable sequence again, SYSRANGE_START 0x00 <- 0x01, wait for
#     bit 0 of 0x00 to clear, then for RESULT_INTERRUPT_STATUS 0x13 & 0x07, read
#     RESULT_RANGE_STATUS 0x14 (device status in bits 6:3; 11 = range complete) and the
#     range in mm at 0x14 + 10 (u16 MSB first), clear the interrupt (0x0B <- 0x01).
# What the init leaves out, against ST's VL53L0X_DataInit/StaticInit/PerformRefCalibration:
# the reference SPAD selection, the ~80 "default tuning settings" writes, the signal rate
# limit, the timing budget (the part's 33 ms default stays), and the VHV and phase
# reference calibrations. The part ranges with its power-on defaults: expect shorter
# maximum range and a few % more error than ST specifies. Port Pololu's full init if that
# matters. Every status other than "range complete", a range >= 8190 mm ("no target")
# and a sequence that never finishes are SensorErrors.
import time

from drivers.errors import SensorError

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_SYSRANGE_START = const(0x00)
_SYSTEM_SEQUENCE_CONFIG = const(0x01)
_SYSTEM_INTERRUPT_CONFIG_GPIO = const(0x0A)
_SYSTEM_INTERRUPT_CLEAR = const(0x0B)
_RESULT_INTERRUPT_STATUS = const(0x13)
_RESULT_RANGE_STATUS = const(0x14)
_GPIO_HV_MUX_ACTIVE_HIGH = const(0x84)
_I2C_MODE = const(0x88)
_STOP_VARIABLE = const(0x91)
_MODEL_ID = const(0xC0)
_MODEL_ID_VALUE = const(0xEE)
_STATUS_RANGE_COMPLETE = const(11)
_NO_TARGET_MM = const(8190)
_POLL_MS = const(5)


class VL53L0X:
    def __init__(self, i2c, addr=0x29, timeout_ms=500, clock=time):
        self._i2c = i2c
        self._addr = addr
        self._clock = clock
        self._polls = timeout_ms // _POLL_MS + 1
        self._b1 = bytearray(1)
        self._res = bytearray(12)  # 0x14..0x1F: range status .. range
        try:
            if self._get(_MODEL_ID) != _MODEL_ID_VALUE:
                raise SensorError("vl53l0x: id 0x%02x" % self._b1[0])
            self._set(_I2C_MODE, 0x00)
            self._set(0x80, 0x01)
            self._set(0xFF, 0x01)
            self._set(0x00, 0x00)
            self._stop = self._get(_STOP_VARIABLE)
            self._set(0x00, 0x01)
            self._set(0xFF, 0x00)
            self._set(0x80, 0x00)
            self._set(_SYSTEM_SEQUENCE_CONFIG, 0xE8)  # DSS, pre-range, final range
            self._set(_SYSTEM_INTERRUPT_CONFIG_GPIO, 0x04)  # new sample ready
            self._set(_GPIO_HV_MUX_ACTIVE_HIGH, self._get(_GPIO_HV_MUX_ACTIVE_HIGH) & ~0x10)
            self._set(_SYSTEM_INTERRUPT_CLEAR, 0x01)
        except OSError as e:
            if isinstance(e, SensorError):
                raise
            raise SensorError("vl53l0x: bus (%s)" % e)

    def _get(self, reg):
        self._i2c.readfrom_mem_into(self._addr, reg, self._b1)
        return self._b1[0]

    def _set(self, reg, v):
        self._b1[0] = v
        self._i2c.writeto_mem(self._addr, reg, self._b1)

    def _wait(self, reg, mask, want_set):
        for _ in range(self._polls):
            if bool(self._get(reg) & mask) == want_set:
                return
            self._clock.sleep_ms(_POLL_MS)
        raise SensorError("vl53l0x: timeout")

    # one single-shot ranging -> (device range status, range mm) with no judgement
    def range_raw(self):
        try:
            self._set(0x80, 0x01)
            self._set(0xFF, 0x01)
            self._set(0x00, 0x00)
            self._set(_STOP_VARIABLE, self._stop)
            self._set(0x00, 0x01)
            self._set(0xFF, 0x00)
            self._set(0x80, 0x00)
            self._set(_SYSRANGE_START, 0x01)
            self._wait(_SYSRANGE_START, 0x01, False)
            self._wait(_RESULT_INTERRUPT_STATUS, 0x07, True)
            r = self._res
            self._i2c.readfrom_mem_into(self._addr, _RESULT_RANGE_STATUS, r)
            self._set(_SYSTEM_INTERRUPT_CLEAR, 0x01)
        except OSError as e:
            if isinstance(e, SensorError):
                raise
            raise SensorError("vl53l0x: bus (%s)" % e)
        return (r[0] & 0x78) >> 3, r[10] << 8 | r[11]

    # -> distance in mm; no target or a failed ranging is a SensorError
    def read_mm(self):
        status, mm = self.range_raw()
        if mm >= _NO_TARGET_MM:
            raise SensorError("vl53l0x: range")
        if status != _STATUS_RANGE_COMPLETE:
            raise SensorError("vl53l0x: status %d" % status)
        return mm


# Board adapter (boards/esp32.py): "sensors": {"vl53l0x": {}} -> "distance" in cm
class Sensor:
    NAMES = ("distance",)

    def __init__(self, board, **opts):
        if board.i2c is None:
            raise SensorError("vl53l0x: no i2c configured")
        self.dev = VL53L0X(board.i2c, **opts)

    def read(self):
        return {"distance": self.dev.read_mm() / 10}
