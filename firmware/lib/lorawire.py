# The LoRa compact frame (docs/protocol-lora.md): what a node sends instead of a SenML pack
# where every byte costs airtime (AS923: 400 ms dwell limit, 24 bytes at SF10).
#
#   0      profile id      u8 (1 env, 2 bin, 3 light; 0 and 128..255 reserved)
#   1..2   short id        u16 big endian (the registry's short_id, contract C4/C5)
#   3..    seq             unsigned LEB128 varint, minimal, 1..9 bytes, < 2**63
#   ..     values          CBOR array: one scaled integer (or null) per profile metric, in
#                          the profile's order, then optionally the age of the reading in
#                          seconds (uint; sample time = receive time - age), then optionally
#                          the command results: a map {cid: code}, code = index into
#                          RESULTS or the result itself as text (at most TEXT_MAX bytes)
#   n-4..  MIC             first 4 bytes of AES-CMAC (RFC 4493) over bytes 0..n-5,
#                          key = the device's 16-byte key
#
# A metric is sent as k = round((value - offset) / step); the gateway computes
# offset + k * step. Offsets sit in the middle of the usual range so most values need a
# one- or two-byte CBOR integer. null means "no value": a failed sensor (the gateway
# lists it in the "err" measurement, as the CoAP path does) or, for an optional metric, not
# present this time. The table below is kept equal to the gateway's
# machi_gateway/lora/profiles.json by a test (tests/mp/test_lorawire.py, gateway tests).
import struct

import cbor
from aes_util import absorb, ecb as aes_ecb

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


MIC_LEN = const(4)
HEADER_MAX = const(12)  # profile 1 + short id 2 + seq varint up to 9
_BLOCK = const(16)
_SEQ_LIMIT = 1 << 63

NUM = "num"
BOOL = "bool"
ENUM = "enum"  # k = index into values
FLAGS = "flags"  # k = bit mask over values (bit i = values[i]); 0 -> absent

# id, name, metrics: (name, unit, kind, step, offset, values, optional)
PROFILES = (
    (1, "env", (
        ("temp", "Cel", NUM, 0.25, 20, None, False),
        ("hum", "%RH", NUM, 1, 50, None, False),
        ("pres", "Pa", NUM, 50, 100000, None, False),
        ("pm25", "ug/m3", NUM, 1, 12, None, False),
        ("pm10", "ug/m3", NUM, 1, 20, None, False),
        ("lux", "lx", NUM, 1, 0, None, False),
        ("bat", "V", NUM, 0.02, 3.7, None, False),
    )),
    (2, "bin", (
        ("fill", "%", NUM, 1, 0, None, False),
        ("temp", "Cel", NUM, 0.25, 20, None, False),
        ("tilt", None, BOOL, 1, 0, None, False),
        ("bat", "V", NUM, 0.02, 3.7, None, False),
        ("event", None, FLAGS, 1, 0, ("fire", "full", "emptied", "tilt", "upright"), True),
    )),
    (3, "light", (
        ("lamp", None, BOOL, 1, 0, None, False),
        ("dim", "%", NUM, 1, 0, None, False),
        ("lux", "lx", NUM, 1, 0, None, False),
        ("power", "W", NUM, 0.25, 0, None, False),
        ("motion", None, BOOL, 1, 0, None, False),
        ("mode", None, ENUM, 1, 0, ("auto", "on", "off"), True),
    )),
)


# Command results ("cmd/<cid>" measurements, node.py) as one-byte codes: the usual ones.
# Any other result travels as text. Kept equal to profiles.json "results" by the same tests.
RESULTS = ("ok", "ok:pending", "err:stale", "err:unknown", "err:args", "err:range",
           "err:unsupported", "err:key", "err:value", "err:level", "err:mode", "err:type")
TEXT_MAX = const(24)  # bytes of a result sent as text (longer ones are cut)
_MAX_RESULTS = const(8)  # per frame (node.py keeps at most 8 waiting)


class FrameError(ValueError):
    pass


def profile(name_or_id):
    for p in PROFILES:
        if p[0] == name_or_id or p[1] == name_or_id:
            return p
    raise FrameError("no LoRa profile %r" % (name_or_id,))


# ---------------------------------------------------------------- AES-CMAC (RFC 4493)


def _dbl(src, dst):
    # dst = src << 1 in GF(2^128), reduced by R_b = 0x87 (RFC 4493 §2.3)
    carry = 0
    for i in range(15, -1, -1):
        b = src[i]
        dst[i] = ((b << 1) & 0xFF) | carry
        carry = b >> 7
    if carry:
        dst[15] ^= 0x87


class Cmac:
    # AES-CMAC with one key; buffers made once. mac(data) -> the 16-byte tag in a buffer
    # that the next call overwrites. ecb: optional object with encrypt(in16, out16).
    def __init__(self, key, ecb=None):
        if len(key) != 16:
            raise ValueError("AES-CMAC key must be 16 bytes")
        self._ecb = ecb or aes_ecb(bytes(key))
        self.k1 = bytearray(_BLOCK)
        self.k2 = bytearray(_BLOCK)
        self._x = bytearray(_BLOCK)
        self._y = bytearray(_BLOCK)
        self._ecb.encrypt(bytes(_BLOCK), self._x)  # L = AES(K, 0^128)
        _dbl(self._x, self.k1)
        _dbl(self.k1, self.k2)

    def mac(self, data):
        x = self._x
        y = self._y
        for i in range(_BLOCK):
            x[i] = 0
        n = len(data)
        nblocks = (n + _BLOCK - 1) // _BLOCK
        if nblocks == 0:
            nblocks = 1
        last = (nblocks - 1) * _BLOCK
        for off in range(0, last, _BLOCK):
            absorb(self._ecb, x, data, off)
        # the last block: whole -> xor K1; partial -> padded with 10*, xor K2
        rest = n - last
        sub = self.k1 if rest == _BLOCK else self.k2
        for i in range(_BLOCK):
            if i < rest:
                b = data[last + i]
            elif i == rest:
                b = 0x80
            else:
                b = 0
            y[i] = b ^ sub[i]
        absorb(self._ecb, x, y)
        return x


