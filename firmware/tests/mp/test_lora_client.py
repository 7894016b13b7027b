# transports/lora_client.py under the real MicroPython: node.py's client interface over a
# radio. A reading's SenML pack becomes the compact frame; the gateway's MIC'd ack (bytes
# made by machi_gateway.lora.frame.encode_ack) ends the exchange with its 2.04 body; a
# missing ack means a retry after back-off, at most max_retransmit times; the airtime
# budget holds a retry back; a bad MIC, another device's or another seq's ack is ignored;
# and the whole node loop (node.py) delivers every reading with this client.
import cbor
import coap
import lorawire
import mptest
import reading
from mptest import eq, unhex
from nodefakes import T0, Clock, FakeBoard, Rng
from transports import airtime, lora, lora_client

KEY = bytes(range(16))
SID = 257
CFG = {"freq_hz": 923200000, "sf": 10, "bw_hz": 125000, "cr": 1, "power_dbm": 13}
# encode_ack(257, 1234, key, cbor {1: 1795390000}) and encode_ack(257, 5, key) (gateway)
ACK_1234 = unhex("800101d209a1011a6b037a303ea128da")
ACK_5 = unhex("800101054b7fd783")


class Radio:
    # frames sent, downlinks queued per transmission (None: nothing comes back)
    def __init__(self, clock, air_ms=370):
        self.clock = clock
        self.air_ms = air_ms
        self.frames = []
        self.replies = []  # one entry per send: bytes or None
        self.inbox = []
        self.recv_calls = 0
        self.fail = 0

    def configure(self, **kw):
        pass

    def send(self, buf):
        if self.fail:
            self.fail -= 1
            raise OSError(5)
        self.clock.sleep_ms(self.air_ms)
        self.frames.append((self.clock.now, bytes(buf)))
        if self.replies:
            r = self.replies.pop(0)
            if r is not None:
                self.inbox.append(r)

    def recv(self, buf, timeout_ms):
        self.recv_calls += 1
        if self.inbox:
            d = self.inbox.pop(0)
            buf[:len(d)] = d
            return len(d)
        self.clock.sleep_ms(timeout_ms)
        return 0


def _pack(seq, ms, bt=None):
    enc = cbor.Encoder(256)
    data = bytes(reading.store(cbor.Encoder(256), bt or 0, 0, 77, ms))
    return bytes(reading.pack(enc, "env-0001", seq, bt, data))


def _client(clock, radio, budget=None, **kw):
    up = lora.LoraUplink(radio, lorawire.FrameEncoder("env", SID, KEY), CFG, budget)
    return lora_client.Client(up, SID, KEY, clock, Rng(), ack_timeout_ms=1000,
                              ack_random_factor=1.5, max_retransmit=3, **kw)


def _run(c, step=100):
    n = 0
    while not c.poll(step):
        n += 1
        if n > 10000:
            raise AssertionError("exchange never ended")


MS = [("temp", "Cel", 21.5), ("hum", "%RH", 48), ("boots", None, 3)]


def test_frame_is_the_compact_encoding_of_the_pack():
    clock = Clock()
    r = Radio(clock)
    r.replies = [ACK_1234]
    c = _client(clock, r)
    c.start(coap.POST, ("r",), coap.CF_SENML_CBOR, _pack(1234, MS))
    _run(c)
    want = lorawire.FrameEncoder("env", SID, KEY).encode(1234, [m for m in MS], 0)
    eq(r.frames[0][1], bytes(want))
    eq(c.response.code, coap.CHANGED)
    eq(cbor.loads(c.response.payload), {1: 1795390000})  # the gateway time, for node.py
    eq((c.tries, c.sent, c.retransmissions, c.acked), (1, 1, 0, 1))


def test_unpack_reads_seq_time_and_values():
    seq, bt, ms = lora_client.unpack(_pack(9, [("tilt", None, True), ("x", None, "a")], T0))
    eq((seq, bt), (9, T0))
    eq(ms, [("tilt", None, True), ("x", None, "a")])


