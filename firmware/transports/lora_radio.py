# An emulated LoRa radio for the unix board: the radio interface of sx127x.py over UDP on
# loopback. send() puts the raw frame (the bytes that would be on air, nothing around
# them) in one datagram to the "radio medium" host:port, which is the gateway's LoRa
# ingress or a virtual concentrator in front of it; recv() takes one datagram (a downlink)
# from the same socket. Airtime is modelled by sleeping for the packet's time on air
# (Semtech's formula, transports/airtime.py) and loss by a seeded generator, so a run is
# repeatable: the same seed drops the same frames.
import select
import socket

from transports.radio_common import Radio, payload_len


class EmulatedRadio(Radio):
    def __init__(self, host, port, loss=0.0, seed=1, model_airtime=True, sleep_ms=None):
        Radio.__init__(self, sleep_ms)
        if not 0 <= loss <= 1:
            raise ValueError("loss is a probability 0..1")
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
        self._sock = socket.socket(ai[0], socket.SOCK_DGRAM)
        self._sock.bind(socket.getaddrinfo("127.0.0.1" if ai[0] == socket.AF_INET else "::1",
                                           0)[0][-1])
        self._dest = ai[-1]
        self._poll = select.poll()
        self._poll.register(self._sock, select.POLLIN)
        self._loss = int(loss * 0xFFFFFFFF)
        self._state = (seed & 0xFFFFFFFF) or 0x9E3779B9
        self._model = model_airtime
        self.freq_hz = 923200000
        self.sent = 0
        self.lost = 0
        self.air_us = 0  # total time on air, lost frames included

    def _rand32(self):
        # xorshift32 (Marsaglia): the same numbers on every port, unlike `random`
        x = self._state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._state = x
        return x

    def configure(self, freq_hz=923200000, sf=10, bw_hz=125000, cr=1, power_dbm=13,
                  sync_word=0x12, preamble=8, crc=True):
        if not 6 <= sf <= 12 or not 1 <= cr <= 4:
            raise ValueError("SF 6..12, CR 1..4")
        self.freq_hz = freq_hz
        self._modulation(sf, bw_hz, cr, preamble, crc)

    def send(self, buf):
        n = payload_len(buf)
        air = self.airtime_us(n)
        self.air_us += air
        if self._model:
            self._sleep_ms((air + 999) // 1000)
        if self._loss and self._rand32() < self._loss:
            self.lost += 1
            return air
        self._sock.sendto(buf, self._dest)
        self.sent += 1
        return air

    def recv(self, buf, timeout_ms):
        if not self._poll.poll(max(0, timeout_ms)):
            return 0
        data = self._sock.recv(len(buf))
        n = len(data)
        buf[:n] = data
        return n

    def sleep(self):
        pass

    def close(self):
        self._sock.close()
