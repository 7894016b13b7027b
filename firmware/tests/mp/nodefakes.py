# Fakes shared by the node/app tests under MicroPython: a clock that only moves when
# slept on, a board with scenario sensors (or pinned values), a gateway answering CoAP.
import cbor
import coap
import coap_client
import nodeconfig
from boards.scenario import Scenario
from node import Node
from outbox import Outbox

T0 = 1795390000  # a fixed epoch second


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


class Dimmer:
    def __init__(self):
        self.level = 0

    def set(self, p):
        self.level = p


class FakeBoard:
    name = "fake"

    def __init__(self, seed=1, scenario=None, clock=None, t=T0, pinned=None):
        self.scenario = Scenario(seed, scenario)
        self.clock = clock or Clock()
        self.lines = []
        self.t = t  # None: no clock; else the time at clock.now == 0
        self.world = T0  # what the virtual sensors see (at clock 0)
        self.pinned = pinned or {}
        self.boot_id = 77
        self.dimmer = Dimmer()
        self.idles = 0

    def sensor(self, name):
        if name in self.pinned:
            v = self.pinned[name]
            return v() if callable(v) else v
        if name == "power":
            return 0.5 + 0.6 * self.dimmer.level
        return self.scenario.read(name, self.world + self.clock.now // 1000)

    def time(self):
        return None if self.t is None else self.t + self.clock.now // 1000

    def mono_ms(self):
        return self.clock.now

    def status(self):
        return [("boots", None, 3), ("reset", None, "wdt")]

    def idle(self, ms, app, due_ms):
        self.idles += 1

    def log(self, line):
        self.lines.append(line)


class Gateway:
    # answers each POST via answer(msg, k) -> bytes or None (lost); k counts POSTs
    def __init__(self, clock, answer):
        self.clock = clock
        self.answer = answer
        self.posts = []  # seqs
        self.packs = []
        self.sizes = []
        self.queue = []

    def send(self, buf):
        m = coap.decode(bytes(buf))
        if m.code != coap.POST:
            return
        pack = cbor.loads(m.payload)
        # a POST may carry several readings (a backlog): packs holds one pack per reading,
        # posts the first seq of each POST, sizes the readings of each POST
        n = 0
        for i in range(len(pack)):
            if pack[i].get(0) == "seq":
                n += 1
                self.packs.append(pack[i:i + 1])
            else:
                self.packs[-1].append(pack[i])
        self.sizes.append(n)
        self.posts.append(pack[0][2])
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


class Seqs:
    def __init__(self, n=100):
        self.n = n

    def peek(self):
        return self.n

    def next(self):
        self.n += 1
        return self.n - 1


def ack(m, code=coap.CHANGED, options=(), payload=b""):
    return coap.encode(coap.ACK, code, m.mid, m.token, options, payload)


def make_node(answer, app_mod, count=3, store=None, interval_s=1.0, board=None, app_cfg=None,
              dev="env-0009", typ="env", **cfg):
    board = board or FakeBoard(1)
    clock = board.clock
    c = {"device_id": dev, "type": typ, "state_dir": "/x", "gateway": {"host": "h"},
         "interval_s": interval_s, "count": count, "drain_timeout_s": 120}
    c.update(cfg)
    c = nodeconfig.check(c)
    gw = Gateway(clock, answer)
    client = coap_client.Client(gw, clock, Rng(), ack_timeout_ms=200, max_retransmit=2)
    app = app_mod.App(board, app_cfg)
    node = Node(c, board, app, client, Seqs(), store or Outbox(8))
    return node, gw, board


def lora_node(board, radio, app_mod, typ, dev, count, short_id, key, radio_cfg):
    # node.py on transports/lora_client.py over `radio` (a fake that acks or not)
    from transports import lora, lora_client
    import lorawire
    up = lora.LoraUplink(radio, lorawire.FrameEncoder(typ, short_id, key), radio_cfg)
    client = lora_client.Client(up, short_id, key, board.clock, Rng(), ack_timeout_ms=500)
    cfg = nodeconfig.check({"device_id": dev, "type": typ,
                            "gateway": {"host": "127.0.0.1", "port": 1680},
                            "state_dir": "/tmp", "interval_s": 2, "count": count,
                            "transport": "lora",
                            "lora": {"short_id": short_id, "key": key.hex()}})
    return Node(cfg, board, app_mod.App(board, {}), client, Seqs(), Outbox(8, 256))


def events(lines, ev):
    return [ln for ln in lines if ln.split()[2] == ev]


def seqs_of(lines, ev):
    return [int(ln.split("seq=")[1].split()[0]) for ln in events(lines, ev)]


def by_name(pack):
    # {name: value} of a pack's measurement records
    out = {}
    for r in pack[1:]:
        for k in (2, 3, 4):
            if k in r:
                out[r[0]] = r[k]
    return out
