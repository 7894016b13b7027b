# Fake `machine`, `network` and `esp32` modules for the ESP32 board tests (boards/esp32.py,
# test_esp32*.py) under the unix port, plus register/command models of every sensor chip
# the board drives, on the fake buses of fakebus.py. install() puts the fakes into
# sys.modules before boards.esp32 is imported; the same objects stay in place for the
# whole script (modules bind them at import), tests change their state instead.
#   M = FakeMachine   RTC memory, WDT (feeds counted), reset_cause, deepsleep (raises Slept),
#                     I2C -> M.i2c (FakeI2C with chips attached), UART -> M.uart (FakeUART),
#                     Pin (by number in M.pins; IRQ, pull), PWM, ADC (read_uv from M.adc_uv),
#                     time_pulse_us (M.pulses, scripted echo times)
#   N = FakeNetwork   WLAN(STA_IF): connect() calls counted; connects at the call number
#                     N.connect_on after N.delay_ms of the board's clock; N.drop() loses it
#   E = FakeEsp32     two OTA partitions and NVS, with the bootloader's trial/rollback
#   VClock            a virtual `time` for the board module (ticks only move when slept)
import sys

from fakebus import CmdDevice, FakeI2C, FakePin, FakePWM, FakeUART, RegDevice


class Slept(Exception):
    pass


class FakeMachine:
    PWRON_RESET = 1
    HARD_RESET = 2
    WDT_RESET = 3
    DEEPSLEEP_RESET = 4
    SOFT_RESET = 5

    def __init__(self):
        self.rtc_mem = b""
        self.cause = 1
        self.wdt = []
        self.pwm = []
        self.slept = []
        self.dt = None
        self.pins = {}
        self.i2c = FakeI2C()
        self.i2c_args = None
        self.uart = FakeUART()
        self.uart_args = None
        self.adc_uv = {}  # pin -> microvolts read_uv() gives
        self.adc_atten = {}
        self.pulses = []  # echo times for time_pulse_us, in order (-1 / -2 timeouts)
        m = self

        class RTC:
            def memory(self, data=None):
                if data is None:
                    return m.rtc_mem
                m.rtc_mem = bytes(data)

            def datetime(self, tup):
                m.dt = tup

        class WDT:
            def __init__(self, timeout):
                self.timeout = timeout
                self.fed = 0
                m.wdt.append(self)

            def feed(self):
                self.fed += 1

        class Pin(FakePin):
            # machine.Pin(n, mode, pull), registered by number; value/irq/rise are FakePin's
            PULL_UP = 2
            PULL_DOWN = 1

            def __init__(self, n, mode=None, pull=None):
                FakePin.__init__(self)
                self.n = n
                self.mode = mode
                self.pull = pull
                m.pins[n] = self

        class PWM(FakePWM):
            def __init__(self, pin, freq=None, duty_u16=None):
                FakePWM.__init__(self)
                self.pin = pin
                self.f = freq
                self.d = duty_u16
                self.first = duty_u16  # the duty from the constructor: the lamp's first state
                m.pwm.append(self)

        class ADC:
            ATTN_11DB = 3

            def __init__(self, pin):
                self.n = pin.n

            def atten(self, a):
                m.adc_atten[self.n] = a

            def read_uv(self):
                return m.adc_uv.get(self.n, 0)

        def I2C(id, scl, sda, freq):
            m.i2c_args = (id, scl.n, sda.n, freq)
            return m.i2c

        def UART(id, baudrate, tx, rx, timeout):
            m.uart_args = (id, baudrate, tx, rx, timeout)
            return m.uart

        self.RTC = RTC
        self.WDT = WDT
        self.Pin = Pin
        self.PWM = PWM
        self.ADC = ADC
        self.I2C = I2C
        self.UART = UART

    def reset_cause(self):
        return self.cause

    def deepsleep(self, ms):
        self.slept.append(ms)
        raise Slept()

    def time_pulse_us(self, pin, level, timeout_us):
        if not self.pulses:
            return -2  # nothing scripted: no echo starts
        return self.pulses.pop(0)


class VClock:
    # the `time` functions boards/esp32.py uses, on a virtual clock
    def __init__(self):
        self.now = 0
        self.slept_ms = 0

    def ticks_ms(self):
        return self.now

    def ticks_add(self, a, b):
        return a + b

    def ticks_diff(self, a, b):
        return a - b

    def sleep_ms(self, ms):
        self.now += ms
        self.slept_ms += ms

    def time(self):
        return 1795390000 + self.now // 1000


