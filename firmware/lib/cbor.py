# CBOR (RFC 8949) for the node: a reusable encoder that writes into one preallocated
# buffer (the send loop encodes every reading without building Python objects first) and a
# strict decoder for what the gateway sends back (downlink commands).
#
# Encoding is deterministic (RFC 8949 §4.2.1): shortest heads, floats in preferred
# serialization, map keys sorted bytewise in value(). The decoder accepts every well-formed
# item (definite and indefinite lengths) but rejects anything malformed with CBORError and
# never allocates more than the remaining input can justify, so a hostile length cannot
# exhaust a node's heap.
import struct

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_MAX_DEPTH = const(16)  # nesting of arrays, maps and tags, decoding and encoding
_BREAK = const(0xFF)


class CBORError(ValueError):
    pass


# Tag, Simple and UNDEFINED (the items beyond Python's own types) and the generic encoder
# behind value()/dumps() are in lib/cbor_obj.py, loaded on first use: the node's send path
# never needs them, and on the unix port loaded code takes heap (firmware/README.md,
# budgets). `cbor.Tag` etc. still work (a module __getattr__, PEP 562).
def __getattr__(name):
    if name in ("Tag", "Simple", "UNDEFINED"):
        import cbor_obj

        return getattr(cbor_obj, name)
    raise AttributeError(name)


def utf8(s):
    # The UTF-8 bytes of a str without copying where the port allows it: MicroPython stores
    # str as UTF-8 and exposes it through the buffer protocol; CPython needs encode().
    try:
        return memoryview(s)
    except TypeError:
        return s.encode()


# ---------------------------------------------------------------------------- encoder


