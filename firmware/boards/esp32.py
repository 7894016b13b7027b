# The ESP32 board: the same contract as boards/unix.py (see there) on real hardware.
#   buses     machine.I2C / UART built from the config's "board" section, once
#   sensors   a table name -> driver built from "board.sensors" (every driver in drivers/
#             plus the board's own tilt switch and battery ADC); see "Sensors" below
#   lamp      drivers/dimmer.py on machine.PWM ("board.lamp"), else a level-only stand-in
#   clock     the `time` module; time() from the RTC once set (learned from the gateway);
#             the port's epoch (2000 on the ESP32) is read from gmtime(0), not assumed
#   state     boards/bootstate.py in RTC memory: boot reason, boot count, last error,
#             crashes in a row -> safe mode, the app's state across deep sleep
#   watchdog  machine.WDT, fed by the node loop (feed()) and while Wi-Fi connects
#   wifi      wait_transport() connects with a doubling backoff (the watchdog fed); later
#             losses are noticed in feed() and reconnected in the background, same backoff
#   sleep     idle(ms, app, due): with "sleep": true (env, bin on battery) and nothing to
#             send, save the state and machine.deepsleep(ms); the wake is a fresh boot of
#             main.py (flash keeps the ring and the seq store, RTC memory the rest)
#   firmware  A/B slots (boards/slots_esp32.py, docs/security.md "Firmware updates"): at
#             boot what the bootloader did (normal / trial / rolled-back) is read and
#             logged; confirm_image() keeps a trial image: the node calls it on every
#             acknowledged reading (a no-op unless on trial). While on trial the board does
#             not deep sleep: a wake is a reset, and the bootloader would roll back.
#
# The "board" config section, checked here before any hardware is touched (the rest of
# the node config is lib/nodeconfig.py's): an unknown key, a wrong type or a value out of
# range raises ConfigError naming the key ("board.sensors.bme280.adr: unknown key ...").
#   {"i2c": {"id": 0, "scl": 22, "sda": 21, "freq": 100000},
#    "uart": {"id": 2, "tx": 17, "rx": 16, "baud": 9600},
#    "lamp": {"pin": 25, "freq": 1000, "gamma": 2.2, "invert": false},
#    "wifi": {"ssid": "...", "key": "..."}, "wdt_s": 30, "safe_after": 3,
#    "sensors": {"<sensor>": {options}, ...}}
# Sensors: the key names the sensor, the options are its driver's keyword arguments (table
# _SENSORS below) plus "names": a subset of what it measures, for when two sensors measure
# the same thing (a BME280 for "pres" only next to an SHT4x); two sensors giving one name
# is a ConfigError. Each driver class Sensor(board, **options) has NAMES and read() ->
# {name: value}, raising OSError (drivers.errors.SensorError) when the device fails.
#   i2c   bme280 temp/pres/hum, sht3x, sht4x temp/hum, bh1750 lux, vl53l0x distance,
#         ina219 power/current/bus_v
#   uart  pms5003 pm1/pm25/pm10, sds011 pm25/pm10
#   pins  ultrasonic distance (trig, echo), pir motion (pin, interrupt), and built in:
#         tilt (pin, pull "up"/"down"/"none", active level) and battery "bat" in volts
#         (an ADC1 pin, 32-39 on the ESP32: ADC2 does not work while Wi-Fi is on; ratio
#         = the divider's (R1 + R2) / R2)
# sensor(name) is the value, or None for an error reading: the name has no sensor, the
# sensor failed to start (tried again after _RETRY_MS) or the read failed. Errors never
# escape: the last one is kept for the status reading (err_last). One read of a sensor
# serves each of its names once within _CACHE_MS (one BME280 measurement for temp, pres
# and hum); asking a name again measures again (the bin's distance pings).
# This file cannot run on the unix port (no machine.RTC/WDT/deepsleep there): the tests
# (tests/mp/test_esp32*.py) inject fake machine/network/esp32 modules.
import os
import random
import sys
import time

import machine
import sun
from boards import bootstate
from boards.bootcount import count_boot

try:
    from micropython import const
