# The `update` command in the node loop (lib/node.py `_command`, protocol.md §5) under the
# real MicroPython: a 2.04 carries [cid, "update", {}]; the node fetches the signed
# manifest and the image from "the gateway" (CoAP GET with Block2, ETag), writes the
# inactive slot (boards/slots_unix.py) and reports "ok:pending"; once that report is
# acknowledged it says a reset is due. The next boot runs the image on trial and the
# first acknowledged reading confirms it (floor raised); a trial boot without an ack
# rolls back. Refusals report "err:<reason>" and activate nothing.
import binascii
import gc
import hashlib
import json
import os

import cbor
import coap
import mptest
from apps import env_sensor
from mptest import eq, image, rmtree, unhex
from nodefakes import T0, Gateway, ack, events, make_node

_V = {}  # the vectors, loaded once mptest knows where they are
# unique per run (the unix port has no getpid): runs in parallel do not share a "flash"
DIR = "/tmp/mp-node-update-%s" % binascii.hexlify(os.urandom(6)).decode()


def _vec():
    if not _V:
        _V.update(mptest.load_json("fwupdate-manifests.json"))
    return _V


def _case(name):
    for c in _vec()["cases"]:
        if c["name"] == name:
            return c
    raise KeyError(name)


def _fresh(keys=True):
    rmtree(DIR)
    os.mkdir(DIR)
    if keys:
        with open(DIR + "/fw_keys.txt", "w") as f:
            f.write("# test key\n%s\n" % _vec()["public_key"])
    return DIR


class FwGateway(Gateway):
    # nodefakes.Gateway (POST /r) plus GET /fw/<type>/manifest and /image with Block2
    def __init__(self, clock, answer, manifest, img):
        super().__init__(clock, answer)
        self.manifest = manifest
        self.img = img
        self.etag = hashlib.sha256(img).digest()[:8]
        self.gets = []

    def send(self, buf):
        m = coap.decode(bytes(buf))
        if m.code != coap.GET:
            return super().send(buf)
        path = [bytes(v).decode() for n, v in m.options if n == coap.URI_PATH]
        num, _, szx = coap.block_decode(m.opt(coap.BLOCK2))
        self.gets.append((path[-1], num))
        data = self.manifest if path[-1] == "manifest" else self.img
        size = 1 << (szx + 4)
        chunk = data[num * size:(num + 1) * size]
        more = (num + 1) * size < len(data)
        opts = [(coap.BLOCK2, coap.block_encode(num, more, szx))]
        if path[-1] == "image":
            opts.append((coap.ETAG, self.etag))
        opts.sort()
        self.queue.append(coap.encode(coap.ACK, coap.CONTENT, m.mid, m.token, opts, chunk))


def _node(answer, d, count, case="good", **kw):
    gc.collect()
    node, _, b = make_node(answer, env_sensor, count=count, state_dir=d, **kw)
    c = _case(case)
    fw = FwGateway(b.clock, answer, unhex(c["manifest"]), image(c["image"], _vec()["size"]))
    node.client.transport = fw  # the node's one transport: the POSTs and the GETs
    node.client._tr = fw
    return node, fw, b


def _boot_record(d):
    with open(d + "/slots/boot.json") as f:
        return json.load(f)


def _reports(gw, cid):
    return [r[3] for p in gw.packs for r in p[1:] if r[0] == "cmd/%d" % cid]


def test_update_pending_then_trial_then_confirmed():
    d = _fresh()

    def answer(m, k):
        if k == 1:
            return ack(m, payload=cbor.dumps({1: T0, 2: [[5, "update", {}, T0 + 120]]}))
        return ack(m)

    node, gw, b = _node(answer, d, 3)
    eq(node.fw_boot(), "normal")  # never updated: no slot record is even read
    eq(node.run(), 7)  # EXIT_RESET: the report was acknowledged, start again to boot it
    cmds = events(b.lines, "cmd")
    eq(cmds, ["I env-0009 cmd cid=5 name=update result=ok:pending"])
    eq(_reports(gw, 5), ["ok:pending"])  # in the reading after the command
    eq(gw.gets[0], ("manifest", 0))
    eq(len([g for g in gw.gets if g[0] == "image"]), (_vec()["size"] + 511) // 512)
    rec = _boot_record(d)
    eq((rec["state"], rec["next"], rec["ver"][1]), ("pending", 1, 2))
    eq(node.fw_reset_due, True)  # the report was acknowledged: time to reset
    eq(any("fw pending version=2" in ln for ln in b.lines), True, b.lines)

    # the next boot: the new image on trial, confirmed by the first acknowledged reading
    node2, _, b2 = _node(lambda m, k: ack(m), d, 2)
    eq(node2.fw_boot(), "trial")
    eq(_boot_record(d)["state"], "trial")
    eq(node2.run(), 0)
    rec = _boot_record(d)
    eq((rec["state"], rec["active"], rec["floor"]), ("ok", 1, 2))
    eq([ln for ln in b2.lines if " fw " in ln],
       ["I env-0009 fw boot trial slot=1 version=2",
        "I env-0009 fw confirmed version=2 floor=2"])
    # and the boot after that is a normal one
    node3, _, _ = _node(lambda m, k: ack(m), d, 1)
    eq(node3.fw_boot(), "normal")
    rmtree(DIR)


def test_trial_without_an_ack_rolls_back():
    d = _fresh()

    def answer(m, k):
        if k == 1:
            return ack(m, payload=cbor.dumps({1: T0, 2: [[1, "update", {"version": 2}]]}))
        return ack(m)

    node, gw, _ = _node(answer, d, 2)
    node.fw_boot()
    eq(node.run(), 7)  # EXIT_RESET
    eq(_reports(gw, 1), ["ok:pending"])
    node2, _, _ = _node(lambda m, k: None, d, 1, drain_timeout_s=3)  # no answer, ever
    eq(node2.fw_boot(), "trial")
    node2.run()
    node3, _, _ = _node(lambda m, k: ack(m), d, 1)
    eq(node3.fw_boot(), "rolled-back")
    rec = _boot_record(d)
    eq((rec["state"], rec["active"], rec["bad"], rec["floor"]), ("ok", 0, 2, 0))
    rmtree(DIR)


def test_refusals_report_err_and_activate_nothing():
    d = _fresh()
    cmds = [[1, "update", {"version": 7}],  # the gateway offers 2
            [2, "update", {"type": "light"}],
            [3, "update", "now"]]

    def answer(m, k):
        if k == 1:
            return ack(m, payload=cbor.dumps({1: T0, 2: cmds}))
        return ack(m)

    node, gw, _ = _node(answer, d, 2)
    eq(node.run(), 0)
    eq([_reports(gw, i) for i in (1, 2, 3)], [["err:version"], ["err:type"], ["err:args"]])
    # the manifest was read, nothing was written or activated
    eq("boot.json" in os.listdir(d + "/slots"), False)
    eq("slot1.img" in os.listdir(d + "/slots"), False)
    eq(getattr(node, "fw_reset_due", False), False)

    # a bad signature and no key file at all
    d = _fresh(keys=False)
    node, gw, _ = _node(answer, d, 2)
    cmds[:] = [[4, "update", {}]]
    node.run()
    eq(_reports(gw, 4), ["err:no-keys"])
    d = _fresh()
    node, gw, _ = _node(answer, d, 2, case="bad-signature")
    cmds[:] = [[6, "update", None]]
    node.run()
    eq(_reports(gw, 6), ["err:signature"])
    rmtree(DIR)


mptest.run(globals())
