# `sys` for the node on the wasm32 port (harness.py): the port's own, but with the unix
# port's platform, by which lib/nodemain.py picks boards/unix.py
from sys import *  # noqa: F403

platform = "linux"
