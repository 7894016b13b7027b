# seqstore under the real MicroPython: seq never goes backwards across restarts, crashes
# between tmp-write and rename, and damaged files (refuse to start rather than reuse seqs).
import os

import mptest
import seqstore
from mptest import eq, raises

_n = [0]


def fresh_dir():
    # a new empty directory per test, under /tmp
    _n[0] += 1
    import binascii

    d = "/tmp/mp-seqstore-%s-%d" % (binascii.hexlify(os.urandom(4)).decode(), _n[0])
    try:
        os.mkdir(d)
    except OSError:
        for f in os.listdir(d):
            os.remove(d + "/" + f)
    return d


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def test_fresh_starts_at_zero_and_reserves_in_blocks():
    d = fresh_dir()
    s = seqstore.SeqStore(d, block=16)
    eq(s.peek(), 0)
    eq([s.next() for _ in range(20)], list(range(20)))
    eq(s.writes, 2)  # 0..15, then 16..31
    eq(seqstore.SeqStore(d).peek(), 32)


def test_restart_never_reuses():
    d = fresh_dir()
    seen = []
    for run in range(5):
        s = seqstore.SeqStore(d, block=4)
        for _ in range(run + 1):  # stop mid-block: the rest of the block is skipped
            seen.append(s.next())
    eq(sorted(seen), seen)
    eq(len(set(seen)), len(seen))
    eq(seen[0], 0)


def test_stale_tmp_ignored():
    d = fresh_dir()
    s = seqstore.SeqStore(d, block=8)
    s.next()
    # a crash after writing the tmp file, before the rename: garbage and a lower value
    write(d + "/seq.tmp", b"3 deadbe")
    write(d + "/seq.bak.tmp", b"")
    s2 = seqstore.SeqStore(d, block=8)
    eq(s2.next(), 8)
    eq(s2.damaged, False)


class CrashFS:
    # os, but the k-th rename raises (a power cut at that moment)
    def __init__(self, k):
        self.k = k
        self.calls = 0

    def stat(self, p):
        return os.stat(p)

    def remove(self, p):
        return os.remove(p)

    def rename(self, a, b):
        self.calls += 1
        if self.calls == self.k:
            raise KeyboardInterrupt  # not OSError: nothing may catch it
        return os.rename(a, b)


def test_crash_at_every_rename():
    for k in (1, 2, 3, 4):
        d = fresh_dir()
        s = seqstore.SeqStore(d, block=4, fs=CrashFS(k))
        handed = []
        try:
            for _ in range(10):
                handed.append(s.next())
        except KeyboardInterrupt:
            pass
        s2 = seqstore.SeqStore(d, block=4)
        n = s2.next()
        eq(all(n > h for h in handed), True, "crash at rename %d: %d after %r" % (k, n, handed))


def test_one_damaged_copy_uses_the_other():
    d = fresh_dir()
    s = seqstore.SeqStore(d, block=10)
    for _ in range(12):
        s.next()  # mark 20
    write(d + "/seq", b"")  # emptied by a bad flash write
    s2 = seqstore.SeqStore(d, block=10)
    eq(s2.damaged, True)
    eq(s2.next(), 20)
    eq(s2.damaged, False)  # both rewritten
    write(d + "/seq.bak", b"20 00000000\n")  # checksum wrong
    eq(seqstore.SeqStore(d).peek(), 30)


def test_both_damaged_refuses():
    d = fresh_dir()
    s = seqstore.SeqStore(d)
    s.next()
    write(d + "/seq", b"16 0000")
    write(d + "/seq.bak", b"\x00\x00")
    raises(seqstore.SeqStoreError, seqstore.SeqStore, d)
    os.remove(d + "/seq.bak")
    raises(seqstore.SeqStoreError, seqstore.SeqStore, d)  # one damaged, other missing
    seqstore.write_mark(d, 1000)  # the operator's repair
    eq(seqstore.SeqStore(d).next(), 1000)


def test_truncated_digits_detected():
    d = fresh_dir()
    seqstore.write_mark(d, 123456)
    with open(d + "/seq", "rb") as f:
        good = f.read()
    write(d + "/seq", good[:2] + good[3:])  # "12456 <crc of 123456>"
    eq(seqstore.SeqStore(d).peek(), 123456)  # backup wins, damage noticed
    eq(seqstore.SeqStore(d).damaged, True)


mptest.run(globals())
