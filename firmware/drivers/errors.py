# The one error every driver in drivers/ raises when it cannot give a true value: the bus
# failed (no ACK, timeout), the device is missing or is the wrong chip, a CRC or checksum
# did not match, a measurement never finished or the device said "no data". A driver
# never returns a guess instead.
#
# It is an OSError on purpose: the boards (boards/esp32.py Board.sensor) already turn an
# OSError from a driver into an error reading, so a caller that only knows OSError is
# safe too. The message is "<driver>: <reason>" with a short, fixed reason word
# (bus, id, crc, checksum, timeout, nodata, range, ...), so logs and `err_last` stay short.


class SensorError(OSError):
    pass