def test_no_ack_retries_with_backoff_then_gives_up():
    clock = Clock()
    r = Radio(clock)
    c = _client(clock, r)
    c.start(coap.POST, ("r",), coap.CF_SENML_CBOR, _pack(5, MS))
    _run(c)
    eq(c.response, None)
    eq(c.error, lora_client.GAVE_UP)
    eq(c.tries, 4)  # 1 + max_retransmit
    eq(c.retransmissions, 3)
    # gaps between transmissions: airtime + rx delay + window + back-off 1 s, 2 s, 4 s
    t = [f[0] for f in r.frames]
    gaps = [t[i + 1] - t[i] for i in range(3)]
    for i in range(3):
        eq(gaps[i] >= 370 + 1000 + 1000 + (1000 << i) - 20, True, "gap %r" % gaps)
        eq(gaps[i] <= 370 + 1000 + 1000 + (1000 << i) + 200, True, "gap %r" % gaps)
    eq(len(set(f[1] for f in r.frames)), 1)  # the same frame, the same seq each time


def test_lost_ack_then_ack_on_retry():
    clock = Clock()
    r = Radio(clock)
    r.replies = [None, ACK_5]
    c = _client(clock, r)
    c.start(coap.POST, ("r",), coap.CF_SENML_CBOR, _pack(5, MS))
    _run(c)
    eq(c.response.code, coap.CHANGED)
    eq(c.response.payload, b"")
    eq((c.tries, c.retransmissions), (2, 1))


def test_window_opens_after_rx_delay():
    clock = Clock()
    r = Radio(clock)
    r.replies = [ACK_5]
    c = _client(clock, r)
    c.start(coap.POST, ("r",), coap.CF_SENML_CBOR, _pack(5, MS))
    sent_at = clock.now
    eq(c.poll(100), False)  # the window is not open yet: the radio is not asked
    eq(r.recv_calls, 0)
    _run(c)
    eq(clock.now - sent_at >= 1000 - 20, True)


def test_foreign_and_forged_downlinks_are_ignored():
    clock = Clock()
    r = Radio(clock)
    forged = bytearray(ACK_5)
    forged[-1] ^= 1
    other_dev = bytearray(ACK_5)
    other_dev[2] = 2
    r.inbox = [bytes(forged), bytes(other_dev), ACK_1234, b"\x01\x01", ACK_5]
    c = _client(clock, r)
    c.start(coap.POST, ("r",), coap.CF_SENML_CBOR, _pack(5, MS))
    _run(c)
    eq(c.response.code, coap.CHANGED)
    eq((c.bad, c.stray, c.tries), (3, 1, 1))  # forged, other device, junk; seq 1234


def test_budget_holds_a_retry_back():
    clock = Clock()
    r = Radio(clock)
    r.replies = [None, ACK_5]
    air = airtime.airtime_us(22, 10)
    # room for one frame per 60 s: the retry waits for the window to slide
    b = airtime.Budget(air + 1000, 60000)
    c = _client(clock, r, b)
    c.start(coap.POST, ("r",), coap.CF_SENML_CBOR, _pack(5, MS))
    _run(c)
    eq(c.response.code, coap.CHANGED)
    eq(c.deferred >= 1, True)
    eq(r.frames[1][0] - r.frames[0][0] >= 60000, True)


def test_frame_over_the_dwell_limit_is_refused_as_4_13():
    clock = Clock()
    r = Radio(clock)
    up = lora.LoraUplink(r, lorawire.FrameEncoder("env", SID, KEY), CFG, None, adapt_sf=False)
    c = lora_client.Client(up, SID, KEY, clock, Rng())
    big = [("temp", "Cel", 31.5), ("hum", "%RH", 80), ("pres", "Pa", 93000),
           ("pm25", "ug/m3", 300), ("pm10", "ug/m3", 400), ("lux", "lx", 54321),
           ("bat", "V", 3.3)]
    c.start(coap.POST, ("r",), coap.CF_SENML_CBOR, _pack(1 << 40, big))
    eq(c.busy(), False)
    eq(c.response.code, coap.REQUEST_ENTITY_TOO_LARGE)
    eq((c.refused, len(r.frames)), (1, 0))


