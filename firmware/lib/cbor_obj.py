# The CBOR items beyond Python's own types (Tag, Simple, UNDEFINED) and the generic encoder
# of any value (cbor.Encoder.value, cbor.dumps). Part of lib/cbor.py, in a module of its
# own so a node loads it only on first use: its send path writes readings with the
# encoder's typed calls and the gateway's answers carry no tags (firmware/README.md,
# budgets). Use it through cbor: cbor.Tag, cbor.Simple, cbor.UNDEFINED, cbor.dumps.
from cbor import CBORError, Encoder

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_MAX_DEPTH = const(16)  # as cbor.py's: nesting of arrays, maps and tags


class Tag:
    # A tagged item the decoder does not interpret (every tag but the bignums 2 and 3).
    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.tag == other.tag and self.value == other.value

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash((self.tag, self.value))

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


class Simple:
    # A simple value other than false/true/null/undefined: 0..19 and 32..255.
    def __init__(self, value):
        if not (0 <= value < 20 or 32 <= value < 256):
            raise CBORError("simple value %r is not assignable" % (value,))
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Simple) and self.value == other.value

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(("simple", self.value))

    def __repr__(self):
        return "simple(%d)" % self.value


class _Undefined:
    def __repr__(self):
        return "undefined"


UNDEFINED = _Undefined()  # simple(23); compare with `is`


# obj into enc, deterministic (RFC 8949 §4.2.1: shortest forms, map keys sorted bytewise)
def encode(enc, obj, depth=0):
    if depth >= _MAX_DEPTH:
        raise CBORError("nested too deeply")
    if obj is None:
        enc.none()
    elif obj is True or obj is False:
        enc.bool(obj)
    elif isinstance(obj, int):
        enc.int(obj)
    elif isinstance(obj, float):
        enc.float(obj)
    elif isinstance(obj, str):
        enc.text(obj)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        enc.bytes(obj)
    elif isinstance(obj, (list, tuple)):
        enc.array(len(obj))
        for item in obj:
            encode(enc, item, depth + 1)
    elif isinstance(obj, dict):
        _dict(enc, obj, depth)
    elif isinstance(obj, Tag):
        enc.head(6, obj.tag)
        encode(enc, obj.value, depth + 1)
    elif isinstance(obj, Simple):
        enc.head(7, obj.value)  # 0..19 in the head, 32..255 as 0xF8 and one byte
    elif obj is UNDEFINED:
        enc.head(7, 23)
    else:
        raise CBORError("cannot encode %s" % type(obj).__name__)


def _dict(enc, obj, depth):
    # keys in bytewise order of their encodings (RFC 8949 §4.2.1); a dict's iteration
    # order is arbitrary on MicroPython
    keyed = []
    for k in obj:
        e = Encoder(16)
        encode(e, k, depth + 1)
        keyed.append((bytes(e.getvalue()), k))
    keyed.sort(key=_first)
    enc.map(len(keyed))
    for kb, k in keyed:
        enc.raw(kb)
        encode(enc, obj[k], depth + 1)


def _first(pair):
    return pair[0]
