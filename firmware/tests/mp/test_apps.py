# The apps (env, bin, light) and the shared node loop (lib/node.py) against fakes, under the
# real MicroPython: values in range and deterministic per seed, report-on-change, the bin's
# robust fill level and at-once alarms, the streetlight's schedule, motion, commands and
# fail-safe, and the loop's answers/commands/extras.
import cbor
import coap
import mptest
from apps import env_sensor, streetlight, waste_bin
from mptest import eq
from nodefakes import T0, FakeBoard, ack, by_name, events, make_node, seqs_of
from outbox import Outbox


def check_ranges(mod, ranges, seed, cfg=None):
    b = FakeBoard(seed)
    app = mod.App(b, cfg)
    for k in range(0, 3 * 86400, 977):  # three days, odd step
        b.clock.now = k * 1000
        for name, unit, v in app.sample(b.time()):
            lo, hi, u = ranges[name]
            eq(unit, u, name)
            if name in ("event", "err"):
                eq(isinstance(v, str), True)
            elif lo is None:
                eq(v is True or v is False, True, name)
            else:
                eq(lo <= v <= hi, True, "%s=%r at %d" % (name, v, k))


def test_env_ranges():
    check_ranges(env_sensor, {"temp": (-10, 45, "Cel"), "hum": (0, 100, "%RH"),
                              "pres": (95000, 105000, "Pa"), "pm25": (0, 200, "ug/m3"),
                              "pm10": (0, 400, "ug/m3"), "lux": (0, 100000, "lx"),
                              "bat": (3.3, 4.2, "V")}, seed=1)


def test_bin_ranges():
    check_ranges(waste_bin, {"fill": (0, 100, "%"), "temp": (-10, 45, "Cel"),
                             "tilt": (None, None, None), "bat": (3.3, 4.2, "V"),
                             "event": (None, None, None), "err": (None, None, None)}, seed=2)


def test_light_ranges():
    check_ranges(streetlight, {"lamp": (None, None, None), "dim": (0, 100, "%"),
                               "lux": (0, 100000, "lx"), "power": (0, 61, "W"),
                               "motion": (None, None, None)}, seed=3)


def test_deterministic_per_seed():
    def run(seed):
        b = FakeBoard(seed)
        a = env_sensor.App(b)
        out = []
        for k in range(20):
            b.clock.now = k * 600000
            out.append(a.sample(b.time()))
        return out
    eq(run(5), run(5))
    eq(run(5) != run(6), True)


def test_env_report_on_change_and_heartbeat():
    v = {"temp": 20.0}
    b = FakeBoard(1, pinned={"temp": lambda: v["temp"], "hum": 50, "pres": 100000,
                             "pm25": 5, "pm10": 9, "lux": 300, "bat": 3.9})
    a = env_sensor.App(b, {"thresholds": {"temp": 0.5, "pm25": 10}, "heartbeat_s": 600})
    eq(a.sample(T0) is not None, True)  # the first always goes
    v["temp"] = 20.25
    eq(a.sample(T0 + 60), None)  # moved less than 0.5
    v["temp"] = 20.5
    eq(dict((n, x) for n, u, x in a.sample(T0 + 120))["temp"], 20.5)
    eq(a.sample(T0 + 180), None)
    eq(a.sample(T0 + 120 + 600) is not None, True)  # heartbeat
    eq(a.skipped, 2)
    eq(a.command("config", {"thresholds": {"nope": 1}}), "err:value")
    eq(a.command("config", {"heartbeat_s": 60}), "ok")
    eq(a.command("on", {}), "err:unsupported")


def test_env_failed_sensor_is_an_error_reading():
    b = FakeBoard(1, pinned={"pm25": None, "pm10": None})
    d = dict((n, x) for n, u, x in env_sensor.App(b).sample(T0))
    eq("pm25" in d or "pm10" in d, False)  # no made-up value
    eq(d["err"], "pm25,pm10")


def test_bin_median_rejects_outliers():
    eq(waste_bin.robust_distance([50, 51, 49, 5, 50.5], 10), 50.25)
    eq(waste_bin.robust_distance([50, None, 49, 51, 300], 10), 50)
    eq(waste_bin.robust_distance([None, None, None, 50, 5], 10), None)  # too few agree
    eq(waste_bin.fill_pct(30, 120), 75.0)
    eq(waste_bin.fill_pct(130, 120), 0.0)
    eq(waste_bin.fill_pct(-3, 120), 100.0)
    # scenario pings: a stray echo now and then, the median still tracks the fill
    b = FakeBoard(4, {"fixed": {"fill": 40.0}, "ping_outlier": 0.2})
    a = waste_bin.App(b, {"pings": 7})
    for k in range(30):
        b.clock.now = k * 1000
        f = a.measure_fill()
        eq(f is not None and abs(f - 40.0) < 2.0, True, "fill %r" % f)


