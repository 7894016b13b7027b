# HKDF-SHA-256 (RFC 5869) and the HMAC-SHA-256 (RFC 2104) under it, on hashlib.sha256 alone:
# MicroPython has no `hmac` module and its sha256 objects cannot be copied, so each HMAC
# hashes the padded key afresh. OSCORE (RFC 8613 §3.2.1) derives its keys with it; that
# happens once per security context, so clarity wins over speed here.
import hashlib

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_BLOCK = const(64)  # SHA-256 block size
HASH_LEN = const(32)


def _pads(key):
    # (key xor ipad, key xor opad), each one block; a key longer than a block is hashed first
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    ik = bytearray(_BLOCK)
    ok = bytearray(_BLOCK)
    for i in range(_BLOCK):
        k = key[i] if i < len(key) else 0
        ik[i] = k ^ 0x36
        ok[i] = k ^ 0x5C
    return ik, ok


def hmac_sha256(key, msg):
    ik, ok = _pads(key)
    h = hashlib.sha256(ik)
    h.update(msg)
    inner = h.digest()
    h = hashlib.sha256(ok)
    h.update(inner)
    return h.digest()


# PRK = HMAC(salt, IKM); an absent salt is HashLen zero bytes (the same HMAC key as b"")
def extract(salt, ikm):
    return hmac_sha256(salt if salt else bytes(HASH_LEN), ikm)


# OKM = T(1) | T(2) | ... cut to `length`, T(i) = HMAC(PRK, T(i-1) | info | i)
def expand(prk, info, length):
    if length > 255 * HASH_LEN:
        raise ValueError("HKDF output too long")
    ik, ok = _pads(prk)
    out = bytearray()
    t = b""
    i = 1
    while len(out) < length:
        h = hashlib.sha256(ik)
        h.update(t)
        h.update(info)
        h.update(bytes((i,)))
        inner = h.digest()
        h = hashlib.sha256(ok)
        h.update(inner)
        t = h.digest()
        out.extend(t)
        i += 1
    return bytes(out[:length])


def hkdf(salt, ikm, info, length):
    return expand(extract(salt, ikm), info, length)
