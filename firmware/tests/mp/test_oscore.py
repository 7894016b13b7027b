# oscore.py under the real MicroPython: every RFC 8613 Appendix C vector (C.1-C.3 key
# derivation both ways, C.4-C.6 requests, C.7-C.8 responses) byte for byte and in reverse,
# then what the vectors do not show: Class E/U option handling, request/response binding,
# the replay window, malformed options, and nonces that never repeat across reboots.
import gc
import os

import coap
import mptest
import oscore
import seqstore
from mptest import eq, raises, unhex


def _load():
    return mptest.load_json("oscore-rfc8613-appendix-c.json")


def _h(s):
    return None if s is None else unhex(s)


def _ctx(kd, seq_start=0, store=None):
    return oscore.Context(
        unhex(kd["sender_id"]),
        unhex(kd["recipient_id"]),
        unhex(kd["master_secret"]),
        unhex(kd["master_salt"]),
        _h(kd["id_context"]),
        store if store is not None else oscore._CountingSeq(seq_start),
    )


def _kd(doc, name):
    for k in doc["key_derivation"]:
        if k["name"] == name:
            return k
    raise KeyError(name)


def _wire(msg, code, options, payload):
    # the outer message: same type, message id and token as the unprotected one
    return coap.encode(msg.mtype, code, msg.mid, msg.token, options, bytes(payload))


def _raises_reason(reason, code, fn, *args):
    try:
        fn(*args)
    except oscore.OscoreError as e:
        eq(e.reason, reason, str(e))
        if code is not None:
            eq(e.code, code, str(e))
        return e
    raise AssertionError("OscoreError %s not raised" % reason)


# ------------------------------------------------------------------ Appendix C


def test_c1_c2_c3_key_derivation():
    kds = _load()["key_derivation"]
    eq([k["name"] for k in kds], ["C.1.1", "C.1.2", "C.2.1", "C.2.2", "C.3.1", "C.3.2"])
    for k in kds:
        name = k["name"]
        ctxid = _h(k["id_context"])
        eq(oscore._info(unhex(k["sender_id"]), ctxid, "Key", 16), unhex(k["info_sender_key"]), name)
        eq(
            oscore._info(unhex(k["recipient_id"]), ctxid, "Key", 16),
            unhex(k["info_recipient_key"]),
            name,
        )
        eq(oscore._info(b"", ctxid, "IV", 13), unhex(k["info_common_iv"]), name)
        c = _ctx(k)
        eq(c.sender_key, unhex(k["sender_key"]), name)
        eq(c.recipient_key, unhex(k["recipient_key"]), name)
        eq(c.common_iv, unhex(k["common_iv"]), name)
        eq(oscore.nonce(c.common_iv, c.sender_id, b"\x00"), unhex(k["sender_nonce"]), name)
        eq(oscore.nonce(c.common_iv, c.recipient_id, b"\x00"), unhex(k["recipient_nonce"]), name)


def test_c4_c5_c6_requests_protected_byte_for_byte():
    doc = _load()
    reqs = doc["requests"]
    eq([r["name"] for r in reqs], ["C.4", "C.5", "C.6"])
    for r in reqs:
        name = r["name"]
        ctx = _ctx(_kd(doc, r["client_context"]), r["sender_sequence_number"])
        piv = oscore.piv_bytes(r["sender_sequence_number"])
        eq(piv, unhex(r["partial_iv"]), name)
        eq(oscore.nonce(ctx.common_iv, ctx.sender_id, piv), unhex(r["nonce"]), name)
        eq(oscore.aad(unhex(r["kid"]), piv), unhex(r["aad"]), name)
        eq(
            oscore.encode_option(piv, unhex(r["kid"]), _h(r["kid_context"])),
            unhex(r["option_value"]),
            name,
        )
        eq(
            oscore.decode_option(unhex(r["option_value"])),
            (piv, unhex(r["kid"]), _h(r["kid_context"])),
            name,
        )
        m = coap.decode(unhex(r["unprotected"]))
        code, opts, ct, req = ctx.protect_request(m.code, m.options, m.payload)
        eq(bytes(ct), unhex(r["ciphertext"]), name)
        eq(_wire(m, code, opts, ct), unhex(r["protected"]), name)
        eq(req.piv, piv)
        eq(req.nonce, unhex(r["nonce"]))


