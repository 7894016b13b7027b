# `os` for the node on the wasm32 port (harness.py): the port's own (its files live in the
# port's in-memory file system) plus urandom, which the unix port has and this one lacks
import random
from os import *  # noqa: F403


def urandom(n):
    return bytes(random.getrandbits(8) for _ in range(n))
