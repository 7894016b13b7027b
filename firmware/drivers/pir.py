# Passive infrared motion sensor (HC-SR501, AM312, ...): a digital output that goes high
# on motion and stays high for the module's hold time. The pin interrupt only records:
# a flag, a count and the tick of the last edge (no allocation, no I/O, so it is safe as
# a hard IRQ). The main loop asks motion(), which also sees a pulse that came and went
# between two polls.
import time


class PIR:
    # pin: a machine.Pin configured as input; ticks_ms: time.ticks_ms (passed in for tests)
    def __init__(self, pin, ticks_ms=None):
        self._pin = pin
        self._ticks = ticks_ms or time.ticks_ms
        self._flag = False
        self.count = 0  # rising edges since start
        self.last_ms = None  # ticks_ms of the last rising edge
        pin.irq(handler=self._irq, trigger=pin.IRQ_RISING)

    def _irq(self, pin):
        self._flag = True
        self.count += 1
        self.last_ms = self._ticks()

    # Motion since the last call (an edge was seen), or the output is high right now.
    # Clears the flag.
    def motion(self):
        f = self._flag
        self._flag = False
        return f or self._pin.value() == 1

    def stop(self):
        self._pin.irq(handler=None)


# Board adapter (boards/esp32.py): "sensors": {"pir": {"pin": 27}} -> "motion"
class Sensor:
    NAMES = ("motion",)

    def __init__(self, board, pin):
        import machine

        self.dev = PIR(machine.Pin(pin, machine.Pin.IN))

    def read(self):
        return {"motion": self.dev.motion()}
