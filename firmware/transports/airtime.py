# LoRa time on air (Semtech SX1276 datasheet §4.1.1.7, AN1200.13), the AS923 (Japan)
# dwell-time limit and an airtime budget. Integer microseconds throughout: an ESP32 build
# has single-precision floats, and 370.688 ms must come out as exactly 370688 us.
#
#   T_sym      = 2**SF / BW
#   T_preamble = (n_preamble + 4.25) * T_sym
#   n_payload  = 8 + max(ceil((8*PL - 4*SF + 28 + 16*CRC - 20*IH) / (4*(SF - 2*DE))) * (CR + 4), 0)
#   T_packet   = T_preamble + n_payload * T_sym
# PL payload bytes, CRC 1 = payload CRC on, IH 1 = implicit header, CR 1..4 for 4/5..4/8,
# DE 1 = low data rate optimisation, which the radios need when T_sym >= 16 ms (SF11 and
# SF12 at 125 kHz, SF12 at 250 kHz). SF7..SF12 as on the SX127x and SX126x (the SX126x
# counts SF5/SF6 differently; we never use them).
try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


DWELL_AS923_US = const(400000)  # ARIB STD-T108: at most 400 ms per transmission
SF_MIN = const(7)
SF_MAX = const(12)


def symbol_us(sf, bw_hz):
    return (1 << sf) * 1000000 // bw_hz


def ldro(sf, bw_hz):
    return 1 if symbol_us(sf, bw_hz) >= 16000 else 0


def payload_symbols(pl, sf, bw_hz=125000, cr=1, crc=True, implicit=False, de=None):
    if de is None:
        de = ldro(sf, bw_hz)
    num = 8 * pl - 4 * sf + 28 + (16 if crc else 0) - (20 if implicit else 0)
    den = 4 * (sf - 2 * de)
    n = 0
    if num > 0:
        n = (num + den - 1) // den * (cr + 4)
    return 8 + n


# -> time on air in microseconds
def airtime_us(pl, sf, bw_hz=125000, cr=1, preamble=8, crc=True, implicit=False, de=None):
    if not SF_MIN - 1 <= sf <= SF_MAX:
        raise ValueError("SF%d not supported" % sf)
    if not 1 <= cr <= 4:
        raise ValueError("coding rate index 1..4 (4/5..4/8)")
    ts = (1 << sf) * 1000000  # T_sym * bw_hz, kept whole until the one division
    n4 = (preamble * 4 + 17) + 4 * payload_symbols(pl, sf, bw_hz, cr, crc, implicit, de)
    return n4 * ts // (4 * bw_hz)


# The longest payload that one transmission at sf may carry within dwell_us (0 if none).
def max_payload(sf, dwell_us=DWELL_AS923_US, bw_hz=125000, cr=1, preamble=8):
    lo = 0
    hi = 255
    if airtime_us(0, sf, bw_hz, cr, preamble) > dwell_us:
        return 0
    while lo < hi:  # airtime grows with the payload: binary search the last that fits
        mid = (lo + hi + 1) // 2
        if airtime_us(mid, sf, bw_hz, cr, preamble) <= dwell_us:
            lo = mid
        else:
            hi = mid - 1
    return lo


# The slowest spreading factor not above sf_wanted (slower = longer range) that sends pl
# bytes within the dwell limit, or None: the frame cannot go out in one transmission.
def fit_sf(pl, sf_wanted, dwell_us=DWELL_AS923_US, bw_hz=125000, cr=1, preamble=8):
    sf = sf_wanted
    while sf >= SF_MIN:
        if airtime_us(pl, sf, bw_hz, cr, preamble) <= dwell_us:
            return sf
        sf -= 1
    return None


class Budget:
    # A sliding-window airtime budget: at most limit_us of transmission in any window_ms
    # (e.g. 36 s per hour = 1 %). Times are ticks in ms from the caller's clock (a
    # ticks_ms()-style counter, compared with diff so a wrap does not matter). It keeps the
    # last `slots` transmissions; when they are all still inside the window the budget
    # counts as spent until the oldest leaves it, which errs on the quiet side.
    def __init__(self, limit_us, window_ms, slots=32, diff=None):
        self.limit_us = limit_us
        self.window_ms = window_ms
        self._t = [0] * slots
        self._a = [0] * slots
        self._n = 0
        self._head = 0  # index of the oldest entry
        self._diff = diff or _diff

    def _expire(self, now):
        while self._n and self._diff(now, self._t[self._head]) >= self.window_ms:
            self._head = (self._head + 1) % len(self._t)
            self._n -= 1

    def used_us(self, now):
        self._expire(now)
        s = 0
        for i in range(self._n):
            s += self._a[(self._head + i) % len(self._t)]
        return s

    # ms to wait before a transmission of air_us fits the budget (0 = now); -1 never.
    def wait_ms(self, now, air_us):
        if air_us > self.limit_us:
            return -1
        self._expire(now)
        over = self.used_us(now) + air_us - self.limit_us
        full = self._n == len(self._t)
        if over <= 0 and not full:
            return 0
        # free the oldest entries, in order, until both the total and a slot allow it
        k = len(self._t)
        for i in range(self._n):
            j = (self._head + i) % k
            over -= self._a[j]
            if over <= 0:
                return self.window_ms - self._diff(now, self._t[j])
        return -1  # not reached: air_us <= limit_us

    def record(self, now, air_us):
        self._expire(now)
        k = len(self._t)
        if self._n == k:  # caller ignored wait_ms(): drop the oldest rather than grow
            self._head = (self._head + 1) % k
            self._n -= 1
        j = (self._head + self._n) % k
        self._t[j] = now
        self._a[j] = air_us
        self._n += 1


def _diff(a, b):
    return a - b
