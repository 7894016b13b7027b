# CoAP message format (RFC 7252 §3): encode and decode whole messages, nothing more.
# Retransmission, matching and the socket live in coap_client.py; this module is pure so it
# can be tested byte for byte against tests/vectors/coap-messages.json.
try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


# Only the names some module uses: each public name is a qstr and a globals entry on every
# node's heap (firmware/README.md, budgets). Not defined: codes 0.04 DELETE, 2.02 DELETED,
# 2.03 VALID, 4.03 FORBIDDEN; options 1 If-Match, 27 Block1, 28 Size2, 60 Size1; content
# format 0 text/plain.

# message types
CON = const(0)
NON = const(1)
ACK = const(2)
RST = const(3)

# codes: class << 5 | detail
EMPTY = const(0)
GET = const(1)
POST = const(2)
PUT = const(3)
CREATED = const(0x41)
CHANGED = const(0x44)
CONTENT = const(0x45)
BAD_REQUEST = const(0x80)
UNAUTHORIZED = const(0x81)
BAD_OPTION = const(0x82)
NOT_FOUND = const(0x84)
METHOD_NOT_ALLOWED = const(0x85)
REQUEST_ENTITY_TOO_LARGE = const(0x8D)
UNSUPPORTED_CONTENT_FORMAT = const(0x8F)
TOO_MANY_REQUESTS = const(0x9D)  # 4.29, RFC 8516
INTERNAL_SERVER_ERROR = const(0xA0)
SERVICE_UNAVAILABLE = const(0xA3)

# option numbers
URI_HOST = const(3)
ETAG = const(4)
OBSERVE = const(6)
URI_PORT = const(7)
URI_PATH = const(11)
CONTENT_FORMAT = const(12)
MAX_AGE = const(14)
URI_QUERY = const(15)
ACCEPT = const(17)
BLOCK2 = const(23)

# content formats
CF_CBOR = const(60)
CF_SENML_CBOR = const(112)

_VERSION = const(1)
_MARKER = const(0xFF)
_MAX_TOKEN = const(8)
_MAX_OPTION = const(0xFFFF)
_MAX_OPTION_LEN = const(0xFFFF + 269)  # the largest length the 14 form can express


class CoapError(ValueError):
    pass


def code_str(code):
    return "%d.%02d" % (code >> 5, code & 31)


# Minimal big-endian bytes of an unsigned option value (RFC 7252 §3.2: 0 is empty).
def uint_bytes(n):
    if n < 0:
        raise CoapError("negative uint option")
    k = 0
    t = n
    while t:
        t >>= 8
        k += 1
    return n.to_bytes(k, "big") if k else b""


class Message:
    def __init__(self, mtype, code, mid, token=b"", options=None, payload=b""):
        self.mtype = mtype
        self.code = code
        self.mid = mid
        self.token = token
        self.options = options if options is not None else []
        self.payload = payload

    def opt(self, num):
        for n, v in self.options:
            if n == num:
                return v
        return None

    # every value of a repeatable option (Uri-Path, Uri-Query, ...), in order
    def opts(self, num):
        return [v for n, v in self.options if n == num]

    def opt_uint(self, num):
        v = self.opt(num)
        if v is None:
            return None
        return int.from_bytes(v, "big") if v else 0

    def __eq__(self, other):
        return (
            isinstance(other, Message)
            and self.mtype == other.mtype
            and self.code == other.code
            and self.mid == other.mid
            and self.token == other.token
            and self.options == other.options
            and self.payload == other.payload
        )

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "Message(%d, %s, mid=%d, token=%r, options=%r, payload=%r)" % (
            self.mtype,
            code_str(self.code),
            self.mid,
            self.token,
            self.options,
            self.payload,
        )


def _ext_size(n):
    # bytes of extended delta/length after the nibble
    if n < 13:
        return 0
    if n < 269:
        return 1
    return 2


def _sorted_options(options):
    # A list or tuple already in order (what callers normally pass) is used as is: no
    # copy in the send loop. Otherwise a stable insertion sort by number: MicroPython's
    # sort is not stable and the order of repeated options (Uri-Path segments) is their
    # meaning.
    if isinstance(options, (list, tuple)):
        prev = 0
        for num, _ in options:
            if num < prev:
                break
            prev = num
        else:
            return options
    opts = list(options)
    for i in range(1, len(opts)):
        cur = opts[i]
        j = i - 1
        while j >= 0 and opts[j][0] > cur[0]:
            opts[j + 1] = opts[j]
            j -= 1
        opts[j + 1] = cur
    return opts


