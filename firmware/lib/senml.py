# SenML-CBOR (RFC 8428) packs for one reading, in the exact layout of docs/protocol.md §2:
# record 0 is the seq record {n:"seq", v:seq, bn:"<device>:", bt}, then one record per
# measurement. Keys are written in bytewise order of their encodings (0, 1, 2, 3, 4, 6, -1,
# -2, -3) so the bytes are deterministic and match tests/vectors/senml-readings.json.
try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


import cbor

BVER = const(-1)
BN = const(-2)
BT = const(-3)
BU = const(-4)
N = const(0)
U = const(1)
V = const(2)
VS = const(3)
VB = const(4)
S = const(5)
T = const(6)

_SEQ_NAME = "seq"
_COLON = b":"


# Encode one reading into `enc` (reset first) and return a view of its bytes, valid until
# the encoder is next used. measurements: (name, unit or None, value) with value a bool
# (vb), a str (vs) or an int/float (v). bt: sample time, or None for a node with no clock.
def encode_reading(enc, device_id, seq, bt, measurements):
    enc.reset()
    enc.array(1 + len(measurements))

    enc.map(3 if bt is None else 4)
    enc.int(N)
    enc.text(_SEQ_NAME)
    enc.int(V)
    enc.int(seq)
    enc.int(BN)
    # "<device>:" written in two pieces: no concatenated string on the heap
    dev = cbor.utf8(device_id)
    enc.head(3, len(dev) + 1)
    enc.raw(dev)
    enc.raw(_COLON)
    if bt is not None:
        enc.int(BT)
        _number(enc, bt)

    for name, unit, value in measurements:
        enc.map(2 if unit is None else 3)
        enc.int(N)
        enc.text(name)
        if unit is not None:
            enc.int(U)
            enc.text(unit)
        # bool before int: True is an int in Python
        if value is True or value is False:
            enc.int(VB)
            enc.bool(value)
        elif isinstance(value, str):
            enc.int(VS)
            enc.text(value)
        else:
            enc.int(V)
            _number(enc, value)
    return enc.getvalue()


def _number(enc, x):
    if isinstance(x, float):
        enc.float(x)
    elif isinstance(x, int):
        enc.int(x)
    else:
        raise TypeError("SenML value must be a number, str or bool, not %s" % type(x).__name__)
