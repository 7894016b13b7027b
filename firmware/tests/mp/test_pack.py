# Several readings in one CoAP POST (docs/protocol.md §2, "Several readings in one pack"),
# under the real MicroPython: the node's pack is byte for byte the shared vectors, a backlog
# goes out in packs of at most pack_max, an ACK pops all of them, a lost ACK resends the
# same pack, a 4.xx to a pack drops nothing but sends its readings alone, LoRa keeps one.
import os

import cbor
import coap
import mptest
import nodeconfig
import reading
import ring
from apps import env_sensor
from mptest import eq
from node import Node
from nodefakes import T0, FakeBoard, Seqs, ack, events, make_node, seqs_of
from outbox import Outbox


def _measurements(r):
    out = []
    for m in r["m"]:
        for k in ("v", "vs", "vb"):
            if k in m:
                out.append((m["n"], m.get("u"), m[k]))
    return out


class Capture:
    # a client that only records what the node asks it to send
    def __init__(self):
        self.payloads = []

    def start(self, code, path, cf, payload):
        eq((code, path, cf), (coap.POST, ("r",), coap.CF_SENML_CBOR))
        self.payloads.append(bytes(payload))


def _node(store, dev, pack_max=8, client=None, **cfg):
    c = {"device_id": dev, "type": "env", "state_dir": "/x", "gateway": {"host": "h"},
         "pack_max": pack_max}
    c.update(cfg)
    b = FakeBoard(1)
    return Node(nodeconfig.check(c), b, env_sensor.App(b), client or Capture(), Seqs(), store)


def _fill(store, vec):
    enc = cbor.Encoder()
    for r in vec["readings"]:
        # bt 0 = not known when taken; the fake board never learned the time: sent without
        store.push(r["seq"], reading.store(enc, r["time"], 0, 77, _measurements(r)))


def _vector_packs(store_of):
    for vec in mptest.load_json("senml-readings-multi.json"):
        store = store_of()
        _fill(store, vec)
        node = _node(store, vec["readings"][0]["device"], pack_max=16)
        node._send_oldest()
        eq(node.client.payloads[0].hex(), vec["hex"], vec["name"])
        eq(node._pk_n, len(vec["readings"]))


def test_pack_is_the_vector_bytes_from_ram_and_flash():
    _vector_packs(lambda: Outbox(16, 192))
    path = _tmp("ring")
    try:
        os.remove(path)
    except OSError:
        pass
    try:
        _vector_packs(lambda: ring.FlashRing(_fresh(path), 17, 256))
    finally:
        os.remove(path)


def _tmp(what):
    import binascii

    return "/tmp/mp-pack-%s-%s" % (what, binascii.hexlify(os.urandom(4)).decode())


def _fresh(path):
    with open(path, "wb") as f:
        f.write(bytes(17 * 256))
    return open(path, "r+b")


def test_pack_limits_count_bytes_and_carried_time():
    vec = mptest.load_json("senml-readings-multi.json")[2]  # 16 readings
    store = Outbox(16, 192)
    _fill(store, vec)
    node = _node(store, "env-0003", pack_max=5)
    node._send_oldest()
    eq(len(cbor.loads(node.client.payloads[0])), 10)  # 5 readings of 2 records
    # bytes: 16 readings of ~200 bytes cannot share one 1024-byte payload
    big = Outbox(16, 256)
    enc = cbor.Encoder()
    for s in range(16):
        big.push(s, reading.store(enc, T0, 0, 77, [("note%d" % i, None, "x" * 14)
                                                   for i in range(10)]))
    node = _node(big, "env-0003", pack_max=16)
    node._send_oldest()
    p = node.client.payloads[0]
    assert len(p) <= 1024, len(p)
    assert 1 < node._pk_n < 16, node._pk_n
    # a reading without bt after one with bt ends the pack (SenML would carry bt over)
    mixed = Outbox(8, 192)
    mixed.push(1, reading.store(enc, T0, 0, 77, [("t", None, 1)]))
    mixed.push(2, reading.store(enc, 0, 0, 76, [("t", None, 2)]))  # earlier power cycle
    node = _node(mixed, "env-0003")
    node._send_oldest()
    eq(node._pk_n, 1)
    # ... but a timed one may follow an untimed one
    mixed.pop()
    mixed.push(3, reading.store(enc, T0, 0, 77, [("t", None, 3)]))
    node._send_oldest()
    eq(node._pk_n, 2)


