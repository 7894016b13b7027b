# Waste bin: fill level (ultrasonic distance turned into %), temperature (fire risk),
# tilt (knocked over) and the battery.
from quant import q

TYPE = "bin"


def sample(board, t):
    s = board.sensor
    return [
        ("fill", "%", q(min(100.0, max(0.0, s("fill", t))))),
        ("temp", "Cel", q(s("temp", t), 2)),
        ("tilt", None, bool(s("tilt", t))),
        ("bat", "V", q(s("bat", t), 6)),
    ]
