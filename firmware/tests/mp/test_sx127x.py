# transports/sx127x.py under the real MicroPython against a fake SX1276 behind a fake SPI
# bus: the exact register writes the datasheet asks for, TX done / RX done through the IRQ
# flags and the DIO0 interrupt, CRC errors, timeouts.
from fakebus import FakeClock, FakePin
from mptest import eq, raises
from transports import sx127x


class FakeSX1276:
    # the chip seen through SPI: 128 registers, a 256-byte FIFO, TX and RX behaviour
    def __init__(self, version=0x12, tx_works=True):
        self.regs = bytearray(128)
        self.regs[0x42] = version
        self.fifo = bytearray(256)
        self.writes = []
        self.sent = []
        self.rx_queue = []  # (payload, crc_ok, snr_raw, rssi_raw)
        self.tx_works = tx_works
        self.cs = FakePin(1, self._cs)
        self.dio0 = FakePin(0)
        self._addr = None
        self.transactions = 0

    def _cs(self, v):
        if v == 0:
            self._addr = None
            self.transactions += 1

    def _load(self):
        a = self._addr & 0x7F
        if a == 0:
            p = self.regs[0x0D]
            self.regs[0x0D] = (p + 1) & 0xFF
            return self.fifo[p]
        self._addr += 1
        return self.regs[a]

    def _store(self, b):
        a = self._addr & 0x7F
        if a == 0:
            p = self.regs[0x0D]
            self.fifo[p] = b
            self.regs[0x0D] = (p + 1) & 0xFF
            return
        self._addr += 1
        self.writes.append((a, b))
        if a == 0x12:
            self.regs[a] &= ~b & 0xFF  # write 1 to clear
            return
        self.regs[a] = b
        if a == 0x01:
            self._mode(b & 7)

    def _irq(self, flag, mapping):
        self.regs[0x12] |= flag
        if self.regs[0x40] & 0xC0 == mapping and self.dio0.handler:
            self.dio0.handler(self.dio0)

    def _mode(self, m):
        if m == 3 and self.tx_works:
            n = self.regs[0x22]
            self.sent.append(bytes(self.fifo[self.regs[0x0E]:self.regs[0x0E] + n]))
            self._irq(0x08, 0x40)
        elif m == 5 and self.rx_queue:
            data, ok, snr, rssi = self.rx_queue.pop(0)
            base = self.regs[0x0F]
            self.fifo[base:base + len(data)] = data
            self.regs[0x13] = len(data)
            self.regs[0x10] = base
            self.regs[0x19] = snr
            self.regs[0x1A] = rssi
            if not ok:
                self.regs[0x12] |= 0x20
            self._irq(0x40, 0x00)

    # machine.SPI
    def write(self, buf):
        for b in buf:
            if self._addr is None:
                self._addr = b
            else:
                self._store(b)

    def write_readinto(self, tx, rx):
        for i in range(len(tx)):
            if self._addr is None:
                self._addr = tx[i]
                rx[i] = 0
            else:
                rx[i] = self._load()

    def readinto(self, buf):
        for i in range(len(buf)):
            buf[i] = self._load()


def _radio(chip=None, reset=None):
    chip = chip or FakeSX1276()
    c = FakeClock()
    r = sx127x.SX127x(chip, chip.cs, reset=reset, dio0=chip.dio0, sleep_ms=c.sleep_ms,
                      ticks_ms=c.ticks_ms)
    return chip, r, c


def test_frf_for_923_2_mhz():
    eq(sx127x.frf(923200000), 0xE6CCCD)
    eq(sx127x.frf(868100000), 0xD90666)  # the EU868 figure the datasheet examples use
    eq(sx127x.frf(915000000), 0xE4C000)


def test_init_selects_lora_mode_in_sleep():
    reset = FakePin(1)
    chip, r, _ = _radio(reset=reset)
    eq(chip.writes[:2], [(0x01, 0x00), (0x01, 0x80)])
    eq(chip.regs[0x01], 0x81)  # LoRa, standby
    eq(reset.v, 1)


