# outbox under the real MicroPython: FIFO order, copies, overflow drops the oldest.
import mptest
from mptest import eq, raises
from outbox import Outbox


def test_fifo_and_copy():
    o = Outbox(slots=4, slot_size=8)
    buf = bytearray(b"aaa")
    o.push(1, buf)
    buf[0] = ord("z")  # the caller reuses its buffer
    o.push(2, b"bb")
    eq(len(o), 2)
    seq, v = o.peek()
    eq((seq, bytes(v)), (1, b"aaa"))
    o.pop()
    seq, v = o.peek()
    eq((seq, bytes(v)), (2, b"bb"))
    o.pop()
    eq(o.peek(), None)
    raises(IndexError, o.pop)


def test_overflow_drops_oldest_and_counts():
    o = Outbox(slots=3, slot_size=4)
    dropped = [o.push(i, bytes([i])) for i in range(7)]
    eq(dropped, [0, 0, 0, 1, 1, 1, 1])
    eq(o.dropped, 4)
    eq(o.dropped_seq, 3)
    got = []
    while len(o):
        s, v = o.peek()
        got.append((s, bytes(v)))
        o.pop()
    eq(got, [(4, b"\x04"), (5, b"\x05"), (6, b"\x06")])


def test_too_large_refused():
    o = Outbox(slots=2, slot_size=4)
    raises(ValueError, o.push, 1, b"12345")
    eq(len(o), 0)


mptest.run(globals())
