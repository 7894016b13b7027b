# The reading counter `seq` that never goes backwards, not even across a reboot or power
# loss (docs/protocol.md §1). Writing flash for every reading would wear it out, so numbers
# are reserved in blocks: before handing out any number of a new block, the new high-water
# mark (the first number NOT reserved) is written to flash; after a restart counting
# resumes at the mark, skipping at most block-1 numbers and never reusing one.
#
# Files in the state directory, each one line "<mark> <crc32 hex>\n":
#   seq      the mark
#   seq.bak  a second copy, written after `seq`
# Each is replaced atomically: write "<name>.tmp", then rename it over the old file, so a
# crash leaves either the old or the new content (plus maybe a stale .tmp, ignored and
# overwritten next time). Both copies are durable before a number of the new block is used,
# so either valid copy is a safe starting point; the larger one wins.
#
# Safe behaviour on damage: one copy unreadable -> use the other and rewrite both at the
# next reservation. Both damaged (or one damaged and the other missing) -> SeqStoreError:
# the node refuses to start rather than restart at 0 and reuse seqs the gateway and cloud
# would silently discard as duplicates. Repair: read the device's last seq from the cloud
# (GET /v1/devices) and call write_mark(dir, last_seq + 1) from the REPL.
# Both files missing means a new device (or a wiped one): counting starts at 0.
import binascii
import os

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_DEBUG = const(False)
_MAX_SEQ = const(0x7FFFFFFFFFFFFFFF)  # seq < 2**63
# the two copies: files "seq" and "seq.bak" in the store's directory (literals where used:
# a module-level name is a qstr on the node's heap, firmware/README.md, budgets)


class SeqStoreError(Exception):
    pass


def _crc(digits):
    return binascii.crc32(digits) & 0xFFFFFFFF


def _format(mark):
    d = str(mark).encode()
    return d + b" " + ("%08x" % _crc(d)).encode() + b"\n"


def _parse(data):
    # -> mark, or None when the content is damaged (empty, truncated, bad checksum)
    parts = data.split()
    if len(parts) != 2 or not parts[0].isdigit():
        return None
    try:
        crc = int(parts[1], 16)
    except ValueError:
        return None
    if crc != _crc(parts[0]) or len(parts[1]) != 8:
        return None
    return int(parts[0])


def _join(d, name):
    return d + "/" + name


def _exists(path, fs):
    try:
        fs.stat(path)
        return True
    except OSError:
        return False


def _read(path, fs):
    # -> (present, mark or None)
    if not _exists(path, fs):
        return False, None
    try:
        with open(path, "rb") as f:
            return True, _parse(f.read(64))
    except OSError:
        return True, None


def _replace(path, data, fs):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        fs.rename(tmp, path)
    except OSError:
        # a filesystem that won't rename over an existing file (FAT): not atomic, which
        # is why there are two copies written one after the other
        fs.remove(path)
        fs.rename(tmp, path)


# Operator repair after SeqStoreError: set the mark by hand (both copies).
def write_mark(dirpath, mark, fs=os):
    data = _format(mark)
    _replace(_join(dirpath, "seq"), data, fs)
    _replace(_join(dirpath, "seq.bak"), data, fs)


class SeqStore:
    # fs: the os module or a fake with stat/rename/remove (tests inject crashes)
    def __init__(self, dirpath, block=16, fs=os):
        if block < 1:
            raise ValueError("block must be >= 1")
        self._dir = dirpath
        self._block = block
        self._fs = fs
        self.writes = 0  # flash writes of the mark (wear)
        p_present, p = _read(_join(dirpath, "seq"), fs)
        b_present, b = _read(_join(dirpath, "seq.bak"), fs)
        if p is None and b is None:
            if p_present or b_present:
                raise SeqStoreError(
                    "seq store in %s is damaged (%s%s): refusing to start, a restart at 0 "
                    "would reuse seqs; set the mark with seqstore.write_mark(dir, last_seq+1)"
                    % (dirpath, "seq " if p_present else "", "seq.bak" if b_present else "")
                )
            mark = 0
        else:
            mark = p if b is None or (p is not None and p > b) else b
        self.damaged = (p_present and p is None) or (b_present and b is None)
        self._next = mark  # the next number to hand out
        self._limit = mark  # numbers below this are reserved on flash

    # the number next() will return (without reserving anything)
    def peek(self):
        return self._next

    def next(self):
        n = self._next
        if n >= self._limit:
            self._reserve(n + self._block)
        self._next = n + 1
        return n

    def _reserve(self, mark):
        if mark > _MAX_SEQ:
            raise SeqStoreError("seq exhausted")
        write_mark(self._dir, mark, self._fs)
        self.writes += 1
        self._limit = mark
        self.damaged = False
        if _DEBUG:
            print("seqstore: mark", mark)
