# Many emulated nodes in one MicroPython process (unix port), behind multi.py: one process
# per node costs ~10 MB of host memory, so a 1,000-node fleet runs N nodes per process.
# Each node is what nodemain.build() makes from its own config: its own state_dir, seq
# store, ring, board, CoAP client and UDP socket; nothing is shared but the interpreter.
#
# Nodes file (JSON): {"defaults": {...}, "nodes": [{...}, ...]}: each node's config is the
# defaults with its own keys on top (one level: a node's "coap" replaces the default's),
# checked by lib/nodeconfig.py like a single node's config file. Only "transport": "udp"
# nodes (with or without OSCORE): the LoRa radio and the NB-IoT modem block while they work.
#
# Scheduling is cooperative: every node's loop is Node.step() (lib/node.py), which never
# blocks and returns the ms until the node must run again. One select.poll holds every
# node's socket; the process sleeps until a socket is readable or the nearest deadline.
#
# Log lines are the single node's, all on the process's stdout (each carries its device
# id), plus, after start-up, `I - multi nodes=<n> failed=<k> heap=<bytes> free=<bytes>`
# (heap in use after a collection, once every node is built).
# Exit codes: 2 the nodes file is bad (nothing starts); otherwise the highest of the nodes'
# codes (main.py's table), each node also logging its own `stop ... code=` line as a node
# alone does. A node that cannot start (ring, seq store) logs why and the others run. A
# node that raises logs `E <dev> crash <exception>`, the traceback, and stops with code 1.
# SIGINT (KeyboardInterrupt) stops every node that is still running with code 0.
import gc
import select
import sys
import time

import nodemain

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_NOPOLL_MS = const(20)  # a node whose transport has nothing to poll on is stepped this often
_CRASH = const(1)


def load(path):
    # -> [checked config], or raises nodeconfig.ConfigError naming the node and the key
    import json

    import nodeconfig

    try:
        with open(path) as f:
            src = json.load(f)
    except OSError as e:
        raise nodeconfig.ConfigError("%s: cannot read (%s)" % (path, e))
    except ValueError as e:
        raise nodeconfig.ConfigError("%s: not JSON (%s)" % (path, e))
    if not isinstance(src, dict) or not isinstance(src.get("nodes"), list):
        raise nodeconfig.ConfigError('%s: expected {"defaults": {...}, "nodes": [...]}' % path)
    for k in src:
        if k not in ("defaults", "nodes"):
            raise nodeconfig.ConfigError("%s: unknown key %s" % (path, k))
    base = src.get("defaults", {})
    if not isinstance(base, dict):
        raise nodeconfig.ConfigError("defaults: must be an object")
    if not src["nodes"]:
        raise nodeconfig.ConfigError("nodes: empty")
    cfgs = []
    ids = {}  # type: dict
    for i, one in enumerate(src["nodes"]):
        if not isinstance(one, dict):
            raise nodeconfig.ConfigError("nodes[%d]: must be an object" % i)
        c = dict(base)
        c.update(one)
        try:
            c = nodeconfig.check(c)
        except nodeconfig.ConfigError as e:
            raise nodeconfig.ConfigError("nodes[%d]: %s" % (i, e))
        if c.get("transport", "udp") != "udp":
            # the LoRa radio and the NB-IoT modem block while they work: alone only
            raise nodeconfig.ConfigError("nodes[%d]: transport: %s nodes cannot share a "
                                         "process, only udp ones" % (i, c["transport"]))
        for k in ("device_id", "state_dir"):
            if c[k] in ids:
                raise nodeconfig.ConfigError("nodes[%d]: %s %s also in nodes[%d]" % (
                    i, k, c[k], ids[c[k]]))
            ids[c[k]] = i
        cfgs.append(c)
    return cfgs


