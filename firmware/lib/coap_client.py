# A CoAP confirmable client (RFC 7252 §4.2, §4.4, §5.2.2) for one request at a time
# (NSTART = 1): retransmission with exponential back-off, matching of piggybacked and
# separate responses, and nothing else. The transport, the clock and the random source are
# passed in, so the exact retransmission schedule is tested with fakes under MicroPython.
#
# transport: send(buf) and recv_into(buf, timeout_ms) -> number of bytes, 0 on timeout;
#            either may raise OSError (e.g. ECONNREFUSED from an ICMP port unreachable):
#            that is "no answer this time", never a crash.
# clock:     ticks_ms(), ticks_diff(a, b), sleep_ms(ms) (the `time` module has all three).
# rng:       getrandbits(n) and random() -> float in [0, 1) (the `random` module). Seed it
#            from a true random source: a node that restarts with the same message ids would
#            be answered from the gateway's deduplication cache (RFC 7252 §4.5).
#
# Two ways to use it: `post()` blocks until the exchange ends; `start()` + `poll(wait_ms)`
# lets the caller keep sampling while a request is being retransmitted. `poll(0)` never
# blocks: a scheduler running many clients (lib/multinode.py) waits on pollable() of each
# and wakes a client when its socket is readable or left_ms() has passed.
# A CON request from the gateway (a command pushed to an always-on node) goes to `server`
# when one is attached (lib/coap_server.py), during an exchange, in drain() and in
# listen(); without one it is RST as before.
try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


import coap

_DEBUG = const(False)

# exchange states
_IDLE = const(0)
_WAIT_ACK = const(1)  # sent a CON, waiting for its ACK (or RST, or the response itself)
_WAIT_SEP = const(2)  # got an empty ACK, waiting for the separate response

# why an exchange ended without a response (Client.error)
OK = const(0)
GAVE_UP = const(1)  # MAX_RETRANSMIT exhausted, nothing came back
RESET = const(2)  # the peer answered RST: it rejected the message itself
SEP_TIMEOUT = const(3)  # empty ACK, then no separate response in time

_TOKEN_LEN = const(4)


