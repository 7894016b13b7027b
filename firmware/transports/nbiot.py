# NB-IoT (LTE Cat NB2) through a Quectel BG95/BG77-family modem over a UART, with the
# modem's own TCP/IP stack (Quectel "TCP/IP AT Commands Manual": AT+QIOPEN/QISEND/QIRD).
# NbiotTransport has the interface of transports/udp.py, so the CoAP client runs over it
# unchanged:
#   send(buf)                      one UDP datagram (AT+QISEND=<id>,<len>, "> ", bytes)
#   recv_into(buf, timeout_ms)     -> bytes received, 0 on timeout (URC +QIURC: "recv"
#                                     then AT+QIRD); errors raise ModemError (an OSError:
#                                     "no answer this time" for the client)
#
# Bring-up (open()): AT, ATE0, AT+CMEE=1, AT+CPIN? (READY), AT+CEREG? until registered
# (stat 1 home or 5 roaming), AT+QICSGP (APN), AT+QIACT, AT+QIOPEN=<ctx>,<id>,"UDP",... in
# buffer access mode, then the +QIOPEN: <id>,0 URC. Power saving: psm() sends AT+CPSMS
# with the periodic TAU (T3412) and active time (T3324) encoded as 3GPP TS 24.008 GPRS
# timers; the modem then sleeps between uplinks and keeps its registration.
#
# The AT engine reads lines from the UART into one preallocated buffer; every command
# has its own timeout; lines that are not the answer of the running command are URCs and
# are handled (+QIURC "recv"/"closed", +QIOPEN, +CEREG) whenever they arrive.
import time

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_DEBUG = const(False)
_BUF = const(1600)  # > one 1152-byte CoAP message plus the +QIRD line
_CHUNK = const(64)

T_SHORT = const(300)  # plain commands (Quectel: 300 ms)
T_QIACT = const(150000)  # PDP context activation: up to 150 s
T_QIOPEN = const(150000)
T_SEND = const(5000)


class ModemError(OSError):
    pass


class ModemTimeout(ModemError):
    pass