def test_c4_c5_c6_requests_unprotected_by_the_server():
    doc = _load()
    for r in doc["requests"]:
        name = r["name"]
        srv = _ctx(_kd(doc, r["server_context"]))
        p = coap.decode(unhex(r["protected"]))
        req, code, opts, payload = srv.unprotect_request(p.code, p.options, p.payload)
        m = coap.decode(unhex(r["unprotected"]))
        eq(code, m.code, name)
        eq(opts, m.options, name)  # Uri-Host (outer, Class U) and Uri-Path (decrypted)
        eq(payload, m.payload, name)
        eq(req.kid, unhex(r["kid"]), name)
        eq(req.nonce, unhex(r["nonce"]), name)


def _c4_request(doc, client_ctx):
    r = doc["requests"][0]
    m = coap.decode(unhex(r["unprotected"]))
    return client_ctx.protect_request(m.code, m.options, m.payload)[3]


def test_c7_c8_responses_protected_byte_for_byte():
    doc = _load()
    resps = doc["responses"]
    eq([r["name"] for r in resps], ["C.7", "C.8"])
    c4 = coap.decode(unhex(doc["requests"][0]["protected"]))
    for r in resps:
        name = r["name"]
        srv = _ctx(_kd(doc, r["server_context"]), r["sender_sequence_number"] or 0)
        req = srv.unprotect_request(c4.code, c4.options, c4.payload)[0]
        eq(oscore.aad(req.kid, req.piv), unhex(r["aad"]), name)
        fresh = r["partial_iv"] is not None
        if fresh:
            eq(
                oscore.nonce(srv.common_iv, srv.sender_id, unhex(r["partial_iv"])),
                unhex(r["nonce"]),
            )
        else:
            eq(req.nonce, unhex(r["nonce"]), name)
        m = coap.decode(unhex(r["unprotected"]))
        code, opts, ct = srv.protect_response(req, m.code, m.options, m.payload, fresh)
        eq(bytes(ct), unhex(r["ciphertext"]), name)
        eq(_wire(m, code, opts, ct), unhex(r["protected"]), name)


def test_c7_c8_responses_unprotected_by_the_client():
    doc = _load()
    for r in doc["responses"]:
        name = r["name"]
        cli = _ctx(_kd(doc, r["client_context"]), doc["requests"][0]["sender_sequence_number"])
        req = _c4_request(doc, cli)
        p = coap.decode(unhex(r["protected"]))
        code, opts, payload = cli.unprotect_response(req, p.code, p.options, p.payload)
        m = coap.decode(unhex(r["unprotected"]))
        eq((code, opts, payload), (m.code, m.options, m.payload), name)


# ------------------------------------------------------------------ beyond the vectors


def _pair(seq_cli=0, seq_srv=0):
    secret = bytes(range(1, 17))
    salt = b"\x9e\x7c\xa9\x22\x23\x78\x63\x40"
    cli = oscore.Context(b"\x01", b"gw", secret, salt, None, oscore._CountingSeq(seq_cli))
    srv = oscore.Context(b"gw", b"\x01", secret, salt, None, oscore._CountingSeq(seq_srv))
    return cli, srv


def _request(cli, options=None, payload=b"reading"):
    if options is None:
        options = [(coap.URI_PATH, b"r"), (coap.CONTENT_FORMAT, coap.uint_bytes(112))]
    code, opts, ct, req = cli.protect_request(coap.POST, options, payload)
    return code, opts, bytes(ct), req