def test_radio_error_counts_as_a_lost_try():
    clock = Clock()
    r = Radio(clock)
    r.fail = 1
    r.replies = [ACK_5]
    c = _client(clock, r)
    c.start(coap.POST, ("r",), coap.CF_SENML_CBOR, _pack(5, MS))
    _run(c)
    eq(c.response.code, coap.CHANGED)
    eq((c.net_errors, c.tries), (1, 2))


def test_unconfirmed_counts_sent_as_delivered():
    clock = Clock()
    r = Radio(clock)
    c = _client(clock, r, confirm=False)
    c.start(coap.POST, ("r",), coap.CF_SENML_CBOR, _pack(5, MS))
    eq(c.busy(), False)
    eq((c.response.code, r.recv_calls), (coap.CHANGED, 0))


def test_late_reading_carries_its_age():
    clock = Clock()
    r = Radio(clock)
    r.replies = [ACK_5]
    c = _client(clock, r, now=lambda: T0 + 30)
    c.start(coap.POST, ("r",), coap.CF_SENML_CBOR, _pack(5, MS, T0))
    _run(c)
    want = lorawire.FrameEncoder("env", SID, KEY).encode(5, MS, 30)
    eq(r.frames[0][1], bytes(want))


class AckingRadio(Radio):
    # a gateway behind the radio: acks every frame's seq, but loses every third ack
    def __init__(self, clock):
        Radio.__init__(self, clock)
        self.cmac = lorawire.Cmac(KEY)
        self.n = 0
        self.seqs = []

    def send(self, buf):
        Radio.send(self, buf)
        f = bytes(buf)
        seq = f[3] if f[3] < 0x80 else None  # the test's seqs are < 128
        self.seqs.append(seq)
        self.n += 1
        if self.n % 3 == 0:
            return
        a = bytearray(b"\x80\x01\x01") + bytes([seq])
        a += self.cmac.mac(a)[:4]
        self.inbox.append(bytes(a))


def test_node_loop_delivers_every_reading_once_acked():
    import apps.env_sensor as env
    from nodefakes import lora_node

    board = FakeBoard()
    r = AckingRadio(board.clock)
    node = lora_node(board, r, env, "env", "env-0001", 6, SID, KEY, CFG)
    c = node.client
    eq(node.run(), 0)
    acked = [ln for ln in board.lines if " ack " in ln]
    eq(len(acked), 6)
    eq(sorted(set(s for s in r.seqs)), list(range(100, 106)))  # nodefakes.Seqs
    eq(c.retransmissions >= 1, True)  # every third ack was lost


def test_config_checks_the_lora_section():
    import nodeconfig

    base = {"device_id": "env-0001", "type": "env", "gateway": {"host": "h"},
            "state_dir": "/tmp", "transport": "lora"}
    for lo, word in (({"key": "00" * 16}, "lora.short_id: required"), ({"short_id": 1, "key": "zz"}, "lora.key"),
                     ({"short_id": 70000, "key": "00" * 16}, "lora.short_id"),
                     ({"short_id": 1, "key": "00" * 16, "sf": 13}, "lora.sf"),
                     ({"short_id": 1, "key": "00" * 16, "loss": 2.0}, "lora.loss")):
        d = dict(base)
        d["lora"] = lo
        try:
            nodeconfig.check(d)
        except nodeconfig.ConfigError as e:
            eq(str(e).startswith(word), True, str(e))
        else:
            raise AssertionError("accepted %r" % (lo,))
    d = dict(base)
    d["transport"] = "carrier-pigeon"
    mptest.raises(nodeconfig.ConfigError, nodeconfig.check, d)
    d["transport"] = "nbiot"
    mptest.raises(nodeconfig.ConfigError, nodeconfig.check, d)  # nbiot.uart required


mptest.run(globals())
