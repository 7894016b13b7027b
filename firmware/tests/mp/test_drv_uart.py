# drivers/pms5003.py and drivers/sds011.py (and drivers/framesync.py under them) under
# the real MicroPython, fed byte streams through a fake UART: clean frames, frames split
# over many reads, garbage, false starts, truncated frames, bad checksums, silence.
# Datasheet figures checked:
#   SDS011: the data frame example of the SDS011 datasheet / control protocol V1.3,
#     AA C0 D4 04 3A 0A A1 60 1D AB -> PM2.5 123.6, PM10 261.8 ug/m3; the protocol's
#     command frames: query data AA B4 04 00..00 FF FF 02 AB, set query mode
#     AA B4 02 01 01 .. FF FF 02 AB, sleep AA B4 06 01 00 .. FF FF 05 AB, work .. 06 AB.
#   PMS5003: the manual's (V2.3) frame layout (42 4D, length 28, 13 words, sum) and its
#     command bytes: passive 42 4D E1 00 00 01 70, read 42 4D E2 00 00 01 71,
#     sleep 42 4D E4 00 00 01 73, wake 42 4D E4 00 01 01 74.
# PMS5003 frames here are built by pms_frame() below, with the checksum summed
# independently of the driver.
import random

import mptest
from fakebus import ETIMEDOUT, FakeClock, FakeUART
from mptest import eq, raises, unhex

from drivers import pms5003, sds011
from drivers.errors import SensorError


def pms_frame(cf=(11, 22, 33), atm=(10, 20, 30), counts=(1000, 500, 100, 10, 2, 1), bad=False):
    words = list(cf) + list(atm) + list(counts) + [0x9700]
    b = bytearray(b"\x42\x4d\x00\x1c")
    for w in words:
        b.append(w >> 8)
        b.append(w & 0xFF)
    s = sum(b) + (1 if bad else 0)
    b.append((s >> 8) & 0xFF)
    b.append(s & 0xFF)
    assert len(b) == 32
    return bytes(b)


def make_pms(**kw):
    u = FakeUART()
    c = FakeClock()
    return u, c, pms5003.PMS5003(u, clock=c, **kw)


def test_pms_clean_frame():
    u, c, s = make_pms()
    u.feed(pms_frame())
    eq(s.read(), (10, 20, 30))  # atmospheric-environment words, not the CF=1 ones
    eq(s.rejected, (0, 0))


def test_pms_split_reads():
    for n in (1, 2, 3, 5, 7, 13, 31):
        u, c, s = make_pms()
        u.feed_split(b"\x00\x42" + pms_frame(atm=(n, 2 * n, 3 * n)), n)
        eq(s.read(), (n, 2 * n, 3 * n), "pieces of %d" % n)


def test_pms_garbage_and_false_starts():
    u, c, s = make_pms()
    junk = b"\x42\x42\x4d\x00\x1d\xff\x42\x4d\x00\x1c\x00\x07\x42" + bytes(range(40))
    u.feed(junk, pms_frame(atm=(5, 6, 7)), b"\x42\x4d\x00")
    eq(s.read(), (5, 6, 7))
    skipped, bad = s.rejected
    assert skipped > 0, skipped


def test_pms_frame_hidden_behind_a_truncated_one():
    # a frame cut short (the sensor reset mid-frame) runs into a real one: the 32-byte
    # candidate fails its checksum, and the search restarts inside it at the real start
    u, c, s = make_pms()
    u.feed(pms_frame(atm=(1, 1, 1))[:17], pms_frame(atm=(8, 9, 10)))
    eq(s.read(), (8, 9, 10))
    eq(s.rejected[1], 1)


def test_pms_bad_checksum_is_an_error_not_a_value():
    u, c, s = make_pms()
    u.feed(pms_frame(atm=(99, 99, 99), bad=True))
    try:
        s.read()
    except SensorError as e:
        assert "checksum" in str(e), e
    else:
        raise AssertionError("bad checksum accepted")
    u.feed(pms_frame(atm=(99, 99, 99), bad=True), pms_frame(atm=(4, 5, 6)))
    eq(s.read(), (4, 5, 6))


def test_pms_partial_frame_and_silence_time_out():
    u, c, s = make_pms(timeout_ms=2000)
    u.feed(pms_frame()[:20])
    try:
        s.read()
    except SensorError as e:
        assert "timeout" in str(e), e
    else:
        raise AssertionError("partial frame accepted")
    assert c.ticks_ms() >= 2000
    raises(SensorError, s.read)  # nothing at all
    # the rest of it arrives late, then a new frame: each read starts a fresh search, so
    # the stale half-frame is not glued to bytes that came after a gap
    u.feed(pms_frame()[20:] + pms_frame(atm=(3, 3, 3)))
    eq(s.read(), (3, 3, 3))
    eq(s.rejected, (20 + 12, 0))  # the stale half, then its orphaned rest


def test_pms_newest_of_queued_frames():
    u, c, s = make_pms()
    u.feed(pms_frame(atm=(1, 2, 3)) + pms_frame(atm=(4, 5, 6)), pms_frame(atm=(7, 8, 9)))
    eq(s.read(), (7, 8, 9))


