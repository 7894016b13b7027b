# Several emulated nodes in one process (unix port): `micropython firmware/multi.py
# NODES.json`; the nodes file, log lines and exit codes are described in lib/multinode.py.
# Tiny for the same reason as main.py: the port compiles this file from source at start.
import sys


def _paths():
    here = sys.argv[0] if sys.argv and sys.argv[0] else ""
    i = here.rfind("/")
    root = here[:i] if i > 0 else ("/" if i == 0 else ".")
    for p in (root + "/lib", root):
        if p not in sys.path:
            sys.path.insert(0, p)


_paths()
try:
    from multinode import main

    _rc = main(sys.argv)
except KeyboardInterrupt:  # Ctrl-C before the loop started
    _rc = 0
sys.exit(_rc)
