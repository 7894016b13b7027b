# Hostile input for the node's decoders under the real MicroPython (issue #8): cbor.loads,
# coap.decode and the node's handling of a 2.04 payload (the downlink: time and commands,
# the same CBOR map over CoAP and LoRa) either return or raise the module's own error
# (cbor.CBORError, coap.CoapError); never another exception, never a MemoryError, and a
# decoded CoAP message encodes back to the same bytes (the format has one encoding).
#
# Two ways to run:
# - by test_under_micropython.py (argv: vectors dir): inputs generated here, seeded, from
#   the vectors (a xorshift PRNG: mutations, hostile heads, nesting bombs, huge lengths);
# - by test_fuzz_firmware.py (argv: vectors dir, input file) on a 64 KiB heap: one input per
#   line, "<kind> <hex>", kind c (CBOR item), p (CoAP message) or d (downlink payload),
#   written by CPython with cbor2; prints a summary line with the slowest input.
import gc
import sys
import time

import cbor
import coap
import mptest
from mptest import eq

HOSTILE = (
    "9bffffffffffffffff", "9affffffff", "bbffffffffffffffff", "baffffffff",
    "5bffffffffffffffff", "5affffffff", "7bffffffffffffffff", "7affffffff", "99ffff",
    "9f", "bf", "5f", "7f", "ff", "f97e00", "f97c00", "fb7ff8000000000000",
    "1bffffffffffffffff", "3bffffffffffffffff", "c2", "c3", "c249010000000000000000",
    "d81c", "c0", "f7", "f8ff", "f818", "1c", "3e", "5d", "fc", "a0", "80", "40", "60",
    "d9d9f7", "7f6161ff", "5f4161ff", "7f4161ff", "a10000", "a1800000",
)


class Rand:
    # xorshift32: the same inputs on every run and port
    def __init__(self, seed):
        self.s = seed or 1

    def next(self):
        s = self.s
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        self.s = s
        return s

    def below(self, n):
        return self.next() % n if n > 0 else 0


def _node():
    # a streetlight node on fakes (no clock, so a time in the payload is learned)
    from apps import streetlight
    from nodefakes import FakeBoard, make_node

    node, _gw, _board = make_node(None, streetlight, board=FakeBoard(1, t=None),
                                  dev="light-0001", typ="light")
    return node


class Fuzz:
    def __init__(self):
        self.n = 0
        self.errors = 0  # defined errors (expected for most inputs)
        self.bad = []  # (kind, hex, exception): anything else
        self.slowest = (0, "", "")
        self.node = None

    def one(self, kind, data):
        self.n += 1
        t0 = time.ticks_us()
        try:
            if kind == "c":
                cbor.loads(data)
            elif kind == "p":
                m = coap.decode(data)
                again = coap.encode(m.mtype, m.code, m.mid, m.token, m.options, m.payload)
                if again != bytes(data):
                    raise AssertionError("re-encodes as %s" % again.hex())
            elif kind == "d":
                if self.node is None:
                    self.node = _node()
                self.node._answer(data)  # logs and ignores what it cannot use; never raises
                del self.node._reports[:]  # (would ride on the next reading)
                del self.node.board.lines[:]  # the fake board keeps every log line
            else:
                raise AssertionError("unknown kind %r" % kind)
        except (cbor.CBORError, coap.CoapError):
            self.errors += 1
        except Exception as e:  # MemoryError, RuntimeError (recursion), TypeError, ...
            self.bad.append((kind, bytes(data[:64]).hex(), repr(e)))
        dt = time.ticks_diff(time.ticks_us(), t0)
        if dt > self.slowest[0]:
            self.slowest = (dt, kind, bytes(data[:24]).hex())

    def summary(self):
        return "fuzzed %d inputs: %d refused with the defined error, %d bad; slowest %d us " \
               "(%s %s...)" % (self.n, self.errors, len(self.bad), self.slowest[0],
                               self.slowest[1], self.slowest[2])


