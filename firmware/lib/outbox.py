# Readings waiting for their 2.xx: a bounded FIFO, sent oldest first. When it is full the
# oldest reading is dropped and counted (`dropped`): on a node that cannot reach its
# gateway for long, fresh data is worth more than old.
#
# In RAM for now: `slots` fixed-size slots in one buffer allocated once, so a long outage
# does not fragment the heap. The flash ring buffer (readings survive a reboot) will
# implement the same interface: push(seq, data) -> dropped now (0/1), peek(k=0) -> (seq,
# view) of the k-th oldest or None, pop(), len(), full(), dropped, dropped_seq. A slot holds one reading: an env reading is
# about 120 bytes, so 192 leaves room; a larger one is refused with ValueError.
from array import array

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_DEBUG = const(False)


class Outbox:
    def __init__(self, slots=64, slot_size=192):
        if slots < 1 or not 0 < slot_size < 0x10000:
            raise ValueError("bad outbox geometry")
        self._slots = slots
        self._size = slot_size
        self._buf = memoryview(bytearray(slots * slot_size))
        self._lens = array("H", bytes(2 * slots))
        self._seqs = [0] * slots
        self._head = 0  # index of the oldest
        self._n = 0
        self.dropped = 0  # total dropped on overflow
        self.dropped_seq = -1  # seq of the last one dropped

    def __len__(self):
        return self._n

    def capacity(self):
        return self._slots

    # the next push drops the oldest
    def full(self):
        return self._n == self._slots

    # Copy data in (the caller may reuse its buffer). Returns 1 if the oldest was dropped.
    def push(self, seq, data):
        k = len(data)
        if k > self._size:
            raise ValueError("reading of %d bytes > outbox slot of %d" % (k, self._size))
        dropped = 0
        if self._n == self._slots:
            self.dropped_seq = self._seqs[self._head]
            self.pop()
            self.dropped += 1
            dropped = 1
        i = (self._head + self._n) % self._slots
        o = i * self._size
        self._buf[o : o + k] = data
        self._lens[i] = k
        self._seqs[i] = seq
        self._n += 1
        return dropped

    # (seq, memoryview of the k-th oldest reading; k = 0: the oldest) or None; the view is
    # valid until it is popped
    def peek(self, k=0):
        if k >= self._n:
            return None
        i = (self._head + k) % self._slots
        o = i * self._size
        return self._seqs[i], self._buf[o : o + self._lens[i]]

    def pop(self):
        if not self._n:
            raise IndexError("outbox empty")
        self._head = (self._head + 1) % self._slots
        self._n -= 1
