# MicroPython OSCORE server for firmware/tests/test_oscore_interop.py: answers aiocoap's
# OSCORE requests with our oscore.py (unprotect_request / protect_response), piggybacked.
#   POST /r      -> 2.04, Content-Format 0, payload b"got:" + request payload
#   GET  /hello  -> 2.05, Content-Format 0, b"hello from micropython"
#   other        -> 4.04 (protected)
# A request that fails OSCORE gets the error code unprotected, as RFC 8613 §8.2 says; with
# "rebooted" the replay window starts unknown and the first request gets a protected 4.01
# with an Echo value (RFC 8613 B.1.2) that aiocoap must send back.
# argv: port secret salt sender_id recipient_id id_context("-" = none) ["rebooted"]
# (hex; the unix port's socket has no getsockname, so the test picks the port). Prints
# "READY", then one line per request; runs until killed.
import binascii
import os
import socket
import sys

import coap
import oscore


def unhex(s):
    return binascii.unhexlify(s)


port, secret, salt, sid, rid, idctx = sys.argv[1:7]
rebooted = sys.argv[7:8] == ["rebooted"]  # replay window lost: demand Echo first
ctx = oscore.Context(
    unhex(sid),
    unhex(rid),
    unhex(secret),
    unhex(salt),
    None if idctx == "-" else unhex(idctx),
    echo=os.urandom(8) if rebooted else None,
)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(socket.getaddrinfo("127.0.0.1", int(port))[0][-1])
print("READY")
recent = {}  # (peer, mid) -> answer bytes: a retransmitted CON gets the same answer


def handle(m):
    try:
        req, code, opts, payload = ctx.unprotect_request(m.code, m.options, m.payload)
    except oscore.OscoreError as e:
        if e.reason == "echo":
            # protected 4.01 + Echo: the client repeats the request with the value
            print("ECHO", binascii.hexlify(e.request.piv).decode())
            c, o, ct = ctx.protect_response(
                e.request, coap.UNAUTHORIZED, [(oscore.OPT_ECHO, e.echo)]
            )
            return coap.encode(coap.ACK, c, m.mid, m.token, o, bytes(ct))
        print("REJECT", e.reason, coap.code_str(e.code))
        return coap.encode(coap.ACK, e.code, m.mid, m.token, (), b"")
    path = [v for n, v in opts if n == coap.URI_PATH]
    cf0 = [(coap.CONTENT_FORMAT, b"")]
    if path == [b"r"] and code == coap.POST:
        rcode, ropts, rpl = coap.CHANGED, cf0, b"got:" + payload
    elif path == [b"hello"] and code == coap.GET:
        rcode, ropts, rpl = coap.CONTENT, cf0, b"hello from micropython"
    else:
        rcode, ropts, rpl = coap.NOT_FOUND, [], b""
    print(
        "OK",
        coap.code_str(code),
        "/".join(p.decode() for p in path),
        "->",
        coap.code_str(rcode),
        "piv",
        binascii.hexlify(req.piv).decode(),
    )
    c, o, ct = ctx.protect_response(req, rcode, ropts, rpl)
    return coap.encode(coap.ACK, c, m.mid, m.token, o, bytes(ct))


while True:
    data, peer = sock.recvfrom(1500)
    try:
        m = coap.decode(data)
    except coap.CoapError:
        continue
    if m.mtype != coap.CON or m.code == coap.EMPTY:
        continue
    key = (peer, m.mid)
    out = recent.get(key)
    if out is None:
        out = handle(m)
        if len(recent) > 16:
            recent.clear()
        recent[key] = out
    sock.sendto(out, peer)
