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
#   5.03, 4.29  gateway busy / over the rate per source: keep, wait Max-Age (default 60,
#               at most max_wait_s)
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
#   I <dev> ack seq=<n> code=2.04 tries=<k> ms=<rtt> [n=<readings in its pack>]
#   W <dev> unpack seq=<first> code=<4.xx> n=<k> ...  a pack refused: its readings go alone
#   W <dev> pack unsupported max=1           ... and each was taken alone: no more packs
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

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_DEBUG = const(False)
_DEFAULT_MAX_AGE = const(60)
_IDLE_MS = const(1000)  # longest single sleep, so a drain deadline is noticed
_MAX_REPORTS = const(4)  # cmd/<cid> records per reading
_SEEN = const(8)  # commands remembered, so a repeated delivery is not executed twice
# bytes of readings in one pack: the gateway's max payload (protocol.md §2); with OSCORE
# the datagram grows by ~30 bytes, still under CoAP's 1152 (and oscore_transport's buffer)
_PACK_BYTES = const(1024)
_EXIT_OK = const(0)
_EXIT_DRAIN = const(3)
_EXIT_RESET = const(7)  # an update is pending: start again to boot it (main.py)
# Tables (the command names, the reasons of a noanswer, the request's path) are literals
# where they are used: a module-level name is a qstr on every node's heap, never freed
# (firmware/README.md, budgets).


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
        self.time = reading.TimeBase(board)
        self._enc = cbor.Encoder(256)  # stored form
        self._tx = cbor.Encoder(256)  # the pack on the wire
        self._clock = board.clock
        self.interval_ms = int(cfg["interval_s"] * 1000)
        self.rejected = 0
        self.taken = 0
        self._inflight = -1  # seq being sent (the first of its pack)
        # A backlog goes out up to pack_max readings per request (protocol.md §2, "Several
        # readings in one pack"); LoRa frames carry one reading (lora_client decodes it).
        pm = 1 if cfg.get("transport") == "lora" else cfg.get("pack_max", 1)
        self._pack_max = pm
        self._pk_seqs = [0] * pm  # the pack in flight: seqs, sample times
        self._pk_bts = [None] * pm
        self._pk_n = 0
        self._solo = 0  # readings to send alone after a pack got a 4.xx
        self._solo_ok = True  # ... and every one of them was taken alone so far
        self._tries_logged = 0
        self._reports = []  # (cid, result) waiting for the next reading
        self._seen = []  # (cid, name, args repr, result) of recent commands
        self._status_due = cfg.get("status_every", 0) > 0
        self.last_contact = None  # ticks of the last 2.xx
        self.fw_reset_due = False  # set once the `update` report was acknowledged
        self._late_s = 0  # how old the answer being handled may be (_answer)
        self.server = None  # coap_server.Server on an always-on node (commands pushed to /c)

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

    # Send the oldest readings, up to pack_max of them in one pack (starts an exchange;
    # progress comes from poll()). The pack ends early at _PACK_BYTES, and before a reading
    # without a sample time that follows one with (SenML would carry that bt over to it).
    def _send_oldest(self):
        ob = self.outbox
        seqs = self._pk_seqs
        bts = self._pk_bts
        nmax = 1 if self._solo else self._pack_max
        n = recs = size = 0
        timed = False
        while n < nmax:
            e = ob.peek(n) if n else ob.peek()
            if e is None:
                break
            seq, data = e
            bt = self.time.stamp(data)
            size += reading.size(self.dev, data)
            if n and ((timed and bt is None) or size > _PACK_BYTES):
                break
            timed = timed or bt is not None
            seqs[n] = seq
            bts[n] = bt
            recs += 1 + data[10]
            n += 1
        if not n:
            return  # the ring found nothing live after all (rotted slots): nothing to send
        enc = self._tx
        enc.reset()
        enc.array(recs)
        for k in range(n):
            # peeked again: a flash ring's view lasts until its next read
            data = ob.peek(k)[1] if k else ob.peek()[1]
            reading.append(enc, self.dev, seqs[k], bts[k], data)
        self._pk_n = n
        self._inflight = seqs[0]
        self._tries_logged = 1
        self.client.start(coap.POST, ("r",), coap.CF_SENML_CBOR, enc.getvalue())

    # Pop the readings of the pack that ended (those an overflow dropped meanwhile are gone
    # already: the outbox holds seqs in order, so pop while the oldest is one of ours).
    def _pop_pack(self):
        ob = self.outbox
        last = self._pk_seqs[self._pk_n - 1]
        while True:
            h = ob.peek()
            if h is None or h[0] > last:
                return
            ob.pop()

    # The 2.04 payload: {1: gateway time, 2: [[cid, name, args(, exp)], ...]}; unknown keys
    # ignored. The time is learned first, so the expiry check below uses it.
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
            # The answer may be as old as the whole exchange (an attacker can hold back the
            # request or the 2.04, not more: OSCORE binds it to our request): so may the
            # time just learned from it. exp is checked against the latest time it can be.
            self._late_s = (self.client.rtt_ms + 999) // 1000
            for c in cmds:
                self._command(c)
            self._late_s = 0

    # One command [cid, name, args(, exp)], from a 2.04 or pushed to /c (coap_server.py):
    # returns its result (also reported as cmd/<cid> in the next reading), None if malformed.
    def _command(self, c):
        if not (isinstance(c, list) and 3 <= len(c) <= 4 and isinstance(c[0], int)
                and c[0] >= 0 and (len(c) == 3 or isinstance(c[3], int))):
            self.log("W", "cmd", "malformed %r" % (c,))
            return None
        cid, name, args = c[0], c[1], c[2]
        key = repr(args)
        for s in self._seen:
            if s[0] == cid and s[1] == name and s[2] == key:
                self._report(cid, s[3])  # delivered again: report again, do not redo
                return s[3]
        if len(c) == 4:
            now = self.time.now()
            if now is not None:
                now += self._late_s
            if now is None or now > c[3]:
                # a command's optional 4th element `exp` (unix time, gateway clock;
                # protocol.md §5): late by the node's clock (learned from the gateway), or no
                # clock to tell: refused, not executed and not remembered, so a fresh
                # delivery of the same command still runs
                self.log("W", "cmd", "cid=%d name=%s result=err:stale exp=%d now=%s" % (
                    cid, name, c[3], now))
                self._report(cid, "err:stale")
                return "err:stale"
        known = name in ("on", "off", "dim", "schedule", "interval", "config")
        if name == "update":
            res = self._update(args)
        elif not known or not isinstance(args, dict):
            res = "err:args" if known else "err:unknown"
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
        return res

    # The loop's idle wait: an always-on node listens for pushed commands meanwhile.
    def _wait(self, ms):
        if self.server is None:
            self._clock.sleep_ms(ms)
        else:
            self.client.listen(ms)

    # ---- firmware updates: lib/nodefw.py, imported only when needed (a node never updated
    # does not carry that code and its names on its heap: firmware/README.md, budgets)

    # At start-up, before the first reading: the bootloader's verdict on the running image,
    # "normal"|"trial"|"rolled-back" (a trial image confirms itself on the first 2.xx).
    def fw_boot(self):
        self.fw_reset_due = False
        import sys

        if sys.platform != "esp32":
            try:
                open(self.cfg["state_dir"] + "/slots/boot.json").close()
            except OSError:
                return "normal"  # no slot record: never updated, nothing to check
        import nodefw

        return nodefw.boot(self)

    # The `update` command (protocol.md §5): "ok:pending" or "err:<reason>".
    def _update(self, args):
        import nodefw

        return nodefw.update(self, args)

    def _report(self, cid, res):
        for i in range(len(self._reports)):
            if self._reports[i][0] == cid:
                self._reports[i] = (cid, res)
                return
        if len(self._reports) < 2 * _MAX_REPORTS:
            self._reports.append((cid, res))

    # The exchange ended: returns ms to wait before sending again (0 = go on).
    # A pack of n > 1 readings: the log lines name its first seq and add n=<n>; a 2.xx logs
    # one `ack` per reading. Any 4.xx but 4.01 to a pack drops nothing: its readings go
    # again one per request, so only a bad one is dropped; if each is then taken alone, the
    # gateway does not take packs (an older one, or a smaller max payload): pack_max 1.
    def _outcome(self):
        c = self.client
        seq = self._inflight
        n = self._pk_n
        self._inflight = -1
        pn = " n=%d" % n if n > 1 else ""
        m = c.response
        if m is None:
            why = {coap_client.GAVE_UP: "timeout", coap_client.RESET: "reset",
                   coap_client.SEP_TIMEOUT: "separate-timeout"}.get(c.error, "?")
            self.log("W", "noanswer", "seq=%d tries=%d why=%s%s" % (seq, c.tries, why, pn))
            return self.interval_ms
        cls = m.code >> 5
        cs = coap.code_str(m.code)
        if m.code == coap.SERVICE_UNAVAILABLE or m.code == coap.TOO_MANY_REQUESTS:
            # gateway busy (5.03) or this source over its rate (4.29, RFC 8516): keep the
            # readings, wait Max-Age
            age = m.opt_uint(coap.MAX_AGE)
            if age is None:
                age = _DEFAULT_MAX_AGE
            wait = min(age, self.cfg["max_wait_s"])
            self.log("W", "busy", "seq=%d code=%s wait_s=%s%s" % (seq, cs, wait, pn))
            return int(wait * 1000)
        if cls == 4 and n > 1 and m.code != coap.UNAUTHORIZED:
            self._solo = n
            self._solo_ok = True
            self.log("W", "unpack", "seq=%d code=%s%s %s" % (seq, cs, pn, _diag(m.payload)))
            return 0
        if self._solo and (cls == 2 or (cls == 4 and m.code != coap.UNAUTHORIZED)):
            self._solo -= 1
            self._solo_ok = self._solo_ok and cls == 2
            if not self._solo and self._solo_ok and self._pack_max > 1:
                self._pack_max = 1
                self.log("W", "pack", "unsupported max=1")
        if cls == 2:
            self._pop_pack()
            for k in range(n):
                self.log("I", "ack", "seq=%d code=%s tries=%d ms=%d%s" % (
                    self._pk_seqs[k], cs, c.tries, c.rtt_ms, pn))
            now = self._clock.ticks_ms()
            self.last_contact = now
            self.app.contact(now)
            self._answer(m.payload)
            return 0
        if m.code == coap.UNAUTHORIZED:
            # the gateway does not know us (yet): provisioning may still be on its way, so
            # keep the reading and ask again later instead of losing it
            self.log("W", "unauth", "seq=%d code=%s%s %s" % (seq, cs, pn, _diag(m.payload)))
            return self.interval_ms
        if cls == 4:
            self._pop_pack()
            self.rejected += 1
            self.log("E", "reject", "seq=%d code=%s %s" % (seq, cs, _diag(m.payload)))
            return 0
        self.log("W", "error", "seq=%d code=%s%s %s" % (seq, cs, pn, _diag(m.payload)))
        return self.interval_ms

    # Run until count readings are taken and acknowledged (exit code) or forever: one node
    # per process. A multi-node scheduler (lib/multinode.py) calls begin() once, then
    # step() whenever the node is due or its socket is readable.
    def run(self):
        self.begin()
        while self.step(True) >= 0:
            pass
        return self.code

    # The `start` line and the loop's timers.
    def begin(self):
        clock = self._clock
        cfg = self.cfg
        self.code = None
        self._count = cfg["count"]
        self._drain_ms = int(cfg["drain_timeout_s"] * 1000)
        self._poll_ms = getattr(self.app, "poll_ms", 0)
        self._feed = getattr(self.board, "feed", None)  # the watchdog (ESP32)
        self.log("I", "start", "seq=%d type=%s board=%s waiting=%d" % (
            self.seqs.peek(), cfg["type"], self.board.name, len(self.outbox)))
        self._next_poll = clock.ticks_ms()
        # after a deep-sleep wake for an alarm check, the next sample is still ahead
        resume = getattr(self.board, "resume_ms", None)
        self._next_sample = clock.ticks_add(self._next_poll, resume() if resume else 0)
        self._hold_since = self._next_sample  # no sending before hold_since + hold_ms
        self._hold_ms = 0
        self._drain_since = None

    # Do everything that is due now. block=True (run()): then wait where the loop waits (for
    # the answer, or until the next sample, at most _IDLE_MS) and return 0. block=False:
    # never wait; return the ms until the node must run again (earlier if its socket gets
    # readable). -1: finished, self.code is the exit code.
    def step(self, block=False):
        clock = self._clock
        app = self.app
        c = self.client
        count = self._count
        poll_ms = self._poll_ms
        feed = self._feed
        while True:
            if feed:
                feed()
            now = clock.ticks_ms()
            sampling = count == 0 or self.taken < count
            if sampling and clock.ticks_diff(now, self._next_sample) >= 0:
                self.sample()
                nxt = clock.ticks_add(self._next_sample, self.interval_ms)
                if clock.ticks_diff(now, nxt) > 0:
                    nxt = clock.ticks_add(now, self.interval_ms)  # behind: no burst
                self._next_sample = nxt
                continue
            if poll_ms and clock.ticks_diff(now, self._next_poll) >= 0:
                self._next_poll = clock.ticks_add(now, poll_ms)
                if app.poll(self.time.now(), now) and sampling:
                    self.sample()  # an alarm: at once, not at the next interval
                    continue
            if not sampling:
                if not len(self.outbox) and not c.busy():
                    self.code = _EXIT_OK
                    return -1
                if self._drain_since is None:
                    self._drain_since = now
                elif clock.ticks_diff(now, self._drain_since) > self._drain_ms:
                    self.log("E", "drain", "left=%d timeout_s=%s" % (len(self.outbox),
                                                                    self.cfg["drain_timeout_s"]))
                    self.code = _EXIT_DRAIN
                    return -1
            # how long until we must sample (or poll the app) again
            until = clock.ticks_diff(self._next_sample, now) if sampling else _IDLE_MS
            if poll_ms:
                until = min(until, clock.ticks_diff(self._next_poll, now))
            until = max(0, min(until, _IDLE_MS))
            if c.busy():
                done = c.poll(until if block else 0)
                if c.tries > self._tries_logged:
                    self._tries_logged = c.tries
                    self.log("W", "retry", "seq=%d try=%d" % (self._inflight, c.tries))
                if done:
                    self._hold_ms = self._outcome()
                    self._hold_since = clock.ticks_ms()
                    if self.fw_reset_due:
                        # the operator has the `ok:pending` report: boot the new image
                        self.code = _EXIT_RESET
                        return -1
                    continue
                if block:
                    return 0
                return min(until, c.left_ms())
            if len(self.outbox):
                held = self._hold_ms - clock.ticks_diff(now, self._hold_since)
                if held <= 0:
                    self._hold_ms = 0
                    self._send_oldest()
                    continue
                until = min(until, held)
            elif sampling and not self._reports:
                # nothing to send: a board with deep sleep may power down until the next
                # sample (on ESP32 this does not return: the next wake is a fresh boot)
                due = clock.ticks_diff(self._next_sample, now)
                nap = min(due, clock.ticks_diff(self._next_poll, now)) if poll_ms else due
                self.board.idle(nap, app, due)
            if block:
                self._wait(until)
                return 0
            return until
