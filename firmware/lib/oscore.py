# OSCORE (RFC 8613) for the node: one security context per peer with the default algorithms
# AES-CCM-16-64-128 (COSE alg 10) and HKDF-SHA-256, checked against every test vector of
# RFC 8613 Appendix C (tests/vectors/oscore-rfc8613-appendix-c.json) and against aiocoap.
#
# What a message becomes (§4, §5, §6):
#   outer code   POST for a request, 2.04 Changed for a response (the real code is inside)
#   outer opts   the Class U options (Uri-Host, Uri-Port, Proxy-Uri, Proxy-Scheme,
#                Hop-Limit) + the OSCORE option (flags, Partial IV, kid context, kid)
#   payload      AES-CCM(code | Class E options | 0xFF payload), 8-byte tag appended
# Every other option (Uri-Path, Uri-Query, Content-Format, Accept, Max-Age, ETag, Block1/2,
# Echo, ...) is Class E: encrypted, and an outer copy of it is discarded on receipt.
# Observe is not supported (OscoreError "unsupported"): the node never observes.
#
# Nonces are never reused: the sender sequence number comes from a SeqStore (seqstore.py),
# which reserves numbers in blocks on flash before handing them out, so a reboot skips
# ahead instead of repeating (RFC 8613 Appendix B.1.1). Give OSCORE its own store directory,
# separate from the reading seq. Responses reuse the request's nonce (§5.2) unless the
# server asks for a fresh Partial IV (it must when answering the same request twice).
#
# A response is bound to its request (§5.4, §8.4): its AAD carries the request's kid and
# Partial IV and, without its own Partial IV, it is decrypted with the request's nonce, so
# a response to any other request fails authentication. A Request is answered once.
#
# Errors: OscoreError with .reason (a short token, for counters and log lines) and .code
# (the CoAP code a server answers with, §8.2: 4.02 bad option, 4.01 unknown kid or replay,
# 4.00 decryption failed). Reason "echo" (server role, replay window lost at a reboot) also
# carries .request and .echo for the protected 4.01 + Echo answer (see Context).
try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


import aes_ccm
import cbor
import coap
import hkdf

_DEBUG = const(False)

ALG_AES_CCM_16_64_128 = const(10)
OPT_OSCORE = const(9)
OPT_ECHO = const(252)  # RFC 9175, Class E
_OPT_HOP_LIMIT = const(16)
_OPT_PROXY_URI = const(35)
_OPT_PROXY_SCHEME = const(39)

_KEY_LEN = const(16)
_NONCE_LEN = const(13)
_TAG_LEN = const(8)
TAG_LEN = _TAG_LEN
MAX_ID_LEN = const(7)  # nonce length - 6 (§3.3)
_MAX_PIV_LEN = const(5)
MAX_SEQ = const(0xFFFFFFFFFF)  # 2**40 - 1: the Partial IV is at most 5 bytes (§7.2.1)
_WINDOW = const(32)  # replay window of a server (recipient) context, in sequence numbers

# Class U: outer only, visible to proxies (§4.1 Figure 5, RFC 8768 for Hop-Limit)
_CLASS_U = (coap.URI_HOST, coap.URI_PORT, _OPT_HOP_LIMIT, _OPT_PROXY_URI, _OPT_PROXY_SCHEME)


class OscoreError(ValueError):
    def __init__(self, reason, code=coap.BAD_REQUEST, detail=""):
        super().__init__("%s%s" % (reason, (": " + detail) if detail else ""))
        self.reason = reason
        self.code = code
        self.request = self.echo = None  # reason "echo": the request and our Echo value


# ------------------------------------------------------------------ derivation (§3.2)


def _info(ident, id_context, kind, length):
    # info = [id, id_context, alg_aead, type, L] (§3.2.1)
    e = cbor.Encoder(32)
    e.array(5)
    e.bytes(ident)
    if id_context is None:
        e.none()
    else:
        e.bytes(id_context)
    e.int(ALG_AES_CCM_16_64_128)
    e.text(kind)
    e.int(length)
    return bytes(e.getvalue())