class Encoder:
    def __init__(self, size=256):
        self._buf = bytearray(size)
        self._mv = memoryview(self._buf)  # made once: getvalue() then costs one slice
        self._n = 0

    def reset(self):
        self._n = 0

    def getvalue(self):
        return self._mv[: self._n]

    def _room(self, k):
        # grow by doubling: a reused encoder settles at the size of the largest message
        need = self._n + k
        if need > len(self._buf):
            size = len(self._buf) * 2
            if size < need:
                size = need
            nb = bytearray(size)
            nb[: self._n] = self._mv[: self._n]
            self._buf = nb
            self._mv = memoryview(nb)

    # Low-level: a head with major type 0..7 and argument n (0 <= n < 2**64).
    def head(self, major, n):
        self._room(9)
        b = self._buf
        p = self._n
        mt = major << 5
        if n < 24:
            b[p] = mt | n
            self._n = p + 1
        elif n < 0x100:
            b[p] = mt | 24
            b[p + 1] = n
            self._n = p + 2
        elif n < 0x10000:
            # the struct formats are the decoder's: every distinct one is a qstr on the heap
            b[p] = mt | 25
            struct.pack_into(">H", b, p + 1, n)
            self._n = p + 3
        elif n < 0x100000000:
            b[p] = mt | 26
            struct.pack_into(">I", b, p + 1, n)
            self._n = p + 5
        else:
            b[p] = mt | 27
            struct.pack_into(">Q", b, p + 1, n)
            self._n = p + 9

    # Low-level: raw bytes (the caller wrote the head).
    def raw(self, data):
        k = len(data)
        self._room(k)
        self._buf[self._n : self._n + k] = data
        self._n += k

    def _byte(self, v):
        self._room(1)
        self._buf[self._n] = v
        self._n += 1

    def int(self, v):
        if v >= 0:
            if v >> 64:
                self._bignum(2, v)
            else:
                self.head(0, v)
        else:
            n = -1 - v
            if n >> 64:
                self._bignum(3, n)
            else:
                self.head(1, n)

    def _bignum(self, tag, n):
        # beyond 64 bits: tag 2/3 around the minimal big-endian magnitude (RFC 8949 §3.4.3)
        k = 0
        t = n
        while t:
            t >>= 8
            k += 1
        self.head(6, tag)
        self.head(2, k)
        self.raw(n.to_bytes(k, "big"))

    def float(self, v):
        self._room(9)
        b = self._buf
        p = self._n
        if v != v:
            # one canonical NaN, as RFC 8949 §4.2.2 suggests
            b[p] = 0xF9
            b[p + 1] = 0x7E
            b[p + 2] = 0
            self._n = p + 3
            return
        # Write float64 first, then decide from its bits (small-int arithmetic only: no
        # heap, and no trust in the port's struct 'e', which packs 100000.0 as a NaN and
        # rounds some subnormals wrongly) whether float16 or float32 holds it exactly.
        b[p] = 0xFB
        struct.pack_into(">d", b, p + 1, v)
        self._n = p + 9
        b1 = b[p + 1]
        b2 = b[p + 2]
        sign = b1 >> 7
        exp = (b1 & 0x7F) << 4 | b2 >> 4
        # the 52 mantissa bits as two 26-bit halves (small ints even on 32-bit ports)
        hi = (b2 & 0xF) << 22 | b[p + 3] << 14 | b[p + 4] << 6 | b[p + 5] >> 2
        lo = (b[p + 5] & 3) << 24 | b[p + 6] << 16 | b[p + 7] << 8 | b[p + 8]
        if exp == 0x7FF:  # infinity
            half = sign << 15 | 0x7C00
        elif exp == 0:  # zero; float64 subnormals fit nothing shorter
            if hi or lo:
                return
            half = sign << 15
        else:
            if lo:
                return  # more than 26 significant mantissa bits: float64 it is
            e = exp - 1023
            # each shorter format keeps k leading mantissa bits at this exponent (fewer
            # in its subnormal range); the value fits if the bits after those are zero
            if -24 <= e <= 15:
                k = 10 if e >= -14 else e + 24
                if not hi & ((1 << (26 - k)) - 1):
                    if e >= -14:
                        half = sign << 15 | (e + 15) << 10 | hi >> 16
                    else:  # subnormal: m * 2**-24 with the implicit 1 shifted in
                        half = sign << 15 | 1 << k | hi >> (26 - k)
                    b[p] = 0xF9
                    b[p + 1] = half >> 8
                    b[p + 2] = half & 0xFF
                    self._n = p + 3
                    return
            if -149 <= e <= 127:
                k = 23 if e >= -126 else e + 149
                if not hi & ((1 << (26 - k)) - 1):
                    b[p] = 0xFA
                    struct.pack_into(">f", b, p + 1, v)  # exact: just checked
                    self._n = p + 5
            return
        b[p] = 0xF9
        b[p + 1] = half >> 8
        b[p + 2] = half & 0xFF
        self._n = p + 3

    def text(self, s):
        data = utf8(s)
        self.head(3, len(data))
        self.raw(data)

    def bytes(self, data):
        self.head(2, len(data))
        self.raw(data)

    def bool(self, v):
        self._byte(0xF5 if v else 0xF4)

    def none(self):
        self._byte(0xF6)

    def array(self, n):
        self.head(4, n)

    def map(self, n):
        self.head(5, n)

    # Any value: None, bool, int, float, str, bytes, list/tuple, dict (keys sorted
    # bytewise), Tag, Simple, UNDEFINED (lib/cbor_obj.py)
    def value(self, obj, _depth=0):
        import cbor_obj

        cbor_obj.encode(self, obj, _depth)


def _half_value(h):
    # float16 bits -> float, exactly (struct 'e' is unreliable on the port, see float())
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 0x1F:
        v = float("nan") if mant else float("inf")
    elif exp == 0:
        v = mant / 16777216.0  # mant * 2**-24
    else:
        v = (1024 + mant) * 2.0 ** (exp - 25)
    return -v if h & 0x8000 else v


def dumps(obj):
    e = Encoder()
    e.value(obj)
    return bytes(e.getvalue())


# ---------------------------------------------------------------------------- decoder


def _utf8_valid(b, i, end):
    # RFC 3629 §4 exactly: no overlongs, no surrogates, nothing above U+10FFFF (the port's
    # own decoder accepts all three)
    while i < end:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= c <= 0xDF:
            n = 1
        elif c == 0xE0:
            n = 2
            lo = 0xA0
        elif 0xE1 <= c <= 0xEF:
            n = 2
            if c == 0xED:
                hi = 0x9F
        elif c == 0xF0:
            n = 3
            lo = 0x90
        elif 0xF1 <= c <= 0xF3:
            n = 3
        elif c == 0xF4:
            n = 3
            hi = 0x8F
        else:
            return False
        if i + n >= end:  # the sequence runs past the string
            return False
        c = b[i + 1]
        if c < lo or c > hi:
            return False
        for j in range(i + 2, i + n + 1):
            c = b[j]
            if c < 0x80 or c > 0xBF:
                return False
        i += n + 1
    return True


