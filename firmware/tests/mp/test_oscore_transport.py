# oscore_transport under the real MicroPython: the unmodified coap_client over an
# OscoreTransport, against a "gateway" made of our own oscore.Context in the server role
# (aiocoap as the gateway is covered by firmware/tests/test_oscore_node.py).
# Retransmission = the same protected bytes; new content = a new Partial IV; forged,
# unprotected and replayed answers dropped and counted; Echo followed; the sender sequence
# number persisted across a new context; stale commands refused by the node.
import binascii
import os

import cbor
import coap
import coap_client
import mptest
import oscore
import oscore_transport
from apps import streetlight
from mptest import eq
from nodefakes import T0, FakeBoard, ack, events, make_node

KEY = binascii.unhexlify("000102030405060708090a0b0c0d0e0f")
SHORT_ID = 0x002A
NODE_ID = SHORT_ID.to_bytes(2, "big")
_n = [0]


def fresh_dir():
    _n[0] += 1
    tag = binascii.hexlify(os.urandom(4)).decode()
    d = f"/tmp/mp-oscore-tr-{tag}-{_n[0]}"
    os.mkdir(d)
    return d


class Clock:
    def __init__(self):
        self.now = 1000

    def ticks_ms(self):
        return self.now

    def ticks_diff(self, a, b):
        return a - b

    def sleep_ms(self, ms):
        self.now += ms


class Rng:
    def random(self):
        return 0.0

    def getrandbits(self, n):
        return 0x1233 if n <= 16 else 0xA1B2C3D4


class Wire:
    # the raw datagram link: records what the node sends; on_send(wire, msg) may queue
    # datagrams for the node with reply(bytes)
    def __init__(self, clock, on_send=None):
        self.clock = clock
        self.sent = []
        self.queue = []
        self.on_send = on_send

    def reply(self, data):
        self.queue.append(bytes(data))

    def send(self, buf):
        data = bytes(buf)
        self.sent.append(data)
        if self.on_send:
            self.on_send(self, coap.decode(data))

    def recv_into(self, buf, timeout_ms):
        if self.queue:
            d = self.queue.pop(0)
            buf[: len(d)] = d
            return len(d)
        self.clock.now += timeout_ms
        return 0


def gateway(echo=None):
    # the gateway's side of the context: Sender ID empty, Recipient ID the node's
    return oscore.Context(b"", NODE_ID, KEY, echo=echo)


def answer(gw, m, code=coap.CHANGED, payload=b"", mtype=coap.ACK, mid=None):
    # unprotect the node's request with the gateway context, protect an answer to it
    req, _code, _opts, rpl = gw.unprotect_request(m.code, m.options, m.payload)
    c, opts, ct = gw.protect_response(req, code, [(coap.CONTENT_FORMAT, b"\x3c")], payload)
    return coap.encode(mtype, c, m.mid if mid is None else mid, m.token, opts, bytes(ct)), rpl


def make(on_send, state=None):
    clock = Clock()
    wire = Wire(clock, on_send)
    if state is None:
        ctx = oscore.Context(NODE_ID, b"", KEY)
        tr = oscore_transport.OscoreTransport(wire, ctx)
    else:
        tr = oscore_transport.wrap(wire, {"key": binascii.hexlify(KEY).decode(),
                                          "short_id": SHORT_ID}, state, 4)
    cl = coap_client.Client(tr, clock, Rng(), ack_timeout_ms=200, max_retransmit=3)
    return wire, tr, cl


def run(cl, payload=b"reading"):
    cl.start(coap.POST, ("r",), coap.CF_SENML_CBOR, payload)
    while not cl.poll(1000):
        pass
    return cl.response


def piv_of(data):
    piv, kid, _ = oscore.decode_option(coap.decode(data).opt(oscore.OPT_OSCORE))
    return int.from_bytes(piv, "big"), kid


def test_request_is_protected_and_answer_unprotected():
    gw = gateway()
    got = []

    def on_send(w, m):
        data, pl = answer(gw, m, payload=b"\xa1\x01\x1a\x6b\x03\x7a\x30")
        got.append(pl)
        w.reply(data)

    wire, tr, cl = make(on_send)
    r = run(cl, b"pack-1")
    eq(got, [b"pack-1"])
    sent = coap.decode(wire.sent[0])
    # outer: POST, no Uri-Path / Content-Format in clear, same mid and token as the client
    eq(sent.code, coap.POST)
    eq([n for n, _ in sent.options], [oscore.OPT_OSCORE])
    eq(sent.mtype, coap.CON)
    eq(piv_of(wire.sent[0]), (0, NODE_ID))
    eq(b"pack-1" in wire.sent[0], False)  # encrypted
    eq((r.code, r.payload, r.opt_uint(coap.CONTENT_FORMAT)),
       (coap.CHANGED, b"\xa1\x01\x1a\x6b\x03\x7a\x30", 60))
    eq(r.mid, sent.mid)
    eq(cl.error, coap_client.OK)
    eq((tr.dropped, tr.ctx.protected, tr.ctx.unprotected), (0, 1, 1))


