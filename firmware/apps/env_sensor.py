# Environmental sensor: climate, air quality, light and the battery, every interval.
from quant import q

TYPE = "env"


def sample(board, t):
    s = board.sensor
    return [
        ("temp", "Cel", q(s("temp", t), 2)),  # 0.25 Cel steps
        ("hum", "%RH", q(s("hum", t), 2)),
        ("pres", "Pa", q(s("pres", t))),
        ("pm25", "ug/m3", q(s("pm25", t))),
        ("pm10", "ug/m3", q(s("pm10", t))),
        ("lux", "lx", q(s("lux", t))),
        ("bat", "V", q(s("bat", t), 6)),  # 1/64 V steps
    ]
