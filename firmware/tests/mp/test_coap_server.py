# The node's server path for pushed commands (lib/coap_server.py, protocol.md §5 "Push"):
# CON POST /c [cid, name, args, exp] executed once through Node._command and answered
# 2.04 + result; a retransmitted CON answered from the cache without executing again; a
# stale exp refused; 4.04/4.05/4.15/4.00; with OSCORE: Echo after boot, the protected request
# taken, forged / replayed / plain refused; a request arriving during the node's own
# exchange and while it idles.
import binascii

import cbor
import coap
import coap_client
import coap_server
import mptest
import oscore
import oscore_transport
from apps import streetlight
from mptest import eq
from nodefakes import T0, FakeBoard, ack, events, make_node

KEY = binascii.unhexlify("000102030405060708090a0b0c0d0e0f")
NODE_ID = (0x8001).to_bytes(2, "big")
DEV = "light-0009"


class Wire:
    # the node's datagram link: push() queues a datagram for the node, sent records answers
    def __init__(self, clock):
        self.clock = clock
        self.sent = []
        self.queue = []

    def push(self, data):
        self.queue.append(bytes(data))

    def send(self, buf):
        self.sent.append(bytes(buf))

    def recv_into(self, buf, timeout_ms):
        if self.queue:
            d = self.queue.pop(0)
            buf[: len(d)] = d
            return len(d)
        self.clock.now += timeout_ms
        return 0


class Rng:
    def random(self):
        return 0.0

    def getrandbits(self, n):
        return 5


def light(secure=False):
    # a streetlight node with the server attached; nothing to send (count 0, no sampling
    # is run here: the tests drive client.listen / handle directly)
    b = FakeBoard(1)
    node, _gw, b = make_node(lambda m, k: ack(m), streetlight, count=1, typ="light", dev=DEV,
                             board=b)
    wire = Wire(b.clock)
    ctx = None
    tr = wire
    if secure:
        ctx = oscore.Context(NODE_ID, b"", KEY)
        tr = oscore_transport.OscoreTransport(wire, ctx)
    node.client = coap_client.Client(tr, b.clock, Rng(), ack_timeout_ms=200, max_retransmit=2)
    srv = coap_server.attach(node)
    return node, wire, srv, b


def cmd_payload(cid=1, name="dim", args=None, exp=T0 + 60):
    c = [cid, name, {"level": 30} if args is None else args]
    if exp is not None:
        c.append(exp)
    return cbor.dumps(c)


def request(mid, payload, path=("c",), code=coap.POST, cf=60, token=b"\x01\x02"):
    opts = [(coap.URI_PATH, p.encode()) for p in path]
    if cf is not None:
        opts.append((coap.CONTENT_FORMAT, coap.uint_bytes(cf)))
    return coap.encode(coap.CON, code, mid, token, opts, payload)


def exchange(node, wire, data):
    wire.push(data)
    n = len(wire.sent)
    node.client.listen(100)
    eq(len(wire.sent), n + 1, "one answer")
    return coap.decode(wire.sent[-1])


def cmd_lines(b):
    return events(b.lines, "cmd")


def test_push_executes_once_and_answers_the_result():
    node, wire, srv, b = light()
    a = exchange(node, wire, request(0x100, cmd_payload()))
    eq((a.mtype, a.code, a.mid, bytes(a.token)), (coap.ACK, coap.CHANGED, 0x100, b"\x01\x02"))
    eq(bytes(a.payload), b"ok")
    eq(a.opt_uint(coap.CONTENT_FORMAT), 0)
    eq((node.app.mode, node.app.level), ("on", 30))  # the lamp follows at the next tick
    eq(cmd_lines(b), ["I %s cmd cid=1 name=dim result=ok" % DEV])
    eq(node._reports, [(1, "ok")])  # also reported in the next reading, as over the ACK path


def test_duplicate_mid_answered_from_cache_not_executed_again():
    node, wire, srv, b = light()
    first = exchange(node, wire, request(0x200, cmd_payload()))
    node.app.level = 99  # would be set back to 30 if the command ran again
    again = exchange(node, wire, request(0x200, cmd_payload()))
    eq(wire.sent[-1], wire.sent[-2])
    eq(bytes(again.payload), bytes(first.payload))
    eq(srv.duplicates, 1)
    eq(len(cmd_lines(b)), 1)
    eq(node.app.level, 99)
    # the same cid under a new message id (the gateway pushed it again, or the ACK path
    # offers it): the node's cid dedup answers the old result without executing
    third = exchange(node, wire, request(0x201, cmd_payload()))
    eq(bytes(third.payload), b"ok")
    eq(len(cmd_lines(b)), 1)
    eq(node.app.level, 99)


