# Ed25519 signature verification (RFC 8032 §5.1.7), and nothing else: MicroPython has
# neither Ed25519 nor SHA-512, so both are here in plain integer arithmetic on MicroPython's
# long ints. A node verifies one firmware manifest per update, so clarity and strictness
# win over speed (see docs/security.md "Firmware updates" for the time it takes).
#
# Strict rules (a signature is refused, never "repaired"):
#   - public key: y >= p (non-canonical), no square root, or x = 0 with the sign bit set
#   - S >= L (non-canonical S, RFC 8032 §5.1.7 step 1: malleability)
#   - the check is the cofactorless [S]B = R + [k]A, decided by comparing the encoding of
#     [S]B - [k]A with the 32 bytes of R (so a non-canonical R never matches), as OpenSSL
#     (the `cryptography` package that signs our manifests) does.
# Points are in extended coordinates (X, Y, Z, T): x = X/Z, y = Y/Z, x*y = T/Z (§5.1.4).

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
_D2 = (2 * _D) % _P
_SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_B = (_BX, _BY, 1, _BX * _BY % _P)
_O = (0, 1, 1, 0)  # the neutral element

# ---- SHA-512 (FIPS 180-4): hashlib on MicroPython ports has sha256 at most

_M64 = 0xFFFFFFFFFFFFFFFF
_H0 = (0x6a09e667f3bcc908, 0xbb67ae8584caa73b, 0x3c6ef372fe94f82b, 0xa54ff53a5f1d36f1,
       0x510e527fade682d1, 0x9b05688c2b3e6c1f, 0x1f83d9abfb41bd6b, 0x5be0cd19137e2179)
_K = (
    0x428a2f98d728ae22, 0x7137449123ef65cd, 0xb5c0fbcfec4d3b2f, 0xe9b5dba58189dbbc,
    0x3956c25bf348b538, 0x59f111f1b605d019, 0x923f82a4af194f9b, 0xab1c5ed5da6d8118,
    0xd807aa98a3030242, 0x12835b0145706fbe, 0x243185be4ee4b28c, 0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f, 0x80deb1fe3b1696b1, 0x9bdc06a725c71235, 0xc19bf174cf692694,
    0xe49b69c19ef14ad2, 0xefbe4786384f25e3, 0x0fc19dc68b8cd5b5, 0x240ca1cc77ac9c65,
    0x2de92c6f592b0275, 0x4a7484aa6ea6e483, 0x5cb0a9dcbd41fbd4, 0x76f988da831153b5,
    0x983e5152ee66dfab, 0xa831c66d2db43210, 0xb00327c898fb213f, 0xbf597fc7beef0ee4,
    0xc6e00bf33da88fc2, 0xd5a79147930aa725, 0x06ca6351e003826f, 0x142929670a0e6e70,
    0x27b70a8546d22ffc, 0x2e1b21385c26c926, 0x4d2c6dfc5ac42aed, 0x53380d139d95b3df,
    0x650a73548baf63de, 0x766a0abb3c77b2a8, 0x81c2c92e47edaee6, 0x92722c851482353b,
    0xa2bfe8a14cf10364, 0xa81a664bbc423001, 0xc24b8b70d0f89791, 0xc76c51a30654be30,
    0xd192e819d6ef5218, 0xd69906245565a910, 0xf40e35855771202a, 0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8, 0x1e376c085141ab53, 0x2748774cdf8eeb99, 0x34b0bcb5e19b48a8,
    0x391c0cb3c5c95a63, 0x4ed8aa4ae3418acb, 0x5b9cca4f7763e373, 0x682e6ff3d6b2b8a3,
    0x748f82ee5defb2fc, 0x78a5636f43172f60, 0x84c87814a1f0ab72, 0x8cc702081a6439ec,
    0x90befffa23631e28, 0xa4506cebde82bde9, 0xbef9a3f7b2c67915, 0xc67178f2e372532b,
    0xca273eceea26619c, 0xd186b8c721c0c207, 0xeada7dd6cde0eb1e, 0xf57d4f7fee6ed178,
    0x06f067aa72176fba, 0x0a637dc5a2c898a6, 0x113f9804bef90dae, 0x1b710b35131c471b,
    0x28db77f523047d84, 0x32caab7b40c72493, 0x3c9ebe0a15c9bebc, 0x431d67c49c100d4c,
    0x4cc5d4becb3e42b6, 0x597f299cfc657e2a, 0x5fcb6fab3ad6faec, 0x6c44198c4a475817,
)


