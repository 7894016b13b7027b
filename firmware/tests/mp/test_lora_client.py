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
from transports import airtime, lora, lora_client, lora_compact

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


# ---- compact commands in the ack (protocol-lora.md §8): key 3 -> the 2.04 payload


def _payload(vec):
    want = {}
    for k in vec["payload"]:
        want[int(k)] = vec["payload"][k]
    return want


def test_every_ack_vector_gives_node_py_the_coap_payload():
    v = mptest.load_json("lora-frames.json")
    keys = {}
    for d in v["devices"]:
        keys[d["id"]] = d
    n = 0
    for vec in v["acks"]:
        d = keys[vec["device"]]
        sid, key = d["short_id"], unhex(d["key"])
        seq, body = lora_client.check_ack(lorawire.Cmac(key), sid, unhex(vec["hex"]))
        eq(seq, vec["seq"], vec["name"])
        eq(bytes(body), unhex(vec["body"]), vec["name"])
        eq(cbor.loads(lora_client.expand(bytes(body))), _payload(vec), vec["name"])
        n += 1 if vec["sf"] == "SF10" and vec["commands"] else 0
    eq(n >= 5, True)  # on, off, dim, schedule, interval at SF10


def test_a_compact_ack_ends_the_exchange_with_the_expanded_payload():
    v = mptest.load_json("lora-frames.json")
    vec = None
    for a in v["acks"]:
        if a["name"] == "ack-sf10-dim-37-cid-200":
            vec = a
    clock = Clock()
    r = Radio(clock)
    r.replies = [unhex(vec["hex"])]
    key = unhex("f0e1d2c3b4a5968778695a4b3c2d1e0f")  # light-0003
    up = lora.LoraUplink(r, lorawire.FrameEncoder("light", 0xBEEF, key), CFG, None)
    c = lora_client.Client(up, 0xBEEF, key, clock, Rng())
    c.start(coap.POST, ("r",), coap.CF_SENML_CBOR, _pack(5002, [("lamp", None, True)]))
    _run(c)
    eq(c.response.code, coap.CHANGED)
    eq(cbor.loads(c.response.payload), {2: [[200, "dim", {"level": 37}, 1795390120]]})
    eq(c.acked, 1)


def test_expand_leaves_the_usual_body_and_unknown_forms_alone():
    time_only = unhex("a1011a6b037a30")
    eq(lora_client.expand(time_only) is time_only, True)  # no decoding on the usual path
    eq(lora_client.expand(b""), b"")
    eq(lora_client.expand(b"\xff\x00"), b"\xff\x00")  # not CBOR: node.py logs it
    full = cbor.dumps({1: 5, 2: [[1, "on", {}, 9]]})
    eq(lora_client.expand(full), full)
    # an op this firmware does not know, with or without an argument: its index as the
    # name and no args (node.py: err:unknown); an out-of-range value index passes as is
    # (the app: err:mode); a known op with the wrong number of elements passes as is
    got = cbor.loads(lora_client.expand(cbor.dumps(
        {3: [[1, 99, 9], [2, 3, 7, 9], [3, 99, 5, 9], [4, 2, 9]]})))
    eq(got, {2: [[1, 99, {}, 9], [2, "schedule", {"mode": 7}, 9], [3, 99, {}, 9],
                 [4, 2, 9]]})


def test_command_table_equals_the_gateway_table():
    import json

    path = mptest.vectors_dir() + "/../../gateway/machi_gateway/lora/profiles.json"
    with open(path) as fh:
        gw = json.load(fh)["commands"]
    eq(len(gw), len(lora_compact.COMMANDS))
    for fw, g in zip(lora_compact.COMMANDS, gw):
        eq(fw[0], g["name"])
        eq(fw[1], g.get("arg"), fw[0])
        eq(fw[2], tuple(g["values"]) if "values" in g else None, fw[0])


def test_node_runs_a_compact_command_with_a_learned_clock_and_refuses_it_without():
    # node.py unchanged: the expanded command checks exp against the clock learned from
    # an earlier ack; a node with no clock at all refuses it err:stale (docs/security.md)
    import node as node_mod

    class App:
        def command(self, name, args):
            return "ok:%s" % args.get("level")

    class Time:
        def __init__(self, t):
            self.t = t

        def now(self):
            return self.t

    class Stub:
        pass

    body = lora_client.expand(unhex("a103818418c80218251a6b037aa8"))  # dim 37, exp T+120
    for learned, want in ((1795390000, "ok:37"), (1795390121, "err:stale"),
                          (None, "err:stale")):
        n = Stub()
        got = []
        n.app = App()
        n._report = lambda cid, res: got.append((cid, res))
        n._seen = []
        n._late_s = 0
        n.log = lambda *a: None
        n.time = Time(learned)
        for c in cbor.loads(body)[2]:
            node_mod.Node._command(n, c)
        eq(got, [(200, want)], str(learned))

mptest.run(globals())
