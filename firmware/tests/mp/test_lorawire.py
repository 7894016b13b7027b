# lorawire.py under the real MicroPython: AES-CMAC on cryptolib against RFC 4493 §4, every
# frame of tests/vectors/lora-frames.json encoded byte for byte (command results included),
# and the profile table and result codes equal to the gateway's
# machi_gateway/lora/profiles.json (one table, two copies, this proves it).
import json

import lorawire
import mptest
from mptest import eq, raises, unhex


def _vectors():
    return mptest.load_json("lora-frames.json")


def test_cmac_rfc4493_subkeys_and_examples():
    r = _vectors()["cmac_rfc4493"]
    c = lorawire.Cmac(unhex(r["key"]))
    eq(bytes(c.k1), unhex(r["k1"]))
    eq(bytes(c.k2), unhex(r["k2"]))
    eq(len(r["examples"]), 4)
    for ex in r["examples"]:
        eq(bytes(c.mac(unhex(ex["message"]))), unhex(ex["mac"]), "len %d" % ex["len"])


def test_cmac_rfc4493_literal_values():
    # the four MACs as printed in RFC 4493 §4, not only as the vector file has them
    c = lorawire.Cmac(unhex("2b7e151628aed2a6abf7158809cf4f3c"))
    eq(bytes(c.mac(b"")), unhex("bb1d6929e95937287fa37d129b756746"))
    eq(bytes(c.mac(unhex("6bc1bee22e409f96e93d7e117393172a"))),
       unhex("070a16b46b4d4144f79bdd9dd04a287c"))


def test_every_frame_vector_encodes_exactly():
    v = _vectors()
    keys = {}
    for d in v["devices"]:
        keys[d["id"]] = d
    eq(len(v["frames"]) >= 16, True)
    with_results = 0
    for f in v["frames"]:
        d = keys[f["device"]]
        enc = lorawire.FrameEncoder(f["profile"], d["short_id"], unhex(d["key"]))
        ms = [tuple(m) for m in f["input"]]
        out = enc.encode(f["seq"], ms, f["age_s"])
        eq(bytes(out), unhex(f["hex"]), f["name"])
        eq(len(out), f["bytes"], f["name"])
        if f["results"]:
            with_results += 1
    eq(with_results >= 5, True)  # codes, text, text cut, after an age, cid > 23


def test_encoder_reuses_its_buffer():
    enc = lorawire.FrameEncoder("env", 1, bytes(16))
    a = enc.encode(1, [("temp", "Cel", 20)])
    first = bytes(a)
    enc.encode(2, [("temp", "Cel", 21)])
    eq(bytes(a) != first, True)  # a view of the same buffer: copy what you keep


def test_full_env_frame_fits_24_bytes():
    v = _vectors()
    for f in v["frames"]:
        if f["profile"] == "env" and f["seq"] < (1 << 21) and not f["age_s"]:
            eq(f["bytes"] <= 24, True, f["name"])


def test_profiles_equal_the_gateway_table():
    path = mptest.vectors_dir() + "/../../gateway/machi_gateway/lora/profiles.json"
    with open(path) as fh:
        doc = json.load(fh)
    gw = doc["profiles"]
    eq(len(gw), len(lorawire.PROFILES))
    for p, g in zip(lorawire.PROFILES, gw):
        eq(p[0], g["id"])
        eq(p[1], g["name"])
        eq(len(p[2]), len(g["metrics"]), p[1])
        for m, gm in zip(p[2], g["metrics"]):
            eq(m[0], gm["n"], p[1])
            eq(m[1], gm["u"], m[0])
            eq(m[2], gm["kind"], m[0])
            eq(m[3], gm.get("step", 1), m[0])
            eq(m[4], gm.get("offset", 0), m[0])
            eq(m[5], tuple(gm["values"]) if "values" in gm else None, m[0])
            eq(m[6], gm.get("optional", False), m[0])


def test_varint_edges():
    b = bytearray(10)
    for n, want in ((0, "00"), (127, "7f"), (128, "8001"), (16383, "ff7f"),
                    (16384, "808001"), ((1 << 63) - 1, "ffffffffffffffff7f")):
        end = lorawire.put_varint(b, 0, n)
        eq(bytes(b[:end]), unhex(want), str(n))
    raises(lorawire.FrameError, lorawire.put_varint, b, 0, 1 << 63)
    raises(lorawire.FrameError, lorawire.put_varint, b, 0, -1)


def test_bad_arguments_refused():
    raises(lorawire.FrameError, lorawire.FrameEncoder, "nope", 1, bytes(16))
    raises(lorawire.FrameError, lorawire.FrameEncoder, "env", 0x10000, bytes(16))
    raises(ValueError, lorawire.FrameEncoder, "env", 1, bytes(15))


def test_unknown_names_and_err_are_not_sent():
    enc = lorawire.FrameEncoder("env", 1, bytes(16))
    a = bytes(enc.encode(5, [("temp", "Cel", 20), ("err", None, "hum"), ("x", None, 1),
                             ("cmd/x", None, "ok"), ("cmd/70000", None, "ok")]))
    # array(7): temp k=0, then six nulls; no results map (neither cmd/ name is a uint16)
    eq(a[4:-4], unhex("8700f6f6f6f6f6f6"))


def test_result_codes_equal_the_gateway_table():
    path = mptest.vectors_dir() + "/../../gateway/machi_gateway/lora/profiles.json"
    with open(path) as fh:
        doc = json.load(fh)
    eq(lorawire.RESULTS, tuple(doc["results"]))
    eq(lorawire.RESULTS[0], "ok")


def _body(frame):
    return bytes(frame[4:-4])  # seq < 128: header 4 bytes


def test_results_follow_the_age_and_each_cid_goes_once():
    enc = lorawire.FrameEncoder("env", 1, bytes(16))
    a = _body(enc.encode(5, [("temp", "Cel", 20), ("cmd/2", None, "ok"),
                             ("cmd/2", None, "err:key"), ("cmd/30", None, 7)], 9))
    # array(9): 7 metrics, age 9, {2: 0 ("ok"), 30: "err:bad report"}
    eq(a, unhex("8900f6f6f6f6f6f609a20200181e6e") + b"err:bad report")


def test_result_text_is_cut_to_whole_characters():
    enc = lorawire.FrameEncoder("env", 1, bytes(16))
    long = "err:" + "\u00e9" * 12  # 4 + 24 bytes
    a = _body(enc.encode(5, [("cmd/1", None, long)]))
    want = ("err:" + "\u00e9" * 10).encode()  # 24 bytes: the 11th would split
    eq(a, unhex("88f6f6f6f6f6f6f6a10178") + bytes([len(want)]) + want)


def test_results_that_do_not_fit_the_buffer_are_left_out_not_the_reading():
    enc = lorawire.FrameEncoder("light", 1, bytes(16))
    ms = [("lamp", None, True), ("dim", "%", 37)]
    for cid in range(8):
        ms.append(("cmd/%d" % cid, None, "err:" + "abcdefghij" * 2))  # 26 bytes each
    a = _body(enc.encode(5, ms))
    eq(len(a) + 8 <= 64, True)
    # array(7): lamp, dim, 4 nulls, a map of one: the first result fits, the second not
    eq(a[:10], unhex("87011825f6f6f6f6a100"))
    # nothing fits: the reading goes alone
    ms = [("lamp", None, True), ("cmd/0", None, "x" * 24)]
    small = lorawire.FrameEncoder("light", 1, bytes(16), size=24)
    eq(_body(small.encode(5, ms)), unhex("8601f6f6f6f6f6"))


mptest.run(globals())
