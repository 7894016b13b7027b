# The apps' sampling (values in range, deterministic for a seed) and the shared node loop
# (lib/node.py) against a fake gateway, under the real MicroPython.
import cbor
import coap
import coap_client
import mptest
import nodeconfig
from apps import env_sensor, streetlight, waste_bin
from boards.scenario import Scenario
from mptest import eq
from node import Node
from outbox import Outbox

T0 = 1795390000  # a fixed epoch second


class FakeBoard:
    name = "fake"

    def __init__(self, seed=1, scenario=None, clock=None):
        self.scenario = Scenario(seed, scenario)
        self.clock = clock
        self.lines = []
        self.t = T0

    def sensor(self, name, t):
        return self.scenario.read(name, t)

    def time(self):
        return self.t

    def log(self, line):
        self.lines.append(line)


def check_ranges(app, ranges, seed):
    b = FakeBoard(seed)
    for k in range(0, 3 * 86400, 977):  # three days, odd step
        for name, unit, v in app.sample(b, T0 + k):
            lo, hi, u = ranges[name]
            eq(unit, u, name)
            if lo is None:
                eq(v is True or v is False, True, name)
            else:
                eq(lo <= v <= hi, True, "%s=%r at %d" % (name, v, k))


def test_env_ranges():
    check_ranges(env_sensor, {"temp": (-10, 45, "Cel"), "hum": (0, 100, "%RH"),
                              "pres": (95000, 105000, "Pa"), "pm25": (0, 200, "ug/m3"),
                              "pm10": (0, 400, "ug/m3"), "lux": (0, 100000, "lx"),
                              "bat": (3.3, 4.2, "V")}, seed=1)


def test_bin_ranges():
    check_ranges(waste_bin, {"fill": (0, 100, "%"), "temp": (-10, 45, "Cel"),
                             "tilt": (None, None, None), "bat": (3.3, 4.2, "V")}, seed=2)


def test_light_ranges_and_logic():
    check_ranges(streetlight, {"lamp": (None, None, None), "dim": (0, 100, "%"),
                               "lux": (0, 100000, "lx"), "power": (0, 61, "W"),
                               "motion": (None, None, None)}, seed=3)
    b = FakeBoard(3)
    noon_jst = T0 - (T0 % 86400) + 3 * 3600  # 12:00 at UTC+9
    night_jst = noon_jst + 12 * 3600
    eq(dict((n, v) for n, u, v in streetlight.sample(b, noon_jst))["lamp"], False)
    d = dict((n, v) for n, u, v in streetlight.sample(b, night_jst))
    eq(d["lamp"], True)
    eq(d["dim"] in (40, 100), True)


def test_deterministic_per_seed():
    a = [env_sensor.sample(FakeBoard(5), T0 + k * 600) for k in range(20)]
    b = [env_sensor.sample(FakeBoard(5), T0 + k * 600) for k in range(20)]
    c = [env_sensor.sample(FakeBoard(6), T0 + k * 600) for k in range(20)]
    eq(a, b)
    eq(a != c, True)


def test_bin_fills_and_is_emptied():
    b = FakeBoard(4, {"fill_rate_per_h": 10})
    fills = [waste_bin.sample(b, T0 + k * 600)[0][2] for k in range(6 * 24)]
    eq(max(fills) <= 95, True)
    eq(any(fills[i + 1] < fills[i] - 50 for i in range(len(fills) - 1)), True)  # emptied


def test_values_encode_small():
    # quantised floats are exact in float16: no 9-byte float64 in a reading
    import senml
    enc = cbor.Encoder()
    for k in range(50):
        data = bytes(senml.encode_reading(enc, "env-0001", k, T0 + k * 997,
                                          env_sensor.sample(FakeBoard(1), T0 + k * 997)))
        for rec in cbor.loads(data)[1:]:
            v = rec.get(2)
            if isinstance(v, float):
                eq(v, float(int(v * 64)) / 64)
        eq(len(data) < 140, True, "%d bytes" % len(data))


def test_scenario_override_and_fixed():
    b = FakeBoard(1, {"fixed": {"temp": 21.5}, "temp_mean": 30})
    eq(env_sensor.sample(b, T0)[0], ("temp", "Cel", 21.5))


# ---- the node loop


class Clock:
    def __init__(self):
        self.now = 0

    def ticks_ms(self):
        return self.now

    def ticks_diff(self, a, b):
        return a - b

    def ticks_add(self, a, b):
        return a + b

    def sleep_ms(self, ms):
        self.now += ms


class Rng:
    def random(self):
        return 0.0

    def getrandbits(self, n):
        return 7


class Gateway:
    # answers each POST via answer(msg, k) -> bytes or None (lost); k counts POSTs
    def __init__(self, clock, answer):
        self.clock = clock
        self.answer = answer
        self.posts = []
        self.queue = []

    def send(self, buf):
        m = coap.decode(bytes(buf))
        if m.code != coap.POST:
            return
        self.posts.append(cbor.loads(m.payload)[0][2])
        r = self.answer(m, len(self.posts))
        if r:
            self.queue.append(r)

    def recv_into(self, buf, timeout_ms):
        if self.queue:
            d = self.queue.pop(0)
            buf[: len(d)] = d
            self.clock.now += 3
            return len(d)
        self.clock.now += timeout_ms
        return 0


