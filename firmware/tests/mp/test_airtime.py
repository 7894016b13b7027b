# transports/airtime.py under the real MicroPython: Semtech's time-on-air formula against
# published figures, low data rate optimisation, the AS923 400 ms dwell limit, the budget.
from mptest import eq, raises
from transports import airtime as at


def test_issue_figure_24_bytes_sf10():
    # the issue's target: 24 bytes, SF10, 125 kHz, CR 4/5, explicit header, CRC on,
    # preamble 8 = 370.688 ms
    eq(at.airtime_us(24, 10), 370688)
    eq(at.airtime_us(25, 10) > at.DWELL_AS923_US, True)


def test_known_lorawan_figures():
    # 13-byte LoRaWAN frame (an empty-FRMPayload uplink with 0 FOpts), 125 kHz, CR 4/5:
    # SF7 46.336 ms, SF11 577.536 ms, SF12 1155.072 ms (TTN / Semtech calculator)
    eq(at.airtime_us(13, 7), 46336)
    eq(at.airtime_us(13, 11), 577536)
    eq(at.airtime_us(13, 12), 1155072)
    # 51 bytes at SF9 by hand: ceil((408 - 36 + 28 + 16) / 36) = 12, * 5 + 8 = 68 symbols
    # of 4.096 ms, plus 12.25 of preamble: 328.704 ms
    eq(at.payload_symbols(51, 9), 68)
    eq(at.airtime_us(51, 9), 328704)


def test_low_data_rate_optimisation():
    eq(at.ldro(10, 125000), 0)
    eq(at.ldro(11, 125000), 1)
    eq(at.ldro(12, 125000), 1)
    eq(at.ldro(12, 250000), 1)
    eq(at.ldro(11, 250000), 0)
    # without DE SF12 would need fewer symbols: the flag must change the count
    eq(at.payload_symbols(24, 12, de=0) < at.payload_symbols(24, 12), True)


def test_other_options_change_the_count():
    eq(at.airtime_us(10, 7, crc=False) < at.airtime_us(10, 7), True)
    eq(at.airtime_us(10, 7, implicit=True) < at.airtime_us(10, 7), True)
    eq(at.airtime_us(10, 7, cr=4) > at.airtime_us(10, 7), True)
    eq(at.airtime_us(10, 7, bw_hz=250000) * 2, at.airtime_us(10, 7))
    raises(ValueError, at.airtime_us, 10, 13)
    raises(ValueError, at.airtime_us, 10, 7, 125000, 5)


def test_max_payload_under_dwell():
    eq(at.max_payload(10), 24)
    eq(at.max_payload(12), 0)  # the preamble alone takes 401.4 ms at SF12
    for sf in range(7, 12):
        n = at.max_payload(sf)
        if n:
            eq(at.airtime_us(n, sf) <= 400000, True)
        if n < 255:
            eq(at.airtime_us(n + 1, sf) > 400000, True)
    eq(at.max_payload(7), 255)


def test_fit_sf_steps_down_only_as_far_as_needed():
    eq(at.fit_sf(24, 10), 10)
    eq(at.fit_sf(25, 10), 9)
    eq(at.fit_sf(20, 12), at.fit_sf(20, 11))
    eq(at.fit_sf(24, 12), 10)
    eq(at.fit_sf(255, 12), 7)  # anything a LoRa packet can hold fits at SF7
    eq(at.fit_sf(24, 10, 50000), None)  # SF7 needs 61.696 ms: report, do not send


def test_budget_window():
    b = at.Budget(1000000, 60000, slots=4)  # 1 s of air per minute
    eq(b.wait_ms(0, 400000), 0)
    b.record(0, 400000)
    b.record(1000, 400000)
    eq(b.used_us(2000), 800000)
    eq(b.wait_ms(2000, 300000), 58000)  # the first leaves the window at 60000
    eq(b.wait_ms(2000, 200000), 0)
    eq(b.wait_ms(2000, 2000000), -1)
    eq(b.used_us(60000), 400000)
    eq(b.used_us(61000), 0)


def test_budget_slots_full_waits_for_oldest():
    b = at.Budget(10000000, 60000, slots=2)
    b.record(0, 1000)
    b.record(10, 1000)
    eq(b.wait_ms(20, 1000), 59980)
    b.record(20, 1000)  # ignored the wait: the oldest is forgotten, no growth
    eq(b.used_us(20), 2000)


def test_budget_with_wrapping_ticks():
    def diff(a, b):
        return ((a - b + 0x20000000) & 0x3FFFFFFF) - 0x20000000

    b = at.Budget(1000, 100, diff=diff)
    b.record(0x3FFFFFF0, 1000)
    eq(b.wait_ms(0x10, 1), 100 - 0x20)


import mptest

mptest.run(globals())
