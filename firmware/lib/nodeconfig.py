# The node config (a JSON object; the contract with `machi fleet` and the provisioning
# tool). Tables hold every key and default (lib/linkconfig.py those of the lora, nbiot
# and oscore sections); load() returns a complete, checked dict or
# raises ConfigError naming the key, for the person editing the file.
#   {"device_id": "env-0001", "type": "env"|"bin"|"light",
#    "gateway": {"host": "127.0.0.1", "port": 5683},
#    "interval_s": 2.0, "count": 0,       0 = forever; N = N samples, flush, exit 0
#    "drain_timeout_s": 60,               with count > 0: give up flushing, exit 3
#    "state_dir": "/abs/path",            seq store
#    "seed": 1, "scenario": {...},        virtual sensors (unix board)
#    "coap": {"ack_timeout_s": 2.0, "ack_random_factor": 1.5, "max_retransmit": 4},
#    "outbox_slots": 64, "seq_block": 16, "max_wait_s": 60,
#    "pack_max": 8,                       readings per request when a backlog waits (1..16;
#                                         1 = one each; LoRa always 1: protocol.md §2)
#    optional, newer:
#    "store": "flash"|"ram",              readings wait in a ring file in state_dir (default)
#    "slot_size": 256,                    bytes per ring record (a reading + 16 + 4)
#    "clock": true,                       false: a board without a clock (unix board)
#    "status_every": 0,                   boot count/reason/last error every N readings (and
#                                         in the first after boot); 0 = only after boot
#    "sleep": false,                      deep sleep between samples (ESP32 env/bin)
#    "app": {...},                        app settings (apps/*.py: thresholds, depth_cm, ...)
#    "board": {...},                      board settings (boards/esp32.py: pins, watchdog)
#    "oscore": {"key": "<32 hex>",        OSCORE on the CoAP path (docs/security.md §2): the
#               "short_id": 17},          device key and short id of the registry; {} = off
#    "transport": "udp"|"lora"|"nbiot",   how readings leave (default udp: CoAP over IP)
#    "lora": {"short_id": 257, "key": "<32 hex>", "sf": 10, "confirm": true, ...}
#                                         compact frames (docs/protocol-lora.md); on the
#                                         unix board the emulated radio sends to `gateway`
#    "nbiot": {"uart": "/dev/pts/3", "apn": ""}}  CoAP through a BG95 modem on a UART
import json
import sys


class ConfigError(ValueError):
    pass


# the "gateway" and "coap" sections are check()'s; the "lora", "nbiot" and "oscore" ones
# lib/linkconfig.py's, loaded only for a config that has one. (Few module-level names: each
# is a qstr, never freed.)


def _section(src, schema, where):
    if not isinstance(src, dict):
        raise ConfigError("%s must be an object" % where)
    out = {}
    for k in src:
        if k not in schema:
            raise ConfigError("%s%s: unknown key" % (where, k))
    for k in schema:
        default, kind = schema[k]
        if k not in src:
            if default is None:
                raise ConfigError("%s%s: required" % (where, k))
            out[k] = default
            continue
        v = src[k]
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if kind is bool:
            if v is not True and v is not False:
                raise ConfigError("%s%s: expected true or false, got %r" % (where, k, v))
        elif not isinstance(v, kind) or isinstance(v, bool):
            raise ConfigError("%s%s: expected %s, got %r" % (where, k, kind.__name__, v))
        out[k] = v
    return out


def check(src):
    # key: (default, kind); default None = required. A literal here, not a module-level
    # table: a module-level name is a qstr, kept after nodemain drops this module
    c = _section(src, {
        "device_id": (None, str),
        "type": (None, str),
        "gateway": (None, dict),
        "interval_s": (2.0, float),
        "count": (0, int),
        "drain_timeout_s": (60.0, float),
        "state_dir": (None, str),
        "seed": (1, int),
        "scenario": ({}, dict),
        "coap": ({}, dict),
        "outbox_slots": (64, int),
        "seq_block": (16, int),
        # longest back-off honoured from a 5.03 Max-Age (RFC 7252 default Max-Age is 60)
        "max_wait_s": (60.0, float),
        "pack_max": (8, int),
        "store": ("flash", str),
        "slot_size": (256, int),
        "clock": (True, bool),
        "status_every": (0, int),
        "sleep": (False, bool),
        "app": ({}, dict),
        "board": ({}, dict),
        "oscore": ({}, dict),
        "transport": ("udp", str),
        "lora": ({}, dict),
        "nbiot": ({}, dict),
    }, "")
    c["gateway"] = _section(c["gateway"], {"host": (None, str), "port": (5683, int)},
                            "gateway.")
    c["coap"] = _section(c["coap"], {"ack_timeout_s": (2.0, float),
                                     "ack_random_factor": (1.5, float),
                                     "max_retransmit": (4, int)}, "coap.")
    d = c["device_id"]
    if not (1 <= len(d) <= 32 and all("a" <= ch <= "z" or "0" <= ch <= "9"
                                      or (ch == "-" and i > 0) for i, ch in enumerate(d))):
        raise ConfigError("device_id: %r is not [a-z0-9][a-z0-9-]{0,31}" % d)
    if c["type"] not in ("env", "bin", "light"):
        raise ConfigError("type: %r is not one of env, bin, light" % c["type"])
    if c["interval_s"] <= 0:
        raise ConfigError("interval_s: must be > 0")
    if c["count"] < 0:
        raise ConfigError("count: must be >= 0")
    if c["drain_timeout_s"] <= 0:
        raise ConfigError("drain_timeout_s: must be > 0")
    if not 0 < c["gateway"]["port"] < 65536:
        raise ConfigError("gateway.port: out of range")
    co = c["coap"]
    if co["ack_timeout_s"] <= 0:
        raise ConfigError("coap.ack_timeout_s: must be > 0")
    if co["ack_random_factor"] < 1:
        raise ConfigError("coap.ack_random_factor: must be >= 1")
    if not 0 <= co["max_retransmit"] <= 20:
        raise ConfigError("coap.max_retransmit: must be 0..20")
    if c["outbox_slots"] < 1 or c["seq_block"] < 1 or c["max_wait_s"] < 0:
        raise ConfigError("outbox_slots, seq_block: must be >= 1; max_wait_s >= 0")
    if not 1 <= c["pack_max"] <= 16:
        raise ConfigError("pack_max: must be 1..16 (readings per request)")
    if c["store"] not in ("flash", "ram"):
        raise ConfigError("store: %r is not flash or ram" % c["store"])
    if not 64 <= c["slot_size"] <= 1024 or c["outbox_slots"] < 2 and c["store"] == "flash":
        raise ConfigError("slot_size: must be 64..1024; outbox_slots >= 2 for the ring")
    if c["status_every"] < 0:
        raise ConfigError("status_every: must be >= 0")
    if c["transport"] not in ("udp", "lora", "nbiot"):
        raise ConfigError("transport: %r is not one of udp, lora, nbiot" % c["transport"])
    if c["oscore"] or c["transport"] != "udp":
        import linkconfig

        linkconfig.check(c)
        del sys.modules["linkconfig"]  # its code, not needed again (nodemain drops ours)
    return c


def load(path):
    try:
        with open(path) as f:
            src = json.load(f)
    except OSError as e:
        raise ConfigError("%s: cannot read (%s)" % (path, e))
    except ValueError as e:
        raise ConfigError("%s: not JSON (%s)" % (path, e))
    return check(src)