# -> (sender_key, recipient_key, common_iv); master_salt b"" means the default (no salt)
def derive(master_secret, master_salt, id_context, sender_id, recipient_id):
    prk = hkdf.extract(master_salt, master_secret)
    sk = hkdf.expand(prk, _info(sender_id, id_context, "Key", _KEY_LEN), _KEY_LEN)
    rk = hkdf.expand(prk, _info(recipient_id, id_context, "Key", _KEY_LEN), _KEY_LEN)
    iv = hkdf.expand(prk, _info(b"", id_context, "IV", _NONCE_LEN), _NONCE_LEN)
    return sk, rk, iv


# ------------------------------------------------------------------ nonce, AAD, option


def piv_bytes(seq):
    # the Partial IV: the sequence number in the fewest bytes, 0 as one zero byte (§6.1)
    if seq < 0 or seq > MAX_SEQ:
        raise OscoreError("seq-exhausted", coap.INTERNAL_SERVER_ERROR)
    if seq == 0:
        return b"\x00"
    k = 0
    t = seq
    while t:
        t >>= 8
        k += 1
    return seq.to_bytes(k, "big")


# §5.2: [size of ID_PIV | ID_PIV left-padded to 7 bytes | PIV left-padded to 5] xor IV
def nonce(common_iv, id_piv, piv):
    n = bytearray(_NONCE_LEN)
    k = len(id_piv)
    n[0] = k
    n[8 - k : 8] = id_piv
    n[_NONCE_LEN - len(piv) : _NONCE_LEN] = piv
    for i in range(_NONCE_LEN):
        n[i] ^= common_iv[i]
    return bytes(n)


# §5.4: Enc_structure ["Encrypt0", h'', external_aad], external_aad = bstr .cbor
# [oscore_version 1, [alg_aead], request_kid, request_piv, options (Class I: none)]
def aad(request_kid, request_piv):
    e = cbor.Encoder(48)
    e.array(5)
    e.int(1)
    e.array(1)
    e.int(ALG_AES_CCM_16_64_128)
    e.bytes(request_kid)
    e.bytes(request_piv)
    e.bytes(b"")
    ext = bytes(e.getvalue())
    e.reset()
    e.array(3)
    e.text("Encrypt0")
    e.bytes(b"")
    e.bytes(ext)
    return bytes(e.getvalue())


# The OSCORE option value (§6.1): flags 000hknnn, Partial IV, [s, kid context], kid.
# piv: b"" for none; kid/kid_context: None for absent (b"" is a present, empty kid).
def encode_option(piv, kid=None, kid_context=None):
    n = len(piv)
    if n > _MAX_PIV_LEN:
        raise OscoreError("format", coap.BAD_OPTION, "Partial IV longer than 5 bytes")
    flags = n | (8 if kid is not None else 0) | (16 if kid_context is not None else 0)
    if not flags:
        return b""  # all zero: the option is empty (§6.1)
    out = bytearray((flags,))
    out.extend(piv)
    if kid_context is not None:
        if len(kid_context) > 255:
            raise OscoreError("format", coap.BAD_OPTION, "kid context longer than 255")
        out.append(len(kid_context))
        out.extend(kid_context)
    if kid is not None:
        out.extend(kid)
    return bytes(out)


# -> (piv bytes (b"" if none), kid or None, kid_context or None); OscoreError (4.02) if
# malformed or using what RFC 8613 reserves
def decode_option(value):
    if not value:
        return b"", None, None
    flags = value[0]
    if flags & 0xE0:
        raise OscoreError("format", coap.BAD_OPTION, "reserved OSCORE flag bits set")
    n = flags & 7
    if n > _MAX_PIV_LEN:
        raise OscoreError("format", coap.BAD_OPTION, "reserved Partial IV length")
    p = 1 + n
    if p > len(value):
        raise OscoreError("format", coap.BAD_OPTION, "truncated Partial IV")
    piv = bytes(value[1:p])
    kid_context = None
    if flags & 16:
        if p >= len(value):
            raise OscoreError("format", coap.BAD_OPTION, "truncated kid context")
        s = value[p]
        p += 1
        if p + s > len(value):
            raise OscoreError("format", coap.BAD_OPTION, "truncated kid context")
        kid_context = bytes(value[p : p + s])
        p += s
    kid = None
    if flags & 8:
        kid = bytes(value[p:])
    elif p != len(value):
        raise OscoreError("format", coap.BAD_OPTION, "bytes after the OSCORE fields")
    return piv, kid, kid_context


