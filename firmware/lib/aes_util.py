# The raw AES block cipher under both AES modes of the firmware (aes_ccm.py: AES-CCM for
# OSCORE; lorawire.py: AES-CMAC for the LoRa MIC), kept apart so that a node using one mode
# does not load the other. MicroPython's cryptolib gives AES-ECB; a CPython host uses the
# `cryptography` package in its place. Only the forward cipher is needed: CBC-MAC, CTR and
# CMAC all encrypt.
try:
    import cryptolib
except ImportError:  # CPython host tests: `cryptography` stands in for cryptolib
    cryptolib = None  # type: ignore[assignment]  # no cryptolib on CPython


class _HostECB:
    # the cryptolib.aes(key, 1) interface (encrypt(in, out)) over `cryptography`, CPython only
    def __init__(self, key):
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self._enc = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()

    def encrypt(self, block, out):
        out[:] = self._enc.update(bytes(block))


# an object with encrypt(in16, out16) for the key (cryptolib.aes mode 1 = ECB)
def ecb(key):
    if cryptolib is not None:
        return cryptolib.aes(key, 1)
    return _HostECB(key)


# one CBC-MAC step, in place: x = E(x xor blk[off:off + 16]) (aes: from ecb())
def absorb(aes, x, blk, off=0):
    for j in range(16):
        x[j] ^= blk[off + j]
    aes.encrypt(x, x)
