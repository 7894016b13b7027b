# transports/sx126x.py under the real MicroPython against a fake SX1262 that parses the
# command stream (opcode + parameters per chip-select window), honours BUSY, and answers
# GetIrqStatus / GetRxBufferStatus / ReadBuffer / GetPacketStatus.
from fakebus import FakeClock, FakePin
from mptest import eq, raises
from transports import sx126x


class Busy:
    # high for `after_cmd` reads after every command, as the chip is while it works
    def __init__(self, after_cmd=2, stuck=False):
        self.left = 0
        self.after_cmd = after_cmd
        self.stuck = stuck
        self.reads = 0

    def value(self):
        self.reads += 1
        if self.stuck:
            return 1
        if self.left:
            self.left -= 1
            return 1
        return 0


class FakeSX1262:
    def __init__(self, busy=None, tx_works=True):
        self.busy = busy or Busy()
        self.cs = FakePin(1, self._cs)
        self.dio1 = FakePin(0)
        self.cmds = []  # (opcode, params bytes) in order
        self.buffer = bytearray(256)
        self.irq = 0
        self.sent = []
        self.rx_queue = []  # (payload, irq flags, rssi_raw, snr_raw)
        self.tx_works = tx_works
        self.pkt = (0, 0, 0)
        self.rxstat = (0, 0)
        self._win = None
        self._busy_violations = 0
        self.params = {}

    def _cs(self, v):
        if v == 0:
            if self.busy.left or self.busy.stuck:
                self._busy_violations += 1
            self._win = bytearray()
        elif self._win is not None:  # the driver's first cs.value(1) ends no window
            self._end(bytes(self._win))
            self._win = None
            self.busy.left = self.busy.after_cmd

    def _end(self, w):
        op = w[0]
        p = w[1:]
        self.cmds.append((op, p))
        self.params[op] = p
        if op == 0x0E:
            self.buffer[p[0]:p[0] + len(p) - 1] = p[1:]
        elif op == 0x02:
            self.irq &= ~(p[0] << 8 | p[1])
        elif op == 0x83 and self.tx_works:
            n = self.params[0x8C][3]
            self.sent.append(bytes(self.buffer[0:n]))
            self._raise(0x0001)
        elif op == 0x82:
            if self.rx_queue:
                data, flags, rssi, snr = self.rx_queue.pop(0)
                self.buffer[0x80:0x80 + len(data)] = data
                self.rxstat = (len(data), 0x80)
                self.pkt = (rssi, snr, rssi)
                self._raise(flags)
            else:
                self._raise(0x0200)  # the chip's own RX timeout

    def _raise(self, flags):
        self.irq |= flags
        if self.dio1.handler:
            self.dio1.handler(self.dio1)

    def _answer(self, op, i):
        if i == 1:
            return 0x22  # status: STBY_RC, command ok
        k = i - 2
        if op == 0x12:
            return (self.irq >> 8, self.irq & 0xFF)[k]
        if op == 0x13:
            return self.rxstat[k]
        if op == 0x14:
            return self.pkt[k]
        return 0

    # machine.SPI
    def write(self, buf):
        self._win.extend(buf)

    def write_readinto(self, tx, rx):
        for i in range(len(tx)):
            self._win.append(tx[i])
            rx[i] = 0 if i == 0 else self._answer(self._win[0], i)

    def readinto(self, buf):
        # only after ReadBuffer's op, offset, NOP
        off = self._win[1]
        for i in range(len(buf)):
            buf[i] = self.buffer[off + i]
        self._win.extend(bytes(len(buf)))


def _radio(chip=None, **kw):
    chip = chip or FakeSX1262()
    c = FakeClock()
    r = sx126x.SX126x(chip, chip.cs, chip.busy, dio1=chip.dio1, sleep_ms=c.sleep_ms,
                      ticks_ms=c.ticks_ms, **kw)
    return chip, r, c


