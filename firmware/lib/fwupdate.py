# Firmware updates on the node (docs/security.md, "Firmware updates"): a signed manifest is
# checked before a byte of the image is trusted, the image goes into the inactive slot
# sector by sector with its progress on flash (a power cut resumes; a damaged download
# fails the digest), and only a complete image with the signed digest is made the next
# boot, on trial: it must confirm itself, else the next reset boots the old slot again.
#
# Manifest: COSE_Sign1 (RFC 9052 §4.2), tagged 18 or not:
#   [protected = bstr({1: -8}), unprotected = {4: kid}, payload = bstr(map), signature]
#   payload: {"version": int (> the anti-rollback floor), "type": "env" | "bin" | "light",
#             "size": bytes, "digest": sha256 of the image (32 bytes), "name": text}
#   signature: Ed25519 (lib/ed25519.py) over
#              Sig_structure = ["Signature1", protected, h'', payload] (CBOR)
# Made by `machi release sign` (tools/machi_tools/release.py).
#
# Slots: boards/slots_unix.py (files) or boards/slots_esp32.py (OTA partitions), same
# contract (see slots_unix.py). Start-up and the node loop's hooks (not wired into
# lib/node.py yet):
#   up = fwupdate.Updater(slots, fwupdate.load_keys(path), app_type, state_dir + "/fw",
#                         board.log, dev=device_id)       # logs "I <dev> fw ..."
#   up.boot()        first thing at start-up: "normal" | "trial" | "rolled-back"
#   up.confirm()     after the first reading the gateway acknowledged (2.04) on a trial
#                    boot: keeps the new image and raises the anti-rollback floor
#   up.from_gateway(client)            GET /fw/<type>/manifest, then Block2 GETs of
#                                      /fw/<type>/image; -> the Manifest installed
#   up.from_file(manifest, image)      the same from files copied with mpremote
#   then reset (machine.reset() on an ESP32; a unix node exits and is started again).
# Every refusal raises UpdateError(reason); nothing is activated then:
#   format        not a COSE_Sign1 manifest, or a payload field missing or of a wrong type
#   alg           protected header is not {1: -8} (EdDSA)
#   signature     no configured key verifies it
#   type          an image for another app
#   rollback      version <= the floor (the confirmed version)
#   failed-before the version that was rolled back already
#   too-large     larger than a slot
#   trial         the running image is itself on trial: its fallback slot is not overwritten
#   digest        the image in the slot does not hash to the signed digest (progress reset)
#   changed       the gateway's image changed during the download (ETag)
#   network       no answer after the CoAP retransmissions (progress kept: call again)
#   coap          an error answer (detail: the code)
import hashlib
import json
import os

import cbor
import coap
import coap_client
import ed25519

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


SECTOR = const(4096)
_TAG_SIGN1 = const(18)
_ALG_EDDSA = const(-8)
CF_COSE_SIGN1 = const(18)  # application/cose; cose-type="cose-sign1"
CF_OCTETS = const(42)
TYPES = ("env", "bin", "light")
_MAX_NAME = const(64)


class UpdateError(Exception):
    def __init__(self, reason, detail=""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self):
        return self.reason + (": " + self.detail if self.detail else "")


class Manifest:
    def __init__(self, version, type, size, digest, name):
        self.version = version
        self.type = type
        self.size = size
        self.digest = digest
        self.name = name

    def __repr__(self):
        return "Manifest(%s v%d %s %d B)" % (self.type, self.version, self.name, self.size)


# Public keys from a file: hex, one 32-byte key per line ('#' comments); e.g. /fw_keys.txt
# on a board, written by `machi release keygen` (<name>.pub).
def load_keys(path):
    keys = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                k = bytes.fromhex(line)
                if len(k) != 32:
                    raise ValueError("a public key is 32 bytes, got %d" % len(k))
                keys.append(k)
    return keys


def sig_structure(protected, payload):
    return cbor.dumps(["Signature1", protected, b"", payload])


def _field(p, name, kind):
    v = p.get(name)
    if not isinstance(v, kind) or isinstance(v, bool):
        raise UpdateError("format", "%s missing or not %s" % (name, kind.__name__))
    return v


