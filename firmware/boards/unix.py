# The unix board: an emulated node on a PC, running the real firmware under the MicroPython
# unix port. Same interface as boards/esp32.py would offer:
#   clock      ticks_ms / ticks_diff / ticks_add / sleep_ms (the `time` module itself)
#   rng        getrandbits / random, seeded from os.urandom (message ids, tokens)
#   state_dir  where the seq store lives
#   time()     seconds since the Unix epoch (int), or None on a board without a clock
#   sensor(name, t)  a virtual sensor, driven by boards/scenario.py
#   log(level, device, event, text)  one line on stdout
#   wait_transport()  nothing to bring up on a PC
import os
import random
import sys
import time

from boards.scenario import Scenario


def _seed_rng():
    b = os.urandom(4)
    random.seed(b[0] << 24 | b[1] << 16 | b[2] << 8 | b[3])
    return random


class Board:
    name = "unix"

    def __init__(self, state_dir, seed=1, scenario=None):
        self.clock = time
        self.rng = _seed_rng()
        self.state_dir = state_dir
        _makedirs(state_dir)
        self.scenario = Scenario(seed, scenario)

    def time(self):
        return int(time.time())

    def sensor(self, name, t):
        return self.scenario.read(name, t)

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