def test_class_e_and_u_options():
    cli, srv = _pair()
    options = [
        (coap.URI_HOST, b"gw.example"),
        (coap.URI_PORT, coap.uint_bytes(5683)),
        (coap.URI_PATH, b"v1"),
        (coap.URI_PATH, b"r"),
        (coap.CONTENT_FORMAT, coap.uint_bytes(112)),
        (coap.URI_QUERY, b"a=1"),
        (coap.ACCEPT, coap.uint_bytes(60)),
    ]
    code, outer, ct, req = _request(cli, options, b"\x01\x02")
    eq(code, coap.POST)
    eq([n for n, _ in outer], [coap.URI_HOST, coap.URI_PORT, oscore.OPT_OSCORE])
    for _, v in options:  # nothing of a Class E value shows outside
        if len(v) > 2:
            eq(v in ct, False)
    # an attacker adds outer Class E options: they are discarded, the inner ones win
    forged = outer + [(coap.URI_PATH, b"admin"), (coap.CONTENT_FORMAT, b"")]
    req2, c, opts, payload = srv.unprotect_request(code, forged, ct)
    eq(c, coap.POST)
    eq(opts, options)
    eq(payload, b"\x01\x02")
    # response: Content-Format and Max-Age are Class E; an outer Max-Age is discarded
    rcode, router, rct = srv.protect_response(
        req2,
        coap.CHANGED,
        [(coap.CONTENT_FORMAT, coap.uint_bytes(60)), (coap.MAX_AGE, b"\x1e")],
        b"\xa0",
    )
    eq(rcode, coap.CHANGED)
    eq(router, [(oscore.OPT_OSCORE, b"")])
    got = cli.unprotect_response(req, rcode, router + [(coap.MAX_AGE, b"\x00")], bytes(rct))
    eq(got, (coap.CHANGED, [(coap.CONTENT_FORMAT, b"\x3c"), (coap.MAX_AGE, b"\x1e")], b"\xa0"))
    # the real code is inside: GET goes out as POST, 4.04 comes back as 2.04
    code, outer, ct, req = cli.protect_request(coap.GET, [(coap.URI_PATH, b"x")])
    eq(code, coap.POST)
    req3, c, _, _ = srv.unprotect_request(code, outer, bytes(ct))
    eq(c, coap.GET)
    rcode, router, rct = srv.protect_response(req3, coap.NOT_FOUND, [])
    eq(rcode, coap.CHANGED)
    eq(cli.unprotect_response(req, rcode, router, bytes(rct))[0], coap.NOT_FOUND)


def test_observe_is_refused():
    cli, srv = _pair()
    _raises_reason(
        "unsupported", coap.BAD_OPTION, cli.protect_request, coap.GET, [(coap.OBSERVE, b"")]
    )
    code, outer, ct, req = _request(cli)
    _raises_reason(
        "unsupported",
        coap.BAD_OPTION,
        srv.unprotect_request,
        code,
        outer + [(coap.OBSERVE, b"")],
        ct,
    )


def test_response_bound_to_its_request():
    cli, srv = _pair()
    a = _request(cli, payload=b"A")
    b = _request(cli, payload=b"B")
    ra = srv.unprotect_request(a[0], a[1], a[2])[0]
    srv.unprotect_request(b[0], b[1], b[2])
    rcode, router, rct = srv.protect_response(ra, coap.CHANGED, [], b"ok-A")
    rct = bytes(rct)
    # the answer to A does not pass as the answer to B (AAD and nonce differ)
    _raises_reason("decrypt", coap.BAD_REQUEST, cli.unprotect_response, b[3], rcode, router, rct)
    eq(cli.unprotect_response(a[3], rcode, router, rct)[2], b"ok-A")
    # and is accepted once
    _raises_reason("replay", None, cli.unprotect_response, a[3], rcode, router, rct)
    # an unprotected error (a server without our context answers 4.01) is reported as such
    e = _raises_reason(
        "unprotected", None, cli.unprotect_response, b[3], coap.UNAUTHORIZED, [], b""
    )
    eq(e.code, coap.UNAUTHORIZED)


def test_second_answer_gets_a_fresh_partial_iv():
    cli, srv = _pair()
    code, outer, ct, req = _request(cli)
    sreq = srv.unprotect_request(code, outer, ct)[0]
    _, o1, c1 = srv.protect_response(sreq, coap.CHANGED, [], b"one")
    _, o2, c2 = srv.protect_response(sreq, coap.CHANGED, [], b"two")
    eq(o1, [(oscore.OPT_OSCORE, b"")])
    eq(o2, [(oscore.OPT_OSCORE, b"\x01\x00")])  # Partial IV 0 of the server
    eq(cli.unprotect_response(req, coap.CHANGED, o2, bytes(c2))[2], b"two")


