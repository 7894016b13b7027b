# Entry point. On the unix port: `micropython firmware/main.py CONFIG.json` (an emulated
# node); on an ESP32 the board runs main.py at boot and the config is /config.json.
#
# Exit codes: 0 done (count reached and every reading acknowledged) or stopped by Ctrl-C /
# SIGINT; 2 bad config; 3 count reached but the buffer did not drain in drain_timeout_s;
# 4 the seq store is damaged (see lib/seqstore.py: refusing to reuse seqs); 5 the ring
# file does not match the configured geometry (lib/ring.py); 6 safe mode (ESP32: crashed
# again and again, boards/bootstate.py); 7 a firmware update is pending and its report was
# acknowledged: start the node again to boot it (an ESP32 resets itself, lib/fwupdate.py).
# On an ESP32 an exception is recorded in RTC memory (the next status reading reports it)
# and the board resets.
# Readings wait in a ring file (<state_dir>/ring, lib/ring.py) and survive a restart: a
# node started again sends what the last run left, oldest first ("waiting=" on `start`).
# SIGTERM: the unix port has neither `signal` nor `ffi`, so SIGTERM ends the process at
# once (status -15) without a `stop` line; nothing is lost by it (the seq store and the
# ring are crash-safe). Use SIGINT for a clean stop.
# The work is in lib/nodemain.py: this file stays tiny because the port compiles it from
# source at every start (the compiler's heap use would otherwise fragment a small heap);
# everything else can be a precompiled .mpy (firmware/README.md: budgets).
import sys


def _paths():
    # firmware/ and firmware/lib from this script's own location: no MICROPYPATH needed
    here = sys.argv[0] if sys.argv and sys.argv[0] else ""
    i = here.rfind("/")
    root = here[:i] if i > 0 else ("/" if i == 0 else ".")
    for p in (root + "/lib", root):
        if p not in sys.path:
            sys.path.insert(0, p)


_paths()
try:
    from nodemain import main

    _rc = main(sys.argv)
except KeyboardInterrupt:  # Ctrl-C before the loop started
    _rc = 0
sys.exit(_rc)