def _insert_sorted(opts, item):
    # keep (number, value) pairs ordered by number, stably: repeated options keep order
    i = len(opts)
    while i and opts[i - 1][0] > item[0]:
        i -= 1
    opts.insert(i, item)


def _split(options):
    # -> (inner Class E options in order, outer Class U options in order)
    inner = []  # type: list
    outer = []  # type: list
    for num, val in options:
        if num == coap.OBSERVE:
            raise OscoreError("unsupported", coap.BAD_OPTION, "Observe")
        if num == OPT_OSCORE:
            raise OscoreError("format", coap.BAD_OPTION, "OSCORE option given to protect")
        if num in _CLASS_U:
            _insert_sorted(outer, (num, val))
        else:
            _insert_sorted(inner, (num, val))
    return inner, outer


def _oscore_value(options):
    # the one OSCORE option among the outer options, or None; outer Observe is refused
    found = None
    for num, val in options:
        if num == OPT_OSCORE:
            if found is not None:
                raise OscoreError("format", coap.BAD_OPTION, "repeated OSCORE option")
            found = val
        elif num == coap.OBSERVE:
            raise OscoreError("unsupported", coap.BAD_OPTION, "Observe")
    return found


class Request:
    # What a response is bound to (§5.4, §8.3): the request's kid, Partial IV and nonce.
    # Made by protect_request (client) and unprotect_request (server).
    def __init__(self, kid, piv, nonce_):
        self.kid = kid
        self.piv = piv
        self.nonce = nonce_
        self.answered = False


class _CountingSeq:
    # a sequence number source kept in RAM: only for test vectors and tests, never for a
    # real node (a reboot would restart at `start` and reuse nonces)
    def __init__(self, start=0):
        self._n = start

    def next(self):
        n = self._n
        self._n = n + 1
        return n

    def peek(self):
        return self._n


