# lib/senml.py under the real MicroPython: the bytes of every tests/vectors/senml-readings.json
# pack, exactly, from the reading it means; plus the heap and time one encode costs.
import gc
import time

import mptest
from mptest import eq, raises

import cbor
import senml


def measurements(reading):
    out = []
    for m in reading["m"]:
        if "v" in m:
            value = m["v"]
        elif "vs" in m:
            value = m["vs"]
        else:
            value = m["vb"]
        out.append((m["n"], m.get("u"), value))
    return out


def encode_vector(enc, vec):
    r = vec["reading"]
    return senml.encode_reading(enc, r["device"], r["seq"], r["time"], measurements(r))


def test_every_vector_byte_identical():
    enc = cbor.Encoder()
    vecs = mptest.load_json("senml-readings.json")
    for vec in vecs:
        eq(bytes(encode_vector(enc, vec)).hex(), vec["hex"], vec["name"])
    assert len(vecs) >= 5, len(vecs)


def test_decodes_to_the_pack():
    enc = cbor.Encoder()
    for vec in mptest.load_json("senml-readings.json"):
        got = cbor.loads(encode_vector(enc, vec))
        want = [dict((int(k), v) for k, v in rec.items()) for rec in vec["senml"]]
        eq(got, want, vec["name"])
        # and the types survive, not just the values (1.0 == 1 in Python)
        for g, w in zip(got, want):
            for k in w:
                eq(type(g[k]), type(w[k]), "%s key %d" % (vec["name"], k))


def test_labels():
    eq(
        (senml.BVER, senml.BN, senml.BT, senml.BU, senml.N, senml.U, senml.V),
        (-1, -2, -3, -4, 0, 1, 2),
    )
    eq((senml.VS, senml.VB, senml.S, senml.T), (3, 4, 5, 6))


def test_bool_is_vb_not_v():
    enc = cbor.Encoder()
    pack = cbor.loads(senml.encode_reading(enc, "d", 1, None, [("a", None, True), ("b", None, 1)]))
    eq(pack[1], {0: "a", 4: True})
    eq(pack[2], {0: "b", 2: 1})
    raises(TypeError, senml.encode_reading, enc, "d", 1, None, [("x", None, b"raw")])


def test_encoder_reused_without_growing():
    enc = cbor.Encoder()
    vecs = mptest.load_json("senml-readings.json")
    encode_vector(enc, vecs[0])
    buf = enc._buf
    size = len(buf)
    for _ in range(3):
        for vec in vecs:
            eq(bytes(encode_vector(enc, vec)).hex(), vec["hex"])
    assert enc._buf is buf, "the encoder reallocated its buffer"
    eq(len(enc._buf), size)
    # too small a start grows once, then stays
    small = cbor.Encoder(16)
    encode_vector(small, vecs[0])
    grown = small._buf
    encode_vector(small, vecs[0])
    assert small._buf is grown


def test_report_heap_and_time_per_env_reading():
    vec = mptest.load_json("senml-readings.json")[0]  # env-basic: 7 measurements
    r = vec["reading"]
    device, seq, bt, ms = r["device"], r["seq"], r["time"], measurements(r)
    enc = cbor.Encoder()
    senml.encode_reading(enc, device, seq, bt, ms)  # warm up
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        out = senml.encode_reading(enc, device, seq, bt, ms)
        allocated = gc.mem_alloc() - before
    finally:
        gc.enable()
    eq(bytes(out).hex(), vec["hex"])
    n = 1000
    t0 = time.ticks_us()
    for _ in range(n):
        senml.encode_reading(enc, device, seq, bt, ms)
    dt = time.ticks_diff(time.ticks_us(), t0)
    print(
        "  env reading: %d bytes, heap allocated per encode %d bytes (encoder buffer %d, "
        "preallocated), %.1f us per encode (unix port)"
        % (len(out), allocated, len(enc._buf), dt / n)
    )
    # a bound that catches a regression to building the pack as Python objects first
    assert allocated < 2048, allocated


mptest.run(globals())