def test_bin_pings_given_as_a_float():
    # JSON/CBOR may carry 5.0 (config, or the "config" command, which takes any number > 0):
    # range(5.0) raises TypeError on MicroPython (found by mypy, test_firmware_types.py)
    b = FakeBoard(4, {"fixed": {"fill": 40.0}})
    a = waste_bin.App(b, {"pings": 5.0})
    f = a.measure_fill()
    eq(f is not None and abs(f - 40.0) < 2.0, True, "fill %r" % f)
    eq(a.command("config", {"pings": 3.0}), "ok")
    f = a.measure_fill()
    eq(f is not None and abs(f - 40.0) < 2.0, True, "fill %r" % f)

def test_bin_alarms_fire_at_once_latched():
    v = {"temp": 20.0, "fill": 50.0, "tilt": False}
    b = FakeBoard(2, {"ping_outlier": 0.0}, pinned={"temp": lambda: v["temp"],
                                                     "tilt": lambda: v["tilt"]})
    b.scenario.fixed = v  # distance follows v["fill"]
    a = waste_bin.App(b, {"check_s": 5})
    eq(a.poll_ms, 5000)
    eq(a.poll(T0, 0), False)
    v["fill"] = 85.0
    eq(a.poll(T0, 0), True)  # full
    eq(a.poll(T0, 0), False)  # latched
    v["temp"] = 75.0
    eq(a.poll(T0, 0), True)  # fire
    d = by_name([None] + [{0: n, 2: x} for n, u, x in a.sample(T0)])
    eq(d["event"], "full,fire")
    eq("event" in dict((n, x) for n, u, x in a.sample(T0)), False)  # reported once
    v["fill"] = 5.0
    v["tilt"] = True
    eq(a.poll(T0, 0), True)
    eq(dict((n, x) for n, u, x in a.sample(T0))["event"], "emptied,tilt")


def test_bin_alarm_goes_out_before_the_interval():
    # interval 600 s, check every 5 s: a fire at 20 s is on the wire within seconds
    v = {"temp": 20.0}
    b = FakeBoard(2, pinned={"temp": lambda: v["temp"] if b.clock.now < 20000 else 90.0})
    node, gw, b = make_node(lambda m, k: ack(m), waste_bin, count=2, interval_s=600,
                            board=b, app_cfg={"check_s": 5}, dev="bin-0001", typ="bin")
    eq(node.run(), 0)
    eq(len(gw.packs), 2)
    second = by_name(gw.packs[1])
    eq(second["event"], "fire")
    eq(second["temp"], 90)
    eq(gw.packs[1][0][-3] - gw.packs[0][0][-3] < 30, True)


def light(cfg=None, t=T0, pinned=None):
    b = FakeBoard(3, t=t, pinned=pinned or {"motion": False, "lux": 10})
    return b, streetlight.App(b, cfg)


# T0 is 2026-11-22 23:26 UTC; at Shiojiri the sun sets 07:37 UTC (16:37 JST) that day
NOON_JST = T0 - T0 % 86400 + 3 * 3600
NIGHT_JST = NOON_JST + 10 * 3600


def test_light_follows_the_local_schedule_and_motion():
    b, a = light({"motion_hold_s": 30, "idle_dim": 40})
    a.poll(NOON_JST, 0)
    eq((a.lamp, b.dimmer.level), (False, 0))
    eq(a.poll(NIGHT_JST, 1000), True)  # dusk: a change, reported at once
    eq((a.lamp, b.dimmer.level), (True, 40))
    b.pinned["motion"] = True
    a.poll(NIGHT_JST, 2000)
    eq(b.dimmer.level, 100)
    b.pinned["motion"] = False
    a.poll(NIGHT_JST, 31000)
    eq(b.dimmer.level, 100)  # still within the hold time
    a.poll(NIGHT_JST, 32500)
    eq(b.dimmer.level, 40)
    d = dict((n, x) for n, u, x in a.sample(NIGHT_JST))
    eq(d["motion"], True)  # there was motion since the last reading
    eq(d["lamp"], True)


def test_light_without_time_uses_ambient_light():
    b, a = light(pinned={"motion": False, "lux": 500})
    a.poll(None, 0)
    eq(a.lamp, False)
    b.pinned["lux"] = 20
    a.poll(None, 500)
    eq(a.lamp, True)