class Context:
    # sender_id/recipient_id: bytes (0..7); master_secret: bytes (16 for our keys);
    # master_salt: b"" for none; id_context: bytes or None; seq_store: an object with next()
    # (seqstore.SeqStore on a node; None = start at 0 in RAM, tests only).
    # send_kid_context: put the ID Context into requests (default: when there is one).
    # bufsize: largest plaintext (code + options + payload) handled, + the tag.
    # echo: for the server role after a reboot, when the replay window is lost: random bytes
    # (os.urandom(8)); until a request carries them back in an Echo option, requests are
    # refused with reason "echo" and the caller answers protect_response(e.request, 4.01,
    # [(OPT_ECHO, e.echo)]) (RFC 8613 B.1.2, RFC 9175). None: the first request starts the
    # window (no protection against replay of captures from before the reboot).
    def __init__(
        self,
        sender_id,
        recipient_id,
        master_secret,
        master_salt=b"",
        id_context=None,
        seq_store=None,
        send_kid_context=None,
        bufsize=1160,
        echo=None,
    ):
        if len(sender_id) > MAX_ID_LEN or len(recipient_id) > MAX_ID_LEN:
            raise ValueError("Sender/Recipient ID longer than 7 bytes")
        if sender_id == recipient_id:
            raise ValueError("Sender and Recipient ID must differ")
        if not master_secret:
            raise ValueError("empty master secret")
        self.sender_id = bytes(sender_id)
        self.recipient_id = bytes(recipient_id)
        self.id_context = None if id_context is None else bytes(id_context)
        sk, rk, iv = derive(master_secret, master_salt, self.id_context, sender_id, recipient_id)
        self.sender_key = sk
        self.recipient_key = rk
        self.common_iv = iv
        self._send = aes_ccm.AESCCM(sk, _TAG_LEN, 2)
        self._recv = aes_ccm.AESCCM(rk, _TAG_LEN, 2)
        self._seq = seq_store if seq_store is not None else _CountingSeq()
        if send_kid_context is None:
            send_kid_context = self.id_context is not None
        self.send_kid_context = send_kid_context
        self._pbuf = bytearray(bufsize)  # plaintext as a CoAP message (4-byte header)
        self._pmv = memoryview(self._pbuf)
        self._cbuf = bytearray(bufsize)  # ciphertext || tag
        self._cmv = memoryview(self._cbuf)
        # replay window of requests received (server role): highest seq seen and a bitmap
        # of the _WINDOW seqs at and below it; -1 = nothing received since start
        self._top = -1
        self._seen = 0
        self._echo = None if echo is None else bytes(echo)
        # counters, for the node's status line
        self.protected = 0
        self.unprotected = 0
        self.rejected = 0

    # --- shared steps ----------------------------------------------------------------------

    def _seal(self, code, inner, payload, nonce_, aad_):
        # -> memoryview of ciphertext || tag in the context's buffer (valid until next call)
        try:
            m = coap.encode(coap.CON, code, 0, b"", inner, payload, self._pmv)
        except coap.CoapError as e:
            raise OscoreError("format", coap.BAD_REQUEST, str(e)) from e
        n = len(m)
        if n - 3 + _TAG_LEN > len(self._cbuf):
            raise OscoreError("too-large", coap.REQUEST_ENTITY_TOO_LARGE)
        # the plaintext is the message minus ver/type/tkl and message id, code first
        pb = self._pbuf
        pb[3] = code
        out = self._cmv[: n - 3 + _TAG_LEN]
        self._send.encrypt(nonce_, self._pmv[3:n], aad_, out)
        self.protected += 1
        return out

    def _open(self, ciphertext, nonce_, aad_):
        # -> (code, Class E options, payload) from ciphertext || tag
        k = len(ciphertext) - _TAG_LEN
        if k < 1:  # at least the code
            self.rejected += 1
            raise OscoreError("format", coap.BAD_REQUEST, "ciphertext too short")
        if k + 3 > len(self._pbuf):
            self.rejected += 1
            raise OscoreError("too-large", coap.REQUEST_ENTITY_TOO_LARGE)
        try:
            self._recv.decrypt(nonce_, ciphertext, aad_, self._pmv[3 : 3 + k])
        except aes_ccm.AuthError:
            self.rejected += 1
            raise OscoreError("decrypt", coap.BAD_REQUEST, "authentication failed") from None
        # rebuild a CoAP header around it (CON, no token, mid 0) so coap.decode parses the
        # Class E options and payload with all of its format checks
        pb = self._pbuf
        code = pb[3]
        pb[0] = 0x40
        pb[1] = code
        pb[2] = 0
        pb[3] = 0
        try:
            if code == coap.EMPTY:
                raise coap.CoapError("inner code 0.00")
            m = coap.decode(self._pmv[: 3 + k])
        except coap.CoapError as e:
            self.rejected += 1
            raise OscoreError("format", coap.BAD_REQUEST, "inner message: %s" % e) from e
        finally:
            for i in range(3 + k):  # the plaintext does not linger in RAM
                pb[i] = 0
        inner = [(n, v) for n, v in m.options if n not in _CLASS_U and n != OPT_OSCORE]
        return code, inner, m.payload

    def _merge(self, inner, outer_options):
        # decrypted Class E options + the outer Class U ones; outer E copies are discarded
        opts = list(inner)
        for num, val in outer_options:
            if num in _CLASS_U:
                _insert_sorted(opts, (num, val))
        return opts

    # --- client role -------------------------------------------------------------------------

    # options: (number, value) pairs of the unprotected request. -> (outer code, outer
    # options, ciphertext memoryview (valid until the next protect), Request to keep for
    # unprotect_response)
    def protect_request(self, code, options, payload=b""):
        inner, outer = _split(options)
        seq = self._seq.next()
        piv = piv_bytes(seq)
        n = nonce(self.common_iv, self.sender_id, piv)
        a = aad(self.sender_id, piv)
        ct = self._seal(code, inner, payload, n, a)
        kidctx = self.id_context if self.send_kid_context else None
        _insert_sorted(outer, (OPT_OSCORE, encode_option(piv, self.sender_id, kidctx)))
        if _DEBUG:
            print("oscore: request seq", seq)
        return coap.POST, outer, ct, Request(self.sender_id, piv, n)

    # -> (code, options, payload) of the response to `request`. An answer without an OSCORE
    # option (e.g. 4.01 from a server without our context) raises OscoreError "unprotected"
    # with .code = that answer's code.
    def unprotect_response(self, request, outer_code, outer_options, payload):
        value = _oscore_value(outer_options)
        if value is None:
            self.rejected += 1
            raise OscoreError("unprotected", outer_code, "response without OSCORE option")
        if request.answered:
            self.rejected += 1
            raise OscoreError("replay", coap.UNAUTHORIZED, "request already answered")
        piv, kid, _ = decode_option(value)
        if kid is not None and kid != self.recipient_id:
            self.rejected += 1
            raise OscoreError("unknown-kid", coap.UNAUTHORIZED)
        if piv:
            n = nonce(self.common_iv, self.recipient_id, piv)
        else:
            n = request.nonce
        code, inner, pl = self._open(payload, n, aad(request.kid, request.piv))
        if code < 0x40:
            self.rejected += 1
            raise OscoreError("format", coap.BAD_REQUEST, "inner code is not a response")
        request.answered = True
        self.unprotected += 1
        return code, self._merge(inner, outer_options), pl

    # --- server role -------------------------------------------------------------------------

    # -> (Request, code, options, payload). Checks kid (and kid context) against this
    # context, the replay window, then authenticity; the window only moves on success.
    def unprotect_request(self, outer_code, outer_options, payload):
        value = _oscore_value(outer_options)
        if value is None:
            self.rejected += 1
            raise OscoreError("unprotected", coap.UNAUTHORIZED, "no OSCORE option")
        piv, kid, kidctx = decode_option(value)
        if not piv or kid is None:
            self.rejected += 1
            raise OscoreError("format", coap.BAD_OPTION, "request without Partial IV or kid")
        if kid != self.recipient_id or (kidctx is not None and kidctx != self.id_context):
            self.rejected += 1
            raise OscoreError("unknown-kid", coap.UNAUTHORIZED, "security context not found")
        seq = int.from_bytes(piv, "big")
        if self._replayed(seq):
            self.rejected += 1
            raise OscoreError("replay", coap.UNAUTHORIZED, "replay detected")
        n = nonce(self.common_iv, kid, piv)
        code, inner, pl = self._open(payload, n, aad(kid, piv))
        if code >= 0x20:
            self.rejected += 1
            raise OscoreError("format", coap.BAD_REQUEST, "inner code is not a request")
        req = Request(kid, piv, n)
        if self._echo is not None:
            # window unknown: only a request that returns our Echo value is known fresh
            if (OPT_ECHO, self._echo) not in inner:
                self.rejected += 1
                e = OscoreError("echo", coap.UNAUTHORIZED, "replay window unknown: Echo")
                e.request = req
                e.echo = self._echo
                raise e
            self._echo = None
            # everything before this provably fresh request counts as seen (captures
            # from before the reboot stay refused)
            self._top = seq
            self._seen = (1 << _WINDOW) - 1
        self._accept(seq)
        self.unprotected += 1
        return req, code, self._merge(inner, outer_options), pl

    # -> (outer code 2.04, outer options, ciphertext memoryview). fresh_piv: protect with a
    # new Partial IV of our own (§5.2) instead of the request's nonce; forced when this
    # request was answered before, as reusing its nonce for other content would leak both.
    def protect_response(self, request, code, options, payload=b"", fresh_piv=False):
        inner, outer = _split(options)
        if fresh_piv or request.answered:
            piv = piv_bytes(self._seq.next())
            n = nonce(self.common_iv, self.sender_id, piv)
        else:
            piv = b""
            n = request.nonce
        ct = self._seal(code, inner, payload, n, aad(request.kid, request.piv))
        request.answered = True
        _insert_sorted(outer, (OPT_OSCORE, encode_option(piv)))
        return coap.CHANGED, outer, ct

    def _replayed(self, seq):
        if self._top < 0 or seq > self._top:
            return False
        d = self._top - seq
        return d >= _WINDOW or (self._seen >> d) & 1 == 1

    def _accept(self, seq):
        if self._top < 0:
            self._top = seq
            self._seen = 1
        elif seq > self._top:
            shift = seq - self._top
            self._seen = (
                ((self._seen << shift) | 1) & ((1 << _WINDOW) - 1) if shift < _WINDOW else 1
            )
            self._top = seq
        else:
            self._seen |= 1 << (self._top - seq)
