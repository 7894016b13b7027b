# fwupdate.py + boards/slots_unix.py under the real MicroPython: a signed update is
# installed in the other slot, boots on trial and is confirmed (floor raised); every
# refusal (bad signature, wrong key, tampered payload, wrong type, rollback, wrong alg,
# digest mismatch, too large) activates nothing; an unconfirmed image rolls back at the
# next boot and is not accepted again; an interrupted download resumes where its progress
# says, and a damaged partial download is caught by the digest.
# Manifests: tests/vectors/fwupdate-manifests.json (signed by the host's `machi release`).
import os
import sys

import coap
import fwupdate
import mptest
from boards.slots_unix import Slots
from mptest import eq, image, rmtree, unhex

_V = None
_N = [0]


def _vec():
    global _V
    if _V is None:
        _V = mptest.load_json("fwupdate-manifests.json")
    return _V


def _case(name):
    for c in _vec()["cases"]:
        if c["name"] == name:
            return c
    raise KeyError(name)


def _fresh():
    # a new "flash" per test; the previous one is removed (the last at exit)
    if _N[0]:
        rmtree(_dir(_N[0]))
    _N[0] += 1
    d = _dir(_N[0])
    rmtree(d)
    os.mkdir(d)
    return d


def _dir(n):
    return "/tmp/mp-fwupdate-%d-%d" % (os.getpid() if hasattr(os, "getpid") else 0, n)


def _cleanup():
    if _N[0]:
        rmtree(_dir(_N[0]))


class Node:
    # one power cycle of a node: slots + updater from what is on "flash" (the dir)
    def __init__(self, d, app="env"):
        self.d = d
        self.lines = []
        self.slots = Slots(d + "/slots")
        self.up = fwupdate.Updater(self.slots, [unhex(_vec()["public_key"])], app, d + "/fw",
                                   self.lines.append)
        self.state = self.up.boot()


def _files(d, name):
    c = _case(name)
    man = d + "/" + name + ".manifest"
    img = d + "/" + name + ".bin"
    with open(man, "wb") as f:
        f.write(unhex(c["manifest"]))
    with open(img, "wb") as f:  # (too-large is refused before its image is read)
        f.write(image(c["image"], _vec()["size"]))
    return man, img


def _apply(n, name):
    man, img = _files(n.d, name)
    return n.up.from_file(man, img)


def _refused(n, name, reason):
    try:
        _apply(n, name)
    except fwupdate.UpdateError as e:
        eq(e.reason, reason, name)
        return
    raise AssertionError("%s was accepted" % name)


def _slot_bytes(n, slot):
    try:
        with open("%s/slots/slot%d.img" % (n.d, slot), "rb") as f:
            return f.read()
    except OSError:
        return None


def test_good_update_applied_and_confirmed():
    d = _fresh()
    n = Node(d)
    eq((n.state, n.slots.running(), n.slots.version(), n.slots.floor()), ("normal", 0, 0, 0))
    m = _apply(n, "good")
    eq((m.version, m.type, m.size), (2, "env", 20000))
    eq(_slot_bytes(n, 1), image("A", 20000))
    eq(n.slots.running(), 0)  # nothing changes before the reset
    n = Node(d)  # reset: the bootloader boots the new slot on trial
    eq((n.state, n.slots.running(), n.slots.trial(), n.slots.version()), ("trial", 1, True, 2))
    eq(n.slots.floor(), 0)
    eq(n.up.confirm(), True)
    eq((n.slots.trial(), n.slots.floor()), (False, 2))
    eq(n.up.confirm(), False)  # once
    n = Node(d)
    eq((n.state, n.slots.running(), n.slots.version()), ("normal", 1, 2))
    # the next update goes to the other slot (0), and is again confirmed
    _apply(n, "good-v3")
    eq(_slot_bytes(n, 0), image("B", 20000))
    n = Node(d)
    eq((n.state, n.slots.running()), ("trial", 0))
    n.up.confirm()
    eq(n.slots.floor(), 3)


def test_untagged_manifest_accepted_and_other_app():
    d = _fresh()
    n = Node(d)
    eq(_apply(n, "untagged").version, 2)
    d = _fresh()
    n = Node(d, app="bin")
    eq(_apply(n, "good-v5-bin").type, "bin")


def test_refusals_activate_nothing():
    for name, reason in (("bad-signature", "signature"), ("wrong-key", "signature"),
                         ("tampered-payload", "signature"), ("wrong-type", "type"),
                         ("alg-es256", "alg"), ("not-cbor", "format"),
                         ("signed-no-digest", "format"), ("signed-version-0", "format"),
                         ("signed-version-text", "format"), ("signed-unknown-type", "format"),
                         ("signed-short-digest", "format"),
                         ("too-large", "too-large")):
        eq(_case(name)["expect"], reason)
        d = _fresh()
        n = Node(d)
        _refused(n, name, reason)
        eq(_slot_bytes(n, 1), None, name)  # not a byte written
        n = Node(d)
        eq((n.state, n.slots.running(), n.slots.version()), ("normal", 0, 0), name)


def test_digest_mismatch_activates_nothing():
    d = _fresh()
    n = Node(d)
    _refused(n, "digest-mismatch", "digest")
    eq(n.slots.trial(), False)
    n = Node(d)
    eq((n.state, n.slots.running()), ("normal", 0))
    try:
        os.stat(d + "/fw/download.json")
        raise AssertionError("progress kept after a digest failure")
    except OSError:
        pass


def test_rollback_versions_refused_after_confirm():
    d = _fresh()
    n = Node(d)
    _apply(n, "good")
    n = Node(d)
    n.up.confirm()
    n = Node(d)
    _refused(n, "rollback-v1", "rollback")
    _refused(n, "good", "rollback")  # the same version again is not an update either
    eq(n.slots.running(), 1)


