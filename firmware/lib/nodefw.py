# Firmware updates in the node loop (docs/security.md "Firmware updates", protocol.md §5
# `update`): lib/node.py's fw_boot() and `update` command. A module of its own so a node
# that is never updated does not carry this code and its names on its heap (on the unix
# port .mpy code and its qstrs live on the heap; qstrs are never freed): node.py imports
# it only when a slot record exists at start-up (always on an ESP32, where frozen code
# costs no heap) and for an `update` command. fwupdate and ed25519 only for an update.
# Slots and keys: state_dir/slots (boards/slots_unix.py; the OTA partitions on an ESP32),
# state_dir/fw (download progress), public keys in fw_keys.txt (cwd: "/" on a board) or
# state_dir/fw_keys.txt.
import sys


def slots(node, create):
    if sys.platform == "esp32":
        try:
            from boards.slots_esp32 import Slots

            return Slots()
        except (OSError, ImportError, AttributeError) as e:
            # a build without OTA partitions: no slots, no updates, the node runs on
            node.log("W", "fw", "no slots: %s" % e)
            return None
    d = node.cfg["state_dir"] + "/slots"
    if not create:
        try:
            open(d + "/boot.json").close()  # no record: never updated, nothing to check
        except OSError:
            return None
    from boards.slots_unix import Slots as UnixSlots

    return UnixSlots(d)


# At start-up, before the first reading: the bootloader's verdict on the running image.
# "trial": it confirms itself after the first reading the gateway acknowledges (the
# app's contact() hook, called on every 2.xx). Returns "normal"|"trial"|"rolled-back".
def boot(node):
    s = slots(node, False)
    if s is None:
        return "normal"
    state = s.boot()
    if state != "normal":
        node.log("I", "fw", "boot %s slot=%d version=%d" % (state, s.running(), s.version()))
    if state == "trial":
        app = node.app
        contact = app.contact

        def confirm_then(now):
            app.contact = contact  # once
            if s.confirm():
                node.log("I", "fw", "confirmed version=%d floor=%d" % (s.version(), s.floor()))
            contact(now)

        app.contact = confirm_then
    return state


# The `update` command: args {} or {"type": t, "version": n} (both optional checks of
# what the gateway offers). Fetches /fw/<type>/manifest and the image from the gateway
# this node talks to (plain CoAP: the signature protects the image), checks and writes
# it into the inactive slot. "ok:pending": the next reset boots it on trial; the node
# sets fw_reset_due once the reading carrying this report was acknowledged.
def update(node, args):
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return "err:args"
    cfg = node.cfg
    typ = cfg["type"]
    want = args.get("version")
    if args.get("type", typ) != typ:
        return "err:type"
    if want is not None and (not isinstance(want, int) or want < 1):
        return "err:args"
    tr = getattr(node.client, "transport", None)
    if tr is None:
        return "err:transport"  # LoRa: no CoAP to fetch an image with
    if getattr(tr, "ctx", None) is not None:
        tr = tr._tr  # OscoreTransport: the plain transport under it
    try:
        import fwupdate

        keys = None
        for path in ("fw_keys.txt", cfg["state_dir"] + "/fw_keys.txt"):
            try:
                keys = fwupdate.load_keys(path)
                break
            except OSError:
                pass
        if not keys:
            return "err:no-keys"
        s = slots(node, True)
        if s is None:
            return "err:slots"
        up = fwupdate.Updater(s, keys, typ, cfg["state_dir"] + "/fw", node.board.log,
                              dev=node.dev)
        if want is not None:
            check = up.check

            def check_version(raw):
                m = check(raw)
                if m.version != want:
                    raise fwupdate.UpdateError("version", "offered %d" % m.version)
                return m

            up.check = check_version  # type: ignore[method-assign]  # this offer's check
        co = cfg.get("coap") or {}
        rng = getattr(node.board, "rng", None) or node.client._rng
        cl = fwupdate.client(tr, node._clock, rng,
                             ack_timeout_ms=int(co.get("ack_timeout_s", 2) * 1000),
                             max_retransmit=co.get("max_retransmit", 4))
        up.from_gateway(cl)
    except Exception as e:
        return "err:%s" % (getattr(e, "reason", None) or type(e).__name__)
    # reset once the reading that carries "ok:pending" is acknowledged (its seq is the
    # next one taken: _extras puts reports into the next reading)
    after = node.seqs.peek()
    app = node.app
    contact = app.contact

    def reset_after(now):
        contact(now)
        head = node.outbox.peek()
        if node.seqs.peek() > after and (head is None or head[0] > after):
            app.contact = contact
            node.fw_reset_due = True
            node.log("I", "fw", "reset due: the update is pending")

    app.contact = reset_after
    return "ok:pending"