def run_node(answer, count=3, slots=8, interval_s=1.0):
    clock = Clock()
    cfg = nodeconfig.check({"device_id": "env-0009", "type": "env", "state_dir": "/x",
                            "gateway": {"host": "h"}, "interval_s": interval_s,
                            "count": count, "drain_timeout_s": 120})
    gw = Gateway(clock, answer)
    board = FakeBoard(1, clock=clock)
    client = coap_client.Client(gw, clock, Rng(), ack_timeout_ms=200, max_retransmit=2)

    class Seqs:
        n = 100

        def peek(self):
            return self.n

        def next(self):
            self.n += 1
            return self.n - 1

    node = Node(cfg, board, env_sensor, client, Seqs(), Outbox(slots))
    rc = node.run()
    return rc, gw, board.lines, clock


def ack(m, code=coap.CHANGED, options=(), payload=b""):
    return coap.encode(coap.ACK, code, m.mid, m.token, options, payload)


def events(lines, ev):
    return [ln for ln in lines if ln.split()[2] == ev]


def test_node_all_acked_exits_0():
    rc, gw, lines, clock = run_node(lambda m, k: ack(m))
    eq(rc, 0)
    eq(gw.posts, [100, 101, 102])
    eq(len(events(lines, "rec")), 3)
    eq(events(lines, "ack")[0].startswith("I env-0009 ack seq=100 code=2.04 tries=1 ms="), True)
    eq(lines[0], "I env-0009 start seq=100 type=env board=fake")


def test_node_reject_drops_and_goes_on():
    rc, gw, lines, clock = run_node(
        lambda m, k: ack(m, coap.BAD_REQUEST, payload=b"bad\nname") if k == 2 else ack(m))
    eq(rc, 0)
    eq(gw.posts, [100, 101, 102])  # 101 not retried
    eq(events(lines, "reject"), ["E env-0009 reject seq=101 code=4.00 bad?name"])


def test_node_unauthorized_keeps_the_reading_and_retries():
    # the gateway learns about the device only after its first answers: nothing is lost
    rc, gw, lines, clock = run_node(
        lambda m, k: ack(m, coap.UNAUTHORIZED, payload=b"unknown") if k <= 2 else ack(m))
    eq(rc, 0)
    eq(gw.posts[:3], [100, 100, 100])
    eq(len(events(lines, "unauth")), 2)
    eq(events(lines, "reject"), [])
    acked = [int(ln.split("seq=")[1].split()[0]) for ln in events(lines, "ack")]
    eq(acked, [100, 101, 102])


def test_node_busy_waits_max_age():
    def answer(m, k):
        if k == 1:
            return ack(m, coap.SERVICE_UNAVAILABLE, ((coap.MAX_AGE, coap.uint_bytes(7)),))
        return ack(m)

    rc, gw, lines, clock = run_node(answer, count=1)
    eq(rc, 0)
    eq(gw.posts, [100, 100])
    eq(events(lines, "busy"), ["W env-0009 busy seq=100 code=5.03 wait_s=7"])
    eq(clock.now >= 7000, True)


def test_node_noanswer_keeps_and_retries_oldest_first():
    # the first two POST rounds (3 sends each) are lost
    rc, gw, lines, clock = run_node(lambda m, k: None if k <= 6 else ack(m))
    eq(rc, 0)
    eq(len(events(lines, "noanswer")), 2)
    acked = [int(ln.split("seq=")[1].split()[0]) for ln in events(lines, "ack")]
    eq(acked, [100, 101, 102])
    eq(len(events(lines, "retry")) >= 4, True)


def test_node_overflow_drops_oldest_and_logs():
    # nothing answers for a long time while sampling goes on: the oldest are dropped
    clock = Clock()
    cfg = nodeconfig.check({"device_id": "env-0009", "type": "env", "state_dir": "/x",
                            "gateway": {"host": "h"}, "interval_s": 1.0, "count": 10})
    gw = Gateway(clock, lambda m, k: None if clock.now < 15000 else ack(m))
    board = FakeBoard(1, clock=clock)
    client = coap_client.Client(gw, clock, Rng(), ack_timeout_ms=200, max_retransmit=2)

    class Seqs:
        n = 0

        def peek(self):
            return self.n

        def next(self):
            self.n += 1
            return self.n - 1

    node = Node(cfg, board, env_sensor, client, Seqs(), Outbox(4))
    eq(node.run(), 0)
    dropped = events(board.lines, "dropped")
    eq(len(dropped), node.outbox.dropped)
    eq(node.outbox.dropped > 0, True)
    acked = [int(ln.split("seq=")[1].split()[0]) for ln in events(board.lines, "ack")]
    gone = [int(ln.split("seq=")[1].split()[0]) for ln in dropped]
    eq(sorted(acked + gone), list(range(10)))  # each reading acked or dropped, once


mptest.run(globals())