# ---------------------------------------------------------------- encoder


def put_varint(buf, pos, n):
    # unsigned LEB128, minimal; -> position after it
    if n < 0 or n >= _SEQ_LIMIT:
        raise FrameError("seq %r outside [0, 2**63)" % (n,))
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            buf[pos] = b | 0x80
            pos += 1
        else:
            buf[pos] = b
            return pos + 1


def _scaled(metric, v):
    kind = metric[2]
    if kind == NUM:
        if v is True or v is False or not isinstance(v, (int, float)):
            return None
        return int(round((v - metric[4]) / metric[3]))
    if kind == BOOL:
        return 1 if v else 0
    values = metric[5]
    if kind == ENUM:
        for i in range(len(values)):
            if values[i] == v:
                return i
        return None
    # FLAGS: "fire,full" -> bits; unknown names are dropped rather than invented
    mask = 0
    if isinstance(v, str):
        for part in v.split(","):
            for i in range(len(values)):
                if values[i] == part:
                    mask |= 1 << i
    return mask or None


class FrameEncoder:
    # One device's frames: profile (id or name), short id, 16-byte key. encode() returns
    # a memoryview into a buffer reused by the next call.
    def __init__(self, profile_id, short_id, key, size=64, ecb=None):
        p = profile(profile_id)
        if not 0 <= short_id <= 0xFFFF:
            raise FrameError("short id %r is not a uint16" % (short_id,))
        self.profile_id = p[0]
        self.metrics = p[2]
        self.short_id = short_id
        self._cmac = Cmac(key, ecb)
        self._cbor = cbor.Encoder(size)
        self._buf = bytearray(size)
        self._mv = memoryview(self._buf)

    # measurements: [(name, unit, value), ...] as an app's sample() returns them, with
    # node.py's extras: "cmd/<cid>" results are sent (in the map after the age); "err"
    # follows from the nulls; other names the profile does not know are not sent.
    # age_s: seconds since the sample, for a reading sent late. Results that would not fit
    # the buffer are left out (the gateway offers their command again, node.py reports it
    # again), so a result never costs the reading.
    def encode(self, seq, measurements, age_s=0):
        if age_s < 0:
            raise FrameError("age must be >= 0")
        res = _results(measurements)
        room = len(self._buf) - HEADER_MAX - MIC_LEN
        while True:
            body = self._body(measurements, int(age_s), res)
            if len(body) <= room or not res:
                break
            res.pop()
        b = self._buf
        need = HEADER_MAX + len(body) + MIC_LEN
        if need > len(b):
            raise FrameError("frame of %d bytes does not fit the buffer" % need)
        b[0] = self.profile_id
        struct.pack_into(">H", b, 1, self.short_id)
        p = put_varint(b, 3, seq)
        b[p : p + len(body)] = body
        p += len(body)
        tag = self._cmac.mac(self._mv[:p])
        b[p : p + MIC_LEN] = tag[:MIC_LEN]
        return self._mv[: p + MIC_LEN]

    def _body(self, measurements, age_s, res):
        e = self._cbor
        e.reset()
        metrics = self.metrics
        e.array(len(metrics) + (1 if age_s else 0) + (1 if res else 0))
        for m in metrics:
            k = None
            for item in measurements:
                if item[0] == m[0]:
                    k = _scaled(m, item[2])
                    break
            if k is None:
                e.none()
            else:
                e.int(k)
        if age_s:
            e.int(age_s)
        if res:
            e.map(len(res))
            for cid, code in res:
                e.int(cid)
                if isinstance(code, str):
                    e.text(code)
                else:
                    e.int(code)
        return e.getvalue()


# The "cmd/<cid>" measurements -> [(cid, code or text)], each cid once, at most 8.
def _results(measurements):
    out = []  # type: list
    for item in measurements:
        name = item[0]
        if len(out) >= _MAX_RESULTS or not isinstance(name, str) or name[:4] != "cmd/":
            continue
        try:
            cid = int(name[4:])
        except ValueError:
            continue
        if not 0 <= cid <= 0xFFFF:
            continue
        for o in out:
            if o[0] == cid:
                cid = -1
        if cid < 0:
            continue
        r = item[2]
        if not isinstance(r, str):
            r = "err:bad report"  # what the gateway makes of it over CoAP, shortened
        code = -1
        for i in range(len(RESULTS)):
            if RESULTS[i] == r:
                code = i
                break
        if code >= 0:
            out.append((cid, code))
            continue
        r = r[:TEXT_MAX]
        while len(cbor.utf8(r)) > TEXT_MAX:
            r = r[:-1]
        out.append((cid, r))
    return out