# The signed manifest -> Manifest, checking only what needs no device state: the structure,
# the algorithm and the signature (against each key in turn). Nothing of the payload is
# looked at before the signature verified.
def verify_manifest(raw, keys):
    try:
        obj = cbor.loads(raw)
        if isinstance(obj, cbor.Tag):
            if obj.tag != _TAG_SIGN1:
                raise UpdateError("format", "tag %d is not COSE_Sign1" % obj.tag)
            obj = obj.value
        if not isinstance(obj, list) or len(obj) != 4:
            raise UpdateError("format", "not a 4-element COSE_Sign1 array")
        protected, unprotected, payload, sig = obj
        if not (isinstance(protected, bytes) and isinstance(unprotected, dict)
                and isinstance(payload, bytes) and isinstance(sig, bytes)):
            raise UpdateError("format", "COSE_Sign1 element of a wrong type")
        hdr = cbor.loads(protected) if protected else {}
        if not isinstance(hdr, dict) or hdr.get(1) != _ALG_EDDSA:
            raise UpdateError("alg", "protected header %r" % (hdr,))
        signed = sig_structure(protected, payload)
        for k in keys:
            if ed25519.verify(k, signed, sig):
                break
        else:
            raise UpdateError("signature")
        p = cbor.loads(payload)
    except cbor.CBORError as e:
        raise UpdateError("format", str(e))
    if not isinstance(p, dict):
        raise UpdateError("format", "payload is not a map")
    version = _field(p, "version", int)
    typ = _field(p, "type", str)
    size = _field(p, "size", int)
    digest = _field(p, "digest", bytes)
    name = _field(p, "name", str)
    if version < 1 or version >= 1 << 31 or size < 1 or len(digest) != 32 \
            or len(name) > _MAX_NAME or typ not in TYPES:
        raise UpdateError("format", "field out of range")
    return Manifest(version, typ, size, digest, name)


class _Client(coap_client.Client):
    # coap_client.Client with a blocking GET (the download runs outside the node loop)
    def get(self, path, extra):
        self.start(coap.GET, path, None, b"", extra)
        while not self.poll(60000):
            pass
        return self.response


# A client for update downloads: answers carry up to a 1024-byte block
def client(transport, clock, rng, ack_timeout_ms=2000, max_retransmit=4):
    return _Client(transport, clock, rng, ack_timeout_ms=ack_timeout_ms,
                   max_retransmit=max_retransmit, bufsize=128, rxsize=1024 + 96)


def _block_get(cl, path, num, szx):
    # -> (payload, num, more, szx, etag) of one Block2 GET
    resp = cl.get(path, ((coap.BLOCK2, coap.block_encode(num, False, szx)),))
    if resp is None:
        raise UpdateError("network", "GET /%s block %d: no answer" % ("/".join(path), num))
    if resp.code != coap.CONTENT:
        raise UpdateError("coap", "GET /%s: %s" % ("/".join(path), coap.code_str(resp.code)))
    b = resp.opt(coap.BLOCK2)
    try:
        if b is None:
            return resp.payload, 0, False, szx, resp.opt(coap.ETAG)
        rnum, more, rszx = coap.block_decode(b)
    except coap.CoapError as e:
        raise UpdateError("coap", str(e))
    return resp.payload, rnum, more, rszx, resp.opt(coap.ETAG)


