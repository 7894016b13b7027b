# Store-and-forward on flash: readings waiting for their 2.xx, in a ring buffer of
# fixed-size records in one file, so they survive a reboot or power cut. Same interface as
# the RAM outbox (outbox.py): push(seq, data) -> dropped now (0/1), peek(k=0) -> (seq, view)
# of the k-th oldest or None, pop(), len(), dropped, dropped_seq, full().
#
# Record (slot_size bytes, little endian), one per slot:
#   0   state u8    0xA5 live (waiting), anything else: done (acked, rejected or dropped)
#   1   magic u8    0x4D
#   2   len   u16   bytes of data
#   4   seq   u64   the reading's seq (never reused: orders the records)
#   12  drops u32   readings dropped on overflow so far, this one's overwrite included
#   16  data  [len]
#   16+len crc32 u32 over bytes 1 .. 16+len (the state byte is outside: it changes alone)
# There is no index: at boot every slot is read; a slot whose magic or CRC is wrong is
# empty (never written, or a write cut short). The next write goes after the valid record
# with the highest seq; the queue is the live records in seq order; the drop count is the
# highest `drops`. So nothing can disagree with the records themselves.
#
# Write order of push (a power cut can stop it anywhere):
#   1. the whole record with state 0x00 (a valid but done record, or a torn one = empty)
#   2. the state byte 0xA5, then flush (+ os.sync where the port has it)
# Only after 2 is the reading in the buffer; the node logs `rec` after push returns.
# pop() writes one byte (state 0x00) and flushes without sync: if a power cut undoes it, the
# reading is sent again, a duplicate the gateway drops (protocol.md §1).
# Durability limit: on the unix port there is no os.sync, so "durable" means the bytes
# reached the kernel (survives kill -9, not a host power cut). On ESP32 (littlefs) os.sync
# makes the write reach flash.
import os
import struct

from binascii import crc32

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_DEBUG = const(False)
_LIVE = const(0xA5)
_MAGIC = const(0x4D)
_HDR = const(16)
_CRC = const(4)
# the record header "<BBHQI": a literal where used (a module-level name is a qstr)


class RingError(Exception):
    pass


