# The ESP32 board's sensor table (boards/esp32.py) under the unix port: for each app the
# board is built from a "board" config alone, every driver is started on the fake buses
# and pins of fakeesp32.py (chip models answering like the datasheets), every name the
# app needs is read through the real driver, and the real app's sample() comes out
# complete. Then the failure paths: a chip missing at start (error readings, retried
# later), a bus failing mid-run, a silent UART, a broken driver: each is an error reading
# with err_last set, never an exception. Config mistakes are ConfigErrors naming the key,
# raised before any hardware (watchdog included) is touched. And the real node loop
# (lib/node.py) running an env node on this board to a fake gateway.
import time

import fakeesp32
import mptest
from fakebus import ETIMEDOUT
from fakeesp32 import M
from mptest import eq

fakeesp32.install()

import nodefakes  # noqa: E402
from apps import env_sensor, streetlight, waste_bin  # noqa: E402
from boards import esp32  # noqa: E402
from drivers import bme280  # noqa: E402

_N = [0]
LINES = []
I2C = {"scl": 22, "sda": 21}


class TBoard(esp32.Board):
    def log(self, line):
        LINES.append(line)


def board(typ, **bc):
    M.cause = M.PWRON_RESET
    M.rtc_mem = b""
    _N[0] += 1
    cfg = {"device_id": "%s-0001" % typ, "type": typ, "state_dir": "/tmp/mp-esp32s-%d" % _N[0],
           "sleep": False, "board": bc}
    del LINES[:]
    return TBoard(cfg)


def fresh_bus():
    M.i2c.devices = {}
    M.i2c.fail = None
    M.uart.chunks = []
    M.uart.fail = None
    M.pins = {}
    M.pwm = []
    M.pulses = []
    M.adc_uv = {}


def close(a, b, tol=0.01):
    if a is None or abs(a - b) > tol:
        raise AssertionError("%r != %r (+-%r)" % (a, b, tol))


def values(out):
    return dict((n, v) for n, u, v in out)


# ---- config checks


def bad(fragment, **bc):
    w = len(M.wdt)
    try:
        board("env", **bc)
    except esp32.ConfigError as e:
        if fragment not in str(e):
            raise AssertionError("%r not in %r" % (fragment, str(e)))
        eq(len(M.wdt), w)  # refused before the watchdog (or anything else) started
        return
    raise AssertionError("accepted: %r" % (bc,))