def test_stale_exp_refused_not_executed():
    node, wire, srv, b = light()
    a = exchange(node, wire, request(0x300, cmd_payload(exp=T0 - 10)))
    eq(a.code, coap.CHANGED)
    eq(bytes(a.payload), b"err:stale")
    eq((node.app.mode, node.app.level), ("auto", 100))
    eq(cmd_lines(b)[0].startswith("W %s cmd cid=1 name=dim result=err:stale" % DEV), True)


def test_errors():
    node, wire, srv, b = light()
    eq(exchange(node, wire, request(1, cmd_payload(), path=("x",))).code, coap.NOT_FOUND)
    eq(exchange(node, wire, request(2, cmd_payload(), path=("c", "d"))).code, coap.NOT_FOUND)
    eq(exchange(node, wire, request(3, b"", code=coap.GET, cf=None)).code,
       coap.METHOD_NOT_ALLOWED)
    eq(exchange(node, wire, request(4, cmd_payload(), cf=0)).code,
       coap.UNSUPPORTED_CONTENT_FORMAT)
    a = exchange(node, wire, request(5, b"\xff\x00"))
    eq((a.code, bytes(a.payload)), (coap.BAD_REQUEST, b"cbor"))
    a = exchange(node, wire, request(6, cbor.dumps({"cid": 1})))
    eq((a.code, bytes(a.payload)), (coap.BAD_REQUEST, b"command"))
    a = exchange(node, wire, request(7, cbor.dumps([1, "dim", {"level": 5}, "soon"])))
    eq(a.code, coap.BAD_REQUEST)
    # an unknown command name is a result, as over the ACK path
    a = exchange(node, wire, request(8, cmd_payload(cid=9, name="fly", args={})))
    eq((a.code, bytes(a.payload)), (coap.CHANGED, b"err:unknown"))
    # NON requests are not served (the gateway sends CON); an ACK is no request
    n = len(wire.sent)
    wire.push(coap.encode(coap.NON, coap.POST, 9, b"\x01", [(coap.URI_PATH, b"c")],
                          cmd_payload()))
    node.client.listen(10)
    eq(len(wire.sent), n)
    eq(node.app.mode, "auto")


# ---------------------------------------------------------------- OSCORE


def gw_request(gw, mid, payload, opts_extra=()):
    opts = [(coap.URI_PATH, b"c"), (coap.CONTENT_FORMAT, b"\x3c")]
    opts.extend(opts_extra)
    code, outer, ct, req = gw.protect_request(coap.POST, opts, payload)
    return coap.encode(coap.CON, code, mid, b"\x07\x08", outer, bytes(ct)), req


def test_oscore_echo_then_protected_request_accepted():
    node, wire, srv, b = light(secure=True)
    gw = oscore.Context(b"", NODE_ID, KEY)  # the gateway: the client here
    data, req = gw_request(gw, 0x10, cmd_payload())
    a = exchange(node, wire, data)
    code, opts, pl = gw.unprotect_response(req, a.code, a.options, a.payload)
    eq(code, coap.UNAUTHORIZED)  # protected 4.01 + Echo: the node's window is new
    echo = [v for n, v in opts if n == oscore.OPT_ECHO]
    eq(len(echo), 1)
    eq(len(cmd_lines(b)), 0)
    data, req = gw_request(gw, 0x11, cmd_payload(), [(oscore.OPT_ECHO, bytes(echo[0]))])
    a = exchange(node, wire, data)
    eq(a.code, coap.CHANGED)  # the outer code; the real one is inside
    eq(a.payload is not None and b"ok" not in bytes(a.payload), True, "encrypted")
    code, opts, pl = gw.unprotect_response(req, a.code, a.options, a.payload)
    eq((code, bytes(pl)), (coap.CHANGED, b"ok"))
    eq(node.app.level, 30)
    eq(len(cmd_lines(b)), 1)
    # the retransmitted CON: the same answer bytes, no second unprotect (no replay error)
    exchange(node, wire, data)
    eq(wire.sent[-1], wire.sent[-2])
    # the next command is taken without Echo
    data, req = gw_request(gw, 0x12, cmd_payload(cid=2, name="off", args={}))
    a = exchange(node, wire, data)
    code, _, pl = gw.unprotect_response(req, a.code, a.options, a.payload)
    eq((code, bytes(pl)), (coap.CHANGED, b"ok"))
    eq(node.app.mode, "off")
    return node, wire, srv, b, gw, data