def test_pms_wrong_length_field_rejected():
    u, c, s = make_pms()
    f = bytearray(pms_frame(atm=(50, 50, 50)))
    f[3] = 0x1D  # length 29: not a PMS5003 data frame
    s2 = sum(f[:30])
    f[30], f[31] = s2 >> 8, s2 & 0xFF  # even with a matching sum
    u.feed(f)
    raises(SensorError, s.read)


def test_pms_commands_passive_mode():
    u, c, s = make_pms(passive=True)
    eq(u.written, [unhex("424de1000001" + "70")])
    u.written.clear()
    u.feed(pms_frame())
    s.read()
    eq(u.written, [unhex("424de2000001" + "71")])
    u.written.clear()
    s.sleep()
    s.wake()
    eq(u.written, [unhex("424de4000001" + "73"), unhex("424de4000101" + "74")])


def test_pms_uart_failure():
    u, c, s = make_pms()
    u.fail = ETIMEDOUT
    raises(SensorError, s.read)
    raises(SensorError, s.sleep)


def test_pms_fuzz_only_real_frames_come_out():
    random.seed(7)
    for i in range(40):
        u, c, s = make_pms()
        parts = []
        last = None
        for k in range(random.randint(1, 4)):
            g = bytes(random.choice((0x42, 0x4D, 0x00, 0x1C, random.getrandbits(8)))
                      for _ in range(random.randint(0, 50)))
            parts.append(g)
            if random.getrandbits(1):
                last = (i, k, random.getrandbits(10))
                parts.append(pms_frame(atm=last))
            else:
                parts.append(pms_frame(atm=(999, 999, 999), bad=True))
        stream = b"".join(parts)
        u.feed_split(stream, random.randint(1, 40))
        if last is None:
            raises(SensorError, s.read)
        else:
            eq(s.read(), last, "stream %d" % i)


SDS_EXAMPLE = "aac0d4043a0aa1601dab"  # SDS011 datasheet V1.3 example


def make_sds(**kw):
    u = FakeUART()
    c = FakeClock()
    return u, c, sds011.SDS011(u, clock=c, **kw)


def sds_frame(pm25, pm10, bad=False, tail=0xAB):
    b = bytearray(b"\xaa\xc0")
    for v in (pm25, pm10):
        b.append(v & 0xFF)
        b.append(v >> 8)
    b += b"\x12\x34"
    b.append((sum(b[2:8]) + (1 if bad else 0)) & 0xFF)
    b.append(tail)
    return bytes(b)


def test_sds_datasheet_example():
    u, c, s = make_sds()
    eq(sds_frame(1236, 2618)[:6], unhex(SDS_EXAMPLE)[:6])
    u.feed(unhex(SDS_EXAMPLE))
    eq(s.read(), (123.6, 261.8))


def sds_cmd(data, cs):  # the protocol's 19-byte command: AA B4, 13 data bytes, FF FF, cs, AB
    data = data.replace(" ", "")
    return unhex("aab4" + data + "00" * (13 - len(data) // 2) + "ffff" + cs + "ab")


def test_sds_commands():
    u, c, s = make_sds(query=True)
    eq(u.written, [sds_cmd("02 01 01", "02")])
    u.written.clear()
    u.feed(unhex(SDS_EXAMPLE))
    s.read()
    eq(u.written, [sds_cmd("04", "02")])
    u.written.clear()
    s.sleep()
    s.wake()
    eq(u.written, [sds_cmd("06 01 00", "05"), sds_cmd("06 01 01", "06")])
    eq(len(u.written[0]), 19)


def test_sds_reply_frames_garbage_and_splits_are_skipped():
    reply = unhex("aac5020101" + "00a160" + "05ab")  # answer to "set query mode"
    for n in (1, 3, 4, 9):
        u, c, s = make_sds()
        u.feed_split(b"\xab\xaa\xaa" + reply + b"\xaa\xc0\x01" + sds_frame(250, 400), n)
        eq(s.read(), (25.0, 40.0))


def test_sds_bad_checksum_and_tail_rejected():
    for f in (sds_frame(100, 200, bad=True), sds_frame(100, 200, tail=0xAC)):
        u, c, s = make_sds()
        u.feed(f)
        try:
            s.read()
        except SensorError as e:
            assert "checksum" in str(e), e
        else:
            raise AssertionError("bad frame accepted")
        u.feed(f, sds_frame(11, 22))
        eq(s.read(), (1.1, 2.2))


def test_sds_truncated_then_silence():
    u, c, s = make_sds(timeout_ms=1500)
    u.feed(sds_frame(1, 2)[:7])
    raises(SensorError, s.read)
    u.fail = ETIMEDOUT
    raises(SensorError, s.read)


def test_board_adapters():
    u = FakeUART()

    class Board:
        uart = u

    c = FakeClock()
    u.feed(pms_frame())
    eq(pms5003.Sensor(Board(), clock=c).read(), {"pm1": 10, "pm25": 20, "pm10": 30})
    u.feed(unhex(SDS_EXAMPLE))
    eq(sds011.Sensor(Board(), clock=c).read(), {"pm25": 123.6, "pm10": 261.8})

    class NoUart:
        uart = None

    raises(SensorError, pms5003.Sensor, NoUart())
    raises(SensorError, sds011.Sensor, NoUart())


mptest.run(globals())
