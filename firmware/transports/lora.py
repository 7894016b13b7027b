# The LoRa uplink: a reading becomes a compact frame (lib/lorawire.py) that goes out in one
# transmission within the AS923 dwell limit and the airtime budget, over any radio with
# the interface of sx127x.py (SX127x, SX126x, or the emulated radio of lora_radio.py).
#
#   up = LoraUplink(radio, encoder, radio_cfg, budget=airtime.Budget(36000000, 3600000))
#   status = up.send(seq, measurements, age_s, now_ms)
#     SENT    the frame went out (up.last_sf, up.last_airtime_us)
#     DWELL   too long for one transmission at any allowed SF: not sent (up.refused)
#     BUDGET  the airtime budget is spent: try again in up.wait_ms
#
# The configured SF is the slowest (longest range) we use; a frame that would exceed the
# dwell limit there goes out at the slowest SF that fits instead, if adapt_sf (else DWELL).
# LoraUplink only transmits; transports/lora_client.py waits for the gateway's ack and sends
# again without one (docs/protocol-lora.md §8).
from transports import airtime

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


SENT = const(0)
DWELL = const(1)
BUDGET = const(2)


class LoraUplink:
    def __init__(self, radio, encoder, radio_cfg, budget=None,
                 dwell_us=airtime.DWELL_AS923_US, adapt_sf=True):
        self.radio = radio
        self.encoder = encoder
        self.cfg = dict(radio_cfg)  # configure() keywords: freq_hz, sf, bw_hz, cr, ...
        self.sf = self.cfg.get("sf", 10)
        self.budget = budget
        self.dwell_us = dwell_us
        self.adapt_sf = adapt_sf
        self.refused = 0
        self.sent = 0
        self.wait_ms = 0
        self.last_sf = 0
        self.last_airtime_us = 0
        self.last_len = 0
        radio.configure(**self.cfg)
        self._radio_sf = self.sf

    def send(self, seq, measurements, age_s, now_ms):
        frame = self.encoder.encode(seq, measurements, age_s)
        n = len(frame)
        self.last_len = n
        bw = self.cfg.get("bw_hz", 125000)
        cr = self.cfg.get("cr", 1)
        pre = self.cfg.get("preamble", 8)
        if self.adapt_sf:
            sf = airtime.fit_sf(n, self.sf, self.dwell_us, bw, cr, pre)
        else:
            sf = self.sf if airtime.airtime_us(n, self.sf, bw, cr, pre) <= self.dwell_us \
                else None
        if sf is None:
            self.refused += 1
            return DWELL
        air = airtime.airtime_us(n, sf, bw, cr, pre)
        if self.budget is not None:
            w = self.budget.wait_ms(now_ms, air)
            if w:
                self.wait_ms = w
                return BUDGET
        if sf != self._radio_sf:
            self.cfg["sf"] = sf
            self.radio.configure(**self.cfg)
            self.cfg["sf"] = self.sf
            self._radio_sf = sf
        self.radio.send(frame)
        if self.budget is not None:
            self.budget.record(now_ms, air)
        self.sent += 1
        self.last_sf = sf
        self.last_airtime_us = air
        return SENT
