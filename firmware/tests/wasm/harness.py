# One node on MicroPython's wasm32 port, driven by driver.mjs one call at a time
# (tests/test_heap_budget_wasm32.py; unix_drive.py makes the same calls on the unix port).
# Why calls: this port's GC cannot scan the wasm stack, so it never collects inside a call
# from JavaScript; a collection that is due waits until the call returns, and an allocation
# that does not fit meanwhile ADDS a heap area instead of failing. So the node runs as
# nodemain.main() does, cut where control can go back to JS: config() (main's gc.collect()
# point), load() of each module build() will import (one per call, leaves first; one left
# out is loaded inside build(), which only makes the figure larger), build(), then one
# Node.step(False) per tick() (the non-blocking step of lib/multinode.py). Each call asks
# for a collection on its return and ends by checking the heap's total: `grew` > 0 means
# the heap given was too small for what lives plus what one call allocates. A device's GC
# also runs in the middle of a call: it needs no more.
import binascii  # noqa: F401  # frozen Python here (C on unix and ESP32): counted as ours
import gc
import sys

import wloop
import wos
import wsys

_T0 = gc.mem_alloc() + gc.mem_free()  # this port reports the total plus a constant
grew = 0
live = 0  # the most in use right after a collection (at the start of a call)
peak = 0  # the most in use at the end of a call, before its collection
most = 0  # the most one call allocated (garbage and all)
_a0 = 0
clock = net = wloop
_cfg = None
_node = None


def start():
    global live, _a0
    _a0 = a = gc.mem_alloc()
    if a > live:
        live = a


def check():
    global grew, peak, most
    a = gc.mem_alloc()
    if a > peak:
        peak = a
    if a - _a0 > most:
        most = a - _a0
    d = a + gc.mem_free() - _T0
    if d > grew:
        grew = d
    gc.collect()  # here: only marks a collection due, done once the call is back in JS
    return grew


def install(drop):
    wloop.drop = drop
    wloop._self = wloop
    m = sys.modules
    m["sys"] = wsys
    m["os"] = wos
    m["time"] = m["socket"] = m["select"] = wloop
    sys.path.insert(0, "/fw")
    sys.path.insert(0, "/fw/lib")
    return check()


def load(names):
    start()
    for m in names.split():
        __import__(m)
    return check()


def config(path):
    global _cfg
    start()
    import nodemain

    _cfg = nodemain._config(path)
    return check()


def build():
    global _node
    start()
    import nodemain

    node = nodemain.build(_cfg)
    if isinstance(node, int):
        return -node  # an exit code: it did not start
    _node = node
    node.begin()
    return check()


# -> ms to the next tick (the virtual clock has moved on by then), -1 when the node is done,
# -2 when the heap had to grow
def tick():
    start()
    n = _node
    r = n.step(False)
    if r < 0:
        import nodemain

        nodemain.finish(n, n.code)
    elif r and wloop._q is None:  # an answer waiting: at once (multinode polls the socket)
        wloop.ms += r
    if check():
        return -2
    return r


def code():
    return _node.code


def alloc():
    return gc.mem_alloc()
