# The power-on counter both boards keep in their state dir: one file, "boots", with the
# count as text. A missing or unreadable file counts from 0; a failed write is not fatal
# (the count is for status reports, nothing depends on it). The ESP32 counts only real
# power-ons here, its other resets are counted in RTC memory (boards/bootstate.py).


# -> this boot's number (1 for the first), after writing it back
def count_boot(state_dir):
    p = state_dir + "/boots"
    n = 0
    try:
        with open(p) as f:
            n = int(f.read())
    except (OSError, ValueError):
        pass
    try:
        with open(p, "w") as f:
            f.write(str(n + 1))
    except OSError:
        pass
    return n + 1