class Modem:
    # uart: write(buf), any(), readinto(buf) -> n (machine.UART); clock functions for tests
    def __init__(self, uart, ticks_ms=None, sleep_ms=None):
        self._uart = uart
        self._ticks = ticks_ms or time.ticks_ms
        self._sleep = sleep_ms or time.sleep_ms
        self._buf = bytearray(_BUF)
        self._n = 0
        self._chunk = bytearray(_CHUNK)
        self.recv_pending = False  # +QIURC: "recv" seen, data not read out yet
        self.closed = False
        self.reg = -1  # last +CEREG stat seen
        self.opened = {}  # connect id -> error code from +QIOPEN
        self.urcs = 0

    def _deadline(self, ms):
        return time.ticks_add(self._ticks(), ms)

    def _left(self, deadline):
        return time.ticks_diff(deadline, self._ticks())

    def _fill(self):
        if not self._uart.any():
            return False
        k = self._uart.readinto(self._chunk)
        if not k:
            return False
        if self._n + k > _BUF:  # a babbling modem: drop what we could not parse
            self._n = 0
        self._buf[self._n:self._n + k] = memoryview(self._chunk)[:k]
        self._n += k
        return True

    def _consume(self, k):
        self._buf[0:self._n - k] = self._buf[k:self._n]
        self._n -= k

    # -> the next non-empty line as str, ">" for the send prompt, or None at the deadline
    def line(self, deadline):
        while True:
            b = self._buf
            n = self._n
            while n >= 2 and b[0] == 13 and b[1] == 10:
                self._consume(2)
                n = self._n
            if n >= 1 and b[0] == 62:  # "> "
                self._consume(2 if n >= 2 and b[1] == 32 else 1)
                return ">"
            i = bytes(b[:n]).find(b"\r\n")
            if i > 0:
                s = bytes(b[:i]).decode().strip()
                self._consume(i + 2)
                if _DEBUG:
                    print("at <", s)
                return s
            if not self._fill():
                if self._left(deadline) <= 0:
                    return None
                self._sleep(1)

    # exactly len(out) raw bytes (the data after +QIRD) -> True, False at the deadline
    def raw(self, out, deadline):
        k = len(out)
        while self._n < k:
            if not self._fill():
                if self._left(deadline) <= 0:
                    return False
                self._sleep(1)
        out[:k] = memoryview(self._buf)[:k]
        self._consume(k)
        return True

    def urc(self, s):
        self.urcs += 1
        if s.startswith('+QIURC: "recv"'):
            self.recv_pending = True
        elif s.startswith('+QIURC: "closed"'):
            self.closed = True
        elif s.startswith("+QIOPEN:"):
            f = s[8:].split(",")
            self.opened[int(f[0])] = int(f[1])
        elif s.startswith("+CEREG:"):
            f = s[7:].split(",")
            self.reg = int(f[0])  # unsolicited form: +CEREG: <stat>[,...]
        elif _DEBUG:
            print("at urc ignored", s)

    def write(self, data):
        self._uart.write(data)

    # Run one command: -> its information lines (prefix stripped). Raises ModemError on
    # ERROR / +CME ERROR, ModemTimeout if no final result came within timeout_ms.
    # prompt=True: return as soon as the "> " prompt arrives (for AT+QISEND).
    def cmd(self, text, timeout_ms=T_SHORT, prefix=None, prompt=False):
        if _DEBUG:
            print("at >", text)
        self._uart.write((text + "\r").encode())
        deadline = self._deadline(timeout_ms)
        info = []  # type: list
        while True:
            s = self.line(deadline)
            if s is None:
                raise ModemTimeout("%s: no answer in %d ms" % (text, timeout_ms))
            if s == "OK":
                return info
            if s == ">" and prompt:
                return info
            if s == "ERROR" or s.startswith("+CME ERROR") or s.startswith("+CMS ERROR"):
                raise ModemError("%s: %s" % (text, s))
            if s == text:
                continue  # the echo, before ATE0 took effect
            if prefix and s.startswith(prefix):
                info.append(s[len(prefix):].strip())
            elif s[0] == "+":
                self.urc(s)
            else:
                info.append(s)

    # Wait for a final line such as "SEND OK" (after data) -> the line
    def final(self, timeout_ms, *accept):
        deadline = self._deadline(timeout_ms)
        while True:
            s = self.line(deadline)
            if s is None:
                raise ModemTimeout("no %s in %d ms" % (accept[0], timeout_ms))
            if s in accept:
                return s
            if s == "ERROR" or s.startswith("+CME ERROR"):
                raise ModemError(s)
            if s[0] == "+":
                self.urc(s)

    # Handle URCs until cond() holds or timeout_ms passes -> cond()
    def wait_for(self, cond, timeout_ms):
        deadline = self._deadline(timeout_ms)
        while not cond():
            s = self.line(deadline)
            if s is None:
                return cond()
            if s and s[0] == "+":
                self.urc(s)
        return True


def gprs_timer3(seconds):
    # T3412 extended (3GPP TS 24.008 §10.5.7.4a): 3 unit bits + 5 value bits, as the
    # 8-character bit string AT+CPSMS takes; the smallest encodable time >= seconds
    for unit, step in ((3, 2), (4, 30), (5, 60), (0, 600), (1, 3600), (2, 36000),
                       (6, 1152000)):
        v = (seconds + step - 1) // step
        if v <= 31:
            return _bits(unit, v)
    raise ValueError("T3412 too long")


def gprs_timer2(seconds):
    # T3324 (GPRS Timer 2, §10.5.7.3): units 2 s, 1 min, 6 min (decihours)
    for unit, step in ((0, 2), (1, 60), (2, 360)):
        v = (seconds + step - 1) // step
        if v <= 31:
            return _bits(unit, v)
    raise ValueError("T3324 too long")


def _bits(unit, v):
    x = unit << 5 | v
    s = ""
    for i in range(7, -1, -1):
        s += "1" if x >> i & 1 else "0"
    return s