def test_retransmission_resends_the_same_bytes_new_content_a_new_piv():
    gw = gateway()
    n = [0]

    def on_send(w, m):
        n[0] += 1
        if n[0] in (1, 2, 4):
            return  # lost: the client retransmits
        w.reply(answer(gw, m)[0])

    wire, tr, cl = make(on_send)
    r = run(cl, b"first")
    eq(r.code, coap.CHANGED)
    eq(len(wire.sent), 3)
    eq(wire.sent[0], wire.sent[1])  # byte for byte: same Partial IV, same mid, same token
    eq(wire.sent[1], wire.sent[2])
    eq(tr.ctx.protected, 1)  # protected once for three transmissions
    r = run(cl, b"second")
    eq(r.code, coap.CHANGED)
    eq(len(wire.sent), 5)
    eq(wire.sent[3], wire.sent[4])
    eq(piv_of(wire.sent[3])[0], 1)  # new content: a new sequence number
    eq(coap.decode(wire.sent[3]).mid != coap.decode(wire.sent[0]).mid, True)
    eq(tr.ctx.protected, 2)


def test_forged_unprotected_and_replayed_answers_are_dropped():
    gw = gateway()
    n = [0]
    saved = []

    def on_send(w, m):
        n[0] += 1
        if n[0] > 1:  # a retransmission: the gateway's deduplication resends its answer
            if n[0] == 3:
                w.reply(saved[0])
            return  # the second transmission gets nothing
        good, _ = answer(gw, m, payload=b"ok-1")
        if n[0] == 1:
            bad = bytearray(good)
            bad[-1] ^= 1  # a flipped tag bit
            w.reply(bad)
            # an unprotected 4.00 with our mid and token (it would make the node drop the
            # reading): dropped as well
            w.reply(coap.encode(coap.ACK, coap.BAD_REQUEST, m.mid, m.token, (), b"no"))
            saved.append(good)

    wire, tr, cl = make(on_send)
    r = run(cl)
    eq((r.code, r.payload), (coap.CHANGED, b"ok-1"))
    eq(tr.dropped, 2)
    eq(cl.tries, 3)
    # the next request; the old (genuine) answer to the first one replayed with the new
    # mid/token does not authenticate against it: dropped, no answer
    m0 = coap.decode(saved[0])

    def replay(w, m):
        w.reply(coap.encode(coap.ACK, m0.code, m.mid, m.token, m0.options, m0.payload))

    wire.on_send = replay
    r = run(cl)
    eq(r, None)
    eq(cl.error, coap_client.GAVE_UP)
    eq(tr.dropped, 2 + 4)  # one per transmission


def test_separate_response_and_its_duplicate():
    gw = gateway()
    sep = []

    def on_send(w, m):
        if m.code != coap.POST:
            return  # our ACKs
        if not sep:
            w.reply(coap.encode(coap.ACK, coap.EMPTY, m.mid, b""))  # empty ACK first
            data, _ = answer(gw, m, payload=b"late", mtype=coap.CON, mid=0x4444)
            sep.append(data)
            w.reply(data)
            return
        # the next request: first the gateway's retransmission of the old separate
        # response (our ACK was lost), then the answer
        w.reply(sep[0])
        w.reply(answer(gw, m, payload=b"next")[0])

    wire, tr, cl = make(on_send)
    r = run(cl)
    eq((r.code, r.payload, r.mtype), (coap.CHANGED, b"late", coap.CON))
    r = run(cl)
    eq((r.code, r.payload), (coap.CHANGED, b"next"))
    acks = [coap.decode(d) for d in wire.sent if coap.decode(d).code == coap.EMPTY]
    eq([(a.mtype, a.mid) for a in acks], [(coap.ACK, 0x4444), (coap.ACK, 0x4444)])  # re-ACKed
    eq(tr.dropped, 0)


