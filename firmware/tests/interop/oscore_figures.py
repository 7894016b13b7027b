# Figures for docs/security.md, measured under the real MicroPython: bytes OSCORE adds to
# each message of the node's normal exchange, time per protect/unprotect, and heap used.
# Time is printed next to a baseline measured in the same run (plain coap.encode of the same
# message), never asserted on. argv: vectors dir. Prints "key value" lines.
import binascii
import gc
import json
import sys
import time

import coap
import oscore

vectors = sys.argv[1] if len(sys.argv) > 1 else "../../../tests/vectors"
with open(vectors + "/coap-messages.json") as f:
    msgs = {m["name"]: m for m in json.load(f)}


def msg(name):
    return coap.decode(binascii.unhexlify(msgs[name]["hex"]))


secret = bytes(range(16))
salt = b"\x9e\x7c\xa9\x22\x23\x78\x63\x40"
gc.collect()
before = gc.mem_alloc()
node = oscore.Context(b"\x01", b"gw", secret, salt, None, oscore._CountingSeq(0))
gc.collect()
print("heap_context_bytes", gc.mem_alloc() - before)
gw = oscore.Context(b"gw", b"\x01", secret, salt, None, oscore._CountingSeq(0))


def protected_request(m, ctx):
    code, outer, ct, req = ctx.protect_request(m.code, m.options, m.payload)
    return coap.encode(m.mtype, code, m.mid, m.token, outer, bytes(ct)), req, code, outer, bytes(ct)


# the node's reading (the CoAP vector "con-post-reading": CON POST /r, CF 112, SenML-CBOR)
reading = msg("con-post-reading")
plain = coap.encode(
    reading.mtype, reading.code, reading.mid, reading.token, reading.options, reading.payload
)
print("request_plain_bytes", len(plain))
for seq, label in ((0, "seq_lt_256"), (300, "seq_lt_65536"), (70000, "seq_lt_2e24")):
    ctx = oscore.Context(b"\x01", b"gw", secret, salt, None, oscore._CountingSeq(seq))
    wire = protected_request(reading, ctx)[0]
    print("request_overhead_bytes_" + label, len(wire) - len(plain))

# the gateway's answers: an empty 2.04 ACK, and 2.04 with the CF 60 time map {1: t}
wire, req, code, outer, ct = protected_request(reading, node)
sreq = gw.unprotect_request(code, outer, ct)[0]
ack = msg("ack-changed")
plain_ack = coap.encode(ack.mtype, ack.code, ack.mid, ack.token, (), b"")
c, o, rct = gw.protect_response(sreq, coap.CHANGED, [])
print("response_empty_plain_bytes", len(plain_ack))
print(
    "response_empty_overhead_bytes",
    len(coap.encode(ack.mtype, c, ack.mid, ack.token, o, bytes(rct))) - len(plain_ack),
)
tpay = b"\xa1\x01\x1a\x6b\x03\x7a\x30"  # {1: 1795390000}
topts = [(coap.CONTENT_FORMAT, coap.uint_bytes(60))]
plain_t = coap.encode(ack.mtype, coap.CHANGED, ack.mid, ack.token, topts, tpay)
wire2, req2, code2, outer2, ct2 = protected_request(reading, node)
sreq2 = gw.unprotect_request(code2, outer2, ct2)[0]
c, o, rct = gw.protect_response(sreq2, coap.CHANGED, topts, tpay)
print("response_time_plain_bytes", len(plain_t))
print(
    "response_time_overhead_bytes",
    len(coap.encode(ack.mtype, c, ack.mid, ack.token, o, bytes(rct))) - len(plain_t),
)


def per_op_us(fn, n):
    t0 = time.ticks_us()
    for _ in range(n):
        fn()
    return time.ticks_diff(time.ticks_us(), t0) / n


N = 200
opts = reading.options
for size in (16, 64, 125, 256):
    payload = bytes(size)
    enc_us = per_op_us(lambda p=payload: coap.encode(coap.CON, coap.POST, 1, b"tokn", opts, p), N)
    prot_us = per_op_us(lambda p=payload: node.protect_request(coap.POST, opts, p), N)
    code, outer, ct, _ = node.protect_request(coap.POST, opts, payload)
    ct = bytes(ct)

    def unprot(code=code, outer=outer, ct=ct):
        gw._top = -1  # the same request again: reset the window so it is not a replay
        gw.unprotect_request(code, outer, ct)

    unprot_us = per_op_us(unprot, N)
    print("protect_us_payload_%d" % size, int(prot_us))
    print("unprotect_us_payload_%d" % size, int(unprot_us))
    print("coap_encode_us_payload_%d" % size, int(enc_us))
    print("protect_to_encode_ratio_payload_%d" % size, "%.1f" % (prot_us / enc_us))

gc.collect()
before = gc.mem_alloc()
node.protect_request(coap.POST, opts, bytes(125))
print("heap_per_protect_bytes", gc.mem_alloc() - before)
gc.collect()
t0 = time.ticks_us()
oscore.Context(b"\x01", b"gw", secret, salt, None, oscore._CountingSeq(0))
print("context_derivation_us", time.ticks_diff(time.ticks_us(), t0))