class FakeNetwork:
    STA_IF = 0
    STAT_IDLE = 1000
    STAT_CONNECTING = 1001
    STAT_WRONG_PASSWORD = 202
    STAT_NO_AP_FOUND = 201
    STAT_GOT_IP = 1010

    def __init__(self):
        self.clock = None  # the board module's clock (a VClock)
        self.connect_on = 1  # the connect() call that will succeed
        self.delay_ms = 500  # from that call to the link being up
        self.calls = []  # (ssid, key, clock ms) of every connect()
        self.up_at = None
        self.active_set = None
        self.raise_on = ()  # connect() call numbers that raise OSError (state error)
        net = self

        class WLAN:
            def __init__(self, iface):
                net.iface = iface

            def active(self, v=None):
                net.active_set = v

            def connect(self, ssid, key):
                net.calls.append((ssid, key, net.clock.now))
                if len(net.calls) in net.raise_on:
                    raise OSError("Wifi Internal State Error")
                if len(net.calls) >= net.connect_on:
                    net.up_at = net.clock.now + net.delay_ms

            def isconnected(self):
                return net.up_at is not None and net.clock.now >= net.up_at

            def status(self):
                if self.isconnected():
                    return net.STAT_GOT_IP
                return net.STAT_NO_AP_FOUND

        self.WLAN = WLAN

    def drop(self, reconnect_on):
        # the access point goes away; the link comes back at connect() call reconnect_on
        self.up_at = None
        self.connect_on = reconnect_on


class FakeEsp32:
    # esp32.Partition / NVS as boards/slots_esp32.py uses them, with the ESP-IDF
    # bootloader's rollback (NEW -> PENDING_VERIFY at boot, reset then -> ABORTED)
    def __init__(self):
        self.ota = True  # False: a partition table without OTA slots
        self.flash = {"ota_0": bytearray(8192), "ota_1": bytearray(8192)}
        self.boot = "ota_0"
        self.running = "ota_0"
        self.state = {"ota_0": "valid", "ota_1": "empty"}
        self.nvs = {}
        self.marked = 0
        w = self

        class Partition:
            BOOT = 0
            RUNNING = 1

            def __init__(self, id):
                self.label = w.running if id == 1 else (w.boot if id == 0 else id)

            def info(self):
                return (0, 0x10, 0x10000, 8192, self.label, False)

            def get_next_update(self):
                if not w.ota:
                    raise OSError(2)  # ENOENT: no OTA partition
                return Partition("ota_1" if self.label == "ota_0" else "ota_0")

            def writeblocks(self, n, buf):
                w.flash[self.label][n * 4096:(n + 1) * 4096] = buf

            def readblocks(self, n, buf, offset=0):
                a = n * 4096 + offset
                buf[:] = w.flash[self.label][a:a + len(buf)]

            def set_boot(self):
                w.boot = self.label
                if w.state[self.label] != "valid":
                    w.state[self.label] = "new"

            @classmethod
            def mark_app_valid_cancel_rollback(cls):
                w.marked += 1
                w.state[w.running] = "valid"

        class NVS:
            def __init__(self, ns):
                pass

            def get_i32(self, k):
                if k not in w.nvs:
                    raise OSError(-4354)  # ESP_ERR_NVS_NOT_FOUND
                return w.nvs[k]

            def set_i32(self, k, v):
                w.nvs[k] = v

            def get_blob(self, k, buf):
                if k not in w.nvs:
                    raise OSError(-4354)
                v = w.nvs[k]
                buf[:len(v)] = v
                return len(v)

            def set_blob(self, k, v):
                w.nvs[k] = bytes(v)

            def erase_key(self, k):
                if k not in w.nvs:
                    raise OSError(-4354)
                del w.nvs[k]

            def commit(self):
                pass

        self.Partition = Partition
        self.NVS = NVS

    def reset(self):
        # the bootloader at a reset
        if self.state[self.running] == "pending_verify":
            self.state[self.running] = "aborted"
            self.boot = "ota_1" if self.running == "ota_0" else "ota_0"
        if self.state[self.boot] == "new":
            self.state[self.boot] = "pending_verify"
        self.running = self.boot


M = FakeMachine()
N = FakeNetwork()
E = FakeEsp32()


def install():
    sys.modules["machine"] = M
    sys.modules["network"] = N
    sys.modules["esp32"] = E


# ---- chip models (what the drivers in drivers/ talk to)


def _le16(regs, at, v):
    v &= 0xFFFF
    regs[at] = v & 0xFF
    regs[at + 1] = v >> 8


