# The node loop shared by every app: sample -> seq -> store (flash ring) -> CoAP CON POST
# /r, oldest first, one request in flight (NSTART = 1). Sampling keeps its interval while a
# request is being retransmitted: the client is polled with the time left until the next
# sample. App logic lives in apps/ (see apps/README in firmware/README.md):
#   app.sample(t) -> [(name, unit, value)] or None (nothing worth reporting now)
#   app.poll(t, ms) -> True when a reading must go out at once (called every app.poll_ms)
#   app.command(name, args) -> "ok" | "err:<reason>"     app.contact(ms): a valid 2.xx
#
# Every reading carries the time it was taken (reading.py): the board clock, or the time
# learned from the gateway's 2.04 payload {1: unix time} (protocol.md §2); readings taken
# before that get theirs computed when it is learned.
#
# Answers (docs/protocol.md §2):
#   2.xx        stored: pop; its payload may set the time (key 1) and carry commands (key 2)
#   4.01        not known to the gateway (yet): keep, try again at the next interval
#   4.xx        the request itself is wrong, a retry gets the same answer: log, drop, count
#   5.03        gateway busy: keep, wait Max-Age (default 60, at most max_wait_s)
#   other / none / RST: keep, try again at the next interval
#
# Extra measurements ride along with the next reading (no reading of their own, so `count`
# and the seq sequence stay the app's): "dropped" (total readings lost to overflow, in the
# reading whose store overwrote the oldest), "cmd/<cid>" (command results, protocol.md §5),
# and the board's status (boot count, boot reason, last error) every status_every readings
# and in the first one after boot.
#
# Log lines (one per event, parsed by tools/machi_tools/system.py):
#   I <dev> start seq=<next> type=<type> ...   I <dev> stop ...
#   I <dev> rec seq=<n>                      the reading is durably in the ring: a promise
#   I <dev> ack seq=<n> code=2.04 tries=<k> ms=<rtt>
#   I <dev> time t=<unix> was=<unknown|t>     learned from the gateway
#   I <dev> cmd cid=<n> name=<x> result=<r>
#   W <dev> retry seq=<n> try=<k>            W <dev> noanswer seq=<n> tries=<k> why=<...>
#   W <dev> busy seq=<n> code=5.03 wait_s=<s>
#   E <dev> reject seq=<n> code=4.00 <diagnostic>
#   W <dev> dropped n=1 seq=<oldest> total=<k>   buffer overflow
#   E <dev> drain ...                        count reached, buffer not empty in time
import cbor
import coap
import coap_client
import reading

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):
        return x


_DEBUG = const(False)
_PATH = ("r",)
_DEFAULT_MAX_AGE = const(60)
_IDLE_MS = const(1000)  # longest single sleep, so a drain deadline is noticed
_MAX_REPORTS = const(4)  # cmd/<cid> records per reading
_SEEN = const(8)  # commands remembered, so a repeated delivery is not executed twice
EXIT_OK = const(0)
EXIT_DRAIN = const(3)
_REASONS = {coap_client.GAVE_UP: "timeout", coap_client.RESET: "reset",
            coap_client.SEP_TIMEOUT: "separate-timeout"}
_CMD_NAMES = ("on", "off", "dim", "schedule", "interval", "config")


def _diag(payload):
    # a server diagnostic as one printable token-ish string
    try:
        s = str(bytes(payload[:80]), "utf-8")
    except Exception:
        return "(binary diagnostic)"
    return "".join(c if " " <= c <= "~" else "?" for c in s)