def test_replay_window():
    cli, srv = _pair()
    msgs = [_request(cli, payload=bytes((i,))) for i in range(40)]  # seq 0..39
    code, outer, ct, _ = msgs[5]
    srv.unprotect_request(code, outer, ct)
    _raises_reason("replay", coap.UNAUTHORIZED, srv.unprotect_request, code, outer, ct)
    # newer, then older ones inside the window: each accepted exactly once
    for i in (39, 20, 8, 38):
        code, outer, ct, _ = msgs[i]
        eq(srv.unprotect_request(code, outer, ct)[3], bytes((i,)))
        _raises_reason("replay", coap.UNAUTHORIZED, srv.unprotect_request, code, outer, ct)
    # 39 - 7 = 32: just outside a 32-wide window, refused though never seen
    code, outer, ct, _ = msgs[7]
    _raises_reason("replay", coap.UNAUTHORIZED, srv.unprotect_request, code, outer, ct)
    # a forged message with a fresh Partial IV does not move the window
    code, outer, ct, _ = _request(
        oscore.Context(b"\x01", b"gw", b"wrong-secret-16b", b"", None, oscore._CountingSeq(100))
    )
    _raises_reason("decrypt", coap.BAD_REQUEST, srv.unprotect_request, code, outer, ct)
    code, outer, ct, _ = msgs[10]
    eq(srv.unprotect_request(code, outer, ct)[3], bytes((10,)))


def test_server_after_reboot_requires_echo():
    # a rebooted server (window lost) refuses even a genuine old capture until a request
    # returns its Echo value; the challenge itself is a protected 4.01
    secret = bytes(range(1, 17))
    cli = oscore.Context(b"\x01", b"", secret, b"", None, oscore._CountingSeq(50))
    old = _request(cli, payload=b"captured before the reboot")
    srv = oscore.Context(b"", b"\x01", secret, b"", None, None, echo=b"\x11" * 8)
    e = _raises_reason("echo", coap.UNAUTHORIZED, srv.unprotect_request, old[0], old[1], old[2])
    rcode, ropts, rct = srv.protect_response(
        e.request, coap.UNAUTHORIZED, [(oscore.OPT_ECHO, e.echo)]
    )
    # the client learns the Echo value from the protected answer and repeats its request
    code, opts, _ = cli.unprotect_response(old[3], rcode, ropts, bytes(rct))
    eq((code, opts), (coap.UNAUTHORIZED, [(oscore.OPT_ECHO, b"\x11" * 8)]))
    # the capture replayed again is still refused; the request with the Echo value passes
    _raises_reason("echo", coap.UNAUTHORIZED, srv.unprotect_request, old[0], old[1], old[2])
    opts = [(coap.URI_PATH, b"r"), (oscore.OPT_ECHO, b"\x11" * 8)]
    code, outer, ct, _ = cli.protect_request(coap.POST, opts, b"fresh")
    eq(srv.unprotect_request(code, outer, bytes(ct))[3], b"fresh")
    # from now on the window works as usual, and the old capture is older than it
    _raises_reason("replay", coap.UNAUTHORIZED, srv.unprotect_request, old[0], old[1], old[2])
    nxt = _request(cli, payload=b"next")
    eq(srv.unprotect_request(nxt[0], nxt[1], nxt[2])[3], b"next")


def test_unknown_kid_and_kid_context():
    cli, srv = _pair()
    other = oscore.Context(b"\x02", b"gw", bytes(range(1, 17)), b"", None)
    code, outer, ct, _ = _request(other)
    _raises_reason("unknown-kid", coap.UNAUTHORIZED, srv.unprotect_request, code, outer, ct)
    ctxd = oscore.Context(b"\x01", b"gw", bytes(range(1, 17)), b"", b"ctx-A")
    code, outer, ct, _ = _request(ctxd)
    srv_b = oscore.Context(b"gw", b"\x01", bytes(range(1, 17)), b"", b"ctx-B")
    _raises_reason("unknown-kid", coap.UNAUTHORIZED, srv_b.unprotect_request, code, outer, ct)
    srv_a = oscore.Context(b"gw", b"\x01", bytes(range(1, 17)), b"", b"ctx-A")
    eq(srv_a.unprotect_request(code, outer, ct)[3], b"reading")
    # no OSCORE option at all
    _raises_reason(
        "unprotected",
        coap.UNAUTHORIZED,
        srv.unprotect_request,
        coap.POST,
        [(coap.URI_PATH, b"r")],
        b"x",
    )


