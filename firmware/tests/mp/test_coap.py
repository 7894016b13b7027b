# lib/coap.py under the real MicroPython: every tests/vectors/coap-messages.json message
# byte for byte, the extended option forms, each malformation rule, truncation, random input.
import os

import mptest
from mptest import eq, raises, unhex

import coap
from coap import CoapError

TYPES = {"CON": coap.CON, "NON": coap.NON, "ACK": coap.ACK, "RST": coap.RST}


def parse_code(s):
    cls, detail = s.split(".")
    return int(cls) << 5 | int(detail)


def vector_options(v):
    # the options a vector names, in wire order
    opts = []
    for seg in v.get("uri_path", ()):
        opts.append((coap.URI_PATH, seg.encode()))
    if "content_format" in v:
        opts.append((coap.CONTENT_FORMAT, coap.uint_bytes(v["content_format"])))
    if "max_age" in v:
        opts.append((coap.MAX_AGE, coap.uint_bytes(v["max_age"])))
    return opts


def vectors():
    return mptest.load_json("coap-messages.json")


def test_every_vector_decodes_to_its_fields():
    for v in vectors():
        m = coap.decode(unhex(v["hex"]))
        eq(m.mtype, TYPES[v["type"]], v["name"])
        eq(coap.code_str(m.code), v["code"], v["name"])
        eq(m.mid, v["mid"], v["name"])
        eq(m.token, unhex(v["token"]), v["name"])
        eq(m.payload, unhex(v["payload_hex"]), v["name"])
        eq(m.options, vector_options(v), v["name"])
        eq([s.decode() for s in m.opts(coap.URI_PATH)], v.get("uri_path", []), v["name"])
        eq(m.opt_uint(coap.CONTENT_FORMAT), v.get("content_format"), v["name"])
        eq(m.opt_uint(coap.MAX_AGE), v.get("max_age"), v["name"])


def test_every_vector_reencodes_byte_identical():
    for v in vectors():
        m = coap.decode(unhex(v["hex"]))
        eq(
            bytes(coap.encode(m.mtype, m.code, m.mid, m.token, m.options, m.payload)).hex(),
            v["hex"],
        )
        # from the vector's own fields, options given out of order
        opts = list(reversed(vector_options(v)))
        wire = coap.encode(
            TYPES[v["type"]],
            parse_code(v["code"]),
            v["mid"],
            unhex(v["token"]),
            opts,
            unhex(v["payload_hex"]),
        )
        eq(bytes(wire).hex(), v["hex"], v["name"])


def test_encode_into_a_reused_buffer():
    out = bytearray(1152)
    for v in vectors():
        m = coap.decode(unhex(v["hex"]))
        mv = coap.encode(m.mtype, m.code, m.mid, m.token, m.options, m.payload, out=out)
        eq(bytes(mv).hex(), v["hex"])
        assert isinstance(mv, memoryview)
    raises(CoapError, coap.encode, coap.CON, coap.POST, 1, b"", (), b"x" * 40, bytearray(8))


def test_constants():
    eq(coap.code_str(coap.CHANGED), "2.04")
    eq(coap.code_str(coap.REQUEST_ENTITY_TOO_LARGE), "4.13")
    eq(coap.code_str(coap.UNSUPPORTED_CONTENT_FORMAT), "4.15")
    eq(coap.code_str(coap.SERVICE_UNAVAILABLE), "5.03")
    eq(coap.code_str(coap.POST), "0.02")
    eq(coap.uint_bytes(0), b"")
    eq(coap.uint_bytes(112), b"\x70")
    eq(coap.uint_bytes(1024), b"\x04\x00")
    eq(coap.uint_bytes(0x10000), b"\x01\x00\x00")


def test_extended_option_forms_roundtrip():
    # deltas and lengths at each boundary of the 13 (one byte) and 14 (two bytes) forms
    for n in (0, 1, 12, 13, 14, 268, 269, 270, 1000, 65535):
        for length in (0, 1, 12, 13, 268, 269, 270, 600):
            if n == 0 and length == 0:
                continue
            opts = [(n, b"\xab" * length)]
            wire = coap.encode(coap.CON, coap.PUT, 7, b"\x01", opts, b"p")
            m = coap.decode(wire)
            eq(m.options, opts, "%d/%d" % (n, length))
            eq(m.payload, b"p")
    # the nibbles on the wire: delta 13 + (n-13), length 14 + (len-269) big-endian
    wire = coap.encode(coap.CON, coap.GET, 0, b"", [(13, b""), (13 + 269, b"x" * 269)])
    # second option: delta 282 - 13 = 269 and length 269, both 14 + 0x0000
    eq(bytes(wire).hex(), "40010000" + "d000" + "ee" + "0000" + "0000" + "78" * 269)
    eq(coap.decode(wire).options, [(13, b""), (282, b"x" * 269)])
    raises(CoapError, coap.encode, coap.CON, coap.GET, 0, b"", [(65536, b"")])


