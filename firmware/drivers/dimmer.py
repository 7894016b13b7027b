# PWM lamp dimmer: level 0..100 % to a PWM duty (duty_u16, 0..65535), with an optional
# gamma so equal steps look equally bright (perceived brightness ~ duty ** (1/2.2)), and
# a settable frequency (LED drivers' dimming inputs usually take 100 Hz..20 kHz; 1 kHz is
# the default). 0 % is exactly off and 100 % exactly full on, gamma or not. The PWM is
# passed in (machine.PWM(machine.Pin(n))) so tests use a fake.


class Dimmer:
    def __init__(self, pwm, freq=1000, gamma=None, invert=False):
        if gamma is not None and not 1.0 <= gamma <= 3.0:
            raise ValueError("dimmer: gamma must be 1.0..3.0")
        self._pwm = pwm
        self._gamma = gamma
        self._invert = invert  # for drivers whose input dims on a high level
        self.level = 0
        self.duty = 0
        self.freq(freq)
        self.set(0)

    def freq(self, hz=None):
        if hz is None:
            return self._freq
        if not 1 <= hz <= 40000:
            raise ValueError("dimmer: freq must be 1..40000 Hz")
        self._freq = hz  # type: int
        self._pwm.freq(hz)

    # level in % (int or float, 0..100): anything else is a ValueError, the lamp unchanged
    def set(self, level):
        if not 0 <= level <= 100:
            raise ValueError("dimmer: level must be 0..100")
        if self._gamma is None:
            d = (level * 65535 + 50) // 100 if isinstance(level, int) else int(level * 655.35 + 0.5)
        else:
            d = int(65535 * (level / 100) ** self._gamma + 0.5)
        self.level = level
        self.duty = d
        self._pwm.duty_u16(65535 - d if self._invert else d)

    def off(self):
        self.set(0)


# Not a Sensor: boards build it from a pin, e.g. Dimmer(machine.PWM(machine.Pin(25)))