def test_config_mistakes_name_the_key():
    fresh_bus()
    bad("board.pins: gone", pins={"lamp": 25})
    bad("board.colour: unknown key", colour=1)
    bad("board.i2c.sda: required", i2c={"scl": 22})
    bad("board.i2c.speed: unknown key", i2c={"scl": 22, "sda": 21, "speed": 1})
    bad("board.i2c.scl: expected int, got '22'", i2c={"scl": "22", "sda": 21})
    bad("board.uart.rx: GPIO 60 does not exist", uart={"tx": 17, "rx": 60})
    bad("board.wifi.ssid: required", wifi={"key": "k"})
    bad("board.wdt_s: expected float, got True", wdt_s=True)
    bad("board.wdt_s: 5..3600", wdt_s=1)
    bad("board.safe_after: must be >= 1", safe_after=0)
    bad("board.lamp.pin: required", lamp={"freq": 500})
    bad("board.lamp: freq must be 1..40000 Hz, gamma 1.0..3.0", lamp={"pin": 25, "gamma": 5})
    bad("board.sensors: expected dict, got ['bme280']", sensors=["bme280"])
    bad("board.sensors.bme281: unknown sensor (known: battery, bh1750, bme280",
        sensors={"bme281": {}})
    bad("board.sensors.bme280: needs board.i2c", sensors={"bme280": {}})
    bad("board.sensors.pms5003: needs board.uart", sensors={"pms5003": {}})
    bad("board.sensors.bme280.adr: unknown key (known: addr, osrs_h, osrs_p, osrs_t)",
        i2c=I2C, sensors={"bme280": {"adr": 118}})
    bad("board.sensors.bme280.addr: expected int, got '0x76'", i2c=I2C,
        sensors={"bme280": {"addr": "0x76"}})
    bad("board.sensors.bme280.addr: 0x80 is not a 7-bit I2C address", i2c=I2C,
        sensors={"bme280": {"addr": 0x80}})
    bad("board.sensors.bme280: expected an object", i2c=I2C, sensors={"bme280": 118})
    bad("board.sensors.pir.pin: required", sensors={"pir": {}})
    bad("board.sensors.ultrasonic.echo: required", sensors={"ultrasonic": {"trig": 5}})
    bad("board.sensors.ultrasonic.pings: 1..15", sensors={"ultrasonic": {"trig": 5, "echo": 18,
                                                                         "pings": 0}})
    bad("board.sensors.tilt.pull: up, down or none", sensors={"tilt": {"pin": 26,
                                                                       "pull": "sideways"}})
    bad("board.sensors.tilt.active: 0 or 1", sensors={"tilt": {"pin": 26, "active": 2}})
    bad("board.sensors.battery: ratio must be > 0", sensors={"battery": {"pin": 35, "ratio": 0}})
    bad("board.sensors.bme280.names: a non-empty list of temp, pres, hum", i2c=I2C,
        sensors={"bme280": {"names": ["co2"]}})
    bad("board.sensors.bme280.names: a non-empty list", i2c=I2C, sensors={"bme280": {"names": []}})
    # two sensors for one name: say which one gives it
    try:
        board("env", i2c=I2C, sensors={"bme280": {}, "sht3x": {}})
    except esp32.ConfigError as e:
        assert "temp from both" in str(e) and "\"names\"" in str(e), e
    else:
        raise AssertionError("two sources of temp accepted")
    # a driver refusing its options at start is the config's fault too
    M.i2c.attach(0x23, fakeesp32.BH1750())
    bad("board.sensors.bh1750: bh1750: mode must be h, h2 or l", i2c=I2C,
        sensors={"bh1750": {"mode": "x"}})
    bad("board.sensors.bh1750: bh1750: mt must be 31..254", i2c=I2C,
        sensors={"bh1750": {"mt": 300}})
    # the pure check, as a provisioning tool would run it
    _, sensors = esp32.check({"i2c": I2C, "sensors": {"bme280": {"names": ["pres"]},
                                                       "sht4x": {}}})
    eq(sorted((k, n) for k, o, n in sensors), [("bme280", ("pres",)), ("sht4x", ("temp", "hum"))])
    eq(esp32.check(None), ({}, []))


def test_the_board_table_matches_the_drivers():
    for key in esp32._SENSORS:
        names = esp32._SENSORS[key][1]
        if key in esp32._BUILTIN:
            eq(esp32._BUILTIN[key].NAMES, names, key)
        else:
            mod = __import__("drivers." + key, None, None, ["Sensor"])
            eq(mod.Sensor.NAMES, names, key)
    eq(sorted(esp32._NEEDS), ["bin", "env", "light"])
    for typ in esp32._NEEDS:  # every name an app needs has a sensor that gives it
        for n in esp32._NEEDS[typ]:
            eq(any(n in esp32._SENSORS[k][1] for k in esp32._SENSORS), True, n)


# ---- each app's board


def env_board(particles="pms5003"):
    fresh_bus()
    bme = M.i2c.attach(0x76, fakeesp32.BME280())
    M.i2c.attach(0x23, fakeesp32.BH1750())
    M.adc_uv[35] = 2050000  # 2.05 V at the pin: a 4.1 V cell behind a 1:2 divider
    sensors = {"bme280": {"addr": 0x76}, "bh1750": {}, "battery": {"pin": 35}}
    sensors[particles] = {"timeout_ms": 200}
    b = board("env", i2c={"id": 0, "scl": 22, "sda": 21, "freq": 400000},
              uart={"id": 2, "tx": 17, "rx": 16}, sensors=sensors)
    return b, bme