def test_light_commands_and_failsafe():
    b, a = light({"failsafe_s": 60})
    eq(a.command("off", {}), "ok")
    a.poll(NIGHT_JST, 1000)
    eq(a.lamp, False)  # dark, but switched off by command
    eq(a.command("dim", {"level": 70}), "ok")
    a.poll(NOON_JST, 2000)
    eq((a.lamp, b.dimmer.level, a.mode), (True, 70, "on"))
    eq(a.command("dim", {"level": 170}), "err:level")
    eq(a.command("schedule", {"mode": "sometimes"}), "err:mode")
    a.contact(30000)
    a.poll(NOON_JST, 89000)
    eq(a.mode, "on")  # 59 s since contact
    a.poll(NOON_JST, 91000)
    eq((a.mode, a.lamp, a.failsafes), ("auto", False, 1))  # day: the schedule says off
    a.contact(91500)  # a command comes in an ACK: contact first
    eq(a.command("on", {}), "ok")
    a.poll(NIGHT_JST, 92000)
    eq(dict((n, x) for n, u, x in a.sample(NIGHT_JST))["mode"], "on")
    eq(a.command("schedule", {"mode": "auto"}), "ok")
    eq(a.command("config", {"idle_dim": 20}), "ok")
    a.poll(NIGHT_JST, 93000)
    eq(b.dimmer.level, 20)


def test_light_failsafe_in_the_node_loop():
    # commanded off at night; then the gateway goes silent: back to the schedule (lit)
    state = {"k": 0}

    def answer(m, k):
        if k == 1:
            return ack(m, payload=cbor.dumps({2: [[1, "off", {}]]}))
        if clock_now() < 5000:
            return ack(m)
        return None

    b = FakeBoard(3, t=NIGHT_JST, pinned={"motion": False, "lux": 5})
    clock_now = lambda: b.clock.now  # noqa
    node, gw, b = make_node(answer, streetlight, count=40, interval_s=1, board=b,
                            app_cfg={"failsafe_s": 20}, dev="light-0001", typ="light",
                            drain_timeout_s=1, pack_max=1)  # the fake keeps every POST
    node.run()
    eq(state["k"], 0)
    eq(events(b.lines, "cmd"), ["I light-0001 cmd cid=1 name=off result=ok"])
    eq(node.app.failsafes, 1)
    eq((node.app.mode, node.app.lamp), ("auto", True))
    lvl = [by_name(p)["dim"] for p in gw.packs]
    eq(0 in lvl and lvl[-1] == 40, True, lvl)


# ---- the node loop


def test_node_all_acked_exits_0():
    node, gw, b = make_node(lambda m, k: ack(m), env_sensor)
    eq(node.run(), 0)
    eq(gw.posts, [100, 101, 102])
    eq(len(events(b.lines, "rec")), 3)
    eq(events(b.lines, "ack")[0].startswith("I env-0009 ack seq=100 code=2.04 tries=1 ms="),
       True)
    eq(b.lines[0], "I env-0009 start seq=100 type=env board=fake waiting=0")
    eq(gw.packs[1][0][-3], T0 + 1)  # bt: the sample time
    eq([r[0] for r in gw.packs[0][1:]], ["temp", "hum", "pres", "pm25", "pm10", "lux", "bat"])


def test_node_reject_drops_and_goes_on():
    node, gw, b = make_node(
        lambda m, k: ack(m, coap.BAD_REQUEST, payload=b"bad\nname") if k == 2 else ack(m),
        env_sensor)
    eq(node.run(), 0)
    eq(gw.posts, [100, 101, 102])  # 101 not retried
    eq(events(b.lines, "reject"), ["E env-0009 reject seq=101 code=4.00 bad?name"])


def test_node_unauthorized_keeps_the_reading_and_retries():
    node, gw, b = make_node(
        lambda m, k: ack(m, coap.UNAUTHORIZED, payload=b"unknown") if k <= 2 else ack(m),
        env_sensor)
    eq(node.run(), 0)
    eq(gw.posts[:3], [100, 100, 100])
    eq(len(events(b.lines, "unauth")), 2)
    eq(seqs_of(b.lines, "ack"), [100, 101, 102])


def test_node_busy_waits_max_age():
    def answer(m, k):
        if k == 1:
            return ack(m, coap.SERVICE_UNAVAILABLE, ((coap.MAX_AGE, coap.uint_bytes(7)),))
        return ack(m)

    node, gw, b = make_node(answer, env_sensor, count=1)
    eq(node.run(), 0)
    eq(gw.posts, [100, 100])
    eq(events(b.lines, "busy"), ["W env-0009 busy seq=100 code=5.03 wait_s=7"])
    eq(b.clock.now >= 7000, True)


def test_node_over_the_rate_4_29_keeps_the_reading_and_waits_max_age():
    # RFC 8516: a 4.xx that is no verdict on the reading (gateway ingress/ratelimit.py)
    def answer(m, k):
        if k == 1:
            return ack(m, coap.TOO_MANY_REQUESTS, ((coap.MAX_AGE, coap.uint_bytes(3)),))
        return ack(m)

    node, gw, b = make_node(answer, env_sensor, count=1)
    eq(node.run(), 0)
    eq(gw.posts, [100, 100])
    eq(node.rejected, 0)
    eq(events(b.lines, "busy"), ["W env-0009 busy seq=100 code=4.29 wait_s=3"])
    eq(seqs_of(b.lines, "ack"), [100])
    eq(b.clock.now >= 3000, True)