class FlashRing:
    # f: an open binary file (r+b) or a fake with seek/write/readinto/flush; tests inject
    # one that stops writing at any byte (a power cut).
    def __init__(self, f, slots=64, slot_size=256, sync=None):
        if slots < 2 or not _HDR + _CRC < slot_size < 0x10000:
            raise ValueError("bad ring geometry")
        self._f = f
        self._slots = slots
        self._size = slot_size
        self._sync = sync
        self._buf = bytearray(slot_size)
        self._mv = memoryview(self._buf)
        self._one = bytearray(1)
        self.dropped = 0
        self.dropped_seq = -1
        self.empty_slots = 0  # at boot: slots without a valid record (never written or torn)
        self._pk = -1  # the last peek(k): k and its slot (push and pop forget it)
        self._pk_i = 0
        self._scan()

    def capacity(self):
        return self._slots

    def max_data(self):
        return self._size - _HDR - _CRC

    def __len__(self):
        return self._n

    def full(self):
        return self._n == self._slots

    # the highest seq ever stored here (-1: none): seqs up to it are used
    def top(self):
        return self._top

    def _read(self, i):
        # slot i into _buf; -> (state, seq, drops, len) or None when not a valid record
        f = self._f
        f.seek(i * self._size)
        n = f.readinto(self._buf)
        if n is None or n < _HDR + _CRC:
            return None
        b = self._buf
        st, magic, k, seq, drops = struct.unpack_from("<BBHQI", b, 0)
        if magic != _MAGIC or _HDR + k + _CRC > n:
            return None
        if crc32(self._mv[1 : _HDR + k]) & 0xFFFFFFFF != struct.unpack_from("<I", b, _HDR + k)[0]:
            return None
        return st, seq, drops, k

    def _scan(self):
        top = -1  # highest seq of any valid record
        top_i = -1
        live = 0
        oldest = -1
        oldest_i = -1
        drops = 0
        empty = 0
        for i in range(self._slots):
            r = self._read(i)
            if r is None:
                empty += 1
                continue
            st, seq, d, k = r
            if seq > top:
                top = seq
                top_i = i
            if d > drops:
                drops = d
            if st == _LIVE:
                live += 1
                if oldest < 0 or seq < oldest:
                    oldest = seq
                    oldest_i = i
        self._head = (top_i + 1) % self._slots  # next slot to write
        self._tail = oldest_i if live else self._head  # oldest live
        self._n = live
        self._top = top
        self.dropped = drops
        self.empty_slots = empty

    # Is slot i live? (reads its header: the queue skips slots that are not)
    def _live(self, i):
        r = self._read(i)
        return r is not None and r[0] == _LIVE

    def _next_live(self, i):
        # the first live slot from i on (the queue is contiguous unless a slot rotted)
        for _ in range(self._slots):
            if self._live(i):
                return i
            i = (i + 1) % self._slots
        return i

    def _write_at(self, off, data):
        f = self._f
        f.seek(off)
        f.write(data)

    # Store a reading durably. Returns 1 if the oldest waiting one was dropped to make room.
    def push(self, seq, data):
        k = len(data)
        if k > self.max_data():
            raise ValueError("reading of %d bytes > ring slot of %d" % (k, self.max_data()))
        if seq <= self._top:
            raise RingError("seq %d not above %d" % (seq, self._top))
        i = self._head
        dropped = 0
        self._pk = -1
        if self._live(i):
            # full: the oldest is in the slot we are about to write
            self.dropped_seq = struct.unpack_from("<BBHQI", self._buf, 0)[3]
            dropped = 1
        b = self._buf
        drops = self.dropped + dropped
        struct.pack_into("<BBHQI", b, 0, 0, _MAGIC, k, seq, drops)
        self._mv[_HDR : _HDR + k] = data
        struct.pack_into("<I", b, _HDR + k, crc32(self._mv[1 : _HDR + k]) & 0xFFFFFFFF)
        off = i * self._size
        self._write_at(off, self._mv[: _HDR + k + _CRC])  # 1. done-state record
        self._one[0] = _LIVE
        self._write_at(off, self._one)  # 2. live
        self._f.flush()
        if self._sync:
            self._sync()
        self.dropped = drops
        self._top = seq
        self._head = (i + 1) % self._slots
        if dropped:
            self._tail = self._next_live(self._head) if self._n > 1 else i
        else:
            if not self._n:
                self._tail = i
            self._n += 1
        if _DEBUG:
            print("ring push", seq, "slot", i, "n", self._n)
        return dropped

    # (seq, memoryview of the k-th oldest reading's data; k = 0: the oldest) or None; valid
    # until the next call. Peeking k = 0, 1, 2, ... in turn reads each slot once (a node
    # packing its backlog into one request).
    def peek(self, k=0):
        if k >= self._n:
            return None
        if k:
            if self._pk == k - 1:
                i, left = self._pk_i, 1
            elif self.peek() is None:
                return None
            else:
                i, left = self._pk_i, k
            while left:
                i = (i + 1) % self._slots
                if i == self._head:  # past the newest: slots rotted since boot
                    return None
                r = self._read(i)
                if r is not None and r[0] == _LIVE:
                    left -= 1
            self._pk = k
            self._pk_i = i
            # r is set: left >= 1, the loop ran
            return r[1], self._mv[_HDR : _HDR + r[3]]  # type: ignore[possibly-undefined]
        i = self._tail
        r = self._read(i)
        if r is None or r[0] != _LIVE:
            # rotted since boot: find the next live one
            i = self._tail = self._next_live(i)
            r = self._read(i)
            if r is None or r[0] != _LIVE:
                self._n = 0
                return None
        self._pk = 0
        self._pk_i = i
        return r[1], self._mv[_HDR : _HDR + r[3]]

    def pop(self):
        if not self._n:
            raise IndexError("ring empty")
        i = self._tail
        self._pk = -1
        self._one[0] = 0
        self._write_at(i * self._size, self._one)
        self._f.flush()
        self._n -= 1
        self._tail = self._next_live((i + 1) % self._slots) if self._n else self._head


# Open (or create) the ring file: a new file is `slots` empty slots (zeros); a file of
# another geometry is refused rather than misread.
def open_ring(path, slots=64, slot_size=256):
    size = slots * slot_size
    try:
        st = os.stat(path)
        if st[6] != size:
            raise RingError("%s is %d bytes, not %d x %d: remove it or fix the config"
                            % (path, st[6], slots, slot_size))
    except OSError:
        # created under another name and renamed: a cut leaves no half-sized ring
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            z = bytes(slot_size)
            for _ in range(slots):
                f.write(z)
        os.rename(tmp, path)
    f = open(path, "r+b")
    return FlashRing(f, slots, slot_size, getattr(os, "sync", None))