def test_repeated_options_keep_their_order():
    opts = [
        (coap.URI_QUERY, b"z"),
        (coap.URI_PATH, b"a"),
        (coap.URI_PATH, b"b"),
        (coap.URI_PATH, b"c"),
    ]
    m = coap.decode(coap.encode(coap.CON, coap.GET, 1, b"", opts))
    eq(m.opts(coap.URI_PATH), [b"a", b"b", b"c"])
    eq(m.opt(coap.URI_QUERY), b"z")
    eq(m.opt(coap.ETAG), None)
    eq(m.opt_uint(coap.ETAG), None)


def test_malformed_rules():
    for h, why in (
        ("", "empty"),
        ("440212", "shorter than the header"),
        ("04021234", "version 0"),
        ("84021234", "version 2"),
        ("c4021234", "version 3"),
        ("49021234" + "00" * 9, "TKL 9 is reserved"),
        ("4f021234" + "00" * 15, "TKL 15 is reserved"),
        ("44021234a1b2c3", "token cut short"),
        ("40021234ff", "payload marker with no payload"),
        ("40021234b172ff", "payload marker with no payload after an option"),
        ("40021234f0", "delta nibble 15 (not the marker)"),
        ("400212340f", "length nibble 15"),
        ("40021234d0", "delta 13 without its byte"),
        ("40021234e000", "delta 14 with one byte of two"),
        ("40021234b372", "option value cut short"),
        ("40021234eeffff" + "0000", "option number above 65535"),
        ("60001237ff00", "Empty message with a payload"),
        ("61001237aa", "Empty message with a token"),
        ("60001237b0", "Empty message with an option"),
    ):
        try:
            coap.decode(unhex(h))
        except CoapError:
            continue
        raise AssertionError("accepted: %s (%s)" % (h, why))
    raises(CoapError, coap.encode, coap.CON, coap.POST, 1, b"123456789")
    raises(CoapError, coap.encode, coap.ACK, coap.EMPTY, 1, b"t")


def boundaries(v):
    # message lengths at which a prefix is itself a whole message: after the token, after
    # each option (computed by encoding the first k options), and inside the payload
    m = coap.decode(unhex(v["hex"]))
    ends = {}
    for k in range(len(m.options) + 1):
        ends[len(coap.encode(m.mtype, m.code, m.mid, m.token, m.options[:k]))] = k
    return m, ends


def test_truncations():
    # CoAP has no length field, so a cut at an option boundary or inside the payload is a
    # valid shorter message (UDP carries the length); every other cut is an error: inside
    # the header or token, inside an option, or right after the payload marker
    valid = errors = 0
    for v in vectors():
        data = unhex(v["hex"])
        m, ends = boundaries(v)
        marker = len(coap.encode(m.mtype, m.code, m.mid, m.token, m.options))
        for n in range(len(data)):
            cut = data[:n]
            if n in ends:
                want = coap.Message(m.mtype, m.code, m.mid, m.token, m.options[: ends[n]], b"")
            elif n > marker + 1:
                want = coap.Message(
                    m.mtype, m.code, m.mid, m.token, m.options, m.payload[: n - marker - 1]
                )
            else:
                want = None
            if m.code == coap.EMPTY and n != 4:
                want = None
            if want is None:
                raises(CoapError, coap.decode, cut)
                errors += 1
            else:
                eq(coap.decode(cut), want, "%s[:%d]" % (v["name"], n))
                valid += 1
    print("  truncations: %d valid shorter messages, %d CoapError" % (valid, errors))
    assert valid and errors


def test_random_bytes_only_raise_coap_error():
    ok = bad = 0
    for i in range(2000):
        data = bytearray(os.urandom(1 + i % 40))
        if i % 2:
            data[0] = 0x40 | data[0] & 0x37  # version 1, TKL 0..7: reach the option parser
        try:
            m = coap.decode(data)
            ok += 1
            # whatever decodes re-encodes to the same bytes (the format is canonical)
            eq(
                bytes(coap.encode(m.mtype, m.code, m.mid, m.token, m.options, m.payload)),
                bytes(data),
            )
        except CoapError:
            bad += 1
    print("  random: %d decoded, %d CoapError" % (ok, bad))
    assert ok and bad


mptest.run(globals())