def _rotr(x, n):
    return ((x >> n) | (x << (64 - n))) & _M64


def sha512(data):
    n = len(data)
    # message | 0x80 | zeros | 128-bit big-endian bit length, to a multiple of 128 bytes
    buf = bytes(data) + b"\x80" + bytes((111 - n) % 128) + (n * 8).to_bytes(16, "big")
    h = list(_H0)
    w = [0] * 80
    for off in range(0, len(buf), 128):
        for i in range(16):
            w[i] = int.from_bytes(buf[off + 8 * i : off + 8 * i + 8], "big")
        for i in range(16, 80):
            x = w[i - 15]
            y = w[i - 2]
            s0 = _rotr(x, 1) ^ _rotr(x, 8) ^ (x >> 7)
            s1 = _rotr(y, 19) ^ _rotr(y, 61) ^ (y >> 6)
            w[i] = (w[i - 16] + s0 + w[i - 7] + s1) & _M64
        a, b, c, d, e, f, g, hh = h
        for i in range(80):
            t1 = (hh + (_rotr(e, 14) ^ _rotr(e, 18) ^ _rotr(e, 41))
                  + ((e & f) ^ ((e ^ _M64) & g)) + _K[i] + w[i])
            t2 = (_rotr(a, 28) ^ _rotr(a, 34) ^ _rotr(a, 39)) + ((a & b) ^ (a & c) ^ (b & c))
            hh = g
            g = f
            f = e
            e = (d + t1) & _M64
            d = c
            c = b
            b = a
            a = (t1 + t2) & _M64
        v = (a, b, c, d, e, f, g, hh)
        for i in range(8):
            h[i] = (h[i] + v[i]) & _M64
    out = b""
    for x in h:
        out += x.to_bytes(8, "big")
    return out


# ---- the curve: edwards25519, a = -1 (RFC 8032 §5.1)


def _add(p, q):
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = t1 * _D2 * t2 % _P
    d = 2 * z1 * z2 % _P
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _double(p):
    x1, y1, z1, _ = p
    a = x1 * x1 % _P
    b = y1 * y1 % _P
    c = 2 * z1 * z1 % _P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1)
    g = a - b
    f = c + g
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


# -> the point, or None (non-canonical y, not on the curve, or a "negative zero" x)
def decode_point(s):
    if len(s) != 32:
        return None
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    v3 = v * v * v % _P
    x = u * v3 * pow(u * v3 * v3 * v % _P, (_P - 5) // 8, _P) % _P
    vx2 = v * x * x % _P
    if vx2 != u:
        if vx2 != _P - u:
            return None
        x = x * _SQRT_M1 % _P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return (x, y, 1, x * y % _P)


def encode_point(p):
    x, y, z, _ = p
    zi = pow(z, _P - 2, _P)
    x = x * zi % _P
    y = y * zi % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


# [a]P + [b]Q (a, b < L < 2^253) in one pass of doublings (Straus/Shamir)
def _double_mul(a, p, b, q):
    table = (None, p, q, _add(p, q))
    r = _O
    i = 252
    while i >= 0:
        r = _double(r)
        k = (a >> i) & 1 | ((b >> i) & 1) << 1
        if k:
            r = _add(r, table[k])
        i -= 1
    return r


# True when sig (64 bytes) is public's (32 bytes) signature of msg; False for anything else,
# including malformed keys and signatures (never raises on bad input).
def verify(public, msg, sig):
    if len(public) != 32 or len(sig) != 64:
        return False
    a = decode_point(public)
    if a is None:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= _L:
        return False
    r = bytes(sig[:32])
    k = int.from_bytes(sha512(r + bytes(public) + bytes(msg)), "little") % _L
    neg_a = ((_P - a[0]) % _P, a[1], a[2], (_P - a[3]) % _P)
    return encode_point(_double_mul(s, _B, k, neg_a)) == r
