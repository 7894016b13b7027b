# The node config's sections for links other than plain UDP (lib/nodeconfig.py calls
# check() only when the config has one): "lora", "nbiot" and "oscore". A module of its own
# so a node on UDP never interns their key names (qstrs are never freed: firmware/README.md,
# budgets); nodemain drops it from the heap with nodeconfig once the config is checked.
from nodeconfig import ConfigError, _section

_HEX = "0123456789abcdefABCDEF"


def _key(where, k):
    if len(k) != 32 or any(ch not in _HEX for ch in k):
        raise ConfigError(where)


# c: the checked top level (nodeconfig.check); its link sections are replaced by complete,
# checked dicts
def check(c):
    if c["oscore"]:
        # master secret = the device key (registry "key"), Sender ID = short_id, 2 bytes
        # big-endian
        o = _section(c["oscore"], {"key": (None, str), "short_id": (None, int)}, "oscore.")
        _key("oscore.key: must be 32 hex digits (the 16-byte device key)", o["key"])
        if not 0 <= o["short_id"] <= 0xFFFF:
            raise ConfigError("oscore.short_id: must be 0..65535")
        c["oscore"] = o
    if c["transport"] == "lora":
        c["lora"] = _lora(c["lora"])
        if c["oscore"]:
            raise ConfigError("oscore: not with transport lora (its frames carry a MIC)")
    elif c["transport"] == "nbiot":
        c["nbiot"] = _section(c["nbiot"], {"uart": (None, str), "apn": ("", str),
                                          "baudrate": (115200, int)}, "nbiot.")


def _lora(src):
    lo = _section(src, {
        "short_id": (None, int),
        "key": (None, str),  # 32 hex digits: the device key (MIC)
        "sf": (10, int),  # the slowest spreading factor used (longest range)
        "freq_hz": (923200000, int),
        "power_dbm": (13, int),
        "confirm": (True, bool),  # wait for the gateway's ack, retry without one
        "rx_delay_s": (1.0, float),  # the gateway's lora_udp.rx_delay_s
        "rx_window_ms": (1000, int),
        "budget_s": (36.0, float),  # airtime allowed per budget_window_s (1 % duty cycle)
        "budget_window_s": (3600.0, float),
        "loss": (0.0, float),  # emulated radio: share of frames lost on air
        "airtime": (True, bool),  # emulated radio: sleep each frame's time on air
    }, "lora.")
    if not 0 <= lo["short_id"] <= 0xFFFF:
        raise ConfigError("lora.short_id: must be 0..65535")
    _key("lora.key: must be 32 hex digits", lo["key"])
    if not 7 <= lo["sf"] <= 12:
        raise ConfigError("lora.sf: must be 7..12")
    if lo["rx_delay_s"] <= 0 or lo["rx_window_ms"] <= 0:
        raise ConfigError("lora.rx_delay_s, lora.rx_window_ms: must be > 0")
    if lo["budget_s"] <= 0 or lo["budget_window_s"] <= 0:
        raise ConfigError("lora.budget_s, lora.budget_window_s: must be > 0")
    if not 0 <= lo["loss"] <= 1:
        raise ConfigError("lora.loss: must be 0..1")
    return lo
