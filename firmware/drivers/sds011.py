# Nova Fitness SDS011 particle sensor over UART (9600 8N1), per the "Laser Dust Sensor
# Control Protocol V1.3" (Nova Fitness) and the SDS011 datasheet V1.3:
#   data frame (10 bytes) = 0xAA 0xC0 PM2.5 low, PM2.5 high, PM10 low, PM10 high,
#       device id (2 bytes), check-sum, 0xAB; check-sum = low byte of the sum of the six
#       bytes from PM2.5 low to the second id byte; PM = ((high << 8) + low) / 10 ug/m3.
#   command frame (19 bytes) = 0xAA 0xB4 command, 12 data bytes, device id (0xFF 0xFF =
#       any), check-sum (low byte of the sum of bytes 2..16), 0xAB; the sensor answers
#       a command with a 0xC5 frame, which the data framing skips like any garbage.
# Default is active reporting (a data frame every second); query=True switches to query
# mode and asks for each reading (command 4), the mode the protocol advises for a node
# that sleeps the sensor between samples (command 6 sleep/work saves the laser).
# Framing, resync and the checks are in framesync.py; no valid frame is a SensorError.
import time

from drivers.errors import SensorError
from drivers.framesync import FrameSync

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_HEAD = const(0xAA)
_DATA = const(0xC0)
_TAIL = const(0xAB)
_CMD = const(0xB4)
_FRAME_LEN = const(10)
_CMD_LEN = const(19)
_SET_MODE = const(2)
_QUERY = const(4)
_SLEEP_WORK = const(6)


class _Sync(FrameSync):
    def __init__(self):
        FrameSync.__init__(self, _FRAME_LEN, _HEAD)
        self.pm25 = self.pm10 = -1  # tenths of ug/m3

    def header_ok(self, n):
        return self.buf[1] == _DATA

    def frame_ok(self):
        b = self.buf
        s = 0
        for i in range(2, 8):
            s += b[i]
        return b[9] == _TAIL and (s & 0xFF) == b[8]

    def on_frame(self):
        b = self.buf
        self.pm25 = b[3] << 8 | b[2]
        self.pm10 = b[5] << 8 | b[4]


class SDS011:
    def __init__(self, uart, query=False, timeout_ms=3000, clock=time):
        self._uart = uart
        self._clock = clock
        self._timeout = timeout_ms
        self._query = query
        self._sync = _Sync()
        self._chunk = bytearray(64)
        self._cmd = bytearray(_CMD_LEN)
        if query:
            self._command(_SET_MODE, 1, 1)  # set, query mode

    def _command(self, cmd, d1=0, d2=0):
        c = self._cmd
        for i in range(_CMD_LEN):
            c[i] = 0
        c[0] = _HEAD
        c[1] = _CMD
        c[2] = cmd
        c[3] = d1
        c[4] = d2
        c[15] = 0xFF  # device id FFFF: whichever sensor is on the line
        c[16] = 0xFF
        s = 0
        for i in range(2, 17):
            s += c[i]
        c[17] = s & 0xFF
        c[18] = _TAIL
        try:
            self._uart.write(c)
        except OSError as e:
            raise SensorError("sds011: bus (%s)" % e)

    def sleep(self):
        self._command(_SLEEP_WORK, 1, 0)

    def wake(self):
        self._command(_SLEEP_WORK, 1, 1)

    # -> (pm25, pm10) in ug/m3 from the newest valid data frame
    def read(self):
        s = self._sync
        if self._query:
            self._command(_QUERY)
        s.read_frame(self._uart, self._chunk, self._clock, self._timeout, "sds011")
        return s.pm25 / 10, s.pm10 / 10

    @property
    def rejected(self):  # (bytes skipped, frames with a bad check-sum or tail)
        return self._sync.skipped, self._sync.bad


# Board adapter (boards/esp32.py): "sensors": {"sds011": {"query": true}}
class Sensor:
    NAMES = ("pm25", "pm10")

    def __init__(self, board, **opts):
        if board.uart is None:
            raise SensorError("sds011: no uart configured")
        self.dev = SDS011(board.uart, **opts)

    def read(self):
        pm25, pm10 = self.dev.read()
        return {"pm25": pm25, "pm10": pm10}