except ImportError:

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_DEBUG = const(False)
_EPOCH_2000 = const(946684800)  # 2000-01-01 in Unix time
_VALID_AFTER = const(1577836800)  # 2020-01-01: an RTC below it is not set
_MIN_SLEEP_MS = const(2000)  # shorter waits are not worth a reboot
_CACHE_MS = const(500)  # one driver read serves each of its names once for this long
_RETRY_MS = const(30000)  # a sensor that failed to start is tried again after this
_WIFI_TRIES = const(6)  # at start-up; then the background reconnect takes over
_WIFI_WAIT_MS = const(10000)  # one connect attempt
_WIFI_MAX_MS = const(60000)  # the backoff's ceiling
_WIFI_CHECK_MS = const(1000)  # feed() looks at the link at most this often
# the port's time() epoch: 2000 on the ESP32, 1970 on the unix port (and newer ports)
_EPOCH = _EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0


class ConfigError(ValueError):
    pass


# ---- the "board" config schema: key -> kind; kind float accepts an int
_BOARD = {"i2c": dict, "uart": dict, "lamp": dict, "wifi": dict, "wdt_s": float,
          "safe_after": int, "sensors": dict}
_I2C = {"id": int, "scl": int, "sda": int, "freq": int}
_UART = {"id": int, "tx": int, "rx": int, "baud": int}
_LAMP = {"pin": int, "freq": int, "gamma": float, "invert": bool}
_WIFI = {"ssid": str, "key": str}
_PIN_KEYS = ("pin", "scl", "sda", "tx", "rx", "trig", "echo")
# sensor -> (bus, names, options, required options); bus "" = pins only
_SENSORS = {
    "bme280": ("i2c", ("temp", "pres", "hum"),
               {"addr": int, "osrs_t": int, "osrs_p": int, "osrs_h": int}, ()),
    "sht3x": ("i2c", ("temp", "hum"), {"addr": int}, ()),
    "sht4x": ("i2c", ("temp", "hum"), {"addr": int}, ()),
    "bh1750": ("i2c", ("lux",), {"addr": int, "mode": str, "mt": int}, ()),
    "vl53l0x": ("i2c", ("distance",), {"addr": int, "timeout_ms": int}, ()),
    "ina219": ("i2c", ("power", "current", "bus_v"),
               {"addr": int, "shunt_mohm": int, "current_lsb_ua": int}, ()),
    "pms5003": ("uart", ("pm1", "pm25", "pm10"), {"passive": bool, "timeout_ms": int}, ()),
    "sds011": ("uart", ("pm25", "pm10"), {"query": bool, "timeout_ms": int}, ()),
    "ultrasonic": ("", ("distance",),
                   {"trig": int, "echo": int, "pings": int, "max_dev_cm": float,
                    "min_cm": float, "max_cm": float, "temp_c": float}, ("trig", "echo")),
    "pir": ("", ("motion",), {"pin": int}, ("pin",)),
    "tilt": ("", ("tilt",), {"pin": int, "pull": str, "active": int}, ("pin",)),
    "battery": ("", ("bat",), {"pin": int, "ratio": float, "samples": int}, ("pin",)),
}
# what each app asks for: a name without a sensor is logged at start (its readings err)
_NEEDS = {"env": ("temp", "hum", "pres", "pm25", "pm10", "lux", "bat"),
          "bin": ("distance", "temp", "tilt", "bat"),
          "light": ("lux", "power", "motion")}


def _kind_ok(v, kind):
    if kind is bool:
        return v is True or v is False
    if isinstance(v, bool):
        return False
    if kind is float:
        return isinstance(v, (int, float))
    return isinstance(v, kind)


def _section(src, schema, required, where):
    if not isinstance(src, dict):
        raise ConfigError("%s: expected an object, got %r" % (where, src))
    for k in src:
        if k not in schema:
            raise ConfigError("%s.%s: unknown key (known: %s)" % (where, k,
                                                                 ", ".join(sorted(schema))))
        kind = schema[k]
        v = src[k]
        if not _kind_ok(v, kind):
            raise ConfigError("%s.%s: expected %s, got %r" % (where, k, kind.__name__, v))
        if k in _PIN_KEYS and not 0 <= v <= 48:
            raise ConfigError("%s.%s: GPIO %d does not exist (0..48)" % (where, k, v))
        if k == "addr" and not 0x08 <= v <= 0x77:
            raise ConfigError("%s.addr: 0x%02x is not a 7-bit I2C address" % (where, v))
    for k in required:
        if k not in src:
            raise ConfigError("%s.%s: required" % (where, k))
    return src