def test_wrong_chip_refused():
    raises(sx127x.RadioError, _radio, FakeSX1276(version=0x22))


def test_configure_as923_sf10():
    chip, r, _ = _radio()
    del chip.writes[:]
    r.configure(923200000, sf=10, bw_hz=125000, cr=1, power_dbm=13, sync_word=0x12)
    w = dict(chip.writes)
    eq((w[0x06], w[0x07], w[0x08]), (0xE6, 0xCC, 0xCD))
    eq(w[0x1D], 0x72)  # BW 125 kHz (7), CR 4/5 (1), explicit header
    eq(w[0x1E], 0xA4)  # SF10, RX payload CRC on
    eq(w[0x26], 0x04)  # no LDRO at SF10, AGC auto on
    eq(w[0x39], 0x12)  # private sync word
    eq(w[0x09], 0xFB)  # PA_BOOST, 13 dBm = 17 - (15 - 11)
    eq(w[0x4D], 0x84)
    eq((w[0x20], w[0x21]), (0, 8))
    eq((w[0x31], w[0x37]), (0xC3, 0x0A))
    # the frequency is written in standby, LoRa bit kept
    eq(chip.writes[0], (0x01, 0x81))


def test_configure_sf12_sets_ldro_and_20_dbm():
    chip, r, _ = _radio()
    r.configure(923400000, sf=12, power_dbm=20, sync_word=0x34, crc=False)
    w = dict(chip.writes)
    eq(w[0x1E], 0xC0)
    eq(w[0x26], 0x0C)  # LDRO on: symbol time 32.8 ms
    eq((w[0x09], w[0x4D], w[0x0B]), (0xFF, 0x87, 0x31))
    eq(w[0x39], 0x34)
    raises(ValueError, r.configure, 923200000, 13)
    raises(ValueError, r.configure, 923200000, 10, 200000)


def test_send_writes_fifo_and_waits_for_tx_done():
    chip, r, _ = _radio()
    r.configure(923200000, sf=10)
    frame = bytes(range(24))
    air = r.send(frame)
    eq(air, 370688)
    eq(chip.sent, [frame])
    eq(chip.regs[0x22], 24)
    eq(chip.regs[0x40], 0x40)  # DIO0 = TX done
    eq(chip.regs[0x12], 0)  # flags cleared afterwards
    eq(r.irq_seen, False)  # seen, then consumed by the wait
    raises(ValueError, r.send, b"")


def test_send_without_tx_done_times_out():
    chip, r, c = _radio(FakeSX1276(tx_works=False))
    r.configure(923200000, sf=7)
    raises(sx127x.RadioError, r.send, b"abc")
    eq(c.ticks_ms() >= 1000, True)
    eq(chip.regs[0x01], 0x81)  # back in standby


def test_recv_packet_crc_error_and_timeout():
    chip, r, c = _radio()
    r.configure(923200000, sf=9)
    chip.rx_queue.append((b"\x01\x02hello", True, 0xF8, 100))  # SNR -2 dB, RSSI -57
    buf = bytearray(64)
    n = r.recv(buf, 500)
    eq(bytes(buf[:n]), b"\x01\x02hello")
    eq((r.snr, r.rssi), (-2, -57))
    chip.rx_queue.append((b"bad", False, 0, 0))
    eq(r.recv(buf, 500), 0)
    t0 = c.ticks_ms()
    eq(r.recv(buf, 300), 0)
    eq(c.ticks_ms() - t0 >= 300, True)
    r.sleep()
    eq(chip.regs[0x01], 0x80)


def test_every_register_access_is_one_cs_window():
    chip, r, _ = _radio()
    before = chip.transactions
    nw = len(chip.writes)
    r.configure(923200000, sf=10)
    eq(chip.transactions - before, len(chip.writes) - nw)  # one write per CS window
    eq(chip.cs.v, 1)


def test_dio0_interrupt_is_recorded_only():
    chip, r, _ = _radio()
    eq(chip.dio0.handler is not None, True)
    chip.dio0.handler(chip.dio0)
    eq(r.irq_seen, True)
    eq(chip.transactions > 0, True)


import mptest

mptest.run(globals())
