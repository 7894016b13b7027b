# Several real nodes (nodemain.build: unix board, flash ring, seq store, UDP client) in one
# process under lib/multinode.py's scheduler, against a CoAP gateway on a real UDP socket in
# this same process that loses the first try of every third request and answers every
# fourth twice.
import os
import select
import socket
import time

import coap
import mptest
import multinode
import nodemain
from mptest import eq

N = 4
COUNT = 5


class Gateway:
    # answers every CON POST /r with a piggybacked 2.04; drops the first copy of every
    # third request, so the nodes' retransmission timers must wake the scheduler
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # the unix port's socket has no getsockname: try ports until one is free
        import random

        for _ in range(50):
            self.port = 20000 + random.getrandbits(14)
            try:
                self.sock.bind(socket.getaddrinfo("127.0.0.1", self.port)[0][-1])
                break
            except OSError:
                pass
        else:
            raise AssertionError("no free UDP port")
        self.poll = select.poll()
        self.poll.register(self.sock, select.POLLIN)
        self.got = {}  # device -> [seq, ...] in arrival order (retransmissions included)
        self.requests = 0
        self.dropped = 0
        self.dups = 0
        self.dup_every = 4
        self.seen = {}  # (addr, mid) -> answered

    def serve(self):
        while self.poll.poll(0):
            data, addr = self.sock.recvfrom(1500)
            m = coap.decode(data)
            key = (addr, m.mid)
            if key not in self.seen:
                self.requests += 1
                if self.requests % 3 == 0:
                    self.seen[key] = False
                    self.dropped += 1
                    continue
            import cbor

            pack = cbor.loads(m.payload)
            dev = pack[0][-2][:-1]
            if not self.seen.get(key):
                # every reading of the POST (a backlog goes in one pack)
                self.got.setdefault(dev, []).extend(r[2] for r in pack if r.get(0) == "seq")
            self.seen[key] = True
            a = coap.encode(coap.ACK, coap.CHANGED, m.mid, m.token, (), b"")
            self.sock.sendto(a, addr)
            if self.requests % self.dup_every == 0:
                self.dups += 1
                self.sock.sendto(a, addr)  # arrives when the exchange is over


def _cfgs(root, port, count, n=N, interval_s=0.05):
    import nodeconfig

    out = []
    for i in range(n):
        out.append(nodeconfig.check({
            "device_id": "env-%04d" % (i + 1), "type": "env", "seed": i + 1,
            "gateway": {"host": "127.0.0.1", "port": port}, "interval_s": interval_s,
            "count": count, "drain_timeout_s": 30, "state_dir": "%s/n%d" % (root, i),
            "coap": {"ack_timeout_s": 0.1, "ack_random_factor": 1.0, "max_retransmit": 6}}))
    return out


def _run(gw, cfgs, max_rounds=3000):
    nodes = [nodemain.build(c) for c in cfgs]
    for n in nodes:
        n.begin()
    s = multinode.Scheduler(nodes)
    s._poll.register(gw.sock, select.POLLIN)  # wake for the gateway too
    deadline = time.ticks_add(time.ticks_ms(), 60000)
    rounds = 0
    while s.live:
        s.round()
        rounds += 1
        gw.serve()
        if time.ticks_diff(time.ticks_ms(), deadline) > 0:
            raise AssertionError("nodes did not finish")
    # a datagram nobody waits for (the duplicate ACK) is read and counted, not left in the
    # socket to wake the scheduler in a busy loop (which would take ~100k rounds a second)
    assert rounds < max_rounds, rounds
    return nodes, s.codes


def test_every_reading_of_every_node_acked_and_seq_stores_separate():
    root = "/tmp/mp-multinode-%d" % (time.ticks_ms() & 0xFFFFFF)
    gw = Gateway()
    try:
        cfgs = _cfgs(root, gw.port, COUNT)
        nodes, codes = _run(gw, cfgs)
        eq(codes, [0] * N)
        for n in nodes:
            eq(n.taken, COUNT)
            eq(len(n.outbox), 0)
            eq(gw.got[n.dev], list(range(COUNT)), n.dev)  # each once, in order
        assert gw.dropped > 0
        assert sum(n.client.retransmissions for n in nodes) >= gw.dropped
        assert gw.dups > 0
        # read and counted (but for a node's last ACK: it had finished by then)
        assert 0 < sum(n.client.stray for n in nodes) <= gw.dups
        # a second run from the same state: each node goes on from its own seq store (the
        # next reserved block: 16), as it would alone; a shared store would hand out
        # 16, 17, 18, ... across the nodes
        nodes, codes = _run(gw, _cfgs(root, gw.port, 2))
        eq(codes, [0] * N)
        for n in nodes:
            eq(gw.got[n.dev][COUNT:], [16, 17], n.dev)
    finally:
        mptest.rmtree(root)


def test_a_late_duplicate_to_an_idle_node_is_read_once():
    root = "/tmp/mp-multinode-dup-%d" % (time.ticks_ms() & 0xFFFFFF)
    gw = Gateway()
    gw.dup_every = 1
    try:
        nodes, codes = _run(gw, _cfgs(root, gw.port, 3, n=1, interval_s=0.3), max_rounds=200)
        eq(codes, [0])
        assert nodes[0].client.stray >= 2  # the duplicates of the first two ACKs
    finally:
        mptest.rmtree(root)


def test_nodes_file_errors_name_the_node():
    import nodeconfig

    path = "/tmp/mp-multinode-bad-%d.json" % (time.ticks_ms() & 0xFFFFFF)
    cases = (
        ('{"nodes": []}', "nodes: empty"),
        ('[1]', "expected"),
        ('{"nodes": [{}], "x": 1}', "unknown key x"),
        ('{"defaults": {"type": "env", "gateway": {"host": "h"}}, "nodes": ['
         '{"device_id": "a-1", "state_dir": "/s1"}, {"device_id": "a-1", "state_dir": "/s2"}]}',
         "nodes[1]: device_id a-1 also in nodes[0]"),
        ('{"defaults": {"type": "env", "gateway": {"host": "h"}}, "nodes": ['
         '{"device_id": "a-1", "state_dir": "/s1"}, {"device_id": "a-2"}]}',
         "nodes[1]: state_dir: required"),
        ("{nope", "not JSON"),
        ('{"defaults": {"type": "env", "gateway": {"host": "h"}}, "nodes": ['
         '{"device_id": "a-1", "state_dir": "/s1", "transport": "nbiot",'
         ' "nbiot": {"uart": "/dev/null"}}]}',
         "nodes[0]: transport: nbiot nodes cannot share a process"),
    )
    try:
        for text, want in cases:
            with open(path, "w") as f:
                f.write(text)
            try:
                multinode.load(path)
            except nodeconfig.ConfigError as e:
                assert want in str(e), "%r not in %r" % (want, str(e))
            else:
                raise AssertionError("accepted %s" % text)
        cfgs = None
        with open(path, "w") as f:
            f.write('{"defaults": {"type": "env", "gateway": {"host": "h"}, "count": 3},'
                    ' "nodes": [{"device_id": "a-1", "state_dir": "/s1"},'
                    ' {"device_id": "a-2", "state_dir": "/s2", "count": 5}]}')
        cfgs = multinode.load(path)
        eq([c["count"] for c in cfgs], [3, 5])
        eq(cfgs[1]["interval_s"], 2.0)  # nodeconfig's default
    finally:
        os.remove(path)


mptest.run(globals())