def test_env_board_reads_every_sensor():
    b, bme = env_board()
    eq(M.i2c_args, (0, 22, 21, 400000))
    eq(M.uart_args, (2, 9600, 17, 16, 100))
    eq(M.adc_atten[35], 3)  # 11 dB: the whole 0..3.1 V range
    eq(LINES, [])  # every sensor started, every name the env app needs has one
    M.uart.feed(fakeesp32.pms_frame(atm=(4, 12, 19)))
    close(b.sensor("temp"), 25.08)
    close(b.sensor("pres"), 100653.25, 0.1)
    hum = b.sensor("hum")
    eq(bme.measurements, 1)  # temp, pres and hum from one measurement
    close(b.sensor("temp"), 25.08)  # asked again: measured again
    eq(bme.measurements, 2)
    # the humidity is the driver's own (its formula is test_drv_bme280's business)
    close(hum, bme280.BME280(M.i2c).read()[2], 0.0001)
    eq(0 < hum < 100, True)
    eq((b.sensor("pm25"), b.sensor("pm10")), (12, 19))
    close(b.sensor("lux"), 28066.67)
    close(b.sensor("bat"), 4.1)
    eq(b.sensor("co2"), None)  # nothing measures it
    # the env app through this board: every metric, with its unit, no error
    M.uart.feed(fakeesp32.pms_frame(atm=(4, 12, 19)))
    out = env_sensor.App(b).sample(1795390000)
    eq([(n, u) for n, u, v in out], [("temp", "Cel"), ("hum", "%RH"), ("pres", "Pa"),
                                     ("pm25", "ug/m3"), ("pm10", "ug/m3"), ("lux", "lx"),
                                     ("bat", "V")])
    v = values(out)
    eq((v["temp"], v["pres"], v["pm25"], v["pm10"], v["lux"]), (25.0, 100653, 12, 19, 28067))
    eq(b.st["err"], "")


def test_env_board_with_sds011_and_two_climate_chips():
    fresh_bus()
    M.i2c.attach(0x76, fakeesp32.BME280())
    M.i2c.attach(0x44, fakeesp32.SHT(b"\xfd"))
    b = board("env", i2c=I2C, uart={"tx": 17, "rx": 16, "baud": 9600},
              sensors={"sht4x": {}, "bme280": {"names": ["pres"]}, "sds011": {"query": True}})
    eq(M.uart.written[0][:5], b"\xaa\xb4\x02\x01\x01")  # query mode set at start
    M.uart.feed(fakeesp32.sds_frame())
    eq((b.sensor("pm25"), b.sensor("pm10")), (123.6, 261.8))  # the datasheet's frame
    close(b.sensor("temp"), 25.0)  # the SHT4x's, not the BME280's 25.08
    close(b.sensor("pres"), 100653.25, 0.1)
    eq(LINES, ["W env-0001 sensors missing=lux,bat"])


def bin_board(distance="ultrasonic"):
    fresh_bus()
    M.i2c.attach(0x44, fakeesp32.SHT(b"\x24\x00"))
    M.adc_uv[34] = 1800000
    sensors = {"sht3x": {}, "tilt": {"pin": 26}, "battery": {"pin": 34, "ratio": 2.0}}
    if distance == "ultrasonic":
        sensors["ultrasonic"] = {"trig": 5, "echo": 18}
    else:
        M.i2c.attach(0x29, fakeesp32.VL53L0X(mm=300))
        sensors["vl53l0x"] = {}
    return board("bin", i2c=I2C, sensors=sensors)


