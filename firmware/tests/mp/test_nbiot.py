# transports/nbiot.py under the real MicroPython against a scripted BG95-style modem
# behind a fake UART: bring-up (echo, SIM, registration, PDP, socket), UDP send with the
# "> " prompt, receive via +QIURC "recv" + AT+QIRD with binary data, URCs arriving in the
# middle of answers, ERROR / +CME ERROR / timeouts, PSM timers, and the CoAP client
# running over it unchanged.
import time

import coap
import coap_client
import random
from fakebus import FakeClock
from mptest import eq, raises
from transports import nbiot


class FakeModem:
    # a UART whose other end is a scripted modem
    def __init__(self, server=None, cereg_searching=2):
        self.out = bytearray()
        self.inp = bytearray()
        self.echo = True
        self.log = []  # commands received
        self.sent = []  # datagrams sent by the node
        self.rxq = []  # datagrams waiting in the modem for AT+QIRD
        self.server = server  # datagram -> list of reply datagrams
        self.searching = cereg_searching
        self.mute = ()
        self.data_left = 0
        self.urc_before_ok = None
        self.qiopen_err = 0
        self.send_fail = False

    # machine.UART
    def any(self):
        return len(self.out)

    def readinto(self, buf):
        k = min(len(buf), len(self.out))
        buf[:k] = self.out[:k]
        self.out = self.out[k:]
        return k

    def write(self, data):
        for b in bytes(data):
            if self.data_left:
                self.inp.append(b)
                self.data_left -= 1
                if not self.data_left:
                    self._datagram(bytes(self.inp))
                    self.inp = bytearray()
            elif b == 13:
                self._command(bytes(self.inp).decode())
                self.inp = bytearray()
            else:
                self.inp.append(b)

    def _say(self, s):
        self.out.extend(b"\r\n" + s.encode() + b"\r\n")

    def deliver(self, data):
        self.rxq.append(data)
        self._say('+QIURC: "recv",0')

    def _datagram(self, data):
        if self.send_fail:
            self._say("SEND FAIL")
            return
        self.sent.append(data)
        self._say("SEND OK")
        if self.server:
            for reply in self.server(data):
                self.deliver(reply)

    def _command(self, c):
        self.log.append(c)
        if self.echo:
            self.out.extend(c.encode() + b"\r")
        if c in self.mute:
            return
        if self.urc_before_ok:
            self._say(self.urc_before_ok)
            self.urc_before_ok = None
        if c in ("AT", "AT+CMEE=1") or c.startswith("AT+QICSGP") or c.startswith("AT+QIACT") \
                or c.startswith("AT+CPSMS") or c.startswith("AT+QICLOSE"):
            self._say("OK")
        elif c == "ATE0":
            self.echo = False
            self._say("OK")
        elif c == "AT+CPIN?":
            self._say("+CPIN: READY")
            self._say("OK")
        elif c == "AT+CEREG?":
            stat = 2 if self.searching > 0 else 1
            self.searching -= 1
            self._say("+CEREG: 0,%d" % stat)
            self._say("OK")
        elif c.startswith("AT+QIOPEN="):
            self._say("OK")
            self._say("+QIOPEN: 0,%d" % self.qiopen_err)
        elif c.startswith("AT+QISEND=0,"):
            self.data_left = int(c.split(",")[1])
            self.out.extend(b"> ")
        elif c.startswith("AT+QIRD=0,"):
            if self.rxq:
                d = self.rxq.pop(0)
                self.out.extend(b"\r\n+QIRD: %d\r\n" % len(d) + d + b"\r\n\r\nOK\r\n")
            else:
                self._say("+QIRD: 0")
                self._say("OK")
        elif c == "AT+CGSN":
            self._say("+CME ERROR: 10")
        else:
            self._say("ERROR")


def _open(fake=None, **kw):
    fake = fake or FakeModem()
    c = FakeClock()
    m = nbiot.Modem(fake, ticks_ms=c.ticks_ms, sleep_ms=c.sleep_ms)
    tr = nbiot.NbiotTransport(m, "192.0.2.10", 5683, apn="iot.example", **kw)
    tr.open()
    return fake, m, tr, c


def test_bring_up_sequence():
    fake, m, tr, c = _open()
    eq(fake.log, ["AT", "ATE0", "AT+CMEE=1", "AT+CPIN?", "AT+CEREG?", "AT+CEREG?", "AT+CEREG?",
                  'AT+QICSGP=1,1,"iot.example","","",0', "AT+QIACT=1",
                  'AT+QIOPEN=1,0,"UDP","192.0.2.10",5683,0,0'])
    eq(tr.is_open, True)
    eq(m.reg, 1)
    eq(c.ticks_ms() >= 2000, True)  # waited about a second between registration queries


