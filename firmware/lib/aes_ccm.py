# AES-CCM (RFC 3610, NIST SP 800-38C) built on a raw AES block encryption, because
# MicroPython's `cryptolib` offers AES-ECB/CBC/CTR but no AEAD. OSCORE's default algorithm
# AES-CCM-16-64-128 (COSE alg 10, RFC 8152 §10.2) is M=8 (8-byte tag), L=2 (13-byte nonce);
# both are parameters so the RFC 3610 packet vectors (M=8 and M=10) check the same code.
#
# Only the forward cipher is ever used (CBC-MAC and CTR both encrypt), so one ECB object
# serves encryption and decryption. Block buffers are allocated once per key; a message
# costs one output buffer (or none, with `out`).
#
# Decryption computes the tag over the recovered plaintext and compares it in constant time
# (every byte is looked at whatever the first difference); on a mismatch the plaintext that
# was written is wiped before AuthError is raised, so unauthenticated bytes never escape.
from aes_util import absorb, ecb as aes_ecb

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_BLOCK = const(16)


class AuthError(ValueError):
    pass


class AESCCM:
    # key: 16, 24 or 32 bytes; tag_len M in {4, 6, ..., 16}; L in 2..8 (nonce is 15 - L
    # bytes). ecb: optional object with encrypt(in16, out16) (a fake or hardware AES).
    def __init__(self, key, tag_len=8, L=2, ecb=None):
        if len(key) not in (16, 24, 32):
            raise ValueError("AES key must be 16, 24 or 32 bytes")
        if tag_len < 4 or tag_len > 16 or tag_len & 1:
            raise ValueError("tag length must be even, 4..16")
        if L < 2 or L > 8:
            raise ValueError("L must be 2..8")
        self.tag_len = tag_len
        self.L = L
        self.nonce_len = 15 - L
        self._aes = ecb if ecb is not None else aes_ecb(key)
        self._x = bytearray(_BLOCK)  # CBC-MAC state
        self._a = bytearray(_BLOCK)  # counter block
        self._s = bytearray(_BLOCK)  # keystream block
        self._t = bytearray(_BLOCK)  # scratch block

    # --- the two building blocks ---------------------------------------------------------

    def _mac_start(self, nonce, aad_len, msg_len):
        # B0 = flags | nonce | l(m); then the AAD with its length prefix (RFC 3610 §2.2)
        L = self.L
        if msg_len >> (8 * L):
            raise ValueError("message too long for L=%d" % L)
        b = self._t
        b[0] = (0x40 if aad_len else 0) | ((self.tag_len - 2) // 2) << 3 | (L - 1)
        b[1 : 1 + self.nonce_len] = nonce
        n = msg_len
        for i in range(15, 15 - L, -1):
            b[i] = n & 0xFF
            n >>= 8
        self._aes.encrypt(b, self._x)

    def _mac_aad(self, aad):
        n = len(aad)
        if not n:
            return
        # length prefix: 2 bytes below 0xFF00, else 0xFFFE + 4 bytes (2**32 is plenty here)
        t = self._t
        if n < 0xFF00:
            t[0] = n >> 8
            t[1] = n & 0xFF
            p = 2
        else:
            if n >> 32:
                raise ValueError("AAD too long")
            t[0] = 0xFF
            t[1] = 0xFE
            t[2] = n >> 24
            t[3] = (n >> 16) & 0xFF
            t[4] = (n >> 8) & 0xFF
            t[5] = n & 0xFF
            p = 6
        i = 0
        while True:
            # fill t[p:16] from aad, zero pad, absorb
            while p < _BLOCK and i < n:
                t[p] = aad[i]
                p += 1
                i += 1
            while p < _BLOCK:
                t[p] = 0
                p += 1
            absorb(self._aes, self._x, t)
            if i >= n:
                return
            p = 0

    def _ctr(self, nonce, i):
        # S_i = E(A_i), A_i = (L-1) | nonce | counter i
        a = self._a
        L = self.L
        a[0] = L - 1
        a[1 : 1 + self.nonce_len] = nonce
        for k in range(15, 15 - L, -1):
            a[k] = i & 0xFF
            i >>= 8
        self._aes.encrypt(a, self._s)
        return self._s

    # --- AEAD ------------------------------------------------------------------------------

    def _check_nonce(self, nonce):
        if len(nonce) != self.nonce_len:
            raise ValueError("nonce must be %d bytes" % self.nonce_len)

    # CTR over the n payload bytes of src into out, CBC-MAC over the plaintext (src when
    # encrypting, out when decrypting). Each byte is read before its place in out is
    # written, so out may be src's own buffer (in place).
    def _payload(self, nonce, src, out, n, encrypting):
        t = self._t
        pos = 0
        ctr = 1
        while pos < n:
            k = n - pos
            if k > _BLOCK:
                k = _BLOCK
            s = self._ctr(nonce, ctr)
            for j in range(k):
                v = src[pos + j]
                w = v ^ s[j]
                t[j] = v if encrypting else w
                out[pos + j] = w
            for j in range(k, _BLOCK):
                t[j] = 0
            absorb(self._aes, self._x, t)
            pos += k
            ctr += 1

    # -> ciphertext || tag (len(plaintext) + tag_len bytes), written into `out` if given
    # (a bytearray or memoryview; it may be the plaintext's own buffer: encryption in place)
    def encrypt(self, nonce, plaintext, aad=b"", out=None):
        self._check_nonce(nonce)
        n = len(plaintext)
        M = self.tag_len
        self._mac_start(nonce, len(aad), n)  # checks the length before anything is allocated
        if out is None:
            out = bytearray(n + M)
        elif len(out) < n + M:
            raise ValueError("output buffer too small")
        self._mac_aad(aad)
        self._payload(nonce, plaintext, out, n, True)
        s = self._ctr(nonce, 0)
        x = self._x
        for j in range(M):
            out[n + j] = x[j] ^ s[j]
        return out

    # data = ciphertext || tag -> plaintext (bytearray, or written into `out`); AuthError if
    # the tag does not match (and then nothing of the plaintext is left in `out`)
    def decrypt(self, nonce, data, aad=b"", out=None):
        self._check_nonce(nonce)
        M = self.tag_len
        n = len(data) - M
        if n < 0:
            raise AuthError("shorter than the tag")
        if out is None:
            out = bytearray(n)
        elif len(out) < n:
            raise ValueError("output buffer too small")
        self._mac_start(nonce, len(aad), n)
        self._mac_aad(aad)
        self._payload(nonce, data, out, n, False)
        s = self._ctr(nonce, 0)
        x = self._x
        diff = 0
        for j in range(M):
            diff |= (x[j] ^ s[j]) ^ data[n + j]
        if diff:
            for j in range(n):
                out[j] = 0
            raise AuthError("authentication tag mismatch")
        return out


# Constant-time equality of two byte strings of the same length (length is not secret).
def ct_equal(a, b):
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0
