# boards/slots_esp32.py under the real MicroPython with a FAKE `esp32` module: two OTA
# partitions, NVS (uncommitted writes lost at a reset) and a model of the ESP-IDF
# bootloader's app rollback (NEW -> PENDING_VERIFY at boot; a reset while PENDING_VERIFY ->
# ABORTED, the other partition boots). This checks our logic against that model only: the
# real esp32.Partition has not run this code (docs/security.md, "Firmware updates").
import sys

import mptest
from mptest import eq

_SIZE = 24 * 1024  # 20000-byte test images: 5 erase blocks


class World:
    def __init__(self):
        self.flash = {"ota_0": bytearray(b"\xff" * _SIZE), "ota_1": bytearray(b"\xff" * _SIZE)}
        self.boot = "ota_0"
        self.running = "ota_0"
        self.state = {"ota_0": "valid", "ota_1": "empty"}
        self.nvs = {}

    def reset(self):
        # the bootloader (CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE)
        if self.state[self.running] == "pending_verify":
            self.state[self.running] = "aborted"
            self.boot = _other(self.running)
        if self.state[self.boot] == "new":
            self.state[self.boot] = "pending_verify"
        self.running = self.boot


W = World()


def _other(label):
    return "ota_1" if label == "ota_0" else "ota_0"


class Partition:
    BOOT = 0
    RUNNING = 1

    def __init__(self, id, block_size=4096):
        self.label = W.running if id == Partition.RUNNING else (W.boot if id == Partition.BOOT
                                                                 else id)

    def info(self):
        return (0, 0x10, 0x10000, _SIZE, self.label, False)

    def get_next_update(self):
        return Partition(_other(self.label))

    def writeblocks(self, n, buf, offset=None):
        if offset is not None:
            raise AssertionError("slots_esp32 writes whole erase blocks")
        if len(buf) != 4096:
            raise AssertionError("writeblocks needs a whole 4096-byte block")
        W.flash[self.label][n * 4096 : (n + 1) * 4096] = buf

    def readblocks(self, n, buf, offset=0):
        a = n * 4096 + offset
        buf[:] = W.flash[self.label][a : a + len(buf)]

    def set_boot(self):
        W.boot = self.label
        if W.state[self.label] != "valid":
            W.state[self.label] = "new"

    @classmethod
    def mark_app_valid_cancel_rollback(cls):
        W.state[W.running] = "valid"


class NVS:
    def __init__(self, ns):
        self.pending = dict(W.nvs)

    def get_i32(self, k):
        if k not in W.nvs:
            raise OSError(-4354)
        return W.nvs[k]

    def set_i32(self, k, v):
        self.pending[k] = v

    def get_blob(self, k, buf):
        if k not in W.nvs:
            raise OSError(-4354)
        v = W.nvs[k]
        buf[: len(v)] = v
        return len(v)

    def set_blob(self, k, v):
        self.pending[k] = bytes(v)

    def erase_key(self, k):
        if k not in self.pending:
            raise OSError(-4354)
        del self.pending[k]

    def commit(self):
        W.nvs = dict(self.pending)


class _Esp32:
    pass


fake = _Esp32()
fake.Partition = Partition
fake.NVS = NVS
sys.modules["esp32"] = fake

import fwupdate  # noqa: E402
from boards.slots_esp32 import Slots  # noqa: E402


def _vec():
    return mptest.load_json("fwupdate-manifests.json")


def _dir():
    import os

    return "/tmp/mp-fw-esp32-%d" % (os.getpid() if hasattr(os, "getpid") else 0)


def _updater():
    v = _vec()
    return fwupdate.Updater(Slots(), [mptest.unhex(v["public_key"])], "env", _dir())


def _install(up, name, label):
    c = [c for c in _vec()["cases"] if c["name"] == name][0]
    m = up.check(mptest.unhex(c["manifest"]))
    img = mptest.image(label, 20000)
    up.install(m, lambda off: img[off : off + 512])
    return img


def _fresh():
    global W
    W = World()
    try:
        import os

        os.remove(_dir() + "/download.json")
    except OSError:
        pass


def test_update_trial_confirm():
    _fresh()
    up = _updater()
    eq(up.boot(), "normal")
    img = _install(up, "good", "A")
    eq(bytes(W.flash["ota_1"][:20000]), img)
    eq(W.flash["ota_1"][20000:24576], b"\xff" * 4576)  # the short last sector, padded
    eq((W.boot, W.state["ota_1"]), ("ota_1", "new"))
    W.reset()
    up = _updater()
    eq((up.boot(), up.slots.trial(), up.slots.version(), up.slots.floor()), ("trial", True, 2, 0))
    eq(up.confirm(), True)
    eq((W.state["ota_1"], up.slots.floor(), up.slots.version()), ("valid", 2, 2))
    W.reset()
    up = _updater()
    eq((up.boot(), W.running, up.slots.version()), ("normal", "ota_1", 2))
    try:
        _install(up, "good", "A")
        raise AssertionError("same version accepted")
    except fwupdate.UpdateError as e:
        eq(e.reason, "rollback")


def test_unconfirmed_rolls_back():
    _fresh()
    up = _updater()
    up.boot()
    _install(up, "good", "A")
    W.reset()
    eq(_updater().boot(), "trial")
    W.reset()  # no confirmation: the bootloader goes back
    up = _updater()
    eq((up.boot(), W.running, up.slots.bad(), up.slots.floor()), ("rolled-back", "ota_0", 2, 0))
    W.reset()
    up = _updater()
    eq(up.boot(), "normal")
    try:
        _install(up, "good", "A")
        raise AssertionError("rolled-back version accepted")
    except fwupdate.UpdateError as e:
        eq(e.reason, "failed-before")
    _install(up, "good-v3", "B")
    W.reset()
    eq((_updater().boot(), W.running), ("trial", "ota_1"))


def test_soft_reset_before_the_reset_is_not_a_rollback():
    _fresh()
    up = _updater()
    up.boot()
    _install(up, "good", "A")
    eq(_updater().boot(), "normal")  # main.py again without the bootloader
    W.reset()
    eq(_updater().boot(), "trial")


def test_overwriting_a_pending_image_unpends_it():
    _fresh()
    up = _updater()
    up.boot()
    _install(up, "good", "A")
    c = [c for c in _vec()["cases"] if c["name"] == "good-v3"][0]
    m = up.check(mptest.unhex(c["manifest"]))
    img = mptest.image("B", 20000)
    n = [0]

    def cut(off):
        n[0] += 1
        if n[0] > 8:
            raise OSError("power cut")
        return img[off : off + 512]

    try:
        up.install(m, cut)
    except OSError:
        pass
    eq(W.boot, "ota_0")
    W.reset()
    eq((_updater().boot(), W.running), ("normal", "ota_0"))


def _cleanup():
    import os

    try:
        os.rmdir(_dir())
    except OSError:
        pass


if hasattr(sys, "atexit"):
    sys.atexit(_cleanup)
mptest.run(globals())