class _Decoder:
    def __init__(self, buf):
        self.b = memoryview(buf)
        self.p = 0
        self.end = len(self.b)

    def _take(self, k):
        # the position of k more bytes; refuses before anything is allocated for them
        p = self.p
        if k > self.end - p:
            raise CBORError("truncated: %d bytes claimed, %d left" % (k, self.end - p))
        self.p = p + k
        return p

    def _head(self):
        # -> (major, additional info, argument or None for indefinite)
        ib = self.b[self._take(1)]
        major = ib >> 5
        ai = ib & 31
        if ai < 24:
            return major, ai, ai
        if ai == 24:
            return major, ai, self.b[self._take(1)]
        if ai == 25:
            return major, ai, struct.unpack_from(">H", self.b, self._take(2))[0]
        if ai == 26:
            return major, ai, struct.unpack_from(">I", self.b, self._take(4))[0]
        if ai == 27:
            return major, ai, struct.unpack_from(">Q", self.b, self._take(8))[0]
        if ai == 31 and major in (2, 3, 4, 5, 7):
            return major, ai, None
        raise CBORError("reserved additional information %d (major %d)" % (ai, major))

    def _at_break(self):
        if self.p >= self.end:
            raise CBORError("truncated: indefinite item without break")
        if self.b[self.p] == _BREAK:
            self.p += 1
            return True
        return False

    def _string(self, major, n):
        p = self._take(n)
        if major == 2:
            return bytes(self.b[p : p + n])
        if not _utf8_valid(self.b, p, p + n):
            raise CBORError("invalid UTF-8 in text string")
        return str(self.b[p : p + n], "utf-8")

    def item(self, depth):
        if depth >= _MAX_DEPTH:
            raise CBORError("nested deeper than %d levels" % _MAX_DEPTH)
        major, ai, arg = self._head()
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2 or major == 3:
            if arg is not None:
                return self._string(major, arg)
            # indefinite: definite chunks of the same major type until break
            parts = []
            while not self._at_break():
                m, _, n = self._head()
                if m != major or n is None:
                    raise CBORError("bad chunk in indefinite-length string")
                parts.append(self._string(major, n))
            return (b"" if major == 2 else "").join(parts)
        if major == 4:
            if arg is None:
                out = []
                while not self._at_break():
                    out.append(self.item(depth + 1))
                return out
            if arg > self.end - self.p:  # every item takes at least one byte
                raise CBORError("truncated: array of %d items" % arg)
            return [self.item(depth + 1) for _ in range(arg)]
        if major == 5:
            out = {}  # type: ignore[assignment]  # a map, not the array above
            if arg is None:
                while not self._at_break():
                    self._pair(out, depth)
            else:
                if arg > (self.end - self.p) // 2:
                    raise CBORError("truncated: map of %d pairs" % arg)
                for _ in range(arg):
                    self._pair(out, depth)
            return out
        if major == 6:
            value = self.item(depth + 1)
            if arg == 2 or arg == 3:
                if not isinstance(value, bytes):
                    raise CBORError("bignum tag %d needs a byte string" % arg)
                n = int.from_bytes(value, "big") if value else 0
                return n if arg == 2 else -1 - n
            import cbor_obj

            return cbor_obj.Tag(arg, value)
        # major 7
        if ai < 20:
            import cbor_obj

            return cbor_obj.Simple(ai)
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai == 22:
            return None
        if ai == 23:
            import cbor_obj

            return cbor_obj.UNDEFINED
        if ai == 24:
            if arg < 32:  # RFC 8949 §3.3: not well-formed
                raise CBORError("simple value %d in two-byte form" % arg)
            import cbor_obj

            return cbor_obj.Simple(arg)
        if ai == 25:
            return _half_value(arg)
        if ai == 26:
            return struct.unpack_from(">f", self.b, self.p - 4)[0]
        if ai == 27:
            return struct.unpack_from(">d", self.b, self.p - 8)[0]
        raise CBORError("unexpected break")

    def _pair(self, out, depth):
        k = self.item(depth + 1)
        v = self.item(depth + 1)
        try:
            if k in out:
                raise CBORError("duplicate map key %r" % (k,))
            out[k] = v
        except TypeError:  # a list/dict/... as key: well-formed but not representable
            raise CBORError("unhashable map key")


def loads(buf):
    d = _Decoder(buf)
    obj = d.item(0)
    if d.p != d.end:
        raise CBORError("%d bytes after the item" % (d.end - d.p))
    return obj