class BME280(RegDevice):
    # the BMP280 datasheet's §3.12 trimming + typical humidity trimming; forced mode
    # results at once: T 25.08 degC, p 100653.25 Pa (the driver's int64 path)
    CAL = (27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)

    def __init__(self, adc=(519888, 415148, 30000)):
        RegDevice.__init__(self)
        r = self.regs
        r[0xD0] = 0x60
        for i in range(12):
            _le16(r, 0x88 + 2 * i, self.CAL[i])
        r[0xA1] = 75
        _le16(r, 0xE1, 362)
        r[0xE3] = 0
        r[0xE4] = 313 >> 4
        r[0xE5] = (313 & 0x0F) | (50 & 0x0F) << 4
        r[0xE6] = 50 >> 4
        r[0xE7] = 30
        self.adc = adc
        self.measurements = 0

    def on_write(self, reg, v):
        if reg == 0xF4 and v & 3 == 1:
            self.measurements += 1
            self.regs[0xF4] = v & 0xFC
            t, p, h = self.adc
            r = self.regs
            r[0xF7], r[0xF8], r[0xF9] = p >> 12, (p >> 4) & 0xFF, (p & 0xF) << 4
            r[0xFA], r[0xFB], r[0xFC] = t >> 12, (t >> 4) & 0xFF, (t & 0xF) << 4
            r[0xFD], r[0xFE] = h >> 8, h & 0xFF


def crc8(b):
    crc = 0xFF
    for x in b:
        crc ^= x
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _word(v):
    b = bytes((v >> 8, v & 0xFF))
    return b + bytes((crc8(b),))


class SHT(CmdDevice):
    # SHT3x (measure 0x2400, status 0xF32D) or SHT4x (measure 0xFD, serial 0x89);
    # raw (0x6666, 0x8000): 25.0 degC, 50.0 %RH (SHT3x formula)
    def __init__(self, measure, raw=(0x6666, 0x8000)):
        CmdDevice.__init__(self)
        self.measure = measure
        self.raw = raw
        self.out = b""

    def write(self, data):
        CmdDevice.write(self, data)
        data = bytes(data)
        if data == self.measure:
            self.out = _word(self.raw[0]) + _word(self.raw[1])
        elif data in (b"\xf3\x2d", b"\x89"):
            self.out = _word(0x1234) + _word(0x5678)

    def read(self, n):
        return self.out[:n]


class BH1750(CmdDevice):
    # 0x8390 = 33680 counts: 28066.7 lx in H-resolution mode (the datasheet's example)
    def __init__(self, count=0x8390):
        CmdDevice.__init__(self)
        self.count = count

    def read(self, n):
        return bytes((self.count >> 8, self.count & 0xFF))


class VL53L0X(RegDevice):
    def __init__(self, mm=734):
        RegDevice.__init__(self)
        self.regs[0xC0] = 0xEE
        self.mm = mm

    def on_write(self, reg, v):
        r = self.regs
        if reg == 0x00 and v == 0x01 and r[0x80] == 0 and r[0xFF] == 0:
            r[0x00] = 0  # the single shot ends at once
            r[0x13] = 0x04
            r[0x14] = 11 << 3  # range complete
            r[0x1E] = self.mm >> 8
            r[0x1F] = self.mm & 0xFF


class INA219(RegDevice):
    # 12 V bus, 1.5 A through 0.1 ohm: 18 W once calibrated (datasheet eq. 3, 4)
    def __init__(self, bus_v=12.0, amps=1.5):
        RegDevice.__init__(self)
        self.words = {0: 0x399F, 5: 0}
        self.bus_reg = int(round(bus_v * 1000 / 4)) << 3 | 0x2
        self.shunt_reg = int(round(amps * 0.1 * 100000))

    def read_reg(self, reg, n):
        cal = self.words[5]
        cur = self.shunt_reg * cal // 4096 if cal else 0
        w = {1: self.shunt_reg, 2: self.bus_reg, 3: cur * (self.bus_reg >> 3) // 5000 if cal else 0,
             4: cur}.get(reg, self.words.get(reg, 0)) & 0xFFFF
        return bytes((w >> 8, w & 0xFF))

    def write_reg(self, reg, data):
        RegDevice.write_reg(self, reg, data)
        self.words[reg] = (data[0] << 8 | data[1]) & (0xFFFE if reg == 5 else 0xFFFF)


def pms_frame(atm=(10, 20, 30)):
    words = [11, 22, 33] + list(atm) + [1000, 500, 100, 10, 2, 1, 0x9700]
    b = bytearray(b"\x42\x4d\x00\x1c")
    for w in words:
        b.append(w >> 8)
        b.append(w & 0xFF)
    s = sum(b)
    b.append((s >> 8) & 0xFF)
    b.append(s & 0xFF)
    return bytes(b)


def sds_frame(pm25_x10=1236, pm10_x10=2618):
    b = bytearray((0xAA, 0xC0, pm25_x10 & 0xFF, pm25_x10 >> 8, pm10_x10 & 0xFF, pm10_x10 >> 8,
                   0xA1, 0x60, 0, 0xAB))
    b[8] = sum(b[2:8]) & 0xFF
    return bytes(b)
