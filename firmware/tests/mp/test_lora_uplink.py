# transports/lora.py and transports/lora_radio.py under the real MicroPython: a reading
# goes out as the exact vector frame, the dwell limit moves a long frame to a faster SF or
# refuses it, the budget holds frames back, and the emulated radio delivers raw frames
# over loopback UDP with its airtime slept and a seeded, repeatable loss.
import select
import socket

import lorawire
import mptest
from mptest import eq, unhex
from transports import airtime, lora
from transports.lora_radio import EmulatedRadio

CFG = {"freq_hz": 923200000, "sf": 10, "bw_hz": 125000, "cr": 1, "power_dbm": 13}


class FakeRadio:
    def __init__(self):
        self.configs = []
        self.frames = []
        self.sf = None

    def configure(self, **kw):
        self.configs.append(kw)
        self.sf = kw["sf"]

    def send(self, buf):
        self.frames.append((self.sf, bytes(buf)))


def _vec(name):
    v = mptest.load_json("lora-frames.json")
    dev = {}
    for d in v["devices"]:
        dev[d["id"]] = d
    for f in v["frames"]:
        if f["name"] == name:
            return f, dev[f["device"]]


def _encoder(d, profile="env"):
    return lorawire.FrameEncoder(profile, d["short_id"], unhex(d["key"]))


def test_sends_the_vector_frame_at_sf10():
    f, d = _vec("env-typical")
    r = FakeRadio()
    up = lora.LoraUplink(r, _encoder(d), CFG)
    eq(up.send(f["seq"], [tuple(m) for m in f["input"]], 0, 0), lora.SENT)
    eq(r.frames, [(10, unhex(f["hex"]))])
    eq(up.last_airtime_us, airtime.airtime_us(f["bytes"], 10))
    eq(up.last_airtime_us <= 400000, True)


def test_long_frame_steps_down_or_is_refused():
    f, d = _vec("env-max-seq")  # 27 bytes: 411+ ms at SF10
    r = FakeRadio()
    up = lora.LoraUplink(r, _encoder(d), CFG)
    eq(up.send(f["seq"], [tuple(m) for m in f["input"]], 0, 0), lora.SENT)
    eq(up.last_sf, 9)
    eq(r.frames[-1][0], 9)
    eq(up.cfg["sf"], 10)  # the configured SF stays the goal for the next frame
    f2, _ = _vec("env-typical")
    up.send(f2["seq"], [tuple(m) for m in f2["input"]], 0, 1)
    eq(r.frames[-1][0], 10)
    strict = lora.LoraUplink(FakeRadio(), _encoder(d), CFG, adapt_sf=False)
    eq(strict.send(f["seq"], [tuple(m) for m in f["input"]], 0, 0), lora.DWELL)
    eq(strict.refused, 1)
    at12 = dict(CFG)
    at12["sf"] = 12
    up12 = lora.LoraUplink(FakeRadio(), _encoder(d), at12, dwell_us=50000)
    eq(up12.send(1, [], 0, 0), lora.DWELL)  # even SF7 takes longer than 50 ms


def test_budget_holds_frames_back():
    f, d = _vec("env-typical")
    b = airtime.Budget(800000, 3600000)  # 0.8 s per hour: two frames at SF10
    up = lora.LoraUplink(FakeRadio(), _encoder(d), CFG, budget=b)
    ms = [tuple(m) for m in f["input"]]
    eq(up.send(1, ms, 0, 0), lora.SENT)
    eq(up.send(2, ms, 0, 1000), lora.SENT)
    eq(up.send(3, ms, 0, 2000), lora.BUDGET)
    eq(up.wait_ms, 3600000 - 2000)
    eq(up.send(3, ms, 0, 3600000), lora.SENT)


def test_emulated_radio_over_loopback_with_seeded_loss():
    f, d = _vec("env-typical")
    medium = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port = 0
    for p in range(47000, 47200):  # no getsockname on the unix port: probe for a port
        try:
            medium.bind(socket.getaddrinfo("127.0.0.1", p)[0][-1])
            port = p
            break
        except OSError:
            pass
    eq(port != 0, True)
    slept = []
    radio = EmulatedRadio("127.0.0.1", port, loss=0.3, seed=7, sleep_ms=slept.append)
    up = lora.LoraUplink(radio, _encoder(d), CFG)
    ms = [tuple(m) for m in f["input"]]
    pattern = []
    for seq in range(1234, 1284):
        before = radio.lost
        up.send(seq, ms, 0, 0)
        pattern.append(radio.lost != before)
    poll = select.poll()
    poll.register(medium, select.POLLIN)
    got = []
    addr = None
    while poll.poll(300):
        data, addr = medium.recvfrom(64)
        got.append(data)
    eq(len(got), radio.sent)
    eq(radio.sent + radio.lost, 50)
    eq(10 <= radio.lost <= 20, True, "lost %d of 50 at 30 %%" % radio.lost)
    # raw compact frames, nothing around them: seq 1234 is the vector, if it got through
    if not pattern[0]:
        eq(got[0], unhex(f["hex"]))
    air = airtime.airtime_us(f["bytes"], 10)
    eq(slept[0], (air + 999) // 1000)
    eq(len(slept), 50)
    eq(radio.air_us >= 50 * air, True)
    # the same seed drops the same frames
    again = EmulatedRadio("127.0.0.1", port, loss=0.3, seed=7, model_airtime=False)
    again_pattern = []
    for _ in range(50):
        before = again.lost
        again.send(b"x")
        again_pattern.append(again.lost != before)
    eq(again_pattern, pattern)
    while poll.poll(100):
        medium.recvfrom(64)
    # a downlink comes back through the radio's own socket
    medium.sendto(b"\xa1\x01\x00", addr)
    buf = bytearray(16)
    n = radio.recv(buf, 2000)
    eq(bytes(buf[:n]), b"\xa1\x01\x00")
    eq(again.recv(buf, 10), 0)
    radio.close()
    again.close()
    medium.close()


mptest.run(globals())