def _sensor_opts(key, src, bc):
    where = "board.sensors." + key
    if key not in _SENSORS:
        raise ConfigError("%s: unknown sensor (known: %s)" % (where, ", ".join(sorted(_SENSORS))))
    bus, names, schema, required = _SENSORS[key]
    if not isinstance(src, dict):
        raise ConfigError("%s: expected an object, got %r" % (where, src))
    opts = dict(src)
    take = names
    if "names" in opts:
        take = opts.pop("names")
        if not isinstance(take, list) or not take or any(n not in names for n in take):
            raise ConfigError("%s.names: a non-empty list of %s" % (where, ", ".join(names)))
    _section(opts, schema, required, where)
    if bus and bus not in bc:
        raise ConfigError("%s: needs board.%s" % (where, bus))
    if key == "tilt":
        if opts.get("pull", "up") not in ("up", "down", "none"):
            raise ConfigError(where + ".pull: up, down or none")
        if opts.get("active", 1) not in (0, 1):
            raise ConfigError(where + ".active: 0 or 1 (the level when tilted)")
    elif key == "battery":
        if opts.get("ratio", 2.0) <= 0 or not 1 <= opts.get("samples", 8) <= 64:
            raise ConfigError(where + ": ratio must be > 0, samples 1..64")
    elif key == "ultrasonic" and not 1 <= opts.get("pings", 1) <= 15:
        raise ConfigError(where + ".pings: 1..15")
    return opts, tuple(take)


# The "board" section -> (checked section, [(sensor, options, names)]); raises ConfigError.
# Pure: runs before any hardware is touched (and in the tests without hardware).
def check(bc):
    if bc is None:
        bc = {}
    if "pins" in bc:
        raise ConfigError("board.pins: gone; the lamp is board.lamp {\"pin\"}, PIR, tilt, "
                          "ultrasonic and battery are board.sensors entries")
    _section(bc, _BOARD, (), "board")
    for key, schema, req in (("i2c", _I2C, ("scl", "sda")), ("uart", _UART, ("tx", "rx")),
                             ("lamp", _LAMP, ("pin",)), ("wifi", _WIFI, ("ssid",))):
        if key in bc:
            _section(bc[key], schema, req, "board." + key)
    lamp = bc.get("lamp", {})
    if not 1 <= lamp.get("freq", 1000) <= 40000 or \
            ("gamma" in lamp and not 1.0 <= lamp["gamma"] <= 3.0):
        raise ConfigError("board.lamp: freq must be 1..40000 Hz, gamma 1.0..3.0")
    if not 5 <= bc.get("wdt_s", 30) <= 3600:
        raise ConfigError("board.wdt_s: 5..3600 (the longest stall the watchdog allows)")
    if bc.get("safe_after", 3) < 1:
        raise ConfigError("board.safe_after: must be >= 1")
    out = []
    owner = {}  # type: dict
    for key in bc.get("sensors", {}):
        opts, names = _sensor_opts(key, bc["sensors"][key], bc)
        for n in names:
            if n in owner:
                raise ConfigError("board.sensors: %s from both %s and %s (give one of them "
                                  "\"names\")" % (n, owner[n], key))
            owner[n] = key
        out.append((key, opts, names))
    return bc, out


# ---- sensors the board drives itself (the same contract as the drivers' Sensor)


class Tilt:
    # a tilt (ball) switch: pin at `active` level = tilted
    NAMES = ("tilt",)

    def __init__(self, board, pin, pull="up", active=1):
        p = machine.Pin
        self._pin = p(pin, p.IN, p.PULL_UP if pull == "up" else  # type: ignore[arg-type]
                      (p.PULL_DOWN if pull == "down" else None))  # None: no pull (stub: int)
        self._active = active

    def read(self):
        return {"tilt": self._pin.value() == self._active}


class Battery:
    # the cell through a divider on an ADC pin: the mean of `samples` calibrated reads
    # (read_uv, 11 dB attenuation: up to ~3.1 V at the pin) times the divider ratio. Under
    # 0.5 V is not a battery that runs this board: a loose wire, an error reading.
    NAMES = ("bat",)

    def __init__(self, board, pin, ratio=2.0, samples=8):
        self._adc = machine.ADC(machine.Pin(pin))
        self._adc.atten(machine.ADC.ATTN_11DB)
        self._ratio = ratio
        self._n = samples

    def read(self):
        uv = 0
        for _ in range(self._n):
            uv += self._adc.read_uv()
        v = uv / self._n * self._ratio / 1000000
        if v < 0.5:
            from drivers.errors import SensorError

            raise SensorError("battery: range")
        return {"bat": v}