class Client:
    def __init__(
        self,
        transport,
        clock,
        rng,
        ack_timeout_ms=2000,
        ack_random_factor=1.5,
        max_retransmit=4,
        separate_timeout_ms=0,
        bufsize=1152,
        rxsize=512,
    ):
        self._tr = transport
        self.transport = transport  # for the owner's counters (e.g. OSCORE's)
        self._clock = clock
        self._rng = rng
        self.ack_timeout_ms = ack_timeout_ms
        self.ack_random_factor = ack_random_factor
        self.max_retransmit = max_retransmit
        # how long to wait for a separate response after an empty ACK; default
        # MAX_TRANSMIT_WAIT (RFC 7252 §4.8.2), the span a CON of the server may take
        self.separate_timeout_ms = separate_timeout_ms or int(
            ack_timeout_ms * ((2 << max_retransmit) - 1) * ack_random_factor
        )
        self._tx = bytearray(bufsize)  # a request: up to 1024 bytes of payload + header
        # answers are small (an ACK, a diagnostic); a longer datagram is cut to this size,
        # which still decodes (only its payload is truncated)
        self._rx = bytearray(rxsize)
        self._rxv = memoryview(self._rx)
        self._small = bytearray(4)  # ACK/RST we send ourselves
        self._mid = rng.getrandbits(16)
        self._token = bytearray(_TOKEN_LEN)
        self._state = _IDLE
        self._msg = None
        self._last_sep = -1  # mid of the last CON separate response we ACKed (re-ACK dups)
        self.server = None  # handle(msg) for requests to this node (coap_server.py)
        # the outcome of the last exchange
        self.response = None
        self.error = OK
        self.tries = 0  # transmissions of the current request (1 + retransmissions)
        self.rtt_ms = 0
        # counters, for the node's status line
        self.sent = 0
        self.retransmissions = 0
        self.stray = 0  # well-formed but not for us (stray/duplicate ACKs, other tokens)
        self.bad = 0  # undecodable datagrams
        self.net_errors = 0  # OSError from send/recv

    def busy(self):
        return self._state != _IDLE

    # ms until the exchange's timer fires (a retransmission, or giving up); 0 when idle. A
    # caller that does not block in poll() sleeps at most this long before polling again.
    def left_ms(self):
        if self._state == _IDLE:
            return 0
        left = self._left()
        return left if left > 0 else 0

    # What select.poll can wait on for this client's answers: the transport's pollable()
    # if it has one, else its socket (transports/udp.py), else None (poll it on a timer).
    def pollable(self):
        tr = self._tr
        f = getattr(tr, "pollable", None)
        if f:
            return f()
        return getattr(tr, "_sock", None)

    def _next_mid(self):
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    # Begin a confirmable request; path is a sequence of Uri-Path segments (str); extra:
    # more (number, bytes) options after them, in number order (fwupdate's Block2).
    def start(self, code, path, content_format, payload, extra=()):
        if self._state != _IDLE:
            raise RuntimeError("a request is in flight")
        mid = self._next_mid()
        r = self._rng.getrandbits(32)
        t = self._token
        t[0] = r >> 24
        t[1] = (r >> 16) & 0xFF
        t[2] = (r >> 8) & 0xFF
        t[3] = r & 0xFF
        opts = [(coap.URI_PATH, seg.encode()) for seg in path]
        if content_format is not None:
            opts.append((coap.CONTENT_FORMAT, coap.uint_bytes(content_format)))
        opts.extend(extra)
        self._msg = coap.encode(coap.CON, code, mid, t, opts, payload, self._tx)
        self._reqmid = mid
        self.response = None
        self.error = OK
        self.tries = 0
        # initial timeout uniform in [ACK_TIMEOUT, ACK_TIMEOUT * ACK_RANDOM_FACTOR)
        self._timeout = int(
            self.ack_timeout_ms * (1 + self._rng.random() * (self.ack_random_factor - 1))
        )
        self._t0 = self._clock.ticks_ms()
        self._state = _WAIT_ACK
        self._transmit()

    def _transmit(self):
        self.tries += 1
        self.sent += 1
        if self.tries > 1:
            self.retransmissions += 1
        self._arm(self._timeout)
        try:
            self._tr.send(self._msg)
        except OSError as e:
            # network down: counts as a transmission that got lost
            self.net_errors += 1
            if _DEBUG:
                print("coap send", e)

    # deadlines as (start, span): ticks wrap around, so only ticks_diff may compare them
    def _arm(self, span_ms):
        self._since = self._clock.ticks_ms()
        self._span = span_ms

    def _left(self):
        return self._span - self._clock.ticks_diff(self._clock.ticks_ms(), self._since)

    def _finish(self, response, error):
        self._state = _IDLE
        self.response = response
        self.error = error
        self.rtt_ms = self._clock.ticks_diff(self._clock.ticks_ms(), self._t0)

    # Make progress, waiting at most wait_ms. Returns True when the exchange has ended
    # (self.response is the answer, or None with self.error saying why), False while it is
    # still going.
    def poll(self, wait_ms):
        if self._state == _IDLE:
            return True
        clock = self._clock
        left = self._left()
        if left <= 0:
            self._expired()
            return self._state == _IDLE
        if wait_ms < left:
            left = wait_ms
        try:
            n = self._tr.recv_into(self._rxv, left)
        except OSError as e:
            # ECONNREFUSED: nobody listens (yet). Wait out the slot so we don't spin, and
            # let the retransmission timer decide.
            self.net_errors += 1
            if _DEBUG:
                print("coap recv", e)
            clock.sleep_ms(left)
            n = 0
        if n:
            self._datagram(self._rxv[:n])
        elif self._left() <= 0:
            self._expired()
        return self._state == _IDLE

    def _expired(self):
        if self._state == _WAIT_SEP:
            self._finish(None, SEP_TIMEOUT)
        elif self.tries > self.max_retransmit:
            self._finish(None, GAVE_UP)
        else:
            self._timeout *= 2
            self._transmit()

    def _datagram(self, buf):
        try:
            m = coap.decode(buf)
        except coap.CoapError:
            self.bad += 1
            return
        mt = m.mtype
        if self.server is not None and 0 < m.code < 0x20 and mt <= coap.NON:
            self.server(m)  # a request from the gateway (a pushed command), not an answer
            return
        ours = m.token == self._token
        if mt == coap.ACK or mt == coap.RST:
            if m.mid != self._reqmid or self._state != _WAIT_ACK:
                self.stray += 1  # late or duplicate ACK, or for another exchange
            elif mt == coap.RST:
                self._finish(None, RESET)
            elif m.code == coap.EMPTY:
                # the server will answer in its own CON/NON (RFC 7252 §5.2.2)
                self._state = _WAIT_SEP
                self._arm(self.separate_timeout_ms)
            elif ours and m.code >= 0x40:
                self._finish(m, OK)
            else:
                self.stray += 1  # our mid but not our token: not an answer to this request
            return
        # CON or NON from the server
        if ours and m.code >= 0x40 and self._state != _IDLE:
            # a separate response (possibly overtaking its empty ACK)
            if mt == coap.CON:
                self._reply(coap.ACK, m.mid)
                self._last_sep = m.mid
            self._finish(m, OK)
            return
        if mt == coap.CON:
            if m.mid == self._last_sep:
                self._reply(coap.ACK, m.mid)  # our earlier ACK was lost: ACK it again
            else:
                self._reply(coap.RST, m.mid)  # nothing we know: reject (RFC 7252 §4.2)
        self.stray += 1

    # Read what waits while no exchange is going on (a late duplicate ACK, a separate
    # response sent again): counted as stray and answered as during an exchange, so a
    # scheduler waiting on pollable() is not woken by it again and again.
    def drain(self):
        while True:
            try:
                n = self._tr.recv_into(self._rxv, 0)
            except OSError:
                self.net_errors += 1
                return
            if not n:
                return
            self._datagram(self._rxv[:n])

    # Idle, with a server attached: wait up to wait_ms for a datagram and handle it
    # (returns after the first one, or when the time is up).
    def listen(self, wait_ms):
        try:
            n = self._tr.recv_into(self._rxv, wait_ms)
        except OSError:
            self.net_errors += 1
            self._clock.sleep_ms(wait_ms)  # ECONNREFUSED: no spinning
            return
        if n:
            self._datagram(self._rxv[:n])

    def _reply(self, mtype, mid):
        try:
            self._tr.send(coap.encode(mtype, coap.EMPTY, mid, b"", (), b"", self._small))
        except OSError:
            self.net_errors += 1

    # Blocking request: the response (any code), or None when the exchange failed.
    def request(self, code, path, content_format, payload):
        self.start(code, path, content_format, payload)
        while not self.poll(60000):
            pass
        return self.response

    def post(self, path, content_format, payload):
        return self.request(coap.POST, path, content_format, payload)
