# Streetlight: the lamp is on while it is dark and dims when nobody is around; it reports
# its state, the ambient light it decided from, its power draw and motion.
from quant import q

TYPE = "light"

_ON_BELOW_LX = 50  # dusk: switch on below this ambient light
_IDLE_DIM = 40  # % when on and nobody is near
_RATED_W = 60.0  # LED lamp at 100 %
_STANDBY_W = 0.5  # controller and radio


def sample(board, t):
    s = board.sensor
    lux = s("lux", t)
    motion = bool(s("motion", t))
    lamp = lux < _ON_BELOW_LX
    dim = (100 if motion else _IDLE_DIM) if lamp else 0
    power = _STANDBY_W + _RATED_W * dim / 100.0
    return [
        ("lamp", None, lamp),
        ("dim", "%", dim),
        ("lux", "lx", q(lux)),
        ("power", "W", q(power, 2)),
        ("motion", None, motion),
    ]
