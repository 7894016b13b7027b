# Rounding measurements so they encode small. CBOR writes a float in the shortest width
# that holds it exactly (float16: 3 bytes, float32: 5, float64: 9); 21.3 is not exact in
# any binary format and costs 9 bytes. So values are rounded to binary fractions (steps of
# 1/2, 1/4, ... 1/64), which float16 holds exactly while the magnitude allows (11
# significant bits), and to integers where a unit step is fine: an env reading stays
# around 120 bytes. Steps are chosen below each sensor's accuracy (BME280: +-1 Cel, +-3
# %RH), so nothing meaningful is lost; the cloud shows e.g. 21.25 rather than 21.3.


# x rounded to a multiple of 2**-bits; an int when bits is 0
def q(x, bits=0):
    if not bits:
        return int(round(x))
    s = 1 << bits
    v = round(x * s) / s
    # integral values as ints: 1 byte instead of 3
    return int(v) if v == int(v) else v


# the sensors that failed, named in the one "err" measurement a reading carries for them
# (a failed sensor is reported as an error, never as a made-up value); -> out
def with_err(out, failed):
    if failed:
        out.append(("err", None, ",".join(failed)))
    return out