_BUILTIN = {"tilt": Tilt, "battery": Battery}


class _Entry:
    # one configured sensor: its driver once started, its last read's values not yet taken
    def __init__(self, key, opts, names):
        self.key = key
        self.opts = opts
        self.names = names
        self.dev = None
        self.retry_at = None  # ticks before which a failed start is not tried again
        self.vals = {}
        self.at = time.ticks_ms()  # ticks of vals


class NoDimmer:
    level = 0

    def set(self, percent):
        self.level = percent


class Board:
    name = "esp32"

    def __init__(self, cfg):
        bc, sensors = check(cfg.get("board"))  # ConfigError before any hardware
        self.cfg = bc
        self.dev = cfg["device_id"]
        self.clock = time
        b = os.urandom(4)
        random.seed(b[0] << 24 | b[1] << 16 | b[2] << 8 | b[3])
        self.rng = random
        self.state_dir = cfg["state_dir"]
        try:
            os.mkdir(self.state_dir)
        except OSError:
            pass
        self._rtc = machine.RTC()
        self.why = bootstate.reason(machine.reset_cause(), machine)
        prev = bootstate.decode(self._rtc.memory())
        boots = prev.get("boots", 0) if prev and self.why != "power" else count_boot(self.state_dir)
        self.st, self.safe_mode = bootstate.on_boot(prev, self.why, boots,
                                                    bc.get("safe_after", bootstate.SAFE_AFTER))
        self._save()
        self.boot_id = self.st["boots"] & 0xFFFF
        self.sleep = cfg.get("sleep", False)
        self._firmware()
        self.i2c = self.uart = None
        if "i2c" in bc:
            c = bc["i2c"]
            self.i2c = machine.I2C(c.get("id", 0), scl=machine.Pin(c["scl"]),
                                   sda=machine.Pin(c["sda"]), freq=c.get("freq", 100000))
        if "uart" in bc:
            c = bc["uart"]
            self.uart = machine.UART(c.get("id", 2), baudrate=c.get("baud", 9600),
                                     tx=c["tx"], rx=c["rx"], timeout=100)
        self.dimmer = self._lamp(bc.get("lamp"))
        self._by_name = {}
        for key, opts, names in sensors:
            e = _Entry(key, opts, names)
            for n in names:
                self._by_name[n] = e
            if not self.safe_mode:
                self._open(e, time.ticks_ms(), True)
        missing = [n for n in _NEEDS.get(cfg.get("type"), ()) if n not in self._by_name]
        if cfg.get("type") == "light" and not bc.get("lamp"):
            missing.append("lamp")
        if missing:
            self.log("W %s sensors missing=%s" % (self.dev, ",".join(missing)))
        self._sta = None
        self._wifi_at = time.ticks_ms()  # ticks of the next look at the link
        self._wifi_retry = self._wifi_at  # ticks of the next connect() while it is down
        self._wifi_backoff = 1000
        self._wifi_down = False
        # last: a watchdog started before a config error would reset a board that can
        # only wait for someone to fix its config
        self._wdt = None if self.safe_mode else machine.WDT(timeout=int(bc.get("wdt_s", 30) * 1000))

    def _lamp(self, c):
        if not c:
            return NoDimmer()
        from drivers.dimmer import Dimmer

        inv = c.get("invert", False)
        pwm = machine.PWM(machine.Pin(c["pin"]), freq=c.get("freq", 1000),
                          duty_u16=65535 if inv else 0)  # off from the first instant
        return Dimmer(pwm, c.get("freq", 1000), c.get("gamma"), inv)

    # ---- firmware slots (boards/slots_esp32.py)

    # boot() runs once per boot, here: after a rollback a second boot() says "normal".
    # lib/node.py should use board.slots rather than a Slots() of its own.
    def _firmware(self):
        self.slots = None
        self.fw = "none"  # no OTA partition table (or no esp32 module): no updates
        try:
            from boards.slots_esp32 import Slots

            s = Slots()
            self.fw = s.boot()
        except (ImportError, OSError) as e:
            if _DEBUG:
                self.log("D %s fw off %s" % (self.dev, e))
            return
        self.slots = s
        if self.fw != "normal":
            self.log("I %s fw boot %s slot=%d version=%d" % (self.dev, self.fw, s.running(),
                                                              s.version()))

    # Still on trial? Asked of NVS, not of our Slots object: lib/node.py may have confirmed
    # through one of its own.
    def _trial(self):
        # fw is "trial" only once _firmware() has set slots
        if self.fw == "trial" and self.slots._pending_label() is None:  # type: ignore[union-attr]
            self.fw = "confirmed"
        return self.fw == "trial"

    # The node's hook on an acknowledged reading (2.xx): a trial image keeps itself (the
    # bootloader's rollback is cancelled, the anti-rollback floor raised). True if it did;
    # a no-op (False) on every later call and when the image is not on trial.
    def confirm_image(self):
        if not self._trial():
            return False
        s = self.slots
        assert s is not None  # on trial: _firmware() set it
        try:
            s.confirm()
        except OSError as e:  # a build without the bootloader's rollback (slots_esp32):
            self.fw = "no-rollback"  # nothing would roll it back either: asked once, logged
            self.record_error(e)
            self.log("E %s fw confirm %s" % (self.dev, self.st["err"]))
            return False
        self.fw = "confirmed"
        self.log("I %s fw confirmed version=%d floor=%d" % (self.dev, s.version(), s.floor()))
        return True

    # ---- state in RTC memory

    def _save(self):
        self._rtc.memory(bootstate.encode(self.st))

    def record_error(self, e):
        self.st["err"] = bootstate.error_text(e) if isinstance(e, BaseException) else str(e)[:48]
        self._save()

    def stopped(self):
        self.st["running"] = 0  # a clean stop is not a crash
        self._save()

    def restore_app(self, app):
        if self.st.get("app") and hasattr(app, "restore"):
            app.restore(self.st["app"])

    def status(self):
        out = [("boots", None, self.st["boots"]), ("reset", None, self.why),
               ("wakes", None, self.st["wakes"])]
        if self.st["err"]:
            out.append(("err_last", None, self.st["err"]))
        return out

    # ---- time

    def time(self):
        t = int(time.time()) + _EPOCH
        return t if t >= _VALID_AFTER else None

    def set_time(self, t):
        # the date by integer arithmetic (no gmtime: its epoch differs between ports)
        days = t // 86400
        y, mo, d = sun.civil(days)
        s = t % 86400
        self._rtc.datetime((y, mo, d, (days + 3) % 7, s // 3600, s // 60 % 60, s % 60, 0))

    def mono_ms(self):
        return time.ticks_add(time.ticks_ms(), self.st["slept"])

    # ---- the node loop's hooks

    def feed(self):
        if self._wdt:
            self._wdt.feed()
        if self._sta is not None:
            self._wifi_tick()

    def idle(self, ms, app, due_ms):
        if not self.sleep or ms < _MIN_SLEEP_MS:
            return
        if self._trial():
            return  # on trial: a deep-sleep wake is a reset, the bootloader would roll back
        self.st["app"] = app.state() if hasattr(app, "state") else {}
        self.st["due"] = due_ms - ms  # a wake for an alarm check is not a sample time
        self.st["running"] = 0
        self.st["slept"] = time.ticks_add(self.st["slept"], ms)  # + ticks_ms of this wake
        # ms since boot as the delta (the stub's ticks_ms() is an opaque ticks type)
        self.st["slept"] = time.ticks_add(self.st["slept"], time.ticks_ms())  # type: ignore[arg-type]
        self._save()
        machine.deepsleep(ms)  # does not return: the wake runs main.py again

    # ms from now to the next sample (0: sample at once, e.g. after power-on)
    def resume_ms(self):
        return max(0, self.st.get("due", 0)) if self.why == "deepsleep" else 0

    # ---- sensors

    def _open(self, e, now, boot=False):
        if e.retry_at is not None and time.ticks_diff(now, e.retry_at) < 0:
            return None
        try:
            cls = _BUILTIN.get(e.key)
            if cls is None:
                cls = __import__("drivers." + e.key, None, None, ["Sensor"]).Sensor
            e.dev = cls(self, **e.opts)
        except (ValueError, TypeError) as ex:
            if boot:  # a driver refusing its options (bh1750 mode "x"): the config's fault
                raise ConfigError("board.sensors.%s: %s" % (e.key, ex))
            self._failed(e, now, ex)
        except Exception as ex:  # missing device, bus error, driver not on the board
            self._failed(e, now, ex)
        return e.dev

    def _failed(self, e, now, ex):
        e.dev = None
        e.retry_at = time.ticks_add(now, _RETRY_MS)
        self.record_error(ex)
        self.log("W %s sensor %s %s" % (self.dev, e.key, self.st["err"]))

    def sensor(self, name):
        e = self._by_name.get(name)
        if e is None:
            return None  # nothing configured measures it
        now = time.ticks_ms()
        if name in e.vals and time.ticks_diff(now, e.at) <= _CACHE_MS:
            return e.vals.pop(name)
        dev = e.dev or self._open(e, now)
        if dev is None:
            return None
        try:
            vals = dev.read()
        except Exception as ex:  # SensorError above all; never a crash of the loop
            e.vals = {}
            self.record_error(ex)
            return None
        e.at = now
        e.vals = vals
        return vals.pop(name, None)

    # ---- transport and log

    def wait_transport(self, log):
        w = self.cfg.get("wifi")
        if not w:
            return True
        import network

        sta = network.WLAN(network.STA_IF)
        sta.active(True)
        self._sta = sta
        backoff = 1000
        start = time.ticks_ms()
        for _ in range(_WIFI_TRIES):
            self._connect()
            t0 = time.ticks_ms()
            while time.ticks_diff(time.ticks_ms(), t0) < _WIFI_WAIT_MS:
                if sta.isconnected():
                    log("I %s wifi up ms=%d" % (self.dev, time.ticks_diff(time.ticks_ms(),
                                                                          start)))
                    return True
                self._wdt_sleep(100)
            log("W %s wifi retry backoff_ms=%d status=%s" % (self.dev, backoff,
                                                            _wifi_status(sta)))
            self._wdt_sleep(backoff)
            backoff = min(backoff * 2, _WIFI_MAX_MS)
        # go on without: readings wait in the ring, feed() keeps trying in the background
        self._wifi_down = True
        self._wifi_backoff = backoff
        self._wifi_retry = time.ticks_ms()
        log("E %s wifi down tries=%d" % (self.dev, _WIFI_TRIES))
        return False

    def _connect(self):
        w = self.cfg["wifi"]
        try:
            self._sta.connect(w["ssid"], w.get("key", ""))  # type: ignore[union-attr]  # set first
        except OSError as e:  # "Wifi Internal State Error": a connect already under way
            if _DEBUG:
                self.log("D %s wifi connect %s" % (self.dev, e))

    def _wdt_sleep(self, ms):
        while ms > 0:
            self._feed_wdt()
            time.sleep_ms(min(ms, 1000))
            ms -= 1000

    def _feed_wdt(self):
        if self._wdt:
            self._wdt.feed()

    # the link, looked at from feed() once a second: a loss is logged, then connect() is
    # tried again with a doubling backoff (1 s .. 60 s) without blocking the loop; the
    # readings meanwhile wait in the ring
    def _wifi_tick(self):
        now = time.ticks_ms()
        if time.ticks_diff(now, self._wifi_at) < 0:
            return
        self._wifi_at = time.ticks_add(now, _WIFI_CHECK_MS)
        sta = self._sta
        if sta.isconnected():  # type: ignore[union-attr]  # feed() calls this once it is set
            if self._wifi_down:
                self._wifi_down = False
                self.log("I %s wifi up" % self.dev)
            self._wifi_backoff = 1000
            return
        if not self._wifi_down:
            self._wifi_down = True
            self._wifi_retry = now
            self.log("W %s wifi lost status=%s" % (self.dev, _wifi_status(sta)))
        if time.ticks_diff(now, self._wifi_retry) >= 0:
            self._connect()
            self.log("W %s wifi retry backoff_ms=%d" % (self.dev, self._wifi_backoff))
            self._wifi_retry = time.ticks_add(now, self._wifi_backoff)
            self._wifi_backoff = min(self._wifi_backoff * 2, _WIFI_MAX_MS)

    def log(self, line):
        sys.stdout.write(line)
        sys.stdout.write("\n")


# the WLAN status as a word for the log (wrong-password and no-ap need a person)
def _wifi_status(sta):
    import network

    try:
        st = sta.status()
    except OSError:
        return "?"
    for word, attr in (("wrong-password", "STAT_WRONG_PASSWORD"), ("no-ap", "STAT_NO_AP_FOUND"),
                       ("connecting", "STAT_CONNECTING"), ("idle", "STAT_IDLE"),
                       ("got-ip", "STAT_GOT_IP")):
        if st == getattr(network, attr, None):
            return word
    return str(st)
