# The node loop's client for LoRa: the interface of lib/coap_client.Client (start, busy,
# poll, response, error, tries, rtt_ms and the counters of nodemain's stop line), so
# lib/node.py runs unchanged over a radio. The reading is sent as the compact frame of
# docs/protocol-lora.md instead of the SenML pack it is handed: start() decodes that pack
# (seq, sample time, measurements, node.py's "cmd/<cid>" results among them) and
# transports/lora.py encodes the frame (lorawire: the results go in its results map).
#
# Confirmed delivery (confirm=True, protocol-lora.md §8): the gateway answers every frame
# whose reading is durable with a short MIC'd ack in the node's receive window, rx_delay_ms
# after the uplink ended:
#   0x80 | short id u16 BE | seq varint (the acked reading) | body | MIC 4
# body = the CoAP 2.04 payload (CBOR {1: time, 2: commands}), so the node learns the time
# and gets its commands as over CoAP; or, where that breaks the dwell limit, the commands
# compact under key 3 ([cid, op, arg?, exp], op an index into lora_compact.COMMANDS; the
# time may be left out), which expand() turns back into that payload, so node.py stays as
# it is.
# No ack in the window: the frame goes out again after a random exponential back-off
# (ack_timeout_ms * [1, factor) * 2^(try-1)), at most max_retransmit times, each within
# the airtime budget (a transmission the budget does not allow waits). The gateway's dedup
# drops the repeats, so the reading is stored once.
# Unconfirmed (confirm=False): a frame that went out counts as delivered.
#
# Outcomes, as node.py reads them (response.code):
#   2.04 acked (or sent, unconfirmed)   payload = the ack body, expanded
#   4.13 the frame does not fit one transmission (dwell limit) or the budget at all: a
#        retry would get the same answer, so the node drops the reading and counts it
#   None with error GAVE_UP: no ack after all tries; the reading stays in the outbox
import struct

import cbor
import coap
import lorawire
from transports import lora

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


ACK_TYPE = const(0x80)

# why an exchange ended without a response (the values of coap_client's)
OK = const(0)
GAVE_UP = const(1)

_IDLE = const(0)
_WAIT = const(1)  # to (re)transmit at _until (back-off, or the airtime budget)
_RX = const(2)  # sent, listening for the ack from _open to _until
_RX_EARLY_MS = const(20)  # the receiver is on a little before the window opens
_MAX_TX_MS = const(60000)  # a budget wait longer than this is re-asked later