class Node:
    def __init__(self, cfg, board, app, client, seqs, outbox, timebase=None):
        self.cfg = cfg
        self.board = board
        self.app = app
        self.client = client
        self.seqs = seqs
        self.outbox = outbox
        self.dev = cfg["device_id"]
        self.time = timebase or reading.TimeBase(board)
        self._enc = cbor.Encoder(256)  # stored form
        self._tx = cbor.Encoder(256)  # the pack on the wire
        self._clock = board.clock
        self.interval_ms = int(cfg["interval_s"] * 1000)
        self.rejected = 0
        self.taken = 0
        self._inflight = -1  # seq being sent
        self._tries_logged = 0
        self._reports = []  # (cid, result) waiting for the next reading
        self._seen = []  # (cid, name, args repr, result) of recent commands
        self._status_due = cfg.get("status_every", 0) > 0
        self.last_contact = None  # ticks of the last 2.xx

    def log(self, level, event, text):
        self.board.log("%s %s %s %s" % (level, self.dev, event, text))

    def _extras(self, ms):
        while self._reports and len(ms) < 20:
            cid, res = self._reports.pop(0)
            ms.append(("cmd/%d" % cid, None, res))
        if self._status_due:
            self._status_due = False
            ms.extend(self.board.status())
        if self.outbox.full():
            ms.append(("dropped", None, self.outbox.dropped + 1))

    # Take a reading now; False when the app had nothing to report.
    def sample(self):
        t = self.time.now()
        ms = self.app.sample(t)
        if ms is None:
            return False
        if not isinstance(ms, list):
            ms = list(ms)
        self._extras(ms)
        seq = self.seqs.next()
        data = reading.store(self._enc, t, self.board.mono_ms(), self.board.boot_id, ms)
        dropped = self.outbox.push(seq, data)
        self.taken += 1
        every = self.cfg.get("status_every", 0)
        if every and self.taken % every == 0:
            self._status_due = True
        self.log("I", "rec", "seq=%d" % seq)
        if dropped:
            self.log("W", "dropped", "n=1 seq=%d total=%d" % (self.outbox.dropped_seq,
                                                           self.outbox.dropped))
        return True

    # Send the oldest reading (starts an exchange; progress comes from poll()).
    def _send_oldest(self):
        seq, data = self.outbox.peek()
        self._inflight = seq
        self._tries_logged = 1
        pk = reading.pack(self._tx, self.dev, seq, self.time.stamp(data), data)
        self.client.start(coap.POST, _PATH, coap.CF_SENML_CBOR, pk)

    # The 2.04 payload: {1: gateway time, 2: [[cid, name, args], ...]}; unknown keys ignored
    def _answer(self, payload):
        if not payload:
            return
        try:
            m = cbor.loads(payload)
        except cbor.CBORError:
            self.log("W", "answer", "undecodable payload")
            return
        if not isinstance(m, dict):
            return
        t = m.get(1)
        if isinstance(t, int) and t > 1000000000 and self.board.time() is None:
            was = self.time.now()
            self.time.learn(t)
            if was is None or abs(was - t) > 1:
                self.log("I", "time", "t=%d was=%s" % (t, "unknown" if was is None else was))
        cmds = m.get(2)
        if isinstance(cmds, list):
            for c in cmds:
                self._command(c)

    def _command(self, c):
        if not (isinstance(c, list) and len(c) == 3 and isinstance(c[0], int) and c[0] >= 0):
            self.log("W", "cmd", "malformed %r" % (c,))
            return
        cid, name, args = c
        key = repr(args)
        for s in self._seen:
            if s[0] == cid and s[1] == name and s[2] == key:
                self._report(cid, s[3])  # delivered again: report again, do not redo
                return
        if name not in _CMD_NAMES or not isinstance(args, dict):
            res = "err:unknown" if name not in _CMD_NAMES else "err:args"
        elif name == "interval":
            s = args.get("s")
            if not isinstance(s, (int, float)) or not 1 <= s <= 86400:
                res = "err:range"
            else:
                self.interval_ms = int(s * 1000)
                res = "ok"
        else:
            try:
                res = self.app.command(name, args)
            except Exception as e:  # an app bug must not take the node down
                res = "err:%s" % type(e).__name__
        self._seen.append((cid, name, key, res))
        if len(self._seen) > _SEEN:
            self._seen.pop(0)
        self.log("I", "cmd", "cid=%d name=%s result=%s" % (cid, name, res))
        self._report(cid, res)

    def _report(self, cid, res):
        for i in range(len(self._reports)):
            if self._reports[i][0] == cid:
                self._reports[i] = (cid, res)
                return
        if len(self._reports) < 2 * _MAX_REPORTS:
            self._reports.append((cid, res))

    # The exchange ended: returns ms to wait before sending again (0 = go on).
    def _outcome(self):
        c = self.client
        seq = self._inflight
        self._inflight = -1
        head = self.outbox.peek()
        # it may have been dropped by an overflow meanwhile: then nothing to pop
        ours = head is not None and head[0] == seq
        m = c.response
        if m is None:
            self.log("W", "noanswer", "seq=%d tries=%d why=%s" % (seq, c.tries,
                                                                 _REASONS.get(c.error, "?")))
            return self.interval_ms
        cls = m.code >> 5
        cs = coap.code_str(m.code)
        if cls == 2:
            if ours:
                self.outbox.pop()
            self.log("I", "ack", "seq=%d code=%s tries=%d ms=%d" % (seq, cs, c.tries, c.rtt_ms))
            now = self._clock.ticks_ms()
            self.last_contact = now
            self.app.contact(now)
            self._answer(m.payload)
            return 0
        if m.code == coap.UNAUTHORIZED:
            # the gateway does not know us (yet): provisioning may still be on its way, so
            # keep the reading and ask again later instead of losing it
            self.log("W", "unauth", "seq=%d code=%s %s" % (seq, cs, _diag(m.payload)))
            return self.interval_ms
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
        return self.interval_ms

    # Run until count readings are taken and acknowledged (exit code) or forever.
    def run(self):
        clock = self._clock
        cfg = self.cfg
        count = cfg["count"]
        drain_ms = int(cfg["drain_timeout_s"] * 1000)
        app = self.app
        poll_ms = getattr(app, "poll_ms", 0)
        self.log("I", "start", "seq=%d type=%s board=%s waiting=%d" % (
            self.seqs.peek(), cfg["type"], self.board.name, len(self.outbox)))
        next_poll = clock.ticks_ms()
        # after a deep-sleep wake for an alarm check, the next sample is still ahead
        resume = getattr(self.board, "resume_ms", None)
        next_sample = clock.ticks_add(next_poll, resume() if resume else 0)
        hold_since = next_sample  # no sending before hold_since + hold_ms
        hold_ms = 0
        drain_since = None
        c = self.client
        feed = getattr(self.board, "feed", None)  # the watchdog (ESP32)
        while True:
            if feed:
                feed()
            now = clock.ticks_ms()
            sampling = count == 0 or self.taken < count
            if sampling and clock.ticks_diff(now, next_sample) >= 0:
                self.sample()
                next_sample = clock.ticks_add(next_sample, self.interval_ms)
                if clock.ticks_diff(now, next_sample) > 0:
                    next_sample = clock.ticks_add(now, self.interval_ms)  # behind: no burst
                continue
            if poll_ms and clock.ticks_diff(now, next_poll) >= 0:
                next_poll = clock.ticks_add(now, poll_ms)
                if app.poll(self.time.now(), now) and sampling:
                    self.sample()  # an alarm: at once, not at the next interval
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
            # how long until we must sample (or poll the app) again
            until = clock.ticks_diff(next_sample, now) if sampling else _IDLE_MS
            if poll_ms:
                until = min(until, clock.ticks_diff(next_poll, now))
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
            elif sampling and not self._reports:
                # nothing to send: a board with deep sleep may power down until the next
                # sample (on ESP32 this does not return: the next wake is a fresh boot)
                due = clock.ticks_diff(next_sample, now)
                nap = min(due, clock.ticks_diff(next_poll, now)) if poll_ms else due
                self.board.idle(nap, app, due)
            clock.sleep_ms(until)