# Encode a whole message. options: (number, value bytes) in any order (sorted stably here).
# With `out` (a bytearray) the message is written into it and a memoryview of the used part
# is returned, so a send loop can reuse one buffer; without it, new bytes are returned.
def encode(mtype, code, mid, token, options=(), payload=b"", out=None):
    if not 0 <= mtype <= 3:
        raise CoapError("bad type %r" % (mtype,))
    if not 0 <= code <= 255 or not 0 <= mid <= 0xFFFF:
        raise CoapError("bad code or message id")
    tkl = len(token)
    if tkl > _MAX_TOKEN:
        raise CoapError("token longer than 8 bytes")
    opts = _sorted_options(options) if options else ()
    if code == EMPTY and (tkl or opts or payload):
        raise CoapError("an Empty message has no token, options or payload")

    # size first, so the message is written in one pass into a buffer known to fit
    size = 4 + tkl
    prev = 0
    for num, val in opts:
        if num > _MAX_OPTION or len(val) > _MAX_OPTION_LEN:
            raise CoapError("option %d out of range" % num)
        size += 1 + _ext_size(num - prev) + _ext_size(len(val)) + len(val)
        prev = num
    if payload:
        size += 1 + len(payload)

    if out is None:
        buf = bytearray(size)
    elif len(out) < size:
        raise CoapError("message needs %d bytes, buffer has %d" % (size, len(out)))
    else:
        buf = out
    buf[0] = _VERSION << 6 | mtype << 4 | tkl
    buf[1] = code
    buf[2] = mid >> 8
    buf[3] = mid & 0xFF
    buf[4 : 4 + tkl] = token
    p = 4 + tkl
    prev = 0
    for num, val in opts:
        delta = num - prev
        prev = num
        length = len(val)
        buf[p] = _nibble(delta) << 4 | _nibble(length)
        p = _put_ext(buf, p + 1, delta)
        p = _put_ext(buf, p, length)
        buf[p : p + length] = val
        p += length
    if payload:
        buf[p] = _MARKER
        buf[p + 1 : size] = payload
    if out is None:
        return bytes(buf)
    return memoryview(out)[:size]


# Option delta/length (RFC 7252 §3.1): 0..12 in the nibble, 13 + one byte (n - 13),
# 14 + two bytes (n - 269). Nibble and extension are separate calls: no tuple per option.
def _nibble(n):
    if n < 13:
        return n
    return 13 if n < 269 else 14


def _put_ext(buf, p, n):
    # -> the position after the extension bytes
    if n < 13:
        return p
    if n < 269:
        buf[p] = n - 13
        return p + 1
    n -= 269
    buf[p] = n >> 8
    buf[p + 1] = n & 0xFF
    return p + 2


def _get_ext(b, p, end, n):
    # -> (value, new position) for a delta/length nibble
    if n < 13:
        return n, p
    if n == 13:
        if p >= end:
            raise CoapError("truncated option header")
        return b[p] + 13, p + 1
    if n == 14:
        if p + 1 >= end:
            raise CoapError("truncated option header")
        return (b[p] << 8 | b[p + 1]) + 269, p + 2
    raise CoapError("reserved option nibble 15")


def decode(buf):
    b = memoryview(buf)
    end = len(b)
    if end < 4:
        raise CoapError("shorter than the 4-byte header")
    if b[0] >> 6 != _VERSION:
        raise CoapError("version %d" % (b[0] >> 6))
    mtype = (b[0] >> 4) & 3
    tkl = b[0] & 15
    if tkl > _MAX_TOKEN:
        raise CoapError("reserved token length %d" % tkl)
    code = b[1]
    mid = b[2] << 8 | b[3]
    p = 4 + tkl
    if p > end:
        raise CoapError("truncated token")
    if code == EMPTY and end > 4:
        # RFC 7252 §4.1: bytes after the message id of an Empty message are a format error
        raise CoapError("an Empty message has no token, options or payload")
    token = bytes(b[4:p])
    options = []
    payload = b""
    num = 0
    while p < end:
        h = b[p]
        p += 1
        if h == _MARKER:
            if p == end:
                raise CoapError("payload marker with no payload")
            payload = bytes(b[p:end])
            break
        delta, p = _get_ext(b, p, end, h >> 4)
        length, p = _get_ext(b, p, end, h & 15)
        if length > end - p:
            raise CoapError("truncated option value")
        num += delta
        if num > _MAX_OPTION:
            raise CoapError("option number above 65535")
        options.append((num, bytes(b[p : p + length])))
        p += length
    return Message(mtype, code, mid, token, options, payload)


# Block1/Block2 option values (RFC 7959 §2.2): NUM << 4 | M << 3 | SZX, block size
# 2 ** (SZX + 4) = 16..1024 bytes. SZX 7 (BERT) exists only over TCP: refused here.
def block_encode(num, more, szx):
    if not 0 <= szx <= 6 or not 0 <= num < 1 << 20:
        raise CoapError("bad block num=%r szx=%r" % (num, szx))
    return uint_bytes(num << 4 | (8 if more else 0) | szx)


# -> (num, more, szx)
def block_decode(value):
    if len(value) > 3:
        raise CoapError("block option longer than 3 bytes")
    v = int.from_bytes(value, "big") if value else 0
    if v & 7 == 7:
        raise CoapError("block size BERT (SZX 7) outside TCP")
    return v >> 4, v & 8 != 0, v & 7