def test_node_noanswer_keeps_and_retries_oldest_first():
    node, gw, b = make_node(lambda m, k: None if k <= 6 else ack(m), env_sensor)
    eq(node.run(), 0)
    eq(len(events(b.lines, "noanswer")), 2)
    eq(seqs_of(b.lines, "ack"), [100, 101, 102])
    eq(len(events(b.lines, "retry")) >= 4, True)


def test_node_overflow_drops_oldest_reports_and_logs():
    b = FakeBoard(1)
    node, gw, b = make_node(lambda m, k: None if b.clock.now < 15000 else ack(m), env_sensor,
                            count=10, store=Outbox(4), board=b)
    eq(node.run(), 0)
    dropped = events(b.lines, "dropped")
    eq(len(dropped), node.outbox.dropped)
    eq(node.outbox.dropped > 0, True)
    acked = seqs_of(b.lines, "ack")
    gone = seqs_of(b.lines, "dropped")
    eq(sorted(acked + gone), list(range(100, 110)))  # each reading acked or dropped, once
    # the reading whose store dropped the oldest says how many are gone so far
    totals = [by_name(p).get("dropped") for p in gw.packs if "dropped" in by_name(p)]
    eq(max(totals), node.outbox.dropped)


def test_node_learns_time_and_stamps_earlier_readings():
    # no clock: the first two readings wait (no answer), then a 2.04 says the time
    TGW = 1795400000

    def answer(m, k):
        if b.clock.now < 2500:
            return None
        return ack(m, payload=cbor.dumps({1: TGW + b.clock.now // 1000, 9: "ignored"}))

    b = FakeBoard(1, t=None)
    # one reading per POST: with packs, 101 and 102 would ride along with 100 before the
    # time is known (test_pack.py covers that case)
    node, gw, b = make_node(answer, env_sensor, count=4, board=b, pack_max=1)
    eq(node.run(), 0)
    got = {}
    for p in gw.packs:
        got[p[0][2]] = p[0].get(-3)
    # the POSTs of 100 went without bt (time unknown): its ACK taught the time, so 100 is
    # stored with the gateway's receive time; 101 and 102 waited in the buffer and get their
    # own sample time, computed back from the ticks they were taken at; 103 too
    eq(all(-3 not in p[0] for p in gw.packs if p[0][2] == 100), True)
    stamps = dict((p[0][2], p[0][-3]) for p in gw.packs if -3 in p[0])
    eq(sorted(stamps), [101, 102, 103])
    # the gateway's integer seconds limit this to +-1 s
    eq([abs(stamps[100 + k] - (TGW + k)) <= 1 for k in (1, 2, 3)], [True] * 3, stamps)
    eq(stamps[103] - stamps[101], 2)
    eq(len(events(b.lines, "time")), 1)


def test_node_executes_commands_and_reports_them():
    sent = {"done": False}

    def answer(m, k):
        if k == 1:
            return ack(m, payload=cbor.dumps({1: T0, 2: [[3, "interval", {"s": 5}],
                                                       [4, "dim", {"level": 10}],
                                                       [5, "reboot", {}], "junk"]}))
        if k == 2:  # delivered again (the gateway had no report yet): not executed twice
            return ack(m, payload=cbor.dumps({2: [[3, "interval", {"s": 5}]]}))
        return ack(m)

    node, gw, b = make_node(answer, env_sensor, count=3)
    eq(node.run(), 0)
    eq(node.interval_ms, 5000)
    eq(sent["done"], False)
    cmds = events(b.lines, "cmd")
    eq(cmds[:3], ["I env-0009 cmd cid=3 name=interval result=ok",
                  "I env-0009 cmd cid=4 name=dim result=err:unsupported",
                  "I env-0009 cmd cid=5 name=reboot result=err:unknown"])
    eq(len(cmds), 4)  # + the malformed one
    d = by_name(gw.packs[1])
    eq((d["cmd/3"], d["cmd/4"], d["cmd/5"]), ("ok", "err:unsupported", "err:unknown"))
    eq(by_name(gw.packs[2])["cmd/3"], "ok")  # re-reported
    eq(gw.packs[2][0][-3] - gw.packs[1][0][-3], 5)  # the new interval


def test_node_status_after_boot_and_every_n():
    node, gw, b = make_node(lambda m, k: ack(m), env_sensor, count=5, status_every=2)
    eq(node.run(), 0)
    eq(["boots" in by_name(p) for p in gw.packs], [True, False, True, False, True])
    eq(by_name(gw.packs[0])["reset"], "wdt")


mptest.run(globals())
