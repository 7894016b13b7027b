# The node loop shared by every app: sample -> seq -> SenML-CBOR -> outbox -> CoAP CON POST
# /r, oldest first, one request in flight (NSTART = 1). Sampling keeps its interval while a
# request is being retransmitted: the client is polled with the time left until the next
# sample. Apps only define TYPE and sample(board, t) -> [(name, unit, value)].
#
# Answers (docs/protocol.md §2):
#   2.xx        stored: pop
#   4.xx        the request itself is wrong, a retry gets the same answer: log, drop, count
#   5.03        gateway busy: keep, wait Max-Age (default 60, at most max_wait_s)
#   other / none / RST: keep, try again at the next interval
#
# Log lines (one per event, parsed by tools/machi_tools/system.py):
#   I <dev> start seq=<next> type=<type>     I <dev> stop ...
#   I <dev> rec seq=<n>                      a reading is in the outbox: a promise
#   I <dev> ack seq=<n> code=2.04 tries=<k> ms=<rtt>
#   W <dev> retry seq=<n> try=<k>            W <dev> noanswer seq=<n> tries=<k> why=<...>
#   W <dev> busy seq=<n> code=5.03 wait_s=<s>
#   E <dev> reject seq=<n> code=4.00 <diagnostic>
#   W <dev> dropped n=1 seq=<oldest> total=<k>   outbox overflow
#   E <dev> drain ...                        count reached, outbox not empty in time
import cbor
import coap
import coap_client
import senml

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):
        return x


_DEBUG = const(False)
_PATH = ("r",)
_DEFAULT_MAX_AGE = const(60)
_IDLE_MS = const(1000)  # longest single sleep, so a drain deadline is noticed
EXIT_OK = const(0)
EXIT_DRAIN = const(3)
_REASONS = {coap_client.GAVE_UP: "timeout", coap_client.RESET: "reset",
            coap_client.SEP_TIMEOUT: "separate-timeout"}


def _diag(payload):
    # a server diagnostic as one printable token-ish string
    try:
        s = str(bytes(payload[:80]), "utf-8")
    except Exception:
        return "(binary diagnostic)"
    return "".join(c if " " <= c <= "~" else "?" for c in s)


class Node:
    def __init__(self, cfg, board, app, client, seqs, outbox):
        self.cfg = cfg
        self.board = board
        self.app = app
        self.client = client
        self.seqs = seqs
        self.outbox = outbox
        self.dev = cfg["device_id"]
        self._enc = cbor.Encoder(256)
        self._clock = board.clock
        self.rejected = 0
        self.taken = 0
        self._inflight = -1  # seq being sent
        self._tries_logged = 0

    def log(self, level, event, text):
        self.board.log("%s %s %s %s" % (level, self.dev, event, text))

    def sample(self):
        t = self.board.time()
        measurements = self.app.sample(self.board, t)
        seq = self.seqs.next()
        payload = senml.encode_reading(self._enc, self.dev, seq, t, measurements)
        dropped = self.outbox.push(seq, payload)
        self.taken += 1
        self.log("I", "rec", "seq=%d" % seq)
        if dropped:
            self.log("W", "dropped", "n=1 seq=%d total=%d" % (self.outbox.dropped_seq,
                                                           self.outbox.dropped))

    # Send the oldest reading (starts an exchange; progress comes from poll()).
    def _send_oldest(self):
        seq, data = self.outbox.peek()
        self._inflight = seq
        self._tries_logged = 1
        self.client.start(coap.POST, _PATH, coap.CF_SENML_CBOR, data)

    # The exchange ended: returns ms to wait before sending again (0 = go on).
    def _outcome(self):
        c = self.client
        seq = self._inflight
        self._inflight = -1
        head = self.outbox.peek()
        # it may have been dropped by an overflow meanwhile: then nothing to pop
        ours = head is not None and head[0] == seq
        m = c.response
        interval_ms = int(self.cfg["interval_s"] * 1000)
        if m is None:
            self.log("W", "noanswer", "seq=%d tries=%d why=%s" % (seq, c.tries,
                                                                 _REASONS.get(c.error, "?")))
            return interval_ms
        cls = m.code >> 5
        cs = coap.code_str(m.code)
        if cls == 2:
            if ours:
                self.outbox.pop()
            self.log("I", "ack", "seq=%d code=%s tries=%d ms=%d" % (seq, cs, c.tries, c.rtt_ms))
            return 0
        if m.code == coap.UNAUTHORIZED:
            # the gateway does not know us (yet): provisioning may still be on its way, so
            # keep the reading and ask again later instead of losing it
            self.log("W", "unauth", "seq=%d code=%s %s" % (seq, cs, _diag(m.payload)))
            return interval_ms
        if cls == 4:
            if ours:
                self.outbox.pop()
            self.rejected += 1
            self.log("E", "reject", "seq=%d code=%s %s" % (seq, cs, _diag(m.payload)))
            return 0
        if m.code == coap.SERVICE_UNAVAILABLE:
            age = m.opt_uint(coap.MAX_AGE)
            if age is None:
                age = _DEFAULT_MAX_AGE
            wait = min(age, self.cfg["max_wait_s"])
            self.log("W", "busy", "seq=%d code=%s wait_s=%s" % (seq, cs, wait))
            return int(wait * 1000)
        self.log("W", "error", "seq=%d code=%s %s" % (seq, cs, _diag(m.payload)))
        return interval_ms

    # Run until count samples are taken and acknowledged (exit code) or forever.
    def run(self):
        clock = self._clock
        cfg = self.cfg
        count = cfg["count"]
        interval = int(cfg["interval_s"] * 1000)
        drain_ms = int(cfg["drain_timeout_s"] * 1000)
        self.log("I", "start", "seq=%d type=%s board=%s" % (self.seqs.peek(), cfg["type"],
                                                           self.board.name))
        next_sample = clock.ticks_ms()
        hold_since = next_sample  # no sending before hold_since + hold_ms
        hold_ms = 0
        drain_since = None
        c = self.client
        while True:
            now = clock.ticks_ms()
            sampling = count == 0 or self.taken < count
            if sampling and clock.ticks_diff(now, next_sample) >= 0:
                self.sample()
                next_sample = clock.ticks_add(next_sample, interval)
                if clock.ticks_diff(now, next_sample) > 0:
                    next_sample = clock.ticks_add(now, interval)  # fell behind: no burst
                continue
            if not sampling:
                if not len(self.outbox) and not c.busy():
                    return EXIT_OK
                if drain_since is None:
                    drain_since = now
                elif clock.ticks_diff(now, drain_since) > drain_ms:
                    self.log("E", "drain", "left=%d timeout_s=%s" % (len(self.outbox),
                                                                    cfg["drain_timeout_s"]))
                    return EXIT_DRAIN
            # how long until we must sample again
            until = clock.ticks_diff(next_sample, now) if sampling else _IDLE_MS
            until = max(0, min(until, _IDLE_MS))
            if c.busy():
                done = c.poll(until)
                if c.tries > self._tries_logged:
                    self._tries_logged = c.tries
                    self.log("W", "retry", "seq=%d try=%d" % (self._inflight, c.tries))
                if done:
                    hold_ms = self._outcome()
                    hold_since = clock.ticks_ms()
                continue
            if len(self.outbox):
                held = hold_ms - clock.ticks_diff(now, hold_since)
                if held <= 0:
                    hold_ms = 0
                    self._send_oldest()
                    continue
                until = min(until, held)
            clock.sleep_ms(until)
