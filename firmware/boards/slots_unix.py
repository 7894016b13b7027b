# A/B firmware slots for the unix board: two simulated partitions (files) and a boot
# record that stands in for the bootloader's OTA data. The contract (shared with
# boards/slots_esp32.py, used by lib/fwupdate.py):
#   SECTOR                  write unit: a slot is written one 4096-byte sector at a time
#   capacity                bytes one slot holds
#   boot()                  once at start-up, before the app: -> "normal", "trial" (this boot
#                           runs a new image that has not confirmed itself yet) or
#                           "rolled-back" (the new image did not confirm itself: the other
#                           slot runs again and that version is remembered as bad)
#   running()               the slot this boot runs (0 or 1)
#   target()                the slot an update is written to: always the other one
#   write(slot, i, buf)     sector i (the last may be short); durable when it returns
#   read(slot, offset, buf) -> bytes read (for the digest check)
#   set_pending(slot, ver)  boot `slot` at the next reset, once, on trial
#   trial()                 True while the running image is on trial
#   confirm()               the trial image works: keep it, raise the floor to its version
#   version()               version of the running image (0: the factory image)
#   floor()                 anti-rollback floor: a manifest must carry a higher version
#   bad()                   the version that was rolled back (0 none): not accepted again
#
# Files in `dir` (state_dir + "/fw"): slot0.img, slot1.img and boot.json:
#   {"active": 0, "next": 1, "state": "ok" | "pending" | "trial", "ver": [v0, v1],
#    "floor": n, "bad": n}
# boot.json is written to a temporary file and renamed over the old one (rename is atomic
# on POSIX), so a power cut leaves the old record or the new one, never half of either.
# What a bootloader does at reset is boot() here: "pending" becomes "trial" of the new slot;
# a reset that finds "trial" (the image never confirmed) switches back to the old slot.
import json
import os

SECTOR = 4096


def _sync():
    try:
        os.sync()
    except AttributeError:
        pass  # the unix port has no os.sync: durable = in the kernel (survives kill -9)


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class Slots:
    def __init__(self, dir, capacity=256 * 1024):
        self.dir = dir
        self.capacity = capacity
        try:
            os.mkdir(dir)
        except OSError:
            pass
        self._rec = self._load()

    def _load(self):
        try:
            with open(self.dir + "/boot.json") as f:
                rec = json.load(f)
            if isinstance(rec, dict) and rec.get("active") in (0, 1):
                return rec
        except (OSError, ValueError):
            pass
        # no record (first start) or a damaged one: the factory image in slot 0
        return {"active": 0, "next": None, "state": "ok", "ver": [0, 0], "floor": 0, "bad": 0}

    def _save(self):
        tmp = self.dir + "/boot.tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(self._rec))
        os.rename(tmp, self.dir + "/boot.json")
        _sync()

    # ---- the bootloader's part

    def boot(self):
        r = self._rec
        if r["state"] == "pending":
            r["active"] = r["next"]
            r["next"] = None
            r["state"] = "trial"
            self._save()
            return "trial"
        if r["state"] == "trial":
            # the new image booted and never confirmed itself: back to the other slot
            r["bad"] = r["ver"][r["active"]]
            r["active"] = 1 - r["active"]
            r["state"] = "ok"
            self._save()
            return "rolled-back"
        return "normal"

    # ---- queries

    def running(self):
        return self._rec["active"]

    def target(self):
        return 1 - self._rec["active"]

    def trial(self):
        return self._rec["state"] == "trial"

    def version(self):
        return self._rec["ver"][self._rec["active"]]

    def floor(self):
        return self._rec["floor"]

    def bad(self):
        return self._rec["bad"]

    # ---- the slot contents

    def _path(self, slot):
        return "%s/slot%d.img" % (self.dir, slot)

    def write(self, slot, index, buf):
        if slot == self._rec["active"]:
            raise ValueError("refusing to write the running slot")
        if (index + 1) * SECTOR > self.capacity or len(buf) > SECTOR:
            raise ValueError("sector %d out of the slot" % index)
        r = self._rec
        if r["state"] == "pending" and slot == r["next"]:
            # a pending image is being overwritten: it must not boot half-written
            r["state"] = "ok"
            r["next"] = None
            self._save()
        p = self._path(slot)
        if not _exists(p):
            open(p, "wb").close()
        with open(p, "r+b") as f:
            f.seek(index * SECTOR)
            f.write(buf)
            f.flush()
        _sync()

    def read(self, slot, offset, buf):
        try:
            with open(self._path(slot), "rb") as f:
                f.seek(offset)
                return f.readinto(buf)
        except OSError:
            return 0

    # ---- the update's part

    def set_pending(self, slot, version):
        r = self._rec
        if slot == r["active"]:
            raise ValueError("the running slot cannot be the next one")
        r["next"] = slot
        r["ver"][slot] = version
        r["state"] = "pending"
        self._save()

    def confirm(self):
        r = self._rec
        if r["state"] != "trial":
            return False
        r["state"] = "ok"
        v = r["ver"][r["active"]]
        if v > r["floor"]:
            r["floor"] = v
        self._save()
        return True