def test_backlog_goes_in_packs_and_an_ack_pops_them_all():
    b = FakeBoard(1)
    # the gateway is away for 6 s (6 readings wait), then answers everything
    node, gw, b = make_node(lambda m, k: None if b.clock.now < 6000 else ack(m), env_sensor,
                            count=12, board=b, pack_max=4)
    eq(node.run(), 0)
    eq(len(node.outbox), 0)
    eq(max(gw.sizes), 4)
    assert gw.sizes.count(4) >= 1, gw.sizes
    acked = seqs_of(b.lines, "ack")
    eq(acked, list(range(100, 112)))  # each reading acked once, in order
    # one ack line per reading, naming the pack size
    eq(len([ln for ln in events(b.lines, "ack") if ln.endswith(" n=4")]) % 4, 0)


def test_lost_ack_resends_the_same_pack():
    b = FakeBoard(1)
    got = []

    def answer(m, k):
        got.append((m.mid, bytes(m.payload)))
        # the first pack of several: its first two transmissions get no answer (lost ACKs)
        if b.clock.now < 4000 or (len(got) <= 8 and len(cbor.loads(m.payload)) > 9):
            return None
        return ack(m)

    node, gw, b = make_node(answer, env_sensor, count=6, board=b, pack_max=8)
    eq(node.run(), 0)
    multi = [(mid, p) for mid, p in got if len(cbor.loads(p)) > 9]
    first = multi[0]
    eq(multi[1], first)  # a retransmission: same message id, same bytes
    eq(multi[2], first)  # answered this time
    eq(len(events(b.lines, "retry")) >= 2, True)
    eq(seqs_of(b.lines, "ack"), list(range(100, 106)))
    eq(len(node.outbox), 0)


def test_exchange_given_up_sends_the_same_readings_again():
    b = FakeBoard(1)
    ex = []  # [mid, seqs, answered] per exchange

    def answer(m, k):
        seqs = [r[2] for r in cbor.loads(m.payload) if r.get(0) == "seq"]
        if not ex or ex[-1][0] != m.mid:
            ex.append([m.mid, seqs, False])
        eq(ex[-1][1], seqs)  # a retransmission carries the same readings
        if b.clock.now < 5000:
            return None
        ex[-1][2] = True
        return ack(m)

    node, gw, b = make_node(answer, env_sensor, count=6, board=b, pack_max=8)
    eq(node.run(), 0)
    given_up = [i for i in range(len(ex) - 1) if not ex[i][2]]
    assert len(given_up) >= 1 and any(len(ex[i + 1][1]) > 1 for i in given_up), ex
    for i in given_up:  # the next exchange starts with the same readings, oldest first
        eq(ex[i + 1][1][: len(ex[i][1])], ex[i][1])
    eq(seqs_of(b.lines, "ack"), list(range(100, 106)))


def test_bad_reading_in_a_pack_is_dropped_alone():
    b = FakeBoard(1)
    bad = 102

    def answer(m, k):
        if b.clock.now < 4000:
            return None
        seqs = [r[2] for r in cbor.loads(m.payload) if r.get(0) == "seq"]
        if bad in seqs:
            return ack(m, coap.BAD_REQUEST, payload=b"bad-value: nope")
        return ack(m)

    node, gw, b = make_node(answer, env_sensor, count=6, board=b, pack_max=8)
    eq(node.run(), 0)
    eq(len(events(b.lines, "unpack")), 1)
    eq(seqs_of(b.lines, "reject"), [bad])
    eq(node.rejected, 1)
    eq(sorted(seqs_of(b.lines, "ack")), [s for s in range(100, 106) if s != bad])
    eq(node._pack_max, 8)  # one reading was bad: the gateway does take packs


