# ed25519.py under the real MicroPython: every RFC 8032 §7.1 vector verifies, and what must
# not verify does not: flipped bits (R, S, message, key), another key, S + L (the same
# signature made non-canonical), a non-canonical public key, wrong lengths. Prints the
# verify time of this port (docs/security.md "Firmware updates" quotes it).
import time

import ed25519
import mptest
from mptest import eq, unhex

_L = 2**252 + 27742317777372353535851937790883648493


def _vectors():
    out = []
    for v in mptest.load_json("ed25519-rfc8032.json")["vectors"]:
        out.append((v["name"], unhex(v["public_key"]), unhex(v["message"]),
                    unhex(v["signature"])))
    return out


def _flip(b, i):
    b = bytearray(b)
    b[i // 8] ^= 1 << (i % 8)
    return bytes(b)


def test_rfc8032_vectors_verify():
    vs = _vectors()
    eq(len(vs), 5)
    for name, pk, msg, sig in vs:
        eq(ed25519.verify(pk, msg, sig), True, name)


def test_sha512_known_answer():
    # the message of "TEST SHA(abc)" is SHA-512("abc") (RFC 8032 §7.1)
    eq(ed25519.sha512(b"abc"), _vectors()[4][2])
    eq(ed25519.sha512(b"")[:8], unhex("cf83e1357eefb8bd"))


def test_flipped_bits_rejected():
    for name, pk, msg, sig in _vectors()[:3]:
        for i in (0, 7, 100, 255, 256, 300, 500):  # R (0..255), S (256..511)
            eq(ed25519.verify(pk, msg, _flip(sig, i)), False, "%s sig bit %d" % (name, i))
        if msg:
            eq(ed25519.verify(pk, _flip(msg, 0), sig), False, name + " message")
        eq(ed25519.verify(pk, msg + b"\x00", sig), False, name + " longer message")
        for i in (0, 130, 254):
            eq(ed25519.verify(_flip(pk, i), msg, sig), False, "%s key bit %d" % (name, i))


def test_wrong_key_rejected():
    vs = _vectors()
    for i in range(len(vs)):
        other = vs[(i + 1) % len(vs)][1]
        eq(ed25519.verify(other, vs[i][2], vs[i][3]), False, vs[i][0])


def test_non_canonical_s_rejected():
    # S + L is the same scalar mod L: the group equation holds, only the range check stops it
    for name, pk, msg, sig in _vectors():
        s = int.from_bytes(sig[32:], "little") + _L
        eq(ed25519.verify(pk, msg, sig[:32] + s.to_bytes(32, "little")), False, name)
        big = sig[:32] + b"\xff" * 32
        eq(ed25519.verify(pk, msg, big), False, name + " S = 2^256 - 1")


def test_non_canonical_public_key_rejected():
    # y = p + 1 encodes y = 1 (a valid point) non-canonically; y = p - 1 with x = 0 and the
    # sign bit set is a "negative zero"
    p = 2**255 - 19
    name, pk, msg, sig = _vectors()[0]
    eq(ed25519.decode_point((p + 1).to_bytes(32, "little")), None)
    eq(ed25519.decode_point(((1 << 255) | 1).to_bytes(32, "little")), None)  # x = 0, sign 1
    eq(ed25519.decode_point((1).to_bytes(32, "little")) is not None, True)  # the neutral point
    eq(ed25519.verify((p + 1).to_bytes(32, "little"), msg, sig), False)
    eq(ed25519.verify(b"\xff" * 32, msg, sig), False)


def test_wrong_lengths_rejected():
    name, pk, msg, sig = _vectors()[1]
    eq(ed25519.verify(pk[:31], msg, sig), False)
    eq(ed25519.verify(pk, msg, sig[:63]), False)
    eq(ed25519.verify(pk, msg, sig + b"\x00"), False)
    eq(ed25519.verify(b"", msg, b""), False)


def test_encode_decode_round_trip():
    for name, pk, msg, sig in _vectors():
        eq(ed25519.encode_point(ed25519.decode_point(pk)), pk, name)


def test_verify_time():
    name, pk, msg, sig = _vectors()[2]
    runs = []
    for _ in range(5):
        t0 = time.ticks_us()
        ok = ed25519.verify(pk, msg, sig)
        runs.append(time.ticks_diff(time.ticks_us(), t0))
        eq(ok, True)
    runs.sort()
    print("FIGURE ed25519 verify median %d us (min %d, max %d)" % (runs[2], runs[0], runs[4]))


mptest.run(globals())
