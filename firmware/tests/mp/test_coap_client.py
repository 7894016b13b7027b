# coap_client under the real MicroPython: the RFC 7252 retransmission schedule and
# response matching, with a fake clock and a fake transport (nothing sleeps for real).
import coap
import coap_client
import mptest
from mptest import eq


class FakeClock:
    def __init__(self):
        self.now = 1000
        self.slept = 0

    def ticks_ms(self):
        return self.now

    def ticks_diff(self, a, b):
        return a - b

    def sleep_ms(self, ms):
        self.now += ms
        self.slept += ms


class FixedRng:
    # random() fixed -> the initial timeout is exactly ack_timeout * (1 + r * (factor - 1))
    def __init__(self, r=0.0, bits=0x1233):
        self.r = r
        self.bits = bits

    def random(self):
        return self.r

    def getrandbits(self, n):
        return self.bits & ((1 << n) - 1) if n <= 16 else 0xA1B2C3D4


class FakeTransport:
    # Records (time, bytes) of every send; `on_send(transport, msg)` may schedule replies
    # with reply(at_ms, bytes). recv_into advances the fake clock like a real wait would.
    def __init__(self, clock, on_send=None, refuse=False):
        self.clock = clock
        self.sent = []
        self.queue = []  # (at, bytes), sorted
        self.on_send = on_send
        self.refuse = refuse

    def reply(self, at, data):
        self.queue.append((at, bytes(data)))
        self.queue.sort(key=lambda x: x[0])

    def send(self, buf):
        data = bytes(buf)
        self.sent.append((self.clock.now, data))
        if self.on_send:
            self.on_send(self, coap.decode(data))

    def recv_into(self, buf, timeout_ms):
        if self.refuse:
            raise OSError(111)  # ECONNREFUSED, immediately, like the kernel
        if self.queue and self.queue[0][0] <= self.clock.now + timeout_ms:
            at, data = self.queue.pop(0)
            if at > self.clock.now:
                self.clock.now = at
            buf[: len(data)] = data
            return len(data)
        self.clock.now += timeout_ms
        return 0


def make(on_send=None, r=0.0, refuse=False, **kw):
    clock = FakeClock()
    tr = FakeTransport(clock, on_send, refuse)
    cl = coap_client.Client(tr, clock, FixedRng(r), **kw)
    return clock, tr, cl


def gaps(tr):
    t = [s[0] for s in tr.sent]
    return [t[i + 1] - t[i] for i in range(len(t) - 1)]


def ack(msg, code=coap.CHANGED, token=None, payload=b"", options=(), mid=None):
    return coap.encode(coap.ACK, code, msg.mid if mid is None else mid,
                       msg.token if token is None else token, options, payload)


def test_request_bytes():
    clock, tr, cl = make()
    cl.start(coap.POST, ("r",), coap.CF_SENML_CBOR, b"\x80")
    m = coap.decode(tr.sent[0][1])
    eq(m.mtype, coap.CON)
    eq(m.code, coap.POST)
    eq(m.mid, 0x1234)  # the random start + 1
    eq(m.token, b"\xa1\xb2\xc3\xd4")
    eq(m.opts(coap.URI_PATH), [b"r"])
    eq(m.opt_uint(coap.CONTENT_FORMAT), 112)
    eq(m.payload, b"\x80")


def test_give_up_schedule_rfc_defaults():
    # rng 0 -> initial timeout exactly 2 s; gaps 2/4/8/16 s, 5 sends, give up 32 s later
    clock, tr, cl = make()
    t0 = clock.now
    eq(cl.post(("r",), 112, b"x"), None)
    eq(gaps(tr), [2000, 4000, 8000, 16000])
    eq(len(tr.sent), 5)
    eq(clock.now - t0, 62000)
    eq(cl.error, coap_client.GAVE_UP)
    eq(cl.tries, 5)
    eq(cl.retransmissions, 4)
    # same MID and token on every retransmission, the bytes identical
    eq(len(set(s[1] for s in tr.sent)), 1)


def test_random_factor_upper_range():
    # r just below 1 -> initial timeout just below 3 s (uniform in [2 s, 3 s))
    clock, tr, cl = make(r=0.9995)
    cl.post(("r",), 112, b"x")
    eq(gaps(tr), [2999, 5998, 11996, 23992])


def test_configured_profile():
    clock, tr, cl = make(ack_timeout_ms=300, ack_random_factor=1.5, max_retransmit=2, r=0.5)
    cl.post(("r",), 112, b"x")
    eq(gaps(tr), [375, 750])
    eq(len(tr.sent), 3)


def test_piggybacked_ack_after_two_losses():
    def on_send(t, m):
        if len(t.sent) == 3:
            t.reply(t.clock.now + 40, ack(m))

    clock, tr, cl = make(on_send)
    r = cl.post(("r",), 112, b"x")
    eq(r.code, coap.CHANGED)
    eq(cl.tries, 3)
    eq(cl.rtt_ms, 2000 + 4000 + 40)
    eq(cl.error, coap_client.OK)


def test_mids_increment_tokens_fresh_per_request():
    def on_send(t, m):
        t.reply(t.clock.now + 5, ack(m))

    class CountingRng(FixedRng):
        n = 0

        def getrandbits(self, n):
            self.n += 1
            return (0x1000 + self.n) & ((1 << n) - 1)

    clock = FakeClock()
    tr = FakeTransport(clock, on_send)
    cl = coap_client.Client(tr, clock, CountingRng())
    cl.post(("r",), 112, b"a")
    cl.post(("r",), 112, b"b")
    a = coap.decode(tr.sent[0][1])
    b = coap.decode(tr.sent[1][1])
    eq(b.mid, (a.mid + 1) & 0xFFFF)
    eq(len(a.token), 4)
    eq(a.token != b.token, True)