def test_bin_board_pings_each_time_with_the_cycle_kept():
    b = bin_board()
    eq(LINES, [])
    eq((M.pins[5].mode, M.pins[18].mode), (M.Pin.OUT, M.Pin.IN))
    eq((M.pins[26].mode, M.pins[26].pull), (M.Pin.IN, M.Pin.PULL_UP))
    calls = []
    real = M.time_pulse_us

    def pulse(pin, level, timeout_us):
        calls.append(time.ticks_ms())
        return real(pin, level, timeout_us)

    M.time_pulse_us = pulse
    b._by_name["distance"].dev.dev._pulse = pulse
    M.pulses = [5800, 5800, 9000, 5830, 5790]  # 100 cm, one echo off the bin wall
    app = waste_bin.App(b, {"depth_cm": 120, "pings": 5})
    fill = app.measure_fill()
    eq(len(calls), 5)  # five pings, not one cached value
    gaps = [time.ticks_diff(calls[i + 1], calls[i]) for i in range(4)]
    eq(min(gaps) >= 60, True)  # HC-SR04 cycle between pings, though asked back to back
    close(fill, 100 * (120 - 5800 * 343.42 / 20000) / 120, 0.3)
    M.pins[26].v = 1  # the ball switch open: tipped over
    M.pulses = [5800] * 5
    out = app.sample(1795390000)
    v = values(out)
    eq((v["tilt"], v["temp"], v["bat"]), (True, 25, 3.59375))
    eq("err" in v, False)
    M.pins[26].v = 0
    eq(b.sensor("tilt"), False)


def test_bin_board_with_a_time_of_flight_ranger():
    b = bin_board("vl53l0x")
    eq(LINES, [])
    close(b.sensor("distance"), 30.0)
    app = waste_bin.App(b, {"depth_cm": 100, "pings": 3})
    close(app.measure_fill(), 70.0)


def light_board(invert=False):
    fresh_bus()
    M.i2c.attach(0x23, fakeesp32.BH1750(count=60))  # 50 lx: dusk
    M.i2c.attach(0x40, fakeesp32.INA219())
    return board("light", i2c=I2C, lamp={"pin": 25, "freq": 500, "invert": invert},
                 sensors={"bh1750": {}, "ina219": {"shunt_mohm": 100}, "pir": {"pin": 27}})


def test_light_board_dimmer_pir_power():
    b = light_board()
    eq(LINES, [])
    pwm = M.pwm[-1]
    eq((pwm.pin.n, pwm.first, pwm.f), (25, 0, 500))  # created dark, not at a default duty
    b.dimmer.set(50)
    eq(pwm.d, 32768)
    b.dimmer.set(100)
    eq(pwm.d, 65535)
    close(b.sensor("power"), 18.0)
    close(b.sensor("lux"), 50.0)
    eq(b.sensor("motion"), False)
    M.pins[27].rise()  # a pulse between two polls
    eq(b.sensor("motion"), True)
    eq(b.sensor("motion"), False)  # seen once
    app = streetlight.App(b, {"lat": 36.115, "lon": 137.954})
    M.pins[27].rise()
    app.command("on", {})
    v = values(app.sample(None))
    eq((v["lamp"], v["dim"], v["motion"], v["power"]), (True, 100, True, 18.0))
    eq("err" in v, False)
    b = light_board(invert=True)
    eq(M.pwm[-1].first, 65535)  # an inverting driver input is off at full duty
    b.dimmer.set(25)
    eq(M.pwm[-1].d, 65535 - 16384)


def test_light_board_without_a_lamp_says_so():
    fresh_bus()
    board("light", sensors={"pir": {"pin": 27}})
    eq(LINES, ["W light-0001 sensors missing=lux,power,lamp"])


# ---- failures: error readings, never exceptions