class Updater:
    def __init__(self, slots, keys, app_type, dir, log=None, dev="-"):
        self.dev = dev  # the device id in log lines: "I <dev> fw ..."
        self.slots = slots
        self.keys = keys
        self.app_type = app_type
        self.dir = dir
        self._log = log
        try:
            os.mkdir(dir)
        except OSError:
            pass

    def log(self, line):
        if self._log:
            self._log("%s %s fw %s" % (line[0], self.dev, line[2:]))

    # ---- start-up and confirmation

    def boot(self):
        state = self.slots.boot()
        if state != "normal":
            self.log("I boot %s slot=%d version=%d" % (state, self.slots.running(),
                                                          self.slots.version()))
        return state

    def confirm(self):
        if self.slots.confirm():
            self.log("I confirmed version=%d floor=%d" % (self.slots.version(),
                                                              self.slots.floor()))
            return True
        return False

    # ---- checks that need the device's state

    def check(self, raw):
        m = verify_manifest(raw, self.keys)
        s = self.slots
        if m.type != self.app_type:
            raise UpdateError("type", "image for %s, this node runs %s" % (m.type, self.app_type))
        if m.version <= s.floor():
            raise UpdateError("rollback", "version %d <= floor %d" % (m.version, s.floor()))
        if m.version == s.bad():
            raise UpdateError("failed-before", "version %d was rolled back" % m.version)
        if m.size > s.capacity:
            raise UpdateError("too-large", "%d bytes, a slot holds %d" % (m.size, s.capacity))
        if s.trial():
            raise UpdateError("trial", "confirm the running image first")
        return m

    # ---- download progress, atomically replaced: {"d": digest hex, "slot", "size", "done"}

    def _progress_path(self):
        return self.dir + "/download.json"

    def _load_progress(self):
        try:
            with open(self._progress_path()) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _save_progress(self, m, slot, done):
        tmp = self.dir + "/download.tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps({"d": m.digest.hex(), "slot": slot, "size": m.size,
                                "done": done}))
        try:
            os.rename(tmp, self._progress_path())
        except OSError:
            # a filesystem that won't rename over a file (FAT): a cut here loses the
            # record, and the download starts over (never resumes from a wrong offset)
            self._clear_progress()
            os.rename(tmp, self._progress_path())

    def _clear_progress(self):
        try:
            os.remove(self._progress_path())
        except OSError:
            pass

    def _slot_digest(self, slot, size):
        h = hashlib.sha256()
        buf = bytearray(1024)
        mv = memoryview(buf)
        off = 0
        while off < size:
            n = min(len(buf), size - off)
            got = self.slots.read(slot, off, mv[:n])
            if got != n:
                return None
            h.update(mv[:n])
            off += n
        return h.digest()

    # Write the image into the inactive slot and make it the next boot (on trial).
    # read(offset) -> the image's bytes from offset on (at least one, at most a sector
    # is used). on_sector(index, done_bytes) after each sector is on flash and recorded.
    def install(self, m, read, on_sector=None):
        s = self.slots
        slot = s.target()
        p = self._load_progress()
        done = 0
        if p and p.get("d") == m.digest.hex() and p.get("slot") == slot \
                and p.get("size") == m.size:
            done = p.get("done", 0) // SECTOR * SECTOR
            self.log("I resume version=%d at=%d size=%d" % (m.version, done, m.size))
        else:
            self._save_progress(m, slot, 0)
            self.log("I download version=%d size=%d slot=%d" % (m.version, m.size, slot))
        buf = bytearray(SECTOR)
        mv = memoryview(buf)
        while done < m.size:
            n = min(SECTOR, m.size - done)
            k = 0
            while k < n:
                data = read(done + k)
                if not data:
                    raise UpdateError("format", "image shorter than its manifest")
                take = min(len(data), n - k)
                mv[k : k + take] = data[:take]
                k += take
            s.write(slot, done // SECTOR, mv[:n])
            done += n
            self._save_progress(m, slot, done)
            if on_sector:
                on_sector((done - n) // SECTOR, done)
        if self._slot_digest(slot, m.size) != m.digest:
            self._clear_progress()
            self.log("W digest mismatch version=%d: download again" % m.version)
            raise UpdateError("digest")
        s.set_pending(slot, m.version)
        self._clear_progress()
        self.log("I pending version=%d slot=%d: reset to try it" % (m.version, slot))
        return m

    # ---- sources

    def from_file(self, manifest_path, image_path, on_sector=None):
        with open(manifest_path, "rb") as f:
            m = self.check(f.read())
        with open(image_path, "rb") as img:

            def read(offset):
                img.seek(offset)
                return img.read(1024)

            return self.install(m, read, on_sector)

    # GET /fw/<type>/manifest (Block2 if it is long), then the image block by block
    # (Block2, 2^(szx+4) bytes, the block size the gateway answers with); every block's
    # ETag must be the first 8 bytes of the signed digest, else the gateway's image changed.
    def from_gateway(self, cl, on_sector=None, szx=5):
        base = ("fw", self.app_type)
        raw = b""
        num = 0
        while True:
            data, rnum, more, rszx, _ = _block_get(cl, base + ("manifest",), num, szx)
            if rnum != num:
                raise UpdateError("coap", "manifest block %d for %d" % (rnum, num))
            raw += data
            if not more or len(raw) > 4096:
                break
            num += 1
        m = self.check(raw)
        etag = m.digest[:8]
        size = [szx]  # the block size may shrink to what the gateway offers

        def read(offset):
            z = size[0]
            data, rnum, more, rszx, tag = _block_get(cl, base + ("image",), offset >> (z + 4), z)
            if tag != etag:
                raise UpdateError("changed", "ETag %r" % (tag,))
            if rszx > z or rnum << (rszx + 4) != offset:
                raise UpdateError("coap", "block %d/%d for offset %d" % (rnum, rszx, offset))
            size[0] = rszx
            return data

        return self.install(m, read, on_sector)
