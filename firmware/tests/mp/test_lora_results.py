# Command results over LoRa under the real MicroPython: node.py runs a streetlight over
# transports/lora_client.py; the gateway's ack (its bytes built here as encode_ack does)
# carries two commands, the node executes them, and its next frame carries their results
# in the compact frame's results map (docs/protocol-lora.md §1): {cid: code}, code = index
# into lorawire.RESULTS ("ok" = 0, "err:level" = 9).
import cbor
import lorawire
import mptest
from mptest import eq
from nodefakes import Clock, FakeBoard, lora_node
from transports import lora_client

KEY = bytes(range(16))
SID = 0xBEEF
CFG = {"freq_hz": 923200000, "sf": 10, "bw_hz": 125000, "cr": 1, "power_dbm": 13}


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _seq_end(frame):
    p = 3
    while frame[p] & 0x80:
        p += 1
    return p + 1


class GatewayRadio:
    # Acks every frame; the first ack carries `commands` (the 2.04 body's key 2).
    def __init__(self, clock, commands):
        self.clock = clock
        self.cmac = lorawire.Cmac(KEY)
        self.commands = commands
        self.frames = []
        self.inbox = []

    def configure(self, **kw):
        pass

    def send(self, buf):
        self.clock.sleep_ms(370)
        f = bytes(buf)
        self.frames.append(f)
        p = _seq_end(f)
        seq = 0
        for i in range(p - 3):
            seq |= (f[3 + i] & 0x7F) << (7 * i)
        body = {1: 1795390000}
        if self.commands:
            body[2] = self.commands
            self.commands = None
        a = bytearray([lora_client.ACK_TYPE, SID >> 8, SID & 0xFF]) + _varint(seq)
        a += cbor.dumps(body)
        a += self.cmac.mac(a)[:lorawire.MIC_LEN]
        self.inbox.append(bytes(a))

    def recv(self, buf, timeout_ms):
        if self.inbox:
            d = self.inbox.pop(0)
            buf[:len(d)] = d
            return len(d)
        self.clock.sleep_ms(timeout_ms)
        return 0


def _values(frame):
    # the frame's CBOR array (between the seq and the MIC)
    return cbor.loads(frame[_seq_end(frame):-lorawire.MIC_LEN])


def test_commands_in_an_ack_are_reported_in_the_next_frame():
    import apps.streetlight as light

    board = FakeBoard(clock=Clock())
    r = GatewayRadio(board.clock, [[3, "dim", {"level": 37}], [200, "dim", {"level": 500}]])
    node = lora_node(board, r, light, "light", "light-0003", 3, SID, KEY, CFG)
    eq(node.run(), 0)
    eq(len(r.frames) >= 3, True)
    first = _values(r.frames[0])
    eq(len(first), 6)  # the light profile's 6 metrics: no age, no results yet
    with_results = [v for v in (_values(f) for f in r.frames[1:]) if isinstance(v[-1], dict)]
    eq(len(with_results), 1)  # node.py sends a result with one reading
    v = with_results[0]
    eq(len(v), 7)
    eq(v[-1], {3: lorawire.RESULTS.index("ok"), 200: lorawire.RESULTS.index("err:level")})
    eq(v[1], 37)  # and the lamp really is at 37 %
    done = [ln for ln in board.lines if " cmd " in ln]
    eq(len(done), 2, done)


mptest.run(globals())
