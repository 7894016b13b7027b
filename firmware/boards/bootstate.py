# What the ESP32 board remembers across resets, and what it concludes at boot: the pure
# logic of boards/esp32.py, so it is tested under the unix port with a fake `machine`.
#
# The state is a small JSON object in RTC memory (kept through deep sleep and soft/WDT
# resets, lost at power-on), stored as "<crc32 hex> <json>" so garbage after a power-on or
# a brown-out reads as "no state" instead of nonsense:
#   boots    power cycles (also kept on flash by the board: RTC memory dies with power)
#   wakes    boots since the last power-on (deep-sleep wakes included)
#   running  1 while the app runs; 0 when it sleeps or stops cleanly
#   crashes  resets in a row that happened while running (exception, watchdog, reset)
#   err      the last error, short text ("" none)
#   slept    ms spent in deep sleep since power-on (mono_ms goes on across sleeps)
#   app      the app's state (report-on-change memory, alarms, lamp mode)
# A reset while running is a crash; SAFE_AFTER crashes in a row -> safe mode: the app is
# not started (REPL and file access stay available to fix it), see boards/esp32.py.
import json

from binascii import crc32

SAFE_AFTER = 3
# reset_cause() constants of the ESP32 port -> the boot reason reported
_CAUSES = (("PWRON_RESET", "power"), ("HARD_RESET", "hard"), ("WDT_RESET", "wdt"),
           ("DEEPSLEEP_RESET", "deepsleep"), ("SOFT_RESET", "soft"))


def reason(cause, machine):
    for attr, name in _CAUSES:
        if getattr(machine, attr, None) == cause:
            return name
    return "unknown"


def encode(state):
    js = json.dumps(state).encode()
    return b"%08x " % (crc32(js) & 0xFFFFFFFF) + js


def decode(raw):
    # -> dict, or None when empty or damaged
    raw = bytes(raw)
    if len(raw) < 10 or raw[8:9] != b" ":
        return None
    js = raw[9:]
    try:
        if int(raw[:8], 16) != crc32(js) & 0xFFFFFFFF:
            return None
        st = json.loads(js)
    except (ValueError, TypeError):
        return None
    return st if isinstance(st, dict) else None


def fresh(boots):
    return {"boots": boots, "wakes": 0, "running": 0, "crashes": 0, "err": "", "slept": 0,
            "app": {}}


# The state for this boot from what RTC memory held (or None) and the reset reason.
# flash_boots: the power-cycle count on flash (read, +1 and written back by the board on a
# power-on only, so deep-sleep wakes do not wear the flash). -> (state, safe_mode)
def on_boot(prev, why, flash_boots, safe_after=SAFE_AFTER):
    if prev is None or why == "power":
        st = fresh(flash_boots)
        if prev is not None:
            st["err"] = prev.get("err", "")
    else:
        st = prev
        for k, v in fresh(flash_boots).items():
            st.setdefault(k, v)
    crashed = prev is not None and prev.get("running") and why != "deepsleep"
    st["crashes"] = st["crashes"] + 1 if crashed else 0
    if crashed and not st["err"]:
        st["err"] = "reset:" + why
    st["wakes"] += 1
    safe = st["crashes"] >= safe_after
    st["running"] = 0 if safe else 1
    return st, safe


def error_text(e):
    # "ValueError: bad thing" cut to what fits a status reading
    s = "%s: %s" % (type(e).__name__, e)
    return s[:48]
