# The ESP32 board (boards/esp32.py) under the unix port with fake `machine`, `network` and
# `esp32` modules (fakeesp32.py): boot reason mapping, boot/wake counting, crash counting
# into safe mode, the last error carried across a reset into the status reading, RTC time,
# deep sleep keeping the app state, the watchdog fed by the loop and through Wi-Fi waits,
# Wi-Fi connect with a doubling backoff at start and a background reconnect after a loss,
# and the firmware slots: a trial boot logged, no deep sleep on trial, confirm_image()
# once, a rollback reported, no OTA partitions = updates off.
# The sensors are in test_esp32_sensors.py.
import time

import fakeesp32
import mptest
from fakeesp32 import E, M, N, Slept, VClock
from mptest import eq, raises

fakeesp32.install()

from boards import bootstate  # noqa: E402
from boards import esp32  # noqa: E402

_N = [0]
LINES = []


class TBoard(esp32.Board):
    def log(self, line):
        LINES.append(line)


def board(cause, typ=None, sleep=True, **bc):
    M.cause = cause
    _N[0] += 1
    cfg = {"device_id": "env-0001", "type": typ, "state_dir": "/tmp/mp-esp32-%d" % _N[0],
           "sleep": sleep, "board": bc}
    return TBoard(cfg)


class Clocked:
    # runs a test with the board module on a virtual clock
    def __enter__(self):
        self.c = VClock()
        N.clock = self.c
        esp32.time = self.c
        return self.c

    def __exit__(self, *a):
        esp32.time = time


def test_reason_mapping():
    eq([bootstate.reason(c, M) for c in (1, 2, 3, 4, 5, 99)],
       ["power", "hard", "wdt", "deepsleep", "soft", "unknown"])


def test_state_codec_rejects_garbage():
    st = bootstate.fresh(3)
    eq(bootstate.decode(bootstate.encode(st)), st)
    eq(bootstate.decode(b""), None)
    eq(bootstate.decode(bytes(64)), None)
    raw = bytearray(bootstate.encode(st))
    raw[-3] ^= 1
    eq(bootstate.decode(raw), None)


def test_crashes_in_a_row_then_safe_mode_and_recovery():
    M.rtc_mem = b""
    b = board(M.PWRON_RESET)
    eq((b.why, b.st["crashes"], b.safe_mode, b.st["running"]), ("power", 0, False, 1))
    eq(b._wdt.timeout, 30000)
    b.record_error(ValueError("bad thing"))
    for k in (1, 2):
        b = board(M.WDT_RESET)  # reset while running
        eq((b.st["crashes"], b.safe_mode), (k, False))
    b = board(M.SOFT_RESET)
    eq((b.st["crashes"], b.safe_mode, b._wdt), (3, True, None))  # no watchdog in safe mode
    d = dict((n, v) for n, u, v in b.status())
    eq(d["err_last"], "ValueError: bad thing")
    eq(d["reset"], "soft")
    # a clean stop (or deep sleep) in between breaks the chain
    b = board(M.HARD_RESET, safe_after=5)
    eq(b.safe_mode, False)
    b.stopped()
    b = board(M.HARD_RESET)
    eq((b.st["crashes"], b.safe_mode), (0, False))


class App:
    def state(self):
        return {"last": {"temp": 21.5}}

    def restore(self, st):
        self.got = st


def test_deep_sleep_keeps_app_state_and_counts_wakes():
    M.rtc_mem = b""
    M.slept = []
    b = board(M.PWRON_RESET)
    boots = b.st["boots"]
    mono = b.mono_ms()
    b.idle(500, App(), 500)  # too short to be worth a reboot
    eq(M.slept, [])
    raises(Slept, b.idle, 60000, App(), 900000)  # an alarm check in 60 s, sample in 900
    eq(M.slept, [60000])
    eq(bootstate.decode(M.rtc_mem)["running"], 0)  # the wake is not a crash
    b2 = board(M.DEEPSLEEP_RESET)
    eq(b2.resume_ms(), 840000)
    eq((b2.why, b2.st["crashes"], b2.st["wakes"], b2.st["boots"]), ("deepsleep", 0, 2, boots))
    eq(b2.boot_id, b.boot_id)  # the same power cycle: buffered ticks stay meaningful
    eq(time.ticks_diff(b2.mono_ms(), mono) >= 60000, True)
    a = App()
    b2.restore_app(a)
    eq(a.got, {"last": {"temp": 21.5}})
    # mains powered ("sleep": false): never
    b3 = board(M.PWRON_RESET, sleep=False)
    b3.idle(600000, App(), 600000)
    eq(M.slept, [60000])
    eq(b3.resume_ms(), 0)


