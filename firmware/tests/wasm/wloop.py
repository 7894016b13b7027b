# `time`, `socket` and `select` for the node on the wasm32 port (harness.py), in one module
# to keep it small: its code and data sit on the node's heap, so they make the measured
# figure a little larger (conservative), never smaller.
# time: a virtual clock; harness.tick() moves it on by what Node.step() says it would wait,
# so a run takes no wall time and the retransmission timer still fires in order.
# socket/select: one connected datagram socket (this module itself, as are select.poll()'s
# object and what poll() returns) whose far end is a gateway answering each CON at once with
# an ACK 2.04 {1: time}, plus two commands in the second answer (as test_heap_budget.py's
# aiocoap server does), written byte by byte: the node's own decoders check it. It loses the
# first transmission of request `drop`, so the client's retransmission runs too.
from time import *  # noqa: F403

EPOCH = 1767225600  # 2026-01-01 00:00 UTC: the time at virtual tick 0
# [[1, "interval", {"s": 1}], [2, "config", {}]] in CBOR
CMDS = b"\x02\x82\x83\x01\x68interval\xa1\x61s\x01\x83\x02\x66config\xa0"
SOCK_DGRAM = 2
POLLIN = 1
ms = 0
drop = 0
requests = 0  # distinct requests seen (by message id)
lost = 0
_mid = -1
_q = None  # the answer waiting to be read


def ticks_ms():
    return ms


def ticks_add(t, d):
    return t + d  # virtual ticks start at 0 and do not wrap in a run


def ticks_diff(a, b):
    return a - b


def sleep_ms(d):
    global ms
    ms += d


def time():
    return EPOCH + ms / 1000


def getaddrinfo(host, port, af=0, kind=0):
    return [(2, kind, 0, "", (host, port))]


def socket(af, kind):
    return _self


def poll(wait=None):
    # select.poll() without an argument; the poll object's poll(timeout_ms) with one
    if wait is None:
        return _self
    return [(_self, POLLIN)] if _q else []


def connect(addr):
    pass


def register(s, mask):
    pass


def unregister(s):
    pass


def close():
    pass


def recv(n):
    global _q
    q = _q
    _q = None
    return q


def send(buf):
    global _mid, requests, lost, _q
    if buf[0] & 0x30:
        return  # an ACK or RST of the node's own: nothing to answer
    mid = buf[2] << 8 | buf[3]
    if mid != _mid:
        _mid = mid
        requests += 1
        if requests == drop:
            lost += 1
            return  # lost on the way: the client must retransmit
    k = 4 + (buf[0] & 15)
    a = bytearray(buf[:k])  # the request's header and token
    a[0] = a[0] & 0x0F | 0x60  # ACK
    a[1] = 0x44  # 2.04 Changed
    cmds = requests == 2
    # Content-Format 60, payload marker, {1: time(, 2: commands)}
    a += b"\xc1\x3c\xff\xa2\x01\x1a" if cmds else b"\xc1\x3c\xff\xa1\x01\x1a"
    a += (EPOCH + ms // 1000).to_bytes(4, "big")
    if cmds:
        a += CMDS
    _q = a


_self = None  # this module, set by harness.install()