def test_mid_wraps():
    clock = FakeClock()
    tr = FakeTransport(clock, lambda t, m: t.reply(t.clock.now, ack(m)))
    cl = coap_client.Client(tr, clock, FixedRng(bits=0xFFFF))
    cl.post(("r",), 112, b"a")
    eq(coap.decode(tr.sent[0][1]).mid, 0)


def test_wrong_token_and_stray_and_garbage_ignored():
    def on_send(t, m):
        if len(t.sent) == 1:
            now = t.clock.now
            t.reply(now + 10, ack(m, token=b"\x00\x00\x00\x00"))  # our MID, wrong token
            t.reply(now + 20, ack(m, mid=(m.mid - 1) & 0xFFFF))  # another exchange
            t.reply(now + 30, b"\xff\x00")  # not CoAP
            t.reply(now + 40, coap.encode(coap.NON, coap.CONTENT, 77, b"zz", (), b"?"))
            t.reply(now + 50, ack(m, code=coap.BAD_REQUEST, payload=b"bad seq"))

    clock, tr, cl = make(on_send)
    r = cl.post(("r",), 112, b"x")
    eq(r.code, coap.BAD_REQUEST)
    eq(r.payload, b"bad seq")
    eq(cl.stray, 3)
    eq(cl.bad, 1)
    eq(len(tr.sent), 1)


def test_duplicate_ack_ignored_by_next_request():
    def on_send(t, m):
        if len(t.sent) == 1:
            t.reply(t.clock.now + 10, ack(m))
            t.reply(t.clock.now + 20, ack(m))  # duplicate: arrives during the next request
        else:
            t.reply(t.clock.now + 100, ack(m, code=coap.CREATED))

    clock, tr, cl = make(on_send)
    eq(cl.post(("r",), 112, b"a").code, coap.CHANGED)
    r = cl.post(("r",), 112, b"b")
    eq(r.code, coap.CREATED)  # not the duplicate CHANGED of the first request
    eq(cl.stray, 1)


def test_rst_is_failure():
    clock, tr, cl = make(lambda t, m: t.reply(t.clock.now + 5,
                                              coap.encode(coap.RST, 0, m.mid, b"")))
    eq(cl.post(("r",), 112, b"x"), None)
    eq(cl.error, coap_client.RESET)
    eq(len(tr.sent), 1)


def test_separate_response_con_is_acked():
    def on_send(t, m):
        if m.mtype == coap.CON and m.code == coap.POST:
            t.reply(t.clock.now + 10, coap.encode(coap.ACK, 0, m.mid, b""))
            # the server's own CON, well after our ACK timeout: no retransmission after the
            # empty ACK
            t.reply(t.clock.now + 9000,
                    coap.encode(coap.CON, coap.CHANGED, 0x5000, m.token, (), b"ok"))

    clock, tr, cl = make(on_send)
    r = cl.post(("r",), 112, b"x")
    eq(r.code, coap.CHANGED)
    eq(r.payload, b"ok")
    eq(len(tr.sent), 2)
    reply = coap.decode(tr.sent[1][1])
    eq((reply.mtype, reply.code, reply.mid), (coap.ACK, coap.EMPTY, 0x5000))


def test_separate_response_non_and_timeout():
    def on_send(t, m):
        t.reply(t.clock.now + 10, coap.encode(coap.ACK, 0, m.mid, b""))
        t.reply(t.clock.now + 500, coap.encode(coap.NON, coap.CHANGED, 9, m.token, ()))

    clock, tr, cl = make(on_send)
    eq(cl.post(("r",), 112, b"x").code, coap.CHANGED)
    eq(len(tr.sent), 1)  # NON: nothing to ACK

    clock, tr, cl = make(lambda t, m: t.reply(t.clock.now + 10,
                                              coap.encode(coap.ACK, 0, m.mid, b"")),
                         separate_timeout_ms=5000)
    t0 = clock.now
    eq(cl.post(("r",), 112, b"x"), None)
    eq(cl.error, coap_client.SEP_TIMEOUT)
    eq(clock.now - t0, 5010)
    eq(len(tr.sent), 1)


def test_unrelated_con_gets_rst():
    def on_send(t, m):
        if m.code == coap.POST:
            t.reply(t.clock.now + 10,
                    coap.encode(coap.CON, coap.PUT, 0x4242, b"\x09", ((11, b"x"),), b""))
            t.reply(t.clock.now + 20, ack(m))

    clock, tr, cl = make(on_send)
    eq(cl.post(("r",), 112, b"x").code, coap.CHANGED)
    rst = coap.decode(tr.sent[1][1])
    eq((rst.mtype, rst.code, rst.mid), (coap.RST, coap.EMPTY, 0x4242))


def test_connection_refused_is_no_answer():
    clock, tr, cl = make(refuse=True)
    t0 = clock.now
    eq(cl.post(("r",), 112, b"x"), None)
    eq(cl.error, coap_client.GAVE_UP)
    eq(gaps(tr), [2000, 4000, 8000, 16000])  # the schedule holds: no spinning
    eq(clock.now - t0, 62000)
    eq(cl.net_errors, 5)


def test_poll_returns_between_retransmissions():
    # the node polls with short waits to keep sampling: the schedule is the same
    clock, tr, cl = make()
    cl.start(coap.POST, ("r",), 112, b"x")
    polls = 0
    while not cl.poll(300):
        polls += 1
    eq(gaps(tr), [2000, 4000, 8000, 16000])
    eq(polls > 200, True)


mptest.run(globals())
