# MicroPython OSCORE client for firmware/tests/test_oscore_interop.py: protects POST /r
# requests with our oscore.py, sends them to an aiocoap server and unprotects its answers.
# Then a replayed request and a bit-flipped one, to show what the aiocoap side refuses.
# argv: host port secret salt sender_id recipient_id id_context("-" = none) seqdir count
# (ids/secrets in hex). Prints one JSON object per line; the CPython test asserts on them.
import binascii
import json
import socket
import sys

import coap
import oscore
import seqstore


def unhex(s):
    return binascii.unhexlify(s)


def hexs(b):
    return binascii.hexlify(b).decode()


host, port, secret, salt, sid, rid, idctx, seqdir, count = sys.argv[1:10]
ctx = oscore.Context(
    unhex(sid),
    unhex(rid),
    unhex(secret),
    unhex(salt),
    None if idctx == "-" else unhex(idctx),
    seqstore.SeqStore(seqdir, block=8),
)
addr = socket.getaddrinfo(host, int(port))[0][-1]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(5)
mid = [0x1200]


def exchange(wire, m_id):
    # send a CON, wait for the ACK with that message id; resend the same bytes on timeout
    for _ in range(5):
        sock.sendto(wire, addr)
        try:
            while True:
                data = sock.recv(1500)
                m = coap.decode(data)
                if m.mid == m_id:
                    return m
        except OSError:
            continue
    raise RuntimeError("no answer")


def send(code, outer, ct):
    mid[0] += 1
    token = bytes((mid[0] & 0xFF, 0xA5))
    wire = coap.encode(coap.CON, code, mid[0], token, outer, bytes(ct))
    return exchange(wire, mid[0])


def report(tag, req, m, echoed):
    try:
        code, opts, payload = ctx.unprotect_response(req, m.code, m.options, m.payload)
        print(
            json.dumps(
                {
                    "tag": tag,
                    "ok": True,
                    "code": code,
                    "options": [[n, hexs(v)] for n, v in opts],
                    "payload": hexs(payload),
                    "outer_code": m.code,
                    "piv": hexs(req.piv),
                    "echoed": echoed,
                }
            )
        )
        return code, opts
    except oscore.OscoreError as e:
        print(
            json.dumps(
                {
                    "tag": tag,
                    "ok": False,
                    "reason": e.reason,
                    "code": e.code,
                    "payload": hexs(m.payload),
                }
            )
        )
        return None, None


_ECHO = 252  # RFC 9175; Class E, so it travels encrypted

first = None
for i in range(int(count)):
    payload = b"reading %d" % i
    options = [(coap.URI_PATH, b"r"), (coap.CONTENT_FORMAT, coap.uint_bytes(0))]
    echoed = False
    while True:
        code, outer, ct, req = ctx.protect_request(coap.POST, options, payload)
        ct = bytes(ct)
        if first is None:
            first = (code, outer, ct)
        rcode, ropts = report("post%d" % i, req, send(code, outer, ct), echoed)
        echo = [v for n, v in ropts or () if n == _ECHO]
        if rcode != coap.UNAUTHORIZED or not echo or echoed:
            break
        # a protected 4.01 with Echo: the server lost its replay window (a restart) and
        # asks us to prove freshness by sending its Echo value back in a new request
        options = options + [(_ECHO, echo[0])]
        echoed = True

# the first request again, under a new message id (so no CoAP deduplication answers it):
# OSCORE's replay window must refuse it
code, outer, ct = first
m = send(code, outer, ct)
print(
    json.dumps(
        {
            "tag": "replay",
            "code": m.code,
            "oscore": m.opt(oscore.OPT_OSCORE) is not None,
            "payload": hexs(m.payload),
        }
    )
)

# a fresh request with one bit flipped in the ciphertext
code, outer, ct, req = ctx.protect_request(coap.POST, [(coap.URI_PATH, b"r")], b"tampered")
bad = bytearray(ct)
bad[0] ^= 1
m = send(code, outer, bad)
print(
    json.dumps(
        {
            "tag": "flipped",
            "code": m.code,
            "oscore": m.opt(oscore.OPT_OSCORE) is not None,
            "payload": hexs(m.payload),
        }
    )
)
print(json.dumps({"tag": "done", "protected": ctx.protected, "unprotected": ctx.unprotected}))
