# hkdf.py under the real MicroPython: RFC 5869 test cases 1-3 (PRK and OKM) and the HMAC
# under it against RFC 4231 (including a key longer than the SHA-256 block).
import hkdf
import mptest
from mptest import eq, raises, unhex


def _range(a, b):
    return bytes(range(a, b))


# RFC 5869 Appendix A.1-A.3 (SHA-256): ikm, salt, info, L, PRK, OKM
RFC5869 = [
    (
        b"\x0b" * 22,
        _range(0x00, 0x0D),
        _range(0xF0, 0xFA),
        42,
        "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        _range(0x00, 0x50),
        _range(0x60, 0xB0),
        _range(0xB0, 0x100),
        82,
        "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (
        b"\x0b" * 22,
        b"",
        b"",
        42,
        "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


def test_rfc5869_extract():
    for ikm, salt, _info, _n, prk, _okm in RFC5869:
        eq(hkdf.extract(salt, ikm), unhex(prk))


def test_rfc5869_expand():
    for _ikm, _salt, info, n, prk, okm in RFC5869:
        out = hkdf.expand(unhex(prk), info, n)
        eq(len(out), n)
        eq(out, unhex(okm))


def test_rfc5869_one_call():
    for ikm, salt, info, n, _prk, okm in RFC5869:
        eq(hkdf.hkdf(salt, ikm, info, n), unhex(okm))


def test_hmac_rfc4231():
    # RFC 4231 test case 2 (short key) and 6 (131-byte key: hashed first)
    eq(
        hkdf.hmac_sha256(b"Jefe", b"what do ya want for nothing?"),
        unhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    )
    eq(
        hkdf.hmac_sha256(b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First"),
        unhex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    )


def test_prefix_property_and_limits():
    # a shorter output is a prefix of a longer one; more than 255 blocks is refused
    prk = unhex(RFC5869[0][4])
    eq(hkdf.expand(prk, b"x", 13), hkdf.expand(prk, b"x", 40)[:13])
    eq(hkdf.expand(prk, b"", 0), b"")
    raises(ValueError, hkdf.expand, prk, b"", 255 * 32 + 1)


mptest.run(globals())