def test_frequency_word():
    eq(sx126x.rf_freq(923200000), 0x39B33333)
    eq(sx126x.rf_freq(915000000), 0x39300000)
    eq(sx126x.sync_word_regs(0x12), (0x14, 0x24))
    eq(sx126x.sync_word_regs(0x34), (0x34, 0x44))


def test_init_sequence_waits_for_busy():
    chip, r, _ = _radio(tcxo_mv=1800)
    ops = [c[0] for c in chip.cmds]
    eq(ops, [0x80, 0x97, 0x89, 0x96, 0x9D, 0x8A, 0x8F, 0x08])
    eq(chip.params[0x8A], b"\x01")  # LoRa packet type
    eq(chip.params[0x97], b"\x02\x00\x01\x40")  # TCXO 1.8 V, 5 ms
    eq(chip._busy_violations, 0)
    eq(chip.busy.reads > 10, True)


def test_busy_stuck_raises():
    raises(sx126x.RadioError, _radio, FakeSX1262(busy=Busy(stuck=True)))


def test_configure_as923_sf10():
    chip, r, _ = _radio()
    del chip.cmds[:]
    r.configure(923200000, sf=10, bw_hz=125000, cr=1, power_dbm=13, sync_word=0x12)
    p = chip.params
    eq(p[0x98], b"\xe1\xe9")
    eq(p[0x86], b"\x39\xb3\x33\x33")
    eq(p[0x95], b"\x04\x07\x00\x01")
    eq(p[0x8E], b"\x0d\x04")
    eq(p[0x8B], b"\x0a\x04\x01\x00")  # SF10, BW 125 kHz, CR 4/5, LDRO off
    eq(p[0x8C], b"\x00\x08\x00\xff\x01\x00")
    eq(p[0x0D], b"\x07\x40\x14\x24")  # sync word registers 0x0740/0x0741
    eq(chip._busy_violations, 0)


def test_configure_sf12_ldro_and_negative_power():
    chip, r, _ = _radio()
    r.configure(923400000, sf=12, power_dbm=-3, sync_word=0x34, crc=False)
    eq(chip.params[0x8B], b"\x0c\x04\x01\x01")
    eq(chip.params[0x8E][0], 0xFD)  # -3 dBm, two's complement
    eq(chip.params[0x8C][4], 0)
    raises(ValueError, r.configure, 923200000, 10, 300000)
    raises(ValueError, r.configure, 923200000, 10, 125000, 1, 23)


def test_send_buffer_length_and_tx_done():
    chip, r, _ = _radio()
    r.configure(923200000, sf=10)
    frame = bytes(range(100, 124))
    eq(r.send(frame), 370688)
    eq(chip.sent, [frame])
    eq(chip.params[0x8C][3], 24)  # payload length set for this frame
    eq(chip.irq, 0)  # cleared
    eq(r.irq_seen, False)


def test_send_times_out_without_tx_done():
    chip, r, c = _radio(FakeSX1262(tx_works=False))
    r.configure(923200000, sf=7)
    raises(sx126x.RadioError, r.send, b"x")
    eq(c.ticks_ms() >= 1000, True)


def test_recv_good_crc_error_and_timeout():
    chip, r, _ = _radio()
    r.configure(923200000, sf=9)
    chip.rx_queue.append((b"downlink!", 0x0002, 120, 0xF4))  # RSSI -60 dBm, SNR -3 dB
    buf = bytearray(32)
    n = r.recv(buf, 1000)
    eq(bytes(buf[:n]), b"downlink!")
    eq((r.rssi, r.snr), (-60, -3))
    eq(chip.params[0x82], b"\x00\xfa\x00")  # 1000 ms = 64000 x 15.625 us
    chip.rx_queue.append((b"bad", 0x0042, 0, 0))
    eq(r.recv(buf, 1000), 0)
    eq(r.recv(buf, 1000), 0)  # the chip's timeout IRQ
    r.sleep()
    eq(chip.cmds[-1], (0x84, b"\x04"))


import mptest

mptest.run(globals())
