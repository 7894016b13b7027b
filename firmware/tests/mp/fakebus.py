# Fake buses, pins and clock for the driver tests (drivers/*.py) under the real
# MicroPython: the same methods machine.I2C / UART / Pin / PWM and the time module offer,
# with the faults real hardware has (no ACK, bus timeout, silence, split arrivals).
#   FakeI2C    devices by address; a missing address raises OSError(ENODEV) like the
#              ESP32 port's "no ACK"; fail=<errno> makes every transfer raise
#   RegDevice  a register-mapped chip: 256 bytes, auto-increment, hooks on read/write
#   CmdDevice  a command chip (SHT3x, BH1750): write(data) / read(n)
#   FakeUART   bytes arrive in chunks: each readinto() returns at most one chunk (the
#              rest stays), None when nothing is waiting (machine.UART on timeout)
#   FakePin, FakePWM, FakeClock (virtual ms/us: sleeping advances it, nothing waits;
#              the radio and modem tests use it too)
ENODEV = 19
ETIMEDOUT = 110


class FakeClock:
    def __init__(self):
        self.us = 0
        self.slept_ms = 0

    def ticks_ms(self):
        return self.us // 1000

    def ticks_us(self):
        return self.us

    def ticks_diff(self, a, b):
        return a - b

    def sleep_ms(self, ms):
        self.us += ms * 1000
        self.slept_ms += ms

    def sleep_us(self, us):
        self.us += us


class RegDevice:
    def __init__(self):
        self.regs = bytearray(256)
        self.writes = []  # (reg, value) for every byte written

    def on_write(self, reg, value):
        pass

    def on_read(self, reg):
        pass

    def read_reg(self, reg, n):
        out = bytearray(n)
        for i in range(n):
            r = (reg + i) & 0xFF
            self.on_read(r)
            out[i] = self.regs[r]
        return out

    def write_reg(self, reg, data):
        for i in range(len(data)):
            r = (reg + i) & 0xFF
            self.regs[r] = data[i]
            self.writes.append((r, data[i]))
            self.on_write(r, data[i])


class CmdDevice:
    def __init__(self):
        self.commands = []

    def write(self, data):
        self.commands.append(bytes(data))

    def read(self, n):
        return bytes(n)


class FakeI2C:
    def __init__(self):
        self.devices = {}
        self.fail = None  # errno: every transfer raises OSError(fail)
        self.transfers = 0

    def attach(self, addr, dev):
        self.devices[addr] = dev
        return dev

    def _dev(self, addr):
        self.transfers += 1
        if self.fail is not None:
            raise OSError(self.fail)
        d = self.devices.get(addr)
        if d is None:
            raise OSError(ENODEV)
        return d

    def readfrom_mem_into(self, addr, reg, buf, addrsize=8):
        data = self._dev(addr).read_reg(reg, len(buf))
        for i in range(len(buf)):
            buf[i] = data[i]

    def readfrom_mem(self, addr, reg, n, addrsize=8):
        return bytes(self._dev(addr).read_reg(reg, n))

    def writeto_mem(self, addr, reg, buf, addrsize=8):
        self._dev(addr).write_reg(reg, buf)

    def readfrom_into(self, addr, buf, stop=True):
        data = self._dev(addr).read(len(buf))
        for i in range(len(buf)):
            buf[i] = data[i]

    def writeto(self, addr, buf, stop=True):
        self._dev(addr).write(buf)
        return len(buf) + 1  # ACKs: address + each byte


class FakeUART:
    def __init__(self):
        self.chunks = []
        self.written = []
        self.fail = None
        self.reads = 0

    def feed(self, *chunks):
        for c in chunks:
            if c:
                self.chunks.append(bytes(c))

    # stream split into pieces of n bytes (a UART delivering a frame in several reads)
    def feed_split(self, data, n):
        for i in range(0, len(data), n):
            self.chunks.append(bytes(data[i:i + n]))

    def any(self):
        return sum(len(c) for c in self.chunks)

    def readinto(self, buf, nbytes=None):
        self.reads += 1
        if self.fail is not None:
            raise OSError(self.fail)
        if not self.chunks:
            return None
        c = self.chunks[0]
        n = min(len(buf) if nbytes is None else nbytes, len(c))
        for i in range(n):
            buf[i] = c[i]
        if n < len(c):
            self.chunks[0] = c[n:]
        else:
            self.chunks.pop(0)
        return n

    def read(self, n=-1):
        b = bytearray(n if n > 0 else self.any() or 1)
        k = self.readinto(b)
        return None if k is None else bytes(b[:k])

    def write(self, buf):
        if self.fail is not None:
            raise OSError(self.fail)
        self.written.append(bytes(buf))
        return len(buf)


class FakePin:
    IN = 1
    OUT = 3
    IRQ_RISING = 1
    IRQ_FALLING = 2

    # on_change(v): called on every write (a chip select that frames an SPI transfer)
    def __init__(self, v=0, on_change=None):
        self.v = v
        self.on_change = on_change
        self.history = []
        self.handler = None
        self.trigger = None

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v
        self.history.append(v)
        if self.on_change:
            self.on_change(v)

    def irq(self, handler=None, trigger=None):
        self.handler = handler
        self.trigger = trigger

    # the pin goes high (and back low if pulse): what the hardware IRQ would see
    def rise(self, stay_high=False):
        self.v = 1
        if self.handler and self.trigger & self.IRQ_RISING:
            self.handler(self)
        if not stay_high:
            self.v = 0


class FakePWM:
    def __init__(self):
        self.f = None
        self.d = None
        self.duties = []

    def freq(self, hz=None):
        if hz is None:
            return self.f
        self.f = hz

    def duty_u16(self, d=None):
        if d is None:
            return self.d
        if not 0 <= d <= 65535:
            raise ValueError("duty out of range")
        self.d = d
        self.duties.append(d)


# machine.time_pulse_us stand-in: returns the scripted values in order, records calls
class PulseScript:
    def __init__(self, values):
        self.values = list(values)
        self.calls = []

    def __call__(self, pin, level, timeout_us):
        self.calls.append((level, timeout_us))
        return self.values.pop(0)
