# The unix board: an emulated node on a PC, running the real firmware under the MicroPython
# unix port. The same interface as boards/esp32.py (the board contract, used by lib/node.py
# and apps/):
#   name, clock    ticks_ms / ticks_diff / ticks_add / sleep_ms (the `time` module itself)
#   rng            getrandbits / random, seeded from os.urandom (message ids, tokens)
#   state_dir      where the seq store and the ring live
#   time()         seconds since the Unix epoch (int), or None while the board has no clock
#   set_time(t)    the time learned from the gateway
#   mono_ms()      ticks of this power cycle, boot_id: which power cycle (reading.py)
#   sensor(name)   a value, or None when the sensor failed (an error reading, not a guess)
#   dimmer         set(percent): the streetlight's PWM output
#   status()       [(name, unit, value)]: boot count, boot reason, last error
#   idle(ms, app, due_ms)  nothing pending for ms (next sample in due_ms): a board with
#                  deep sleep powers down here; resume_ms() after the wake (optional)
#   log(line)      one line on stdout
#   wait_transport(log)  nothing to bring up on a PC
# Virtual sensors come from boards/scenario.py; "clock": false in the node config makes a
# board without a clock (time learned from the gateway, as on an ESP32 after power-on).
import os
import random
import sys
import time

from boards.bootcount import count_boot
from boards.scenario import Scenario

class Dimmer:
    # stands for the PWM dimmer driver: remembers the level, the power meter reads it
    def __init__(self):
        self.level = 0
        self.changes = 0

    def set(self, percent):
        if percent != self.level:
            self.changes += 1
        self.level = percent


class Board:
    name = "unix"

    def __init__(self, state_dir, seed=1, scenario=None, clock=True):
        self.clock = time
        b = os.urandom(4)
        random.seed(b[0] << 24 | b[1] << 16 | b[2] << 8 | b[3])
        self.rng = random
        self.state_dir = state_dir
        _makedirs(state_dir)
        self.scenario = Scenario(seed, scenario)
        self.has_clock = clock
        self.boot_id = self.rng.getrandbits(16)
        self.dimmer = Dimmer()
        self.boots = count_boot(state_dir)

    def time(self):
        return int(time.time()) if self.has_clock else None

    def set_time(self, t):
        pass  # the node's TimeBase keeps the learned time; a PC's clock is not ours to set

    def mono_ms(self):
        return time.ticks_ms()

    def sensor(self, name):
        if name == "power":
            # controller and radio 0.5 W, the virtual lamp 60 W at 100 % (literals: a
            # module-level name is a qstr on the node's heap, firmware/README.md, budgets)
            p = 0.5 + 60.0 * self.dimmer.level / 100.0
            return p + 0.2 * self.scenario._noise(12, time.time())
        # the virtual world runs on the PC's clock, whether or not the node knows the time
        return self.scenario.read(name, time.time())

    def status(self):
        return [("boots", None, self.boots), ("reset", None, "power")]

    def idle(self, ms, app, due_ms):
        pass  # mains power

    def log(self, line):
        # stdout is unbuffered on the unix port; the flush is for CPython host runs
        sys.stdout.write(line)
        sys.stdout.write("\n")
        try:
            sys.stdout.flush()
        except AttributeError:
            pass

    def wait_transport(self, log):
        return True


def _makedirs(path):
    parts = path.split("/")
    cur = "" if path.startswith("/") else "."
    for p in parts:
        if not p:
            continue
        cur = cur + "/" + p
        try:
            os.mkdir(cur)
        except OSError:
            pass  # exists (or a real error, which the seq store will report)