class Client:
    def __init__(self, uplink, short_id, key, clock, rng, confirm=True, rx_delay_ms=1000,
                 rx_window_ms=1000, ack_timeout_ms=2000, ack_random_factor=1.5,
                 max_retransmit=4, now=None):
        self.uplink = uplink
        self.radio = uplink.radio
        self.transport = None  # no datagram transport (nodemain: no OSCORE on LoRa)
        self.short_id = short_id
        self._cmac = lorawire.Cmac(key)
        self._clock = clock
        self._rng = rng
        self.confirm = confirm
        self.rx_delay_ms = rx_delay_ms
        self.rx_window_ms = rx_window_ms
        self.ack_timeout_ms = ack_timeout_ms
        self.ack_random_factor = ack_random_factor
        self.max_retransmit = max_retransmit
        self.now = now  # -> unix time or None: the age of a late reading
        self._rx = bytearray(256)
        self._rxv = memoryview(self._rx)
        self._seqbuf = bytearray(10)
        self._state = _IDLE
        self._seq = 0
        self._ms = None
        self._bt = None
        self._t0 = 0
        self._since = 0
        self._until = 0
        self._open = 0
        self.response = None
        self.error = OK
        self.tries = 0
        self.rtt_ms = 0
        # counters (nodemain's stop line reads the first five)
        self.sent = 0
        self.retransmissions = 0
        self.stray = 0  # valid acks for another seq (a late ack of an earlier reading)
        self.bad = 0  # downlinks that are not our ack (wrong type, device or MIC)
        self.net_errors = 0  # OSError from the radio
        self.acked = 0
        self.deferred = 0  # transmissions the airtime budget held back
        self.refused = 0  # readings that can never go out (dwell or budget limit)

    def busy(self):
        return self._state != _IDLE

    # Begin sending one reading; payload is the SenML-CBOR pack node.py made of it.
    def start(self, code, path, content_format, payload):
        if self._state != _IDLE:
            raise RuntimeError("a frame is in flight")
        self._seq, self._bt, self._ms = unpack(payload)
        self.response = None
        self.error = OK
        self.tries = 0
        self._t0 = self._clock.ticks_ms()
        self._attempt()

    def _age(self):
        if not self._bt or self.now is None:
            return 0
        t = self.now()
        if t is None or t <= self._bt:
            return 0
        return t - self._bt

    def _attempt(self):
        clock = self._clock
        now = clock.ticks_ms()
        try:
            st = self.uplink.send(self._seq, self._ms, self._age(), now)
        except lorawire.FrameError:
            st = lora.DWELL  # a seq or value the frame cannot carry: never will
        except OSError:
            self.net_errors += 1  # the radio failed: counts as a lost transmission
            st = lora.SENT
            self._count_try()
            self._no_ack()
            return
        if st == lora.DWELL or (st == lora.BUDGET and self.uplink.wait_ms < 0):
            self.refused += 1
            self._finish(coap.REQUEST_ENTITY_TOO_LARGE, b"lora: frame exceeds the dwell limit"
                         if st == lora.DWELL else b"lora: frame exceeds the airtime budget")
            return
        if st == lora.BUDGET:
            self.deferred += 1
            self._wait(min(self.uplink.wait_ms, _MAX_TX_MS))
            return
        self._count_try()
        if not self.confirm:
            self._finish(coap.CHANGED, b"")
            return
        end = clock.ticks_ms()  # the radio returns once the frame is on air
        self._open = clock.ticks_add(end, self.rx_delay_ms - _RX_EARLY_MS)
        self._since = end
        self._until = self.rx_delay_ms + self.rx_window_ms
        self._state = _RX

    def _count_try(self):
        self.tries += 1
        self.sent += 1
        if self.tries > 1:
            self.retransmissions += 1

    def _wait(self, ms):
        self._since = self._clock.ticks_ms()
        self._until = ms
        self._state = _WAIT

    def _left(self):
        return self._until - self._clock.ticks_diff(self._clock.ticks_ms(), self._since)

    def _no_ack(self):
        if self.tries > self.max_retransmit:
            self._state = _IDLE
            self.response = None
            self.error = GAVE_UP
            self.rtt_ms = self._clock.ticks_diff(self._clock.ticks_ms(), self._t0)
            return
        f = 1 + self._rng.random() * (self.ack_random_factor - 1)
        self._wait(int(self.ack_timeout_ms * f) << (self.tries - 1))

    def _finish(self, code, payload):
        self._state = _IDLE
        self.response = coap.Message(coap.ACK, code, 0, b"", None, payload)
        self.error = OK
        self.rtt_ms = self._clock.ticks_diff(self._clock.ticks_ms(), self._t0)

    # Make progress, waiting at most wait_ms; True once the exchange has ended.
    def poll(self, wait_ms):
        clock = self._clock
        if self._state == _WAIT:
            left = self._left()
            if left > 0:
                clock.sleep_ms(max(0, min(left, wait_ms)))
                if self._left() > 0:
                    return False
            self._attempt()
            return self._state == _IDLE
        if self._state != _RX:
            return True
        early = clock.ticks_diff(self._open, clock.ticks_ms())
        if early > 0:  # the window is not open yet (a real receiver would be asleep)
            clock.sleep_ms(max(0, min(early, wait_ms)))
            return False
        left = self._left()
        if left > 0:
            try:
                n = self.radio.recv(self._rxv, min(left, max(0, wait_ms)))
            except OSError:
                self.net_errors += 1
                n = 0
            if n and self._ack(self._rxv[:n]):
                return True
        if self._left() <= 0:
            self._no_ack()
        return self._state == _IDLE

    # A downlink: our ack for the reading in flight -> finish (True)
    def _ack(self, buf):
        body = check_ack(self._cmac, self.short_id, buf)
        if body is None:
            self.bad += 1
            return False
        seq, payload = body
        if seq != self._seq:
            self.stray += 1
            return False
        self.acked += 1
        self._finish(coap.CHANGED, expand(bytes(payload)))
        return True


# An ack frame for short_id -> (seq, body), or None if it is not one (type, device, MIC).
def check_ack(cmac, short_id, buf):
    n = len(buf)
    if n < 1 + 2 + 1 + lorawire.MIC_LEN or buf[0] != ACK_TYPE:
        return None
    if struct.unpack_from(">H", buf, 1)[0] != short_id:
        return None
    end = n - lorawire.MIC_LEN
    tag = cmac.mac(buf[:end])
    diff = 0
    for i in range(lorawire.MIC_LEN):  # compare every byte: no early exit on a mismatch
        diff |= tag[i] ^ buf[end + i]
    if diff:
        return None
    seq = 0
    shift = 0
    p = 3
    while p < end and shift < 63:
        b = buf[p]
        seq |= (b & 0x7F) << shift
        p += 1
        if not b & 0x80:
            return seq, buf[p:end]
        shift += 7
    return None


# An ack body -> the 2.04 payload node.py reads. The usual time-only body passes as it is;
# one with commands goes through lora_compact (loaded then: most nodes never need it).
def expand(body):
    if len(body) < 2 or (body[0] == 0xA1 and body[1] == 1):
        return body  # nothing, or the usual {1: time}: no decoding
    from transports import lora_compact

    return lora_compact.expand(body)


# The SenML-CBOR pack of node.py -> (seq, bt or None, [(name, unit, value), ...])
def unpack(payload):
    recs = cbor.loads(payload)
    head = recs[0]
    ms = []
    for i in range(1, len(recs)):
        r = recs[i]
        v = r.get(2)
        if v is None:
            v = r.get(4)
        if v is None:
            v = r.get(3)
        ms.append((r.get(0), r.get(1), v))
    return head[2], head.get(-3), ms
