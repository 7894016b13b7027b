# BLE commissioning, the node's side (MicroPython; also runs under CPython for host tests).
# The host's side is tools/machi_tools/commission.py, which keeps its own copy of the frame
# and status constants below (a test proves they are equal).
#
# The host writes frames to the RX characteristic; the node answers each with one
# notification on TX. Stop-and-wait: the host sends the next frame only after the answer.
#   BEGIN  01 | len u16 BE | crc32 u32 BE          a config document of `len` bytes follows
#   CHUNK  02 | offset u16 BE | data (1..16 bytes)  offset must be the next expected byte
#   COMMIT 03                                       check length, CRC-32, JSON, config; store
#   ABORT  04                                       forget the transfer
#   answer 80|type | status u8 | detail (ASCII, may be empty; CHUNK: next offset u16 BE)
# status: 0 ok, 1 out of order (detail: expected offset), 2 CRC mismatch, 3 bad config
# (detail: the reason, at most 64 bytes), 4 too large, 5 unknown frame.
# Frames fit the default ATT MTU (23: 20 bytes of value). Vectors: tests/vectors/ble-commission.json
import json
import struct
from binascii import crc32

BEGIN = 1
CHUNK = 2
COMMIT = 3
ABORT = 4
OK = 0
ORDER = 1
CRC = 2
BADCFG = 3
TOOBIG = 4
UNKNOWN = 5
MAX_DOC = 4096
CHUNK_MAX = 16


class Commissioning:
    # check(doc_dict) raises ValueError with a reason; store(bytes) writes /config.json
    def __init__(self, check, store, max_doc=MAX_DOC):
        self.check = check
        self.store = store
        self.buf = bytearray(max_doc)
        self.max_doc = max_doc
        self.want = -1  # -1: no transfer
        self.got = 0
        self.crc = 0
        self.committed = 0

    def _answer(self, kind, status, detail=b""):
        return bytes([0x80 | kind, status]) + detail[:64]

    def on_write(self, frame):
        if not frame:
            return self._answer(0, UNKNOWN)
        kind = frame[0]
        if kind == BEGIN and len(frame) == 7:
            n, crc = struct.unpack(">HI", frame[1:7])
            if n > self.max_doc:
                self.want = -1
                return self._answer(BEGIN, TOOBIG, str(self.max_doc).encode())
            self.want, self.got, self.crc = n, 0, crc
            return self._answer(BEGIN, OK)
        if kind == CHUNK and 4 <= len(frame) <= 3 + CHUNK_MAX:
            off = (frame[1] << 8) | frame[2]
            data = frame[3:]
            if self.want < 0 or off != self.got:
                # a repeated chunk (its answer was lost) is answered again, not stored twice
                return self._answer(CHUNK, ORDER, struct.pack(">H", max(self.got, 0)))
            if off + len(data) > self.want:
                return self._answer(CHUNK, TOOBIG, struct.pack(">H", self.got))
            self.buf[off:off + len(data)] = data
            self.got += len(data)
            return self._answer(CHUNK, OK, struct.pack(">H", self.got))
        if kind == COMMIT and len(frame) == 1:
            if self.want < 0 or self.got != self.want:
                return self._answer(COMMIT, ORDER, struct.pack(">H", max(self.got, 0)))
            doc = bytes(self.buf[:self.want])
            if crc32(doc) & 0xFFFFFFFF != self.crc:
                self.want = -1
                return self._answer(COMMIT, CRC)
            try:
                cfg = json.loads(doc)
                self.check(cfg)
            except ValueError as e:
                self.want = -1
                return self._answer(COMMIT, BADCFG, str(e).encode())
            self.store(doc)
            self.want = -1
            self.committed += 1
            return self._answer(COMMIT, OK)
        if kind == ABORT and len(frame) == 1:
            self.want = -1
            return self._answer(ABORT, OK)
        return self._answer(kind & 0x7F, UNKNOWN)


def _read_exact(stream, n):
    out = b""
    while len(out) < n:
        part = stream.read(n - len(out))
        if not part:
            return None
        out += part
    return out


def serve_stream(inp, out, comm):
    # The emulated link: each GATT write arrives as (len u8, bytes), each notification
    # leaves the same way. Ends at EOF.
    while True:
        head = _read_exact(inp, 1)
        if head is None:
            return
        frame = _read_exact(inp, head[0]) if head[0] else b""
        if frame is None:
            return
        reply = comm.on_write(frame)
        out.write(bytes([len(reply)]) + reply)
        try:
            out.flush()
        except AttributeError:
            pass


def main(argv):
    # micropython commission.py CONFIG_PATH [FIRMWARE_LIB]: commission over stdin/stdout
    import sys

    path = argv[1]
    if len(argv) > 2:
        sys.path.insert(0, argv[2])
    try:
        import nodeconfig

        def check(cfg):
            nodeconfig.check(cfg)
    except ImportError:

        def check(cfg):
            if not isinstance(cfg, dict) or "device_id" not in cfg:
                raise ValueError("device_id: required")

    def store(doc):
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(doc)
        import os

        try:
            os.remove(path)
        except OSError:
            pass
        os.rename(tmp, path)

    serve_stream(sys.stdin.buffer, sys.stdout.buffer, Commissioning(check, store))


if __name__ == "__main__":
    import sys

    main(sys.argv)