def test_every_bit_flip_of_a_request_is_rejected():
    cli, srv = _pair()
    code, outer, ct, _ = _request(cli)
    rejected = 0
    for i in range(len(ct)):
        for bit in range(8):
            bad = bytearray(ct)
            bad[i] ^= 1 << bit
            try:
                srv.unprotect_request(code, outer, bytes(bad))
            except oscore.OscoreError as e:
                eq(e.reason, "decrypt")
                rejected += 1
    eq(rejected, len(ct) * 8)
    eq(srv.rejected, rejected)
    # the genuine one still passes afterwards (failed attempts did not touch the window)
    eq(srv.unprotect_request(code, outer, ct)[3], b"reading")


def test_malformed_oscore_option():
    D = oscore.decode_option
    _raises_reason("format", coap.BAD_OPTION, D, b"\x20")  # reserved flag bit
    _raises_reason("format", coap.BAD_OPTION, D, b"\x80")  # extension bit
    _raises_reason("format", coap.BAD_OPTION, D, b"\x06" + bytes(6))  # n = 6 reserved
    _raises_reason("format", coap.BAD_OPTION, D, b"\x03\x01")  # truncated Partial IV
    _raises_reason("format", coap.BAD_OPTION, D, b"\x11\x01")  # no kid context length
    _raises_reason("format", coap.BAD_OPTION, D, b"\x11\x01\x05ab")  # truncated context
    _raises_reason("format", coap.BAD_OPTION, D, b"\x01\x05\x00")  # trailing bytes, no k
    eq(D(b""), (b"", None, None))
    eq(D(b"\x08"), (b"", b"", None))
    eq(D(b"\x1a\x01\x02\x02ccKID"), (b"\x01\x02", b"KID", b"cc"))
    cli, srv = _pair()
    code, outer, ct, _ = _request(cli)
    # a request must carry a Partial IV and a kid; the option at most once
    _raises_reason("format", coap.BAD_OPTION, srv.unprotect_request, code, [(9, b"\x08\x01")], ct)
    _raises_reason("format", coap.BAD_OPTION, srv.unprotect_request, code, [(9, b"\x01\x05")], ct)
    _raises_reason("format", coap.BAD_OPTION, srv.unprotect_request, code, outer + outer, ct)
    # ciphertext shorter than code + tag
    _raises_reason("format", coap.BAD_REQUEST, srv.unprotect_request, code, outer, ct[:8])


def test_partial_iv_encoding():
    eq(oscore.piv_bytes(0), b"\x00")
    eq(oscore.piv_bytes(20), b"\x14")
    eq(oscore.piv_bytes(255), b"\xff")
    eq(oscore.piv_bytes(256), b"\x01\x00")
    eq(oscore.piv_bytes(oscore.MAX_SEQ), b"\xff" * 5)
    _raises_reason("seq-exhausted", None, oscore.piv_bytes, oscore.MAX_SEQ + 1)
    cli, srv = _pair(seq_cli=oscore.MAX_SEQ + 1)
    _raises_reason("seq-exhausted", None, cli.protect_request, coap.POST, [])


def test_context_parameters_checked():
    raises(ValueError, oscore.Context, bytes(8), b"", b"k")
    raises(ValueError, oscore.Context, b"a", b"a", b"k")
    raises(ValueError, oscore.Context, b"a", b"b", b"")


def _fresh_dir(tag):
    import binascii

    d = "/tmp/mp-oscore-%s-%s" % (tag, binascii.hexlify(os.urandom(4)).decode())
    os.mkdir(d)
    return d


def test_seq_persisted_nonces_never_reused_across_reboots():
    # 1,000 "reboots", each sending 1 to 3 requests and dying mid-block: every nonce unique
    # and each Partial IV above the ones before it
    d = _fresh_dir("seq")
    secret = bytes(range(16))
    seen = set()
    last = -1
    reused = 0
    for boot in range(1000):
        gc.collect()  # each boot's context is garbage now, as after a real reboot
        store = seqstore.SeqStore(d, block=4)
        ctx = oscore.Context(b"\x01", b"gw", secret, b"", None, store, bufsize=64)
        for _ in range(1 + boot % 3):
            _, outer, _, req = ctx.protect_request(coap.POST, [(coap.URI_PATH, b"r")], b"x")
            if req.nonce in seen:
                reused += 1
            seen.add(req.nonce)
            seq = int.from_bytes(req.piv, "big")
            eq(seq > last, True)
            last = seq
    eq(reused, 0)
    eq(len(seen), sum(1 + b % 3 for b in range(1000)))
    print("nonces reused across 1000 reboots:", reused, "last seq:", last)


mptest.run(globals())
