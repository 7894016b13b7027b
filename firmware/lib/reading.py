# A reading as it waits in the store-and-forward buffer, and the time it was taken.
#
# Stored data (what ring.py / outbox.py hold for one seq), little endian:
#   0  bt    u32  sample time, Unix seconds; 0 = the node did not know the time yet
#   4  mono  u32  board.mono_ms() at sample time (a ticks value of this power cycle)
#   8  boot  u16  board.boot_id: which power cycle `mono` belongs to
#   10 nrec  u8   number of measurement records
#   11 -     u8   0 (reserved)
#   12 the measurement records, CBOR maps exactly as in the SenML pack (protocol.md §2)
# The seq record (with bt) is put in front when the reading is sent: a reading taken before
# the node learned the time gets its bt computed from `mono` once the time is known (same
# power cycle); from an earlier power cycle it goes without bt and the gateway stamps its
# receive time (protocol.md §2), since ticks do not survive a power loss.
import struct

import cbor

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_PREFIX = const(12)
# SenML labels (RFC 8428 §6, as lib/senml.py has them): constants compiled into the code,
# so the node does not load senml.py (its code and names would take heap for six numbers)
_N = const(0)
_U = const(1)
_V = const(2)
_VS = const(3)
_VB = const(4)
_BN = const(-2)
_BT = const(-3)


# Encode the stored form of a reading into enc; returns a view valid until enc is reused.
def store(enc, bt, mono, boot, measurements):
    enc.reset()
    enc.raw(struct.pack("<IIHBB", bt or 0, mono & 0xFFFFFFFF, boot & 0xFFFF, len(measurements), 0))
    for name, unit, value in measurements:
        enc.map(2 if unit is None else 3)
        enc.int(_N)
        enc.text(name)
        if unit is not None:
            enc.int(_U)
            enc.text(unit)
        if value is True or value is False:
            enc.int(_VB)
            enc.bool(value)
        elif isinstance(value, str):
            enc.int(_VS)
            enc.text(value)
        elif isinstance(value, float):
            enc.int(_V)
            enc.float(value)
        else:
            enc.int(_V)
            enc.int(value)
    return enc.getvalue()


# -> (bt or 0, mono, boot, nrec)
def header(data):
    return struct.unpack_from("<IIHBB", data, 0)[:4]


# The SenML pack to send (byte for byte what senml.encode_reading makes of the same values).
def pack(enc, device_id, seq, bt, data):
    enc.reset()
    enc.array(1 + data[10])
    append(enc, device_id, seq, bt, data)
    return enc.getvalue()


# SenML records of a stored reading (1 + data[10]): its seq record, then its measurements.
# A pack of several readings (protocol.md §2) is enc.array(sum of those) then one append
# per reading, oldest first.
def append(enc, device_id, seq, bt, data):
    enc.map(3 if bt is None else 4)
    enc.int(_N)
    enc.text("seq")
    enc.int(_V)
    enc.int(seq)
    enc.int(_BN)
    dev = cbor.utf8(device_id)
    enc.head(3, len(dev) + 1)
    enc.raw(dev)
    enc.raw(b":")
    if bt is not None:
        enc.int(_BT)
        enc.int(bt)
    enc.raw(data[_PREFIX:])


# At most the bytes a stored reading takes in a pack: its measurements as stored, plus the
# seq record (map, "seq", a u64 seq, the bn head, "<device>:", a u32 bt: 27 + the id).
def size(device_id, data):
    return len(data) - _PREFIX + 27 + len(device_id)


# The node's idea of the time: the board's clock if it has a set one, else learned from the
# gateway (the 2.04 payload {1: unix time}) and carried on with the monotonic ms counter.
class TimeBase:
    def __init__(self, board):
        self._board = board
        self._clock = board.clock
        self._ref_t = None  # gateway time ...
        self._ref_ms = 0  # ... at this board.mono_ms()
        self.learned = 0  # how often

    def known(self):
        return self._ref_t is not None or self._board.time() is not None

    def now(self):
        t = self._board.time()
        if t is not None:
            return t
        return self.at(self._board.mono_ms())

    # time at a mono_ms value of this power cycle (None while unknown)
    def at(self, mono):
        if self._ref_t is None:
            return None
        # the gateway's whole second t stands for [t, t + 1): take t + 0.5, then round
        return self._ref_t + (self._clock.ticks_diff(mono, self._ref_ms) + 1000) // 1000

    def learn(self, t):
        self._ref_t = t
        self._ref_ms = self._board.mono_ms()
        self.learned += 1
        setter = getattr(self._board, "set_time", None)
        if setter:
            setter(t)

    # bt for a stored reading, or None (sent without: the gateway stamps it)
    def stamp(self, data):
        bt, mono, boot, _ = header(data)
        if bt:
            return bt
        if boot != self._board.boot_id & 0xFFFF:
            return None
        return self.at(mono)
