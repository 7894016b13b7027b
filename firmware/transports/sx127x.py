# Semtech SX1276/77/78/79 (HopeRF RFM95/96) in LoRa mode, register level over SPI
# (SX1276 datasheet rev. 7, §4.1 and §6.4). The bus, chip select, reset and DIO0 pins are
# passed in, so tests drive it with a fake bus that records every register write.
#
# Radio interface (shared with sx126x.py and lora_radio.py):
#   configure(freq_hz, sf, bw_hz, cr, power_dbm, sync_word, preamble, crc)
#   send(buf) -> airtime in us; raises RadioError if TX done never comes
#   recv(buf, timeout_ms) -> bytes received, 0 on timeout (bad-CRC packets are dropped)
#   sleep(); rssi / snr of the last packet
# The DIO0 interrupt handler only records that the radio signalled; the flags themselves
# are read from RegIrqFlags, so polling without an interrupt pin works the same.
from transports import airtime
from transports.radio_common import Radio, RadioError, bw_code, payload_len, snr_db

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_DEBUG = const(False)

_REG_FIFO = const(0x00)
_REG_OP_MODE = const(0x01)
_REG_FRF_MSB = const(0x06)
_REG_PA_CONFIG = const(0x09)
_REG_OCP = const(0x0B)
_REG_LNA = const(0x0C)
_REG_FIFO_ADDR_PTR = const(0x0D)
_REG_FIFO_TX_BASE = const(0x0E)
_REG_FIFO_RX_BASE = const(0x0F)
_REG_FIFO_RX_CURRENT = const(0x10)
_REG_IRQ_FLAGS_MASK = const(0x11)
_REG_IRQ_FLAGS = const(0x12)
_REG_RX_NB_BYTES = const(0x13)
_REG_PKT_SNR = const(0x19)
_REG_PKT_RSSI = const(0x1A)
_REG_MODEM_CONFIG1 = const(0x1D)
_REG_MODEM_CONFIG2 = const(0x1E)
_REG_SYMB_TIMEOUT_LSB = const(0x1F)
_REG_PREAMBLE_MSB = const(0x20)
_REG_PAYLOAD_LENGTH = const(0x22)
_REG_MODEM_CONFIG3 = const(0x26)
_REG_DETECT_OPTIMIZE = const(0x31)
_REG_DETECTION_THRESHOLD = const(0x37)
_REG_SYNC_WORD = const(0x39)
_REG_DIO_MAPPING1 = const(0x40)
_REG_VERSION = const(0x42)
_REG_PA_DAC = const(0x4D)

_LONG_RANGE = const(0x80)
_MODE_SLEEP = const(0x00)
_MODE_STDBY = const(0x01)
_MODE_TX = const(0x03)
_MODE_RX_CONTINUOUS = const(0x05)
_MODE_RX_SINGLE = const(0x06)

IRQ_RX_TIMEOUT = const(0x80)
IRQ_RX_DONE = const(0x40)
IRQ_CRC_ERROR = const(0x20)
IRQ_VALID_HEADER = const(0x10)
IRQ_TX_DONE = const(0x08)

_DIO0_RX_DONE = const(0x00)
_DIO0_TX_DONE = const(0x40)

VERSION = const(0x12)
_XTAL_HZ = const(32000000)

# bandwidth in Hz -> RegModemConfig1 Bw code (datasheet Table 4.4 / register map)
_BW = ((7800, 0), (10400, 1), (15600, 2), (20800, 3), (31250, 4), (41700, 5), (62500, 6),
       (125000, 7), (250000, 8), (500000, 9))