def test_oscore_forged_replayed_and_plain_refused():
    node, wire, srv, b, gw, accepted = test_oscore_echo_then_protected_request_accepted()
    done = len(cmd_lines(b))
    refused = srv.refused
    # forged: a flipped bit in the ciphertext, new message id
    data, _ = gw_request(gw, 0x20, cmd_payload(cid=3, name="on", args={}))
    bad = bytearray(data)
    bad[-1] ^= 1
    a = exchange(node, wire, bad)
    eq(a.code, coap.BAD_REQUEST)
    eq(a.opt(oscore.OPT_OSCORE), None)  # an error about OSCORE itself is not protected
    # replayed: the accepted request's bytes under a new message id
    replay = bytearray(accepted)
    replay[2] = 0x55
    a = exchange(node, wire, replay)
    eq(a.code, coap.UNAUTHORIZED)
    # plain: refused, a node with a key takes commands only from who holds it
    a = exchange(node, wire, request(0x22, cmd_payload(cid=4, name="on", args={})))
    eq(a.code, coap.UNAUTHORIZED)
    # another key
    other = oscore.Context(b"", NODE_ID, b"\x01" * 16, seq_store=oscore._CountingSeq(100))
    data, _ = gw_request(other, 0x23, cmd_payload(cid=5, name="on", args={}))
    eq(exchange(node, wire, data).code, coap.BAD_REQUEST)
    eq(len(cmd_lines(b)), done)
    eq(node.app.mode, "off")
    eq(srv.refused, refused + 4)
    eq(len(events(b.lines, "serve")), srv.refused)


def test_oscore_stale_refused():
    node, wire, srv, b = light(secure=True)
    gw = oscore.Context(b"", NODE_ID, KEY)
    data, req = gw_request(gw, 0x30, cmd_payload(exp=T0 - 1))
    a = exchange(node, wire, data)
    _, opts, _ = gw.unprotect_response(req, a.code, a.options, a.payload)
    echo = [bytes(v) for n, v in opts if n == oscore.OPT_ECHO][0]
    data, req = gw_request(gw, 0x31, cmd_payload(exp=T0 - 1), [(oscore.OPT_ECHO, echo)])
    a = exchange(node, wire, data)
    code, _, pl = gw.unprotect_response(req, a.code, a.options, a.payload)
    eq((code, bytes(pl)), (coap.CHANGED, b"err:stale"))
    eq(node.app.mode, "auto")


# ---------------------------------------------------------------- inside the node loop


def test_push_during_an_exchange_and_while_idle():
    pushed = []

    def answer_(m, k):
        return ack(m, payload=cbor.dumps({1: T0}))

    b = FakeBoard(1)
    node, gw, b = make_node(answer_, streetlight, count=2, typ="light", dev=DEV, board=b,
                            interval_s=5.0)
    send = gw.send

    def send_(buf):
        m = coap.decode(bytes(buf))
        if m.mtype == coap.ACK and m.code >= 0x40:
            pushed.append(m)
        send(buf)

    gw.send = send_
    coap_server.attach(node)
    # arrives before the answer to the first reading (during the exchange)
    gw.queue.append(request(0x40, cmd_payload(cid=1)))
    node.begin()
    while node.step(True) >= 0 and not pushed:
        pass
    eq([(m.mid, bytes(m.payload)) for m in pushed], [(0x40, b"ok")])
    # and one while the node idles between readings (the fake gateway delivers it on the
    # node's next receive)
    gw.queue.append(request(0x41, cmd_payload(cid=2, name="off", args={})))
    while node.step(True) >= 0:
        pass
    eq(node.code, 0)
    eq([(m.mid, bytes(m.payload)) for m in pushed], [(0x40, b"ok"), (0x41, b"ok")])
    eq(node.app.mode, "off")
    eq(node.client.stray, 0)
    # both results also rode in a reading
    got = [r[0] for p in gw.packs for r in p[1:] if r[0].startswith("cmd/")]
    eq("cmd/1" in got, True, got)


mptest.run(globals())
