# aes_ccm.py under the real MicroPython (cryptolib's AES-ECB underneath): all 24 RFC 3610
# packet vectors (M=8 and M=10, L=2), the AEAD step of every RFC 8613 Appendix C message
# (AES-CCM-16-64-128), in-place operation, and rejection of every single-bit change.
import aes_ccm
import mptest
from mptest import eq, raises, unhex


def _rfc3610():
    return mptest.load_json("aes-ccm-rfc3610.json")["vectors"]


def _oscore_messages():
    d = mptest.load_json("oscore-rfc8613-appendix-c.json")
    return d["requests"] + d["responses"]


def test_rfc3610_all_packet_vectors_encrypt():
    vs = _rfc3610()
    eq(len(vs), 24)
    for v in vs:
        c = aes_ccm.AESCCM(unhex(v["key"]), v["tag_len"], v["L"])
        out = c.encrypt(unhex(v["nonce"]), unhex(v["plaintext"]), unhex(v["aad"]))
        eq(bytes(out), unhex(v["ciphertext_and_tag"]), v["name"])


def test_rfc3610_all_packet_vectors_decrypt():
    for v in _rfc3610():
        c = aes_ccm.AESCCM(unhex(v["key"]), v["tag_len"], v["L"])
        pt = c.decrypt(unhex(v["nonce"]), unhex(v["ciphertext_and_tag"]), unhex(v["aad"]))
        eq(bytes(pt), unhex(v["plaintext"]), v["name"])


def test_oscore_appendix_c_aead():
    ms = _oscore_messages()
    eq(len(ms), 5)  # C.4 - C.8
    for m in ms:
        c = aes_ccm.AESCCM(unhex(m["encryption_key"]), 8, 2)
        out = c.encrypt(unhex(m["nonce"]), unhex(m["plaintext"]), unhex(m["aad"]))
        eq(bytes(out), unhex(m["ciphertext"]), m["name"])
        pt = c.decrypt(unhex(m["nonce"]), unhex(m["ciphertext"]), unhex(m["aad"]))
        eq(bytes(pt), unhex(m["plaintext"]), m["name"])


def test_in_place_and_into_buffer():
    v = _rfc3610()[2]  # 25-byte message: one full block and a partial one
    key, nonce, aad = unhex(v["key"]), unhex(v["nonce"]), unhex(v["aad"])
    pt = unhex(v["plaintext"])
    c = aes_ccm.AESCCM(key, v["tag_len"], 2)
    buf = bytearray(64)
    mv = memoryview(buf)
    mv[: len(pt)] = pt
    c.encrypt(nonce, mv[: len(pt)], aad, mv)  # in place, tag appended
    n = len(pt) + v["tag_len"]
    eq(bytes(buf[:n]), unhex(v["ciphertext_and_tag"]))
    out = bytearray(len(pt))
    c.decrypt(nonce, mv[:n], aad, out)
    eq(bytes(out), pt)


def test_empty_message_and_empty_aad_round_trip():
    c = aes_ccm.AESCCM(bytes(range(16)))
    nonce = bytes(13)
    for pt, aad in ((b"", b""), (b"", b"a"), (b"x", b""), (b"y" * 33, b"z" * 300)):
        ct = c.encrypt(nonce, pt, aad)
        eq(len(ct), len(pt) + 8)
        eq(bytes(c.decrypt(nonce, ct, aad)), pt)


def test_long_aad_uses_six_byte_length():
    # 0xFF00 bytes and more switch the AAD length prefix to 0xFFFE + 4 bytes (RFC 3610 §2.2)
    c = aes_ccm.AESCCM(bytes(range(16)))
    nonce = bytes(range(13))
    aad = b"\x5a" * 0xFF00
    ct = c.encrypt(nonce, b"hi", aad)
    eq(bytes(c.decrypt(nonce, ct, aad)), b"hi")
    raises(aes_ccm.AuthError, c.decrypt, nonce, ct, aad[:-1])


def test_every_bit_flip_is_rejected_and_output_wiped():
    m = _oscore_messages()[3]  # C.7: 14-byte plaintext, 22-byte ciphertext
    c = aes_ccm.AESCCM(unhex(m["encryption_key"]))
    nonce, aad, ct = unhex(m["nonce"]), unhex(m["aad"]), unhex(m["ciphertext"])
    out = bytearray(len(ct) - 8)
    rejected = 0
    for i in range(len(ct)):
        for bit in range(8):
            bad = bytearray(ct)
            bad[i] ^= 1 << bit
            try:
                c.decrypt(nonce, bad, aad, out)
            except aes_ccm.AuthError:
                rejected += 1
                eq(out, bytearray(len(out)), "plaintext left after a failed decrypt")
    eq(rejected, len(ct) * 8)
    # a changed nonce or AAD fails too; a truncated input is shorter than the tag
    bad_nonce = bytearray(nonce)
    bad_nonce[12] ^= 1
    raises(aes_ccm.AuthError, c.decrypt, bytes(bad_nonce), ct, aad)
    raises(aes_ccm.AuthError, c.decrypt, nonce, ct, aad + b"\x00")
    raises(aes_ccm.AuthError, c.decrypt, nonce, ct[:7], aad)


def test_parameters_checked():
    raises(ValueError, aes_ccm.AESCCM, bytes(15))
    raises(ValueError, aes_ccm.AESCCM, bytes(16), 7)
    raises(ValueError, aes_ccm.AESCCM, bytes(16), 8, 1)
    c = aes_ccm.AESCCM(bytes(16))
    raises(ValueError, c.encrypt, bytes(12), b"", b"")
    # L=2 limits the message to 65535 bytes
    raises(ValueError, c.encrypt, bytes(13), bytes(65536), b"")


def test_ct_equal():
    eq(aes_ccm.ct_equal(b"abc", b"abc"), True)
    eq(aes_ccm.ct_equal(b"abc", b"abd"), False)
    eq(aes_ccm.ct_equal(b"abc", b"ab"), False)


mptest.run(globals())