def test_time():
    b = board(M.PWRON_RESET)
    b.set_time(1795390000)  # 2026-11-22 23:26:40 UTC
    eq(M.dt[:3], (2026, 11, 22))
    eq(M.dt[3:7], (6, 23, 26, 40))  # a Sunday (Monday = 0)
    with Clocked() as c:
        eq(b.time(), 1795390000)  # the port's epoch (1970 here; 2000 on an ESP32: gmtime(0))
        c.time = lambda: 100  # an RTC that was never set
        eq(b.time(), None)


def test_watchdog_fed_by_the_loop_and_through_wifi_waits():
    with Clocked() as c:
        b = board(M.PWRON_RESET, wdt_s=20, wifi={"ssid": "machi-gw", "key": "k"})
        eq(b._wdt.timeout, 20000)
        b.feed()
        eq(b._wdt.fed, 1)
        fed = []

        class Dog:
            def feed(self):
                fed.append(c.now)

        b._wdt = Dog()
        N.calls = []
        N.up_at = None
        N.connect_on = 3
        N.delay_ms = 500
        eq(b.wait_transport(b.log), True)
        eq(c.now > 20000, True)  # longer than the watchdog's timeout ...
        gaps = [fed[i + 1] - fed[i] for i in range(len(fed) - 1)]
        eq(max([fed[0]] + gaps) <= 1000, True)  # ... but never a second without a feed
        eq(c.now - fed[-1] <= 1000, True)


def test_wifi_connect_backoff_at_start():
    with Clocked():
        b = board(M.PWRON_RESET, wifi={"ssid": "machi-gw", "key": "secret"})
        N.calls = []
        N.up_at = None
        N.connect_on = 3  # the third attempt gets through
        N.delay_ms = 500
        del LINES[:]
        eq(b.wait_transport(b.log), True)
        eq(N.active_set, True)
        eq([(s, k) for s, k, t in N.calls], [("machi-gw", "secret")] * 3)
        # each try waits 10 s, then backs off 1 s, 2 s
        eq([t for s, k, t in N.calls], [0, 11000, 23000])
        eq(LINES, ["W env-0001 wifi retry backoff_ms=1000 status=no-ap",
                   "W env-0001 wifi retry backoff_ms=2000 status=no-ap",
                   "I env-0001 wifi up ms=23500"])
        eq(b._wifi_down, False)


def test_wifi_gives_up_at_start_then_reconnects_in_the_background():
    with Clocked() as c:
        b = board(M.PWRON_RESET, wifi={"ssid": "machi-gw"})
        N.calls = []
        N.up_at = None
        N.connect_on = 1000  # the access point is away
        N.raise_on = (2,)  # and one connect() meets an ESP-IDF state error: not fatal
        del LINES[:]
        eq(b.wait_transport(b.log), False)
        N.raise_on = ()
        eq(len(N.calls), 6)
        eq([t for s, k, t in N.calls][1:3], [11000, 23000])
        eq(LINES[-1], "E env-0001 wifi down tries=6")
        eq([ln.split()[4] for ln in LINES[:-1]],
           ["backoff_ms=1000", "backoff_ms=2000", "backoff_ms=4000", "backoff_ms=8000",
            "backoff_ms=16000", "backoff_ms=32000"])
        # the node runs meanwhile (readings wait in the ring); feed() goes on trying
        N.connect_on = 8
        t0 = c.now
        for _ in range(200):
            b.feed()
            c.sleep_ms(500)
            if "I env-0001 wifi up" in LINES:
                break
        eq("I env-0001 wifi up" in LINES, True)
        eq([t - t0 for s, k, t in N.calls[6:]], [0, 60000])  # the backoff stays at its cap


def test_wifi_lost_and_reconnected_with_doubling_backoff():
    with Clocked() as c:
        b = board(M.PWRON_RESET, wifi={"ssid": "machi-gw"})
        N.calls = []
        N.up_at = None
        N.connect_on = 1
        N.delay_ms = 500
        eq(b.wait_transport(b.log), True)
        for _ in range(5):
            b.feed()
            c.sleep_ms(250)
        eq(len(N.calls), 1)  # connected: nothing to do
        del LINES[:]
        N.drop(reconnect_on=4)  # the 3rd reconnect attempt works
        t0 = c.now
        for _ in range(80):
            b.feed()
            c.sleep_ms(100)
        ts = [t for s, k, t in N.calls[1:]]
        eq(ts[0] - t0 <= 1000, True)  # the loss is seen within a second
        eq([ts[1] - ts[0], ts[2] - ts[1]], [1000, 2000])  # then a doubling backoff
        eq(LINES, ["W env-0001 wifi lost status=no-ap",
                   "W env-0001 wifi retry backoff_ms=1000",
                   "W env-0001 wifi retry backoff_ms=2000",
                   "W env-0001 wifi retry backoff_ms=4000",
                   "I env-0001 wifi up"])
        eq(b._wifi_backoff, 1000)  # reset for the next loss