def test_unconfirmed_image_rolls_back():
    d = _fresh()
    n = Node(d)
    _apply(n, "good")
    n = Node(d)
    eq(n.state, "trial")
    _refused(n, "good-v3", "trial")  # its fallback slot is not overwritten meanwhile
    # reset without confirming (a crash, the watchdog, no acknowledged reading)
    n = Node(d)
    eq((n.state, n.slots.running(), n.slots.version(), n.slots.bad()), ("rolled-back", 0, 0, 2))
    eq(n.lines, ["I - fw boot rolled-back slot=0 version=0"])
    eq(n.up.confirm(), False)
    n = Node(d)
    eq((n.state, n.slots.running()), ("normal", 0))
    _refused(n, "good", "failed-before")
    _apply(n, "good-v3")  # a newer version is welcome
    n = Node(d)
    eq((n.state, n.slots.running(), n.slots.version()), ("trial", 1, 3))


class _Cut(Exception):
    pass


def _reader(data, cut_after=None, log=None):
    # read(offset) for install(); raises _Cut (the power cut) after cut_after blocks
    count = [0]

    def read(offset):
        if cut_after is not None and count[0] >= cut_after:
            raise _Cut()
        count[0] += 1
        if log is not None:
            log.append(offset)
        return data[offset : offset + 512]

    return read


def test_interrupted_download_resumes():
    d = _fresh()
    img = image("A", 20000)
    n = Node(d)
    man, _ = _files(d, "good")
    with open(man, "rb") as f:
        raw = f.read()
    m = n.up.check(raw)
    sectors = []
    try:
        n.up.install(m, _reader(img, cut_after=8 * 2 + 3), lambda i, done: sectors.append(i))
    except _Cut:
        pass
    eq(sectors, [0, 1])
    n = Node(d)  # power back
    eq(n.state, "normal")
    offsets = []
    n.up.install(n.up.check(raw), _reader(img, log=offsets))
    eq(offsets[0], 8192)  # resumed after the two recorded sectors
    eq(len(offsets), (20000 - 8192 + 511) // 512)
    eq(_slot_bytes(n, 1), img)
    n = Node(d)
    eq(n.state, "trial")


def test_damaged_partial_download_caught_by_digest():
    d = _fresh()
    img = image("A", 20000)
    n = Node(d)
    man, _ = _files(d, "good")
    with open(man, "rb") as f:
        raw = f.read()
    try:
        n.up.install(n.up.check(raw), _reader(img, cut_after=8 * 3))
    except _Cut:
        pass
    # flash damaged in the part the progress calls done
    p = d + "/slots/slot1.img"
    with open(p, "r+b") as f:
        f.seek(5000)
        f.write(b"\x00\x01\x02")
    n = Node(d)
    try:
        n.up.install(n.up.check(raw), _reader(img))
        raise AssertionError("damaged image accepted")
    except fwupdate.UpdateError as e:
        eq(e.reason, "digest")
    n = Node(d)
    eq((n.state, n.slots.running()), ("normal", 0))
    offsets = []
    n.up.install(n.up.check(raw), _reader(img, log=offsets))  # from the start this time
    eq(offsets[0], 0)
    n = Node(d)
    eq((n.state, n.slots.version()), ("trial", 2))


def test_half_overwritten_pending_image_is_not_booted():
    d = _fresh()
    n = Node(d)
    _apply(n, "good")  # pending in slot 1
    man, _ = _files(d, "good-v3")
    with open(man, "rb") as f:
        m = n.up.check(f.read())
    try:
        n.up.install(m, _reader(image("B", 20000), cut_after=8))  # one sector, then a cut
    except _Cut:
        pass
    n = Node(d)
    eq((n.state, n.slots.running()), ("normal", 0))


def test_manifest_without_keys_or_garbage():
    raw = unhex(_case("good")["manifest"])
    try:
        fwupdate.verify_manifest(raw, [])
        raise AssertionError("accepted without a key")
    except fwupdate.UpdateError as e:
        eq(e.reason, "signature")
    for bad in (b"", b"\x84\x40\xa0\x40\x40", raw[:-1], b"\xd8\x13" + raw[2:]):
        try:
            fwupdate.verify_manifest(bad, [unhex(_vec()["public_key"])])
            raise AssertionError("accepted %r" % bad[:8])
        except fwupdate.UpdateError as e:
            eq(e.reason in ("format", "alg", "signature"), True, e.reason)


def test_load_keys():
    d = _fresh()
    p = d + "/keys.txt"
    with open(p, "w") as f:
        f.write("# city key\n%s\n\n" % _vec()["public_key"])
    eq(fwupdate.load_keys(p), [unhex(_vec()["public_key"])])
    with open(p, "w") as f:
        f.write("abcd\n")
    mptest.raises(ValueError, fwupdate.load_keys, p)


def test_coap_block_option():
    eq(coap.block_encode(0, False, 5), b"\x05")
    eq(coap.block_encode(1, True, 6), b"\x1e")
    for num, more, szx in ((0, True, 0), (15, False, 6), (4095, True, 5), (1048575, False, 1)):
        eq(coap.block_decode(coap.block_encode(num, more, szx)), (num, more, szx))
    eq(coap.block_decode(b""), (0, False, 0))
    mptest.raises(coap.CoapError, coap.block_encode, 0, False, 7)
    mptest.raises(coap.CoapError, coap.block_encode, 1 << 20, False, 0)
    mptest.raises(coap.CoapError, coap.block_decode, b"\x00\x00\x00\x00")
    mptest.raises(coap.CoapError, coap.block_decode, b"\x0f")


if hasattr(sys, "atexit"):
    sys.atexit(_cleanup)
mptest.run(globals())
