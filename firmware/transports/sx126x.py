# Semtech SX1261/SX1262 in LoRa mode through its command interface over SPI (SX1261/2
# datasheet rev. 2.1, §13). Before every command the host waits for BUSY to go low; a
# command is one chip-select window: opcode, parameters, and for reads a status byte
# before the data. Same radio interface as sx127x.py (configure/send/recv/sleep).
# DIO1 carries TX done / RX done / timeout; its handler only records, the flags are read
# with GetIrqStatus, so polling works the same without the interrupt pin.
import time

from transports import airtime
from transports.radio_common import Radio, RadioError, bw_code, payload_len, snr_db

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_DEBUG = const(False)

_SET_SLEEP = const(0x84)
_SET_STANDBY = const(0x80)
_SET_TX = const(0x83)
_SET_RX = const(0x82)
_SET_REGULATOR_MODE = const(0x96)
_CALIBRATE = const(0x89)
_CALIBRATE_IMAGE = const(0x98)
_SET_PA_CONFIG = const(0x95)
_SET_DIO_IRQ_PARAMS = const(0x08)
_GET_IRQ_STATUS = const(0x12)
_CLEAR_IRQ_STATUS = const(0x02)
_SET_DIO2_AS_RF_SWITCH = const(0x9D)
_SET_DIO3_AS_TCXO = const(0x97)
_SET_RF_FREQUENCY = const(0x86)
_SET_PACKET_TYPE = const(0x8A)
_SET_TX_PARAMS = const(0x8E)
_SET_MODULATION_PARAMS = const(0x8B)
_SET_PACKET_PARAMS = const(0x8C)
_SET_BUFFER_BASE = const(0x8F)
_WRITE_BUFFER = const(0x0E)
_READ_BUFFER = const(0x1E)
_WRITE_REGISTER = const(0x0D)
_GET_RX_BUFFER_STATUS = const(0x13)
_GET_PACKET_STATUS = const(0x14)
_GET_STATUS = const(0xC0)

_REG_SYNC_WORD = const(0x0740)  # LoRa sync word, 2 bytes: 0x1424 private, 0x3444 public
_PACKET_TYPE_LORA = const(0x01)
_STDBY_RC = const(0x00)

IRQ_TX_DONE = const(0x0001)
IRQ_RX_DONE = const(0x0002)
IRQ_HEADER_ERR = const(0x0020)
IRQ_CRC_ERR = const(0x0040)
IRQ_TIMEOUT = const(0x0200)
_IRQ_ALL = const(0x0263)

_XTAL_HZ = const(32000000)
_BUSY_MS = const(100)

_BW = ((7810, 0x00), (10420, 0x08), (15630, 0x01), (20830, 0x09), (31250, 0x02),
       (41670, 0x0A), (62500, 0x03), (125000, 0x04), (250000, 0x05), (500000, 0x06))