def test_gateway_without_packs_gets_one_reading_per_request():
    b = FakeBoard(1)

    def answer(m, k):  # an older gateway: a second seq record is a bad name (4.00)
        if b.clock.now < 4000:
            return None
        if len([r for r in cbor.loads(m.payload) if r.get(0) == "seq"]) > 1:
            return ack(m, coap.BAD_REQUEST, payload=b"bad-name: record 3")
        return ack(m)

    node, gw, b = make_node(answer, env_sensor, count=8, board=b, pack_max=8)
    eq(node.run(), 0)
    eq(node.rejected, 0)
    eq(seqs_of(b.lines, "ack"), list(range(100, 108)))
    eq(node._pack_max, 1)
    eq(len(events(b.lines, "pack")), 1)
    eq(len(events(b.lines, "unpack")), 1)


def test_lora_and_pack_max_config():
    cfg = {"device_id": "env-0001", "type": "env", "state_dir": "/x",
           "gateway": {"host": "h"}, "transport": "lora",
           "lora": {"short_id": 1, "key": "00" * 16}}
    node = _node(Outbox(4), "env-0001", pack_max=8, **cfg)
    eq(node._pack_max, 1)  # a LoRa frame carries one reading
    eq(nodeconfig.check({"device_id": "e", "type": "env", "state_dir": "/x",
                         "gateway": {"host": "h"}})["pack_max"], 8)
    for bad in (0, 17, "4"):
        try:
            nodeconfig.check({"device_id": "e", "type": "env", "state_dir": "/x",
                              "gateway": {"host": "h"}, "pack_max": bad})
        except nodeconfig.ConfigError as e:
            assert "pack_max" in str(e), e
        else:
            raise AssertionError("pack_max %r accepted" % (bad,))


def test_a_full_pack_fits_one_oscore_datagram():
    # the largest pack (1024 bytes) protected by OSCORE: under CoAP's 1152-byte datagram
    # and oscore_transport's buffer, and the gateway's context recovers it whole
    import binascii

    import coap_client
    import oscore
    import oscore_transport
    from nodefakes import Clock, Rng

    key = binascii.unhexlify("000102030405060708090a0b0c0d0e0f")
    node_id = b"\x00\x2a"
    sent = []

    class Wire:
        def send(self, buf):
            sent.append(bytes(buf))

        def recv_into(self, buf, timeout_ms):
            return 0

    tr = oscore_transport.OscoreTransport(Wire(), oscore.Context(node_id, b"", key))
    cl = coap_client.Client(tr, Clock(), Rng(), ack_timeout_ms=200, max_retransmit=1)
    big = Outbox(16, 256)
    enc = cbor.Encoder()
    for s in range(16):
        big.push(s, reading.store(enc, T0, 0, 77, [("n%d" % i, None, "x" * 11)
                                                   for i in range(11)]))
    node = _node(big, "env-0003", pack_max=16, client=cl)
    node._send_oldest()
    eq(len(sent), 1)
    assert len(sent[0]) <= 1152, len(sent[0])
    m = coap.decode(sent[0])
    _req, _code, _opts, plain = oscore.Context(b"", node_id, key).unprotect_request(
        m.code, m.options, m.payload)
    assert 800 < len(plain) <= 1024, len(plain)  # the size estimate is an upper bound
    # what OSCORE and CoAP add (header, token, OSCORE option, inner options, tag): a
    # 1024-byte pack still fits
    extra = len(sent[0]) - len(plain)
    assert 1024 + extra <= 1152, extra
    eq([r[2] for r in cbor.loads(plain) if r.get(0) == "seq"], list(range(node._pk_n)))


def test_ring_peek_k_walks_the_queue():
    path = _tmp("peek")
    try:
        r = ring.FlashRing(_fresh(path), 4, 64)
        for s in range(6):  # 2 dropped on overflow: 2, 3, 4, 5 wait
            r.push(s, bytes([s]) * 3)
        eq([r.peek(k)[0] for k in range(4)], [2, 3, 4, 5])
        eq(r.peek(4), None)
        eq(bytes(r.peek(3)[1]), b"\x05\x05\x05")
        eq(r.peek(1)[0], 3)  # out of order too
        r.pop()
        eq([r.peek(k)[0] for k in range(3)], [3, 4, 5])
        ob = Outbox(3)
        for s in range(4):
            ob.push(s, b"x")
        eq([ob.peek(k)[0] for k in range(3)], [1, 2, 3])
        eq(ob.peek(3), None)
    finally:
        os.remove(path)


mptest.run(globals())
