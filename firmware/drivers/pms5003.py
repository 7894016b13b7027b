# Plantower PMS5003 particle sensor over UART (9600 8N1), at the frame level
# per the "PMS5003 series data manual" (Plantower, V2.3), Appendix I:
#   frame = 0x42 0x4D, frame length (BE u16) = 2*13 + 2 = 28, 13 data words (BE u16),
#           check code (BE u16) = sum of every byte before it (start bytes included).
#   data words: PM1.0, PM2.5, PM10 (CF=1, "standard particle"), PM1.0, PM2.5, PM10
#   ("under atmospheric environment"), particle counts >0.3/0.5/1.0/2.5/5.0/10 um per
#   0.1 L, reserved. We report the atmospheric-environment values (ug/m3), the ones meant
#   for outdoor air.
#   commands = 0x42 0x4D CMD DATAH DATAL LRCH LRCL (LRC = sum of the 5 bytes before):
#   0xE1 00/01 passive/active mode, 0xE2 read in passive mode, 0xE4 00/01 sleep/wakeup.
# Default is active mode (the sensor streams a frame every 0.2-2.3 s); passive=True makes
# it answer only when asked. Framing, resync after garbage, and the checksum are in
# framesync.py; a missing frame or a failed checksum is a SensorError, never a value.
# After wake-up the fan needs ~30 s before readings are stable (manual): the caller's
# duty cycle should allow for that.
import time

from drivers.errors import SensorError
from drivers.framesync import FrameSync

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_START1 = const(0x42)
_START2 = const(0x4D)
_FRAME_LEN = const(32)
_DATA_LEN = const(28)  # the length field: 13 data words + check code
_CMD_MODE = const(0xE1)
_CMD_READ = const(0xE2)
_CMD_SLEEP = const(0xE4)


class _Sync(FrameSync):
    def __init__(self):
        FrameSync.__init__(self, _FRAME_LEN, _START1)
        self.pm1 = self.pm25 = self.pm10 = -1

    def header_ok(self, n):
        b = self.buf
        if b[1] != _START2:
            return False
        return n < 4 or (b[2] << 8 | b[3]) == _DATA_LEN

    def frame_ok(self):
        b = self.buf
        s = 0
        for i in range(_FRAME_LEN - 2):
            s += b[i]
        return (s & 0xFFFF) == (b[30] << 8 | b[31])

    def on_frame(self):
        b = self.buf
        # data word k sits at 4 + 2k: atmospheric PM1.0, PM2.5, PM10 are words 3, 4, 5
        self.pm1 = b[10] << 8 | b[11]
        self.pm25 = b[12] << 8 | b[13]
        self.pm10 = b[14] << 8 | b[15]


class PMS5003:
    # uart: a machine.UART at 9600 baud (its own read timeout should be short, e.g. 100 ms)
    def __init__(self, uart, passive=False, timeout_ms=3000, clock=time):
        self._uart = uart
        self._clock = clock
        self._timeout = timeout_ms
        self._passive = passive
        self._sync = _Sync()
        self._chunk = bytearray(64)
        self._cmd = bytearray(7)
        if passive:
            self._command(_CMD_MODE, 0)

    def _command(self, cmd, data):
        c = self._cmd
        c[0] = _START1
        c[1] = _START2
        c[2] = cmd
        c[3] = 0
        c[4] = data
        s = _START1 + _START2 + cmd + data
        c[5] = s >> 8
        c[6] = s & 0xFF
        try:
            self._uart.write(c)
        except OSError as e:
            raise SensorError("pms5003: bus (%s)" % e)

    def sleep(self):
        self._command(_CMD_SLEEP, 0)

    def wake(self):
        self._command(_CMD_SLEEP, 1)

    # -> (pm1, pm25, pm10) in ug/m3 (atmospheric environment) from the newest valid frame
    def read(self):
        s = self._sync
        if self._passive:
            self._command(_CMD_READ, 0)
        s.read_frame(self._uart, self._chunk, self._clock, self._timeout, "pms5003")
        return s.pm1, s.pm25, s.pm10

    @property
    def rejected(self):  # (bytes skipped, frames with a bad checksum) since start
        return self._sync.skipped, self._sync.bad


# Board adapter (boards/esp32.py): "sensors": {"pms5003": {"passive": false}}
class Sensor:
    NAMES = ("pm1", "pm25", "pm10")

    def __init__(self, board, **opts):
        if board.uart is None:
            raise SensorError("pms5003: no uart configured")
        self.dev = PMS5003(board.uart, **opts)

    def read(self):
        pm1, pm25, pm10 = self.dev.read()
        return {"pm1": pm1, "pm25": pm25, "pm10": pm10}