def rf_freq(freq_hz):
    # RFfreq = f * 2**25 / F_XTAL (923.2 MHz -> 0x39B33333)
    return (freq_hz * 33554432 + _XTAL_HZ // 2) // _XTAL_HZ


def sync_word_regs(sync_word):
    # the SX127x one-byte sync word 0xXY as the SX126x's two registers 0xX4, 0xY4
    return ((sync_word & 0xF0) | 0x04, ((sync_word & 0x0F) << 4) | 0x04)


class SX126x(Radio):
    # spi: machine.SPI (mode 0); cs, busy, reset, dio1: pins. tcxo_mv: 0 for a crystal,
    # else the TCXO voltage DIO3 supplies (e.g. 1800 on many modules); dio2_rf_switch:
    # let DIO2 drive the antenna switch (most SX1262 modules do).
    def __init__(self, spi, cs, busy, reset=None, dio1=None, tcxo_mv=0, dio2_rf_switch=True,
                 sleep_ms=None, ticks_ms=None):
        Radio.__init__(self, sleep_ms, ticks_ms)
        self._spi = spi
        self._cs = cs
        self._busy = busy
        self._cmd = bytearray(12)
        self._mv = memoryview(self._cmd)
        self._rx = bytearray(12)
        cs.value(1)
        if reset is not None:  # datasheet §8.1: low for at least 100 us
            self._reset(reset)
        if dio1 is not None:
            dio1.irq(self._on_dio1, dio1.IRQ_RISING)
        self._command(_SET_STANDBY, _STDBY_RC)
        if tcxo_mv:
            # voltage code 0..7 = 1.6, 1.7, 1.8, 2.2, 2.4, 2.7, 3.0, 3.3 V; 5 ms start-up
            code = (1600, 1700, 1800, 2200, 2400, 2700, 3000, 3300).index(tcxo_mv)
            self._command(_SET_DIO3_AS_TCXO, code, 0x00, 0x01, 0x40)  # 320 x 15.625 us
        self._command(_CALIBRATE, 0x7F)
        self._wait_busy()
        self._command(_SET_REGULATOR_MODE, 0x01)  # DC-DC
        if dio2_rf_switch:
            self._command(_SET_DIO2_AS_RF_SWITCH, 0x01)
        self._command(_SET_PACKET_TYPE, _PACKET_TYPE_LORA)
        self._command(_SET_BUFFER_BASE, 0x00, 0x00)
        self._command(_SET_DIO_IRQ_PARAMS, _IRQ_ALL >> 8, _IRQ_ALL & 0xFF,
                      _IRQ_ALL >> 8, _IRQ_ALL & 0xFF, 0, 0, 0, 0)

    def _on_dio1(self, pin):
        self.irq_seen = True

    # -- bus
    def _wait_busy(self):
        t0 = self._ticks()
        while self._busy.value():
            if time.ticks_diff(self._ticks(), t0) > _BUSY_MS:
                raise RadioError("SX126x BUSY stuck high")
            self._sleep_ms(1)

    def _command(self, *args):
        n = len(args)
        for i in range(n):
            self._cmd[i] = args[i]
        self._wait_busy()
        self._cs.value(0)
        try:
            self._spi.write(self._mv[:n])
        finally:
            self._cs.value(1)

    # a read command: opcode, params, then status + k data bytes -> view of the data
    def _query(self, k, *args):
        n = len(args)
        for i in range(n + 1 + k):
            self._cmd[i] = args[i] if i < n else 0
        self._wait_busy()
        self._cs.value(0)
        try:
            self._spi.write_readinto(self._mv[:n + 1 + k], memoryview(self._rx)[:n + 1 + k])
        finally:
            self._cs.value(1)
        return memoryview(self._rx)[n + 1:n + 1 + k]

    def _buffer_cmd(self, op, offset, buf, read):
        self._wait_busy()
        self._cs.value(0)
        try:
            self._cmd[0] = op
            self._cmd[1] = offset
            self._cmd[2] = 0
            self._spi.write(self._mv[:3 if read else 2])  # ReadBuffer: one status byte first
            if read:
                self._spi.readinto(buf)
            else:
                self._spi.write(buf)
        finally:
            self._cs.value(1)

    def irq_status(self):
        d = self._query(2, _GET_IRQ_STATUS)
        return d[0] << 8 | d[1]

    def _clear(self):
        self._command(_CLEAR_IRQ_STATUS, _IRQ_ALL >> 8, _IRQ_ALL & 0xFF)
        self.irq_seen = False

    # -- configuration
    def configure(self, freq_hz=923200000, sf=10, bw_hz=125000, cr=1, power_dbm=13,
                  sync_word=0x12, preamble=8, crc=True):
        if not 5 <= sf <= 12 or not 1 <= cr <= 4 or not -9 <= power_dbm <= 22:
            raise ValueError("SF 5..12, CR 1..4 (4/5..4/8), power -9..22 dBm")
        code = bw_code(_BW, bw_hz)
        self._command(_SET_STANDBY, _STDBY_RC)
        self._command(_CALIBRATE_IMAGE, 0xE1, 0xE9)  # the 902-928 MHz band (§9.2.1)
        f = rf_freq(freq_hz)
        self._command(_SET_RF_FREQUENCY, f >> 24, (f >> 16) & 0xFF, (f >> 8) & 0xFF, f & 0xFF)
        # SX1262 high-power PA, the +22 dBm row of §13.1.14; SetTxParams then takes dBm
        self._command(_SET_PA_CONFIG, 0x04, 0x07, 0x00, 0x01)
        self._command(_SET_TX_PARAMS, power_dbm & 0xFF, 0x04)  # ramp 200 us
        de = airtime.ldro(sf, bw_hz)
        self._command(_SET_MODULATION_PARAMS, sf, code, cr, de)
        self._modulation(sf, bw_hz, cr, preamble, crc)
        self._packet_params(255)
        hi, lo = sync_word_regs(sync_word)
        self._command(_WRITE_REGISTER, _REG_SYNC_WORD >> 8, _REG_SYNC_WORD & 0xFF, hi, lo)

    def _packet_params(self, length):
        # preamble (2), explicit header (0), payload length, CRC on/off, IQ standard
        self._command(_SET_PACKET_PARAMS, self.preamble >> 8, self.preamble & 0xFF, 0x00,
                      length, 0x01 if self.crc else 0x00, 0x00)

    # -- data
    def send(self, buf):
        n = payload_len(buf)
        self._command(_SET_STANDBY, _STDBY_RC)
        self._packet_params(n)
        self._buffer_cmd(_WRITE_BUFFER, 0, buf, False)
        self._clear()
        air = self.airtime_us(n)
        self._command(_SET_TX, 0, 0, 0)  # no chip timeout: ours below
        if not self._wait(IRQ_TX_DONE | IRQ_TIMEOUT, air // 1000 + 1000) & IRQ_TX_DONE:
            self._command(_SET_STANDBY, _STDBY_RC)
            raise RadioError("no TX done within %d ms" % (air // 1000 + 1000))
        return air

    def recv(self, buf, timeout_ms):
        self._command(_SET_STANDBY, _STDBY_RC)
        self._packet_params(255)
        self._clear()
        # RX timeout in steps of 15.625 us (24 bits); the host timeout below backs it up
        t = min(timeout_ms * 64, 0xFFFFFE)
        self._command(_SET_RX, t >> 16, (t >> 8) & 0xFF, t & 0xFF)
        flags = self._wait(IRQ_RX_DONE | IRQ_TIMEOUT, timeout_ms + 50)
        self._command(_SET_STANDBY, _STDBY_RC)
        if not flags & IRQ_RX_DONE or flags & (IRQ_CRC_ERR | IRQ_HEADER_ERR):
            return 0
        st = self._query(2, _GET_RX_BUFFER_STATUS)
        n = min(st[0], len(buf))
        start = st[1]
        self._buffer_cmd(_READ_BUFFER, start, memoryview(buf)[:n], True)
        ps = self._query(3, _GET_PACKET_STATUS)
        self.rssi = -ps[0] // 2
        self.snr = snr_db(ps[1])
        return n

    def sleep(self):
        self._command(_SET_SLEEP, 0x04)  # warm start: configuration kept