def frf(freq_hz):
    # RegFrf = f * 2**19 / F_XOSC, rounded (923.2 MHz -> 0xE6CCCD with a 32 MHz crystal)
    return (freq_hz * 524288 + _XTAL_HZ // 2) // _XTAL_HZ


class SX127x(Radio):
    def __init__(self, spi, cs, reset=None, dio0=None, sleep_ms=None, ticks_ms=None):
        Radio.__init__(self, sleep_ms, ticks_ms)
        self._spi = spi
        self._cs = cs
        self._tx2 = bytearray(2)
        self._rx2 = bytearray(2)
        cs.value(1)
        if reset is not None:  # datasheet §7.2.2: low for > 100 us, then 5 ms
            self._reset(reset)
        v = self._read(_REG_VERSION)
        if v != VERSION:
            raise RadioError("SX127x not found (RegVersion 0x%02x)" % v)
        if dio0 is not None:
            dio0.irq(self._on_dio0, dio0.IRQ_RISING)
        # LoRa mode can only be selected in sleep
        self._write(_REG_OP_MODE, _MODE_SLEEP)
        self._write(_REG_OP_MODE, _LONG_RANGE | _MODE_SLEEP)
        self._write(_REG_FIFO_TX_BASE, 0)
        self._write(_REG_FIFO_RX_BASE, 0)
        self._write(_REG_LNA, 0x23)  # max gain, LNA boost on (HF port)
        self._write(_REG_IRQ_FLAGS_MASK, 0)
        self._mode(_MODE_STDBY)

    def _on_dio0(self, pin):
        self.irq_seen = True  # record only: no SPI in an interrupt handler

    # -- bus
    def _write(self, reg, value):
        b = self._tx2
        b[0] = reg | 0x80
        b[1] = value
        self._cs.value(0)
        try:
            self._spi.write(b)
        finally:
            self._cs.value(1)

    def _read(self, reg):
        b = self._tx2
        b[0] = reg & 0x7F
        b[1] = 0
        self._cs.value(0)
        try:
            self._spi.write_readinto(b, self._rx2)
        finally:
            self._cs.value(1)
        return self._rx2[1]

    def _mode(self, mode):
        self._write(_REG_OP_MODE, _LONG_RANGE | mode)

    # -- configuration
    def configure(self, freq_hz=923200000, sf=10, bw_hz=125000, cr=1, power_dbm=13,
                  sync_word=0x12, preamble=8, crc=True):
        if not 6 <= sf <= 12 or not 1 <= cr <= 4 or not 2 <= power_dbm <= 20:
            raise ValueError("SF 6..12, CR 1..4 (4/5..4/8), power 2..20 dBm")
        code = bw_code(_BW, bw_hz)
        self._mode(_MODE_STDBY)
        f = frf(freq_hz)
        self._write(_REG_FRF_MSB, f >> 16)
        self._write(_REG_FRF_MSB + 1, (f >> 8) & 0xFF)
        self._write(_REG_FRF_MSB + 2, f & 0xFF)
        # PA_BOOST pin (RFM95 modules): Pout = 17 - (15 - OutputPower) dBm; 18..20 dBm
        # need the +20 dBm DAC (RegPaDac 0x87) and OCP raised to 140 mA
        if power_dbm > 17:
            self._write(_REG_PA_DAC, 0x87)
            self._write(_REG_OCP, 0x20 | 0x11)  # trim 17: -30 + 10 * 17 = 140 mA
            out = power_dbm - 5
        else:
            self._write(_REG_PA_DAC, 0x84)
            self._write(_REG_OCP, 0x20 | 0x0B)  # trim 11: 45 + 5 * 11 = 100 mA (default)
            out = power_dbm - 2
        self._write(_REG_PA_CONFIG, 0x80 | 0x70 | out)
        self._write(_REG_MODEM_CONFIG1, code << 4 | cr << 1)  # explicit header
        self._write(_REG_MODEM_CONFIG2, sf << 4 | (0x04 if crc else 0))
        de = airtime.ldro(sf, bw_hz)
        self._write(_REG_MODEM_CONFIG3, (0x08 if de else 0) | 0x04)  # LDRO, AGC auto
        self._write(_REG_PREAMBLE_MSB, preamble >> 8)
        self._write(_REG_PREAMBLE_MSB + 1, preamble & 0xFF)
        # SF6 needs its own detection settings (datasheet §4.1.1.2); SF7..12 these
        self._write(_REG_DETECT_OPTIMIZE, 0xC5 if sf == 6 else 0xC3)
        self._write(_REG_DETECTION_THRESHOLD, 0x0C if sf == 6 else 0x0A)
        self._write(_REG_SYNC_WORD, sync_word)
        self._modulation(sf, bw_hz, cr, preamble, crc)

    def irq_status(self):
        return self._read(_REG_IRQ_FLAGS)

    def _clear(self):
        self._write(_REG_IRQ_FLAGS, 0xFF)  # write 1 to clear
        self.irq_seen = False

    # -- data
    def send(self, buf):
        n = payload_len(buf)
        self._mode(_MODE_STDBY)
        self._write(_REG_FIFO_ADDR_PTR, 0)
        self._cs.value(0)
        try:
            self._tx2[0] = _REG_FIFO | 0x80
            self._spi.write(memoryview(self._tx2)[:1])
            self._spi.write(buf)
        finally:
            self._cs.value(1)
        self._write(_REG_PAYLOAD_LENGTH, n)
        self._write(_REG_DIO_MAPPING1, _DIO0_TX_DONE)
        self._write(_REG_IRQ_FLAGS, 0xFF)
        air = self.airtime_us(n)
        self._mode(_MODE_TX)
        if not self._wait(IRQ_TX_DONE, air // 1000 + 1000):
            self._mode(_MODE_STDBY)
            raise RadioError("no TX done within %d ms" % (air // 1000 + 1000))
        return air

    def recv(self, buf, timeout_ms):
        self._mode(_MODE_STDBY)
        self._write(_REG_FIFO_ADDR_PTR, 0)
        self._write(_REG_DIO_MAPPING1, _DIO0_RX_DONE)
        self._write(_REG_IRQ_FLAGS, 0xFF)
        self._mode(_MODE_RX_CONTINUOUS)
        flags = self._wait(IRQ_RX_DONE, timeout_ms)
        self._mode(_MODE_STDBY)
        if not flags or flags & IRQ_CRC_ERROR:
            return 0
        n = self._read(_REG_RX_NB_BYTES)
        self._write(_REG_FIFO_ADDR_PTR, self._read(_REG_FIFO_RX_CURRENT))
        n = min(n, len(buf))
        self._cs.value(0)
        try:
            self._tx2[0] = _REG_FIFO
            self._spi.write(memoryview(self._tx2)[:1])
            self._spi.readinto(memoryview(buf)[:n])
        finally:
            self._cs.value(1)
        self.snr = snr_db(self._read(_REG_PKT_SNR))
        self.rssi = self._read(_REG_PKT_RSSI) - 157  # HF port (datasheet §5.5.5)
        return n

    def sleep(self):
        self._mode(_MODE_SLEEP)
