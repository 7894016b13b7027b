# The harness itself runs under the real MicroPython and finds the shared vectors.
import sys
import mptest


def test_is_micropython():
    mptest.eq(sys.implementation.name, "micropython")


def test_vectors_readable():
    v = mptest.load_json("senml-readings.json")
    mptest.eq(v[0]["name"], "env-basic")


mptest.run(globals())