def _update_pending(version):
    # what Updater.install left behind: the image in ota_1, set_boot(), NVS "pend"/"pver"
    E.nvs["pver"] = version
    E.nvs["pend"] = b"ota_1"
    E.boot = "ota_1"
    E.state["ota_1"] = "new"


def _fresh_slots():
    M.rtc_mem = b""
    E.ota = True
    E.boot = E.running = "ota_0"
    E.state = {"ota_0": "valid", "ota_1": "empty"}
    E.nvs = {"ver": 3, "floor": 3}
    E.marked = 0


def test_firmware_trial_boot_confirmed_once():
    _fresh_slots()
    M.slept = []
    _update_pending(7)
    E.reset()  # the reset after the download: the bootloader starts ota_1 on trial
    del LINES[:]
    b = board(M.HARD_RESET)
    eq(b.fw, "trial")
    eq(LINES, ["I env-0001 fw boot trial slot=0 version=7"])
    b.idle(60000, App(), 60000)  # on trial: no deep sleep (the wake would roll back)
    eq(M.slept, [])
    eq(b.confirm_image(), True)  # the node's hook on the first acknowledged reading
    eq((E.marked, E.state["ota_1"], E.nvs["ver"], E.nvs["floor"]), (1, "valid", 7, 7))
    eq("pend" in E.nvs, False)
    eq(LINES[-1], "I env-0001 fw confirmed version=7 floor=7")
    eq(b.confirm_image(), False)  # every later ack: nothing to do
    eq(E.marked, 1)
    raises(Slept, b.idle, 60000, App(), 60000)  # confirmed: sleeps again
    E.reset()
    b = board(M.DEEPSLEEP_RESET)
    eq((b.fw, E.running), ("normal", "ota_1"))


def test_firmware_not_confirmed_is_rolled_back():
    _fresh_slots()
    _update_pending(8)
    E.reset()
    b = board(M.HARD_RESET)
    eq(b.fw, "trial")
    E.reset()  # a crash (or watchdog, power cut) before the first acknowledged reading
    del LINES[:]
    b = board(M.WDT_RESET)
    eq((b.fw, E.running), ("rolled-back", "ota_0"))
    eq(LINES, ["I env-0001 fw boot rolled-back slot=0 version=3"])
    eq(E.nvs["bad"], 8)
    eq(b.confirm_image(), False)


def test_firmware_off_without_ota_partitions_or_rollback():
    _fresh_slots()
    E.ota = False  # a partition table without OTA slots
    M.slept = []
    b = board(M.PWRON_RESET)
    eq((b.fw, b.slots), ("none", None))
    eq(b.confirm_image(), False)
    raises(Slept, b.idle, 60000, App(), 60000)
    # a build whose bootloader has no rollback: mark_app_valid_cancel_rollback fails
    _fresh_slots()
    _update_pending(9)
    E.reset()
    b = board(M.HARD_RESET)
    real = E.Partition.mark_app_valid_cancel_rollback

    def fail():
        raise OSError(-261)

    E.Partition.mark_app_valid_cancel_rollback = fail
    try:
        eq(b.confirm_image(), False)
    finally:
        E.Partition.mark_app_valid_cancel_rollback = real
    eq(b.st["err"], "OSError: -261")
    eq(LINES[-1], "E env-0001 fw confirm OSError: -261")
    n = len(LINES)
    eq(b.confirm_image(), False)  # not asked again at every acknowledged reading
    eq(len(LINES), n)
    eq(b.fw, "no-rollback")


def test_firmware_confirmed_by_another_slots_object():
    # lib/node.py's fw_boot may confirm through a Slots() of its own: the board notices
    from boards.slots_esp32 import Slots

    _fresh_slots()
    M.slept = []
    _update_pending(10)
    E.reset()
    b = board(M.HARD_RESET)
    eq(b.fw, "trial")
    other = Slots()
    eq(other.boot(), "trial")
    eq(other.confirm(), True)
    raises(Slept, b.idle, 60000, App(), 60000)  # not kept awake by a stale trial flag
    eq(b.fw, "confirmed")
    eq(b.confirm_image(), False)
    eq(E.marked, 1)


mptest.run(globals())
