# A node's update steps as one MicroPython process, for firmware/tests/test_fwupdate_process.py:
#   micropython fw_driver.py STATE_DIR boot                          start-up only
#   micropython fw_driver.py STATE_DIR fetch HOST PORT KEYS [CUT]    boot, then download
#   micropython fw_driver.py STATE_DIR confirm                        boot, then confirm
# Prints BOOT <state> <slot> <version>, the updater's log lines, SECTOR <i> <done>,
# PENDING <version> ms=<download time> or ERROR <reason>. With CUT = n: after sector n is
# on flash, two more datagrams are taken in (part of sector n + 1 in RAM only), then PAUSED
# is printed and the process waits to be killed -9 by the test: a power cut mid-sector.
import os
import random
import sys
import time

import fwupdate
from boards.slots_unix import Slots
from transports.udp import UdpTransport


def out(line):
    sys.stdout.write(line + "\n")


class CutTransport:
    # the UDP transport, frozen after `after` more datagrams once armed
    def __init__(self, tr):
        self.tr = tr
        self.left = -1

    def send(self, buf):
        self.tr.send(buf)

    def recv_into(self, buf, timeout_ms):
        n = self.tr.recv_into(buf, timeout_ms)
        if n and self.left > 0:
            self.left -= 1
            if self.left == 0:
                out("PAUSED")
                while True:
                    time.sleep(1)
        return n


def main(argv):
    state_dir, mode = argv[1], argv[2]
    b = os.urandom(4)
    random.seed(b[0] << 24 | b[1] << 16 | b[2] << 8 | b[3])
    try:
        os.mkdir(state_dir)  # the board makes it on a real node
    except OSError:
        pass
    slots = Slots(state_dir + "/slots")
    keys = fwupdate.load_keys(argv[5]) if mode == "fetch" else []
    up = fwupdate.Updater(slots, keys, "env", state_dir + "/fw", out, "node")
    state = up.boot()
    out("BOOT %s %d %d" % (state, slots.running(), slots.version()))
    if mode == "confirm":
        out("CONFIRMED %s floor=%d" % (up.confirm(), slots.floor()))
    if mode != "fetch":
        return 0
    tr = CutTransport(UdpTransport(argv[3], int(argv[4])))
    cut = int(argv[6]) if len(argv) > 6 else -1
    cl = fwupdate.client(tr, time, random, ack_timeout_ms=1000)

    def on_sector(i, done):
        out("SECTOR %d %d" % (i, done))
        if i == cut:
            tr.left = 2

    t0 = time.ticks_ms()
    try:
        m = up.from_gateway(cl, on_sector)
    except fwupdate.UpdateError as e:
        out("ERROR %s" % e)
        return 1
    out("PENDING %d ms=%d sent=%d" % (m.version, time.ticks_diff(time.ticks_ms(), t0),
                                        cl.sent))
    return 0


sys.exit(main(sys.argv))
