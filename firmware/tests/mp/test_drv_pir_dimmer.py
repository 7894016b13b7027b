# drivers/pir.py and drivers/dimmer.py under the real MicroPython with a fake pin / PWM.
# PIR: the IRQ is registered on the rising edge and its handler only records (flag,
# count, tick); motion() sees a pulse that came and went between polls, then clears.
# Dimmer: 0 % is duty 0 and 100 % is 65535 exactly (gamma or not), linear steps in
# between, gamma 2.2 makes 50 % about 22 % duty, invalid levels leave the lamp alone.
import sys

import mptest
from fakebus import FakeClock, FakePin, FakePWM
from mptest import eq, raises

from drivers import dimmer, pir


def test_pir_records_and_flags():
    pin = FakePin()
    c = FakeClock()
    p = pir.PIR(pin, ticks_ms=c.ticks_ms)
    eq(pin.trigger, FakePin.IRQ_RISING)
    eq(p.motion(), False)
    c.sleep_ms(1234)
    pin.rise()  # a short pulse, gone before the poll
    eq((p.count, p.last_ms), (1, 1234))
    eq(p.motion(), True)
    eq(p.motion(), False)  # the flag was cleared
    pin.rise(stay_high=True)
    eq(p.motion(), True)
    eq(p.motion(), True)  # still high: still motion
    pin.v = 0
    eq(p.motion(), False)
    eq(p.count, 2)
    p.stop()
    eq(pin.handler, None)


def test_pir_board_adapter():
    class FakeMachine:
        class Pin(FakePin):
            def __init__(self, n, mode):
                FakePin.__init__(self)
                self.n = n

    sys.modules["machine"] = FakeMachine
    try:
        s = pir.Sensor(None, pin=27)
    finally:
        del sys.modules["machine"]
    eq(s.dev._pin.n, 27)
    eq(s.read(), {"motion": False})
    s.dev._pin.rise()
    eq(s.read(), {"motion": True})


def test_dimmer_linear():
    pwm = FakePWM()
    d = dimmer.Dimmer(pwm)
    eq((pwm.f, pwm.d), (1000, 0))
    for level, duty in ((0, 0), (1, 655), (50, 32768), (99, 64880), (100, 65535),
                        (12.5, 8192), (0.0, 0), (100.0, 65535)):
        d.set(level)
        eq(pwm.d, duty, "level %r" % level)
        eq(d.level, level)
    d.off()
    eq(pwm.d, 0)


def test_dimmer_gamma_and_freq():
    pwm = FakePWM()
    d = dimmer.Dimmer(pwm, freq=200, gamma=2.2)
    eq(pwm.f, 200)
    d.set(100)
    eq(pwm.d, 65535)
    d.set(0)
    eq(pwm.d, 0)
    d.set(50)
    eq(pwm.d, int(65535 * 0.5 ** 2.2 + 0.5))
    assert 14000 < pwm.d < 14400, pwm.d  # ~21.8 %
    last = -1
    for level in range(101):  # monotonic
        d.set(level)
        assert pwm.d >= last, level
        last = pwm.d
    d.freq(20000)
    eq((pwm.f, d.freq()), (20000, 20000))
    raises(ValueError, d.freq, 0)
    raises(ValueError, dimmer.Dimmer, pwm, 1000, 5.0)


def test_dimmer_rejects_bad_levels_and_inverts():
    pwm = FakePWM()
    d = dimmer.Dimmer(pwm)
    d.set(30)
    for bad in (-1, 101, 100.5):
        raises(ValueError, d.set, bad)
        eq((d.level, pwm.d), (30, 19661))  # unchanged
    raises(TypeError, d.set, "50")
    inv = dimmer.Dimmer(FakePWM(), invert=True)
    inv.set(100)
    eq(inv._pwm.d, 0)
    inv.set(0)
    eq(inv._pwm.d, 65535)


mptest.run(globals())