def test_send_uses_prompt_and_binary_data():
    fake, m, tr, _ = _open()
    data = bytes(range(256))[:200] + b"\r\n\x00OK\r\n"
    tr.send(data)
    eq(fake.sent, [data])
    eq(fake.log[-1], "AT+QISEND=0,%d" % len(data))


def test_receive_binary_datagram_with_crlf_inside():
    fake, m, tr, _ = _open()
    payload = b"\r\nOK\r\n+QIRD: 9\r\n\xff"
    fake.deliver(payload)
    buf = bytearray(64)
    n = tr.recv_into(buf, 1000)
    eq(bytes(buf[:n]), payload)
    eq(tr.recv_into(buf, 50), 0)  # nothing more: QIRD 0 clears the pending flag
    eq(m.recv_pending, False)


def test_urc_in_the_middle_of_an_answer():
    fake, m, tr, _ = _open()
    fake.urc_before_ok = "+CEREG: 5"
    m.cmd("AT+QICSGP=1,1,\"x\",\"\",\"\",0")
    eq(m.reg, 5)
    fake.urc_before_ok = '+QIURC: "closed",0'
    m.cmd("AT")
    eq(m.closed, True)
    tr.send(b"again")  # a closed socket is reopened before sending
    eq(fake.sent, [b"again"])
    eq(fake.log.count('AT+QIOPEN=1,0,"UDP","192.0.2.10",5683,0,0'), 2)


def test_errors_and_timeouts():
    fake, m, tr, c = _open()
    raises(nbiot.ModemError, m.cmd, "AT+NOPE")
    raises(nbiot.ModemError, m.cmd, "AT+CGSN")
    fake.mute = ("AT+CSQ",)
    t0 = c.ticks_ms()
    raises(nbiot.ModemTimeout, m.cmd, "AT+CSQ", 700)
    eq(c.ticks_ms() - t0 >= 700, True)
    fake.send_fail = True
    raises(nbiot.ModemError, tr.send, b"x")
    eq(issubclass(nbiot.ModemError, OSError), True)  # the CoAP client's "no answer"


def test_bring_up_failures():
    f = FakeModem()
    f.qiopen_err = 565
    raises(nbiot.ModemError, _open, f)
    f = FakeModem(cereg_searching=1000)
    raises(nbiot.ModemTimeout, lambda: _open(f, register_ms=5000))
    f = FakeModem()
    f.mute = ("AT",)
    raises(nbiot.ModemTimeout, _open, f)


def test_psm_timers():
    # unit bits 8-6, value bits 5-1; the finest unit that holds the time
    eq(nbiot.gprs_timer3(3600), "00000110")  # 6 x 10 min
    eq(nbiot.gprs_timer3(86400), "00111000")  # 24 x 1 h
    eq(nbiot.gprs_timer3(60), "01111110")  # 30 x 2 s
    eq(nbiot.gprs_timer3(41), "01110101")  # 21 x 2 s: rounded up, never shorter
    eq(nbiot.gprs_timer3(7200), "00001100")  # 12 x 10 min
    eq(nbiot.gprs_timer2(10), "00000101")  # 5 x 2 s
    eq(nbiot.gprs_timer2(120), "00100010")  # 2 x 1 min
    raises(ValueError, nbiot.gprs_timer2, 36000)
    fake, m, tr, _ = _open()
    tr.psm(3600, 10)
    eq(fake.log[-1], 'AT+CPSMS=1,,,"00000110","00000101"')
    tr.psm_off()
    eq(fake.log[-1], "AT+CPSMS=0")


def _coap_server(data):
    m = coap.decode(data)
    if m.mtype != coap.CON:
        return []
    return [bytes(coap.encode(coap.ACK, coap.CHANGED, m.mid, m.token, (), b"\xa1\x01\x1a\x6b\x03\x7a\x30"))]


def test_coap_client_runs_over_nbiot_unchanged():
    fake = FakeModem(server=_coap_server)
    m = nbiot.Modem(fake)  # the real clock: the client's timers run on it too
    tr = nbiot.NbiotTransport(m, "192.0.2.10", 5683)
    tr.open()
    cl = coap_client.Client(tr, time, random, ack_timeout_ms=500)
    r = cl.post("r", coap.CF_SENML_CBOR, b"\x81\xa2\x00\x63seq\x02\x01")
    eq(r is not None, True)
    eq(r.code, coap.CHANGED)
    eq(bytes(r.payload), b"\xa1\x01\x1a\x6b\x03\x7a\x30")
    eq(len(fake.sent), 1)
    eq(coap.decode(fake.sent[0]).mtype, coap.CON)


import mptest

mptest.run(globals())
