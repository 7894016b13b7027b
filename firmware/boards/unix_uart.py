# The unix board's UART for the NB-IoT modem (lib/nodelinks.py nbiot): a serial device
# or the pty of tools' emulated modem. A module of its own so that nodes on other links do
# not carry its code on their heap (firmware/README.md, budgets).


class PtyUart:
    # machine.UART's write/any/readinto over a tty file. A blocking FileIO's readinto waits
    # for the whole buffer, so bytes are taken one at a time while poll says one is there.
    def __init__(self, path):
        import select

        self._f = open(path, "r+b")
        self._poll = select.poll()
        self._poll.register(self._f, select.POLLIN)
        self._one = bytearray(1)

    def write(self, buf):
        return self._f.write(buf)

    def any(self):
        return 1 if self._poll.poll(0) else 0

    def readinto(self, buf):
        mv = memoryview(buf)
        n = 0
        while n < len(buf) and self._poll.poll(0):
            if not self._f.readinto(mv[n:n + 1]):
                break
            n += 1
        return n

    def close(self):
        self._f.close()