def mutate(r, seed):
    b = bytearray(seed)
    for _ in range(1 + r.below(4)):
        op = r.below(7)
        pos = r.below(len(b) + 1)
        if op == 0 and b:
            b[min(pos, len(b) - 1)] ^= 1 << r.below(8)
        elif op == 1:
            b = b[:pos]
        elif op == 2:
            h = mptest.unhex(HOSTILE[r.below(len(HOSTILE))])
            b = b[:pos] + h + b[pos:]
        elif op == 3:
            b = b[:pos] + bytes(r.below(256) for _ in range(1 + r.below(8))) + b[pos:]
        elif op == 4:
            b = b[:pos] + b[pos + 1 + r.below(8):]
        elif op == 5:
            opener = (b"\x81", b"\x9f", b"\xa1\x00", b"\xd8\x63", b"\xc2")[r.below(5)]
            b = b[:pos] + opener * (1 + r.below(40)) + b[pos:]
        else:
            k = 1 + r.below(6)
            b = b[:pos] + bytes(b[pos:pos + k]) * (2 + r.below(20)) + b[pos:]
    return bytes(b[:600])


def _seeds():
    # (f818 is in the appendix but not well-formed: test_cbor.py checks it is refused)
    cb = [mptest.unhex(v["hex"]) for v in mptest.load_json("cbor-rfc8949-appendix-a.json")
          if v["hex"] != "f818"]
    co = [mptest.unhex(v["hex"]) for v in mptest.load_json("coap-messages.json")]
    down = [cbor.dumps({1: 1795390000}),
            cbor.dumps({1: 1795390000, 2: [[1, "dim", {"level": 40}], [2, "on", {}],
                                           [3, "schedule", {"mode": "auto"}],
                                           [4, "interval", {"s": 60}]]})]
    return cb, co, down


def bombs():
    # nesting deeper than any limit, and lengths that claim more than there is
    out = []
    for opener in (b"\x81", b"\x9f", b"\xa1\x00", b"\xd8\x63", b"\xc2\x81", b"\xbf\x00"):
        out.append(opener * 300 + b"\x00")
    for h in HOSTILE:
        out.append(mptest.unhex(h))
        out.append(mptest.unhex(h) + b"\x00" * 4)
    out.append(b"\x5f" + b"\x41a" * 150 + b"\xff")  # many chunks
    out.append(b"\x9f" + b"\xa0" * 500 + b"\xff")  # many small maps
    out.append(b"\x98\xff" + b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff" * 28)  # short array
    return out


def test_generated_inputs():
    f = Fuzz()
    r = Rand(8)
    cb, co, down = _seeds()
    for b in bombs():
        f.one("c", b)
        f.one("d", b)
    for _ in range(700):
        f.one("c", mutate(r, cb[r.below(len(cb))]))
    for _ in range(700):
        f.one("p", mutate(r, co[r.below(len(co))]))
    for _ in range(300):
        f.one("d", mutate(r, down[r.below(len(down))]))
    for _ in range(200):
        f.one("p", bytes(r.below(256) for _ in range(r.below(40))))
    print(f.summary())
    eq(f.bad, [])
    eq(f.errors > f.n // 4, True, "most mutants are refused")


def test_seeds_decode():
    # the mutations start from valid inputs: they must still decode
    cb, co, down = _seeds()
    for b in cb + down:
        cbor.loads(b)
    for b in co:
        coap.decode(b)


def run_file(path):
    # one input per line; the file is streamed, nothing but the current line is held
    f = Fuzz()
    gc.collect()
    low = gc.mem_free()
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            data = mptest.unhex(line[2:])
            f.one(line[0], data)
            data = None
            gc.collect()
            low = min(low, gc.mem_free())
    for kind, hx, err in f.bad[:20]:
        print("BAD", kind, hx, err)
    print(f.summary())
    print("lowest free heap after an input: %d bytes" % low)
    sys.exit(1 if f.bad else 0)


if len(sys.argv) > 2:
    mptest.VECTORS = sys.argv[1]
    run_file(sys.argv[2])
else:
    mptest.run(globals())