def _configs(path):
    import nodeconfig

    try:
        cfgs = load(path)
    except nodeconfig.ConfigError as e:
        print("E - config %s" % e)
        cfgs = None
    for m in ("nodeconfig", "json"):  # not needed once checked: free their heap
        if m in sys.modules:
            del sys.modules[m]
    gc.collect()
    return cfgs


class Scheduler:
    # Runs begun nodes until each has finished. clock: ticks_ms/ticks_diff/ticks_add.
    def __init__(self, nodes, clock=time):
        self.nodes = nodes
        self.clock = clock
        self.codes = [None] * len(nodes)
        self._due = [0] * len(nodes)
        self._ready = [False] * len(nodes)
        self._poll = select.poll()
        self._index = {}  # pollable -> node index
        self._socks = [None] * len(nodes)
        now = clock.ticks_ms()
        for i in range(len(nodes)):
            s = nodes[i].client.pollable()
            self._socks[i] = s
            self._due[i] = now
            if s is not None:
                self._poll.register(s, select.POLLIN)
                self._index[s] = i
        self.live = len(nodes)

    def _done(self, i, code):
        self.codes[i] = code
        self.live -= 1
        s = self._socks[i]
        if s is not None:
            self._poll.unregister(s)
            del self._index[s]
            self._socks[i] = None
        nodemain.finish(self.nodes[i], code)

    def _step(self, i, readable):
        node = self.nodes[i]
        try:
            w = node.step()
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one node's bug must not stop the others
            node.log("E", "crash", "%s: %s" % (type(e).__name__, e))
            sys.print_exception(e)
            self._done(i, _CRASH)
            return
        if w < 0:
            self._done(i, node.code)
            return
        if readable and not node.client.busy():
            node.client.drain()  # nothing waits for it: a late duplicate
        if self._socks[i] is None and node.client.busy() and w > _NOPOLL_MS:
            w = _NOPOLL_MS
        self._due[i] = self.clock.ticks_add(self.clock.ticks_ms(), w)

    # One round: step every node that is due or readable, then wait for the next one.
    def round(self):
        clock = self.clock
        now = clock.ticks_ms()
        nearest = 1000
        codes = self.codes
        due = self._due
        ready = self._ready
        for i in range(len(self.nodes)):
            if codes[i] is not None:
                continue
            if ready[i] or clock.ticks_diff(due[i], now) <= 0:
                self._step(i, ready[i])
                ready[i] = False
                if codes[i] is not None:
                    continue
            d = clock.ticks_diff(due[i], now)
            if d < nearest:
                nearest = d
        if not self.live:
            return
        nearest -= clock.ticks_diff(clock.ticks_ms(), now)  # the steps took time
        if nearest < 0:
            nearest = 0
        index = self._index
        for ev in self._poll.ipoll(nearest):
            k = index.get(ev[0])
            if k is not None:
                ready[k] = True

    def run(self):
        try:
            while self.live:
                self.round()
        except KeyboardInterrupt:
            for i in range(len(self.nodes)):
                if self.codes[i] is None:
                    self._done(i, 0)
        return self.codes


def main(argv):
    path = argv[1] if len(argv) > 1 else "nodes.json"
    cfgs = _configs(path)
    if cfgs is None:
        return 2
    nodes = []
    worst = 0
    n = len(cfgs)
    import nodebuild  # nodemain.build's code, loaded once for all nodes (it drops it each time)

    while cfgs:
        r = nodebuild.build(cfgs.pop(0))  # its config now lives only in its Node
        if isinstance(r, int):
            worst = max(worst, r)  # it logged why
        else:
            nodes.append(r)
    del sys.modules["nodebuild"]
    del nodebuild  # its code leaves the heap: the nodes are built
    gc.collect()
    print("I - multi nodes=%d failed=%d heap=%d free=%d" % (
        n, n - len(nodes), gc.mem_alloc(), gc.mem_free()))
    for node in nodes:
        node.begin()
    for code in Scheduler(nodes).run():
        if code is not None and code > worst:
            worst = code
    return worst
