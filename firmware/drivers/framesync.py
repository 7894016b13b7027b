# Byte-stream framing for the UART particle sensors (pms5003.py, sds011.py): bytes are fed
# one at a time into a fixed frame buffer; garbage before a start byte is skipped, a
# header that cannot be right (second start byte, length, command id) is rejected as soon
# as it arrives, and a complete frame is only accepted if the subclass's check (checksum,
# tail byte) passes. After a rejection the search restarts at the next start byte INSIDE
# the rejected bytes, so a real frame hiding behind a false start is not lost.
# No allocation per byte or per frame: one bytearray for the life of the driver.
from drivers.errors import SensorError


class FrameSync:
    # size: frame length in bytes; start: the first byte of every frame
    def __init__(self, size, start):
        self.buf = bytearray(size)
        self.size = size
        self.start = start
        self.n = 0
        self.skipped = 0  # bytes thrown away while searching (garbage, rejected frames)
        self.bad = 0  # complete frames that failed the check (checksum, tail)

    # Subclass: can the first n bytes of buf (n >= 2) still begin a valid frame?
    def header_ok(self, n):
        return True

    # Subclass: is the complete frame in buf valid (checksum, tail)?
    def frame_ok(self):
        return True

    def reset(self):
        self.n = 0

    # Feed one byte; True when buf now holds a complete, checked frame (and the next
    # byte starts a new search).
    def feed(self, b):
        buf = self.buf
        n = self.n
        if n == 0 and b != self.start:
            self.skipped += 1
            return False
        buf[n] = b
        n += 1
        if n >= 2 and not self.header_ok(n):
            self._resync(n)
            return False
        if n == self.size:
            if self.frame_ok():
                self.n = 0
                return True
            self.bad += 1
            self._resync(n)
            return False
        self.n = n
        return False

    # Drop buf[0] and everything up to the next start byte, then keep dropping while the
    # remaining prefix cannot begin a frame. Works in place (bytes move down), no copy.
    def _resync(self, n):
        buf = self.buf
        while n:
            i = 1
            while i < n and buf[i] != self.start:
                i += 1
            for k in range(i, n):
                buf[k - i] = buf[k]
            self.skipped += i
            n -= i
            if n < 2 or self.header_ok(n):
                break
        self.n = n

    # Subclass: decode the frame in buf into plain attributes (called at once, before
    # the next byte can overwrite buf).
    def on_frame(self):
        pass

    # One uart.readinto(chunk), every byte fed. Returns the number of complete frames
    # decoded, or -1 when the UART had nothing (machine.UART.readinto gives None).
    def pump(self, uart, chunk):
        n = uart.readinto(chunk)
        if not n:
            return -1
        got = 0
        for i in range(n):
            if self.feed(chunk[i]):
                self.on_frame()
                got += 1
        return got

    # Read until the newest complete frame is decoded: keep reading while bytes are
    # waiting (an active-mode sensor's old frames queue up in the UART buffer between
    # samples; the last one is the freshest), stop at the first pause after a frame.
    # Each call starts a fresh search: half a frame left from the last call is stale (the
    # UART may have dropped bytes since), never glued to what comes now.
    # No frame within timeout_ms: SensorError "<name>: checksum" if frames came but all
    # failed their check, "<name>: timeout" if nothing usable came at all.
    def read_frame(self, uart, chunk, clock, timeout_ms, name):
        t0 = clock.ticks_ms()
        self.skipped += self.n
        self.n = 0
        bad0 = self.bad
        got = False
        while True:
            try:
                r = self.pump(uart, chunk)
            except OSError as e:
                raise SensorError("%s: bus (%s)" % (name, e))
            if r > 0:
                got = True
            elif r < 0 and got:
                return
            if clock.ticks_diff(clock.ticks_ms(), t0) >= timeout_ms:
                if got:
                    return
                raise SensorError("%s: %s" % (name, "checksum" if self.bad != bad0 else "timeout"))
            if r < 0:
                clock.sleep_ms(10)