def test_echo_challenge_is_followed_once():
    secret = os.urandom(8)
    gw = gateway(echo=secret)  # a gateway that lost its replay window
    seen = []

    def on_send(w, m):
        try:
            req, _code, opts, pl = gw.unprotect_request(m.code, m.options, m.payload)
        except oscore.OscoreError as e:
            eq(e.reason, "echo")
            c, o, ct = gw.protect_response(e.request, coap.UNAUTHORIZED,
                                           [(oscore.OPT_ECHO, e.echo)])
            w.reply(coap.encode(coap.ACK, c, m.mid, m.token, o, bytes(ct)))
            seen.append(("challenge", m.mid))
            return
        seen.append(("ok", m.mid, pl, [n for n, _ in opts]))
        c, o, ct = gw.protect_response(req, coap.CHANGED, (), b"stored")
        w.reply(coap.encode(coap.ACK, c, m.mid, m.token, o, bytes(ct)))

    wire, tr, cl = make(on_send)
    r = run(cl, b"after-restart")
    eq((r.code, r.payload), (coap.CHANGED, b"stored"))
    mid = coap.decode(wire.sent[0]).mid
    eq(seen[0], ("challenge", mid))
    eq(seen[1][0], "ok")
    eq(seen[1][1], (mid + 0x8000) & 0xFFFF)  # its own message id, mapped back for the client
    eq(seen[1][2], b"after-restart")
    eq(oscore.OPT_ECHO in seen[1][3], True)
    eq(r.mid, mid)
    eq((tr.echoes, tr.dropped), (1, 0))


def test_sequence_number_persisted_across_a_new_context():
    d = fresh_dir()
    gw = gateway()
    pivs = []

    def on_send(w, m):
        pivs.append(piv_of(coap.encode(m.mtype, m.code, m.mid, m.token, m.options,
                                       m.payload))[0])
        w.reply(answer(gw, m)[0])

    for boot in range(3):
        _wire, _tr, cl = make(on_send, state=d)  # a new context: a reboot
        for i in range(boot + 2):
            eq(run(cl, b"boot %d reading %d" % (boot, i)).code, coap.CHANGED)
    eq(len(pivs), 2 + 3 + 4)
    eq(len(set(pivs)), len(pivs))  # never a nonce twice
    eq(pivs, sorted(pivs))
    eq(pivs[2] >= 4, True)  # the block of 4 reserved by the first boot was skipped
    eq(sorted(os.listdir(d + "/oscore"))[:2], ["seq", "seq.bak"])


def test_too_large_is_a_network_error_not_a_crash():
    wire, tr, cl = make(None)
    tr.ctx = oscore.Context(NODE_ID, b"", KEY, bufsize=64)
    cl.start(coap.POST, ("r",), coap.CF_SENML_CBOR, b"x" * 200)
    while not cl.poll(1000):
        pass
    eq(cl.error, coap_client.GAVE_UP)
    eq(wire.sent, [])
    eq(cl.net_errors >= 1, True)


# ---------------------------------------------------------------- command freshness


def test_stale_command_refused_fresh_one_executed():
    def answer_(m, k):
        if k == 1:
            return ack(m, payload=cbor.dumps({1: T0, 2: [
                [1, "on", {}, T0 - 5],  # expired by the node's clock
                [2, "dim", {"level": 30}, T0 + 120],  # fresh
                [3, "off", {}],  # no exp: as before
                [4, "off", {}, "soon"],  # malformed exp
            ]}))
        if k == 2:  # cid 1 again with a fresh exp: now executed
            return ack(m, payload=cbor.dumps({2: [[1, "on", {}, T0 + 600]]}))
        return ack(m)

    node, gw, b = make_node(answer_, streetlight, count=3, typ="light", dev="light-0009")
    eq(node.run(), 0)
    cmds = events(b.lines, "cmd")
    old = T0 - 5
    eq(cmds[0].startswith(f"W light-0009 cmd cid=1 name=on result=err:stale exp={old}"),
       True, cmds)
    eq(cmds[1], "I light-0009 cmd cid=2 name=dim result=ok")
    eq(cmds[2], "I light-0009 cmd cid=3 name=off result=ok")
    eq(cmds[3].startswith("W light-0009 cmd malformed"), True, cmds)
    eq(cmds[4], "I light-0009 cmd cid=1 name=on result=ok")
    got = {}
    for p in gw.packs:
        for r in p[1:]:
            if r[0].startswith("cmd/"):
                got[r[0]] = r[3]
    eq(got["cmd/2"], "ok")
    eq(got["cmd/1"], "ok")  # the stale result was replaced by the fresh execution
    stale = [r[3] for r in gw.packs[1][1:] if r[0] == "cmd/1"]
    eq(stale, ["err:stale"])


def test_command_with_exp_refused_without_a_clock():
    def answer_(m, k):
        if k == 1:  # no time in the answer and the board has no clock
            return ack(m, payload=cbor.dumps({2: [[7, "on", {}, T0 + 60]]}))
        return ack(m)

    b = FakeBoard(1, t=None)
    node, gw, b = make_node(answer_, streetlight, count=2, typ="light", dev="light-0009",
                            board=b)
    eq(node.run(), 0)
    eq([r[3] for r in gw.packs[1][1:] if r[0] == "cmd/7"], ["err:stale"])


mptest.run(globals())