class NbiotTransport:
    def __init__(self, modem, host, port, apn="", context=1, conn=0, register_ms=180000):
        self.modem = modem
        self.host = host
        self.port = port
        self.apn = apn
        self.context = context
        self.conn = conn
        self.register_ms = register_ms
        self.is_open = False

    def open(self):
        m = self.modem
        for _ in range(10):  # the first AT may only set the modem's baud rate detection
            try:
                m.cmd("AT")
                break
            except ModemTimeout:
                pass
        else:
            raise ModemTimeout("modem does not answer AT")
        m.cmd("ATE0")
        m.cmd("AT+CMEE=1")
        pin = m.cmd("AT+CPIN?", 5000, "+CPIN:")
        if not pin or pin[0] != "READY":
            raise ModemError("SIM not ready: %s" % (pin,))
        deadline = m._deadline(self.register_ms)
        while True:
            st = m.cmd("AT+CEREG?", T_SHORT, "+CEREG:")
            if st:
                f = st[0].split(",")
                m.reg = int(f[1]) if len(f) > 1 else int(f[0])
            if m.reg in (1, 5):
                break
            if m._left(deadline) <= 0:
                raise ModemTimeout("not registered (CEREG stat %d)" % m.reg)
            m.wait_for(_never, 1000)  # handle URCs while waiting, 1 s between queries
        m.cmd('AT+QICSGP=%d,1,"%s","","",0' % (self.context, self.apn))
        try:
            m.cmd("AT+QIACT=%d" % self.context, T_QIACT)
        except ModemError:
            pass  # already active (+CME ERROR: 563 on BG95): QIOPEN will tell
        m.opened.pop(self.conn, None)
        m.cmd('AT+QIOPEN=%d,%d,"UDP","%s",%d,0,0' % (self.context, self.conn, self.host,
                                                     self.port))
        if not m.wait_for(lambda: self.conn in m.opened, T_QIOPEN):
            raise ModemTimeout("no +QIOPEN")
        err = m.opened[self.conn]
        if err:
            raise ModemError("QIOPEN failed: %d" % err)
        m.closed = False
        self.is_open = True

    def psm(self, tau_s, active_s):
        # request PSM: periodic TAU and active time (the network may grant other values)
        self.modem.cmd('AT+CPSMS=1,,,"%s","%s"' % (gprs_timer3(tau_s), gprs_timer2(active_s)))

    def psm_off(self):
        self.modem.cmd("AT+CPSMS=0")

    def send(self, buf):
        m = self.modem
        if not self.is_open or m.closed:
            self.open()
        m.cmd("AT+QISEND=%d,%d" % (self.conn, len(buf)), T_SEND, prompt=True)
        m.write(buf)
        if m.final(T_SEND, "SEND OK", "SEND FAIL") != "SEND OK":
            raise ModemError("SEND FAIL")

    def recv_into(self, buf, timeout_ms):
        m = self.modem
        deadline = m._deadline(max(0, timeout_ms))
        while True:
            if not m.recv_pending:
                left = m._left(deadline)
                if left <= 0 or not m.wait_for(_pending(m), left):
                    return 0
            n = self._qird(buf)
            if n:
                return n
            m.recv_pending = False  # read out: the next datagram brings a new URC

    def _qird(self, buf):
        # +QIRD: <n>\r\n<n raw bytes>\r\nOK -> n (0: nothing buffered)
        m = self.modem
        m.write(("AT+QIRD=%d,%d\r" % (self.conn, len(buf))).encode())
        deadline = m._deadline(T_SEND)
        while True:
            s = m.line(deadline)
            if s is None:
                raise ModemTimeout("AT+QIRD: no answer")
            if s.startswith("+QIRD:"):
                n = int(s[6:].split(",")[0])
                if n > len(buf) or not m.raw(memoryview(buf)[:n], deadline):
                    raise ModemError("AT+QIRD: bad length or short data")
                m.final(T_SHORT, "OK")
                return n
            if s == "ERROR" or s.startswith("+CME ERROR"):
                raise ModemError("AT+QIRD: " + s)
            if s[0] == "+":
                m.urc(s)

    def close(self):
        if self.is_open:
            try:
                self.modem.cmd("AT+QICLOSE=%d" % self.conn, 10000)
            except ModemError:
                pass
        self.is_open = False


def _never():
    return False


def _pending(m):
    def f():
        return m.recv_pending

    return f