def test_chip_missing_at_start_then_plugged_in():
    fresh_bus()
    M.i2c.attach(0x23, fakeesp32.BH1750())
    b = board("env", i2c=I2C, sensors={"bme280": {}, "bh1750": {}})  # no BME280 answers
    eq(LINES, ["W env-0001 sensor bme280 SensorError: bme280: bus ([Errno 19] ENODEV)",
               "W env-0001 sensors missing=pm25,pm10,bat"])
    eq(b.sensor("temp"), None)
    close(b.sensor("lux"), 28066.67)  # the others work
    out = env_sensor.App(b).sample(1795390000)
    eq(values(out)["err"], "temp,hum,pres,pm25,pm10,bat")
    eq(dict((n, v) for n, u, v in b.status())["err_last"],
       "SensorError: bme280: bus ([Errno 19] ENODEV)")
    M.i2c.attach(0x76, fakeesp32.BME280())
    eq(b.sensor("temp"), None)  # not tried again at once (a missing chip costs a bus timeout)
    e = b._by_name["temp"]
    e.retry_at = time.ticks_add(time.ticks_ms(), -1)
    close(b.sensor("temp"), 25.08)  # started now


def test_bus_failure_mid_run_and_recovery():
    b, _ = env_board()
    M.i2c.fail = ETIMEDOUT
    eq((b.sensor("temp"), b.sensor("lux")), (None, None))
    eq(b.st["err"], "SensorError: bh1750: bus ([Errno 110] ETIMEDOUT)")
    M.i2c.fail = None
    close(b.sensor("temp"), 25.08)
    close(b.sensor("lux"), 28066.67)


def test_silent_uart_broken_driver_dead_battery():
    b, _ = env_board()
    eq(b.sensor("pm25"), None)  # nothing on the UART within timeout_ms
    eq(b.st["err"], "SensorError: pms5003: timeout")
    f = bytearray(fakeesp32.pms_frame())
    f[-1] ^= 1
    M.uart.feed(f)  # a frame with a wrong checksum
    eq(b.sensor("pm10"), None)
    eq(b.st["err"], "SensorError: pms5003: checksum")
    M.adc_uv[35] = 20000  # a loose wire: 40 mV is no battery
    eq(b.sensor("bat"), None)
    eq(b.st["err"], "SensorError: battery: range")

    class Broken:
        def read(self):
            return {}["lux"]  # a driver bug

    b._by_name["lux"].dev = Broken()
    eq(b.sensor("lux"), None)
    eq(b.st["err"], "KeyError: lux")


def test_safe_mode_starts_no_sensor_by_itself():
    fresh_bus()
    bme = M.i2c.attach(0x76, fakeesp32.BME280())
    M.cause = M.WDT_RESET
    for _ in range(3):  # resets while running
        bme.writes = []
        b = TBoard({"device_id": "env-0001", "type": "env", "state_dir": "/tmp/mp-esp32s-x",
                    "board": {"i2c": I2C, "sensors": {"bme280": {}}}})
    eq(b.safe_mode, True)
    eq(bme.writes, [])  # the BME280 (reset at each start before) was left alone
    close(b.sensor("temp"), 25.08)  # on demand it starts (wiring checks from the REPL)


# ---- the real node loop on this board


def test_env_node_on_the_esp32_board():
    b, _ = env_board()
    b.clock = nodefakes.Clock()  # the node's timing on a virtual clock; the buses are fakes

    def answer(m, k):
        return nodefakes.ack(m)

    M.uart.feed(fakeesp32.pms_frame(atm=(4, 12, 19)))
    node, gw, _ = nodefakes.make_node(answer, env_sensor, count=2, board=b, status_every=5)
    del LINES[:]
    M.uart.feed(fakeesp32.pms_frame(atm=(5, 13, 20)))
    eq(node.run(), 0)
    eq(len(gw.packs), 2)
    got = nodefakes.by_name(gw.packs[0])
    eq((got["temp"], got["pres"], got["pm25"], got["lux"], got["bat"]),
       (25, 100653, 13, 28067, 4.09375))
    eq(got["boots"], b.st["boots"])  # the board's status rides along after boot
    eq("err" in nodefakes.by_name(gw.packs[1]), True)  # the PMS had one frame: the 2nd errs
    eq(len(nodefakes.events(LINES, "ack")), 2)


mptest.run(globals())
