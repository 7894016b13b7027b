# What the three LoRa radios (sx127x.py, sx126x.py and the emulated lora_radio.py) share,
# so each of them carries only its own chip's commands: the modulation the last
# configure() set (the airtime of a packet follows from it), the payload length check,
# the reset pulse, the wait for an IRQ flag, and the tables and registers decoded the same
# way on both chips.
import time

from transports import airtime


class RadioError(OSError):
    pass


# the chip's code for bw_hz from its ((hz, code), ...) table
def bw_code(table, bw_hz):
    for hz, c in table:
        if hz == bw_hz:
            return c
    raise ValueError("bandwidth %d Hz not supported" % bw_hz)


# a packet's SNR as both chips report it (two's complement, 0.25 dB steps) -> dB
def snr_db(raw):
    return (raw - 256 if raw > 127 else raw) // 4


def payload_len(buf):
    n = len(buf)
    if not 0 < n <= 255:
        raise ValueError("LoRa payload is 1..255 bytes")
    return n


class Radio:
    # sleep_ms / ticks_ms: the time module's, or a fake clock's in tests. A chip driver
    # gives irq_status() (its IRQ flags) and _clear() (clears them and irq_seen).
    def __init__(self, sleep_ms=None, ticks_ms=None):
        self._sleep_ms = sleep_ms or time.sleep_ms
        self._ticks = ticks_ms or time.ticks_ms
        self.irq_seen = False  # set by the interrupt handler, which only records
        self.rssi = 0
        self.snr = 0
        self._modulation(7, 125000, 1, 8, True)

    def _modulation(self, sf, bw_hz, cr, preamble, crc):
        self.sf = sf
        self.bw_hz = bw_hz
        self.cr = cr
        self.preamble = preamble
        self.crc = crc

    def airtime_us(self, n):
        return airtime.airtime_us(n, self.sf, self.bw_hz, self.cr, self.preamble, self.crc)

    # the reset pin low for over 100 us, then 5 ms for the chip to start (both datasheets)
    def _reset(self, pin):
        pin.value(0)
        self._sleep_ms(1)
        pin.value(1)
        self._sleep_ms(5)

    # -> the IRQ flags once one of mask is up (then cleared), 0 after timeout_ms
    def _wait(self, mask, timeout_ms):
        t0 = self._ticks()
        while True:
            flags = self.irq_status()  # type: ignore[attr-defined]  # each radio's own
            if flags & mask:
                self._clear()  # type: ignore[attr-defined]  # each radio's own
                return flags
            if time.ticks_diff(self._ticks(), t0) >= timeout_ms:
                return 0
            self._sleep_ms(1)
