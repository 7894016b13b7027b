# OSCORE (RFC 8613) between coap_client and the real transport (docs/security.md §2): the
# client keeps building and matching plain CoAP, this layer protects what goes out and
# unprotects what comes back, with the interface of transports/udp.py:
#   send(buf)                      a plain CoAP message from the client
#   recv_into(buf, timeout_ms)     -> bytes of a plain (unprotected) message, 0 if none
#
# Out: a request is protected once; the outer message keeps type, message id and token.
# A retransmission (same message id, same bytes) resends the SAME protected bytes: the
# same Partial IV, so a retransmit never costs a nonce and the gateway's CoAP
# deduplication answers it. New content always gets a new sequence number (a new nonce).
# Empty ACK/RST the client sends itself pass through unchanged.
#
# In: a response with the pending request's token is unprotected against that request
# (bound to its kid and Partial IV, RFC 8613 §5.4); the client sees the inner code,
# options and payload. Anything that does not unprotect (forged, bit-flipped, replayed,
# an unprotected 4.01/4.00 from a gateway that does not know us) is dropped and counted
# in `dropped`: the client never sees it, keeps retransmitting and finally gives up, so an
# unauthenticated answer can neither pop nor drop a reading. Empty ACK/RST and messages
# for other tokens pass through (the client ignores or RSTs them); a repeated separate
# response we already took is ACKed here again.
#
# Echo (RFC 9175, RFC 8613 B.1.2): a gateway that lost its replay window answers a
# protected 4.01 with an Echo option; this layer then protects the same request again
# with that Echo value (a new sequence number) and sends it once under its own message id,
# mapping the answer back to the client's id, so the client sees only the final answer.
#
# The sender sequence number lives in a SeqStore under <state_dir>/oscore (block
# reservation on flash): a reboot skips ahead, never reuses a nonce (security.md §2.3).
import coap
import oscore

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_DEBUG = const(False)
_ECHO_MID = const(0x8000)  # the Echo retry goes out under the client's message id + this


class OscoreTransport:
    # inner: a transport (transports/udp.py interface); ctx: an oscore.Context whose
    # Sender ID is this node's and Recipient ID the gateway's
    def __init__(self, inner, ctx, bufsize=1200, rxsize=560):
        self._tr = inner
        self.ctx = ctx
        self._wire = bytearray(bufsize)  # the protected request as sent
        self._out = None  # memoryview of it, resent on retransmission
        self._plain = None  # bytes of the plain request it protects
        self._mid = -1  # the client's message id of the pending request
        self._wmid = -1  # the message id it goes out under (differs after Echo)
        self._token = None
        self._req = None  # oscore.Request of the pending request
        self._echoed = False
        self._rx = bytearray(rxsize)
        self._rxv = memoryview(self._rx)
        self._sep = -1  # mid of the last separate (CON) response accepted
        self.dropped = 0  # responses that did not unprotect
        self.echoes = 0  # Echo challenges followed

    # --- out ---------------------------------------------------------------------------

    def send(self, buf):
        m = None
        try:
            m = coap.decode(buf)
        except coap.CoapError:
            pass
        if m is None:
            raise OSError(22)  # EINVAL: the client never builds such a message
        if m.code == coap.EMPTY or m.code >= 0x20:
            self._tr.send(buf)  # our own empty ACK/RST (or a response): nothing to protect
            return
        if m.mid == self._mid and self._out is not None and bytes(buf) == self._plain:
            self._tr.send(self._out)  # a retransmission: the same protected bytes
            return
        self._plain = bytes(buf)
        self._mid = m.mid
        self._token = m.token
        self._echoed = False
        self._protect(m, m.options, m.mid)
        self._tr.send(self._out)

    def _protect(self, m, options, wmid):
        self._out = None
        self._req = None
        try:
            code, outer, ct, req = self.ctx.protect_request(m.code, options, m.payload)
            self._out = coap.encode(m.mtype, code, wmid, m.token, outer, ct, self._wire)
        except (oscore.OscoreError, coap.CoapError) as e:
            if _DEBUG:
                print("oscore protect", e)
        if self._out is None:
            # too large or sequence numbers exhausted: nothing sane to send; the client
            # counts a network error and the node keeps the reading
            raise OSError(90)  # EMSGSIZE
        self._req = req  # type: ignore[possibly-undefined]  # set when _out is
        self._wmid = wmid

    # --- in ----------------------------------------------------------------------------

    def recv_into(self, buf, timeout_ms):
        n = self._tr.recv_into(self._rxv, timeout_ms)
        if not n:
            return 0
        try:
            m = coap.decode(self._rxv[:n])
        except coap.CoapError:
            return self._copy(self._rxv[:n], buf)  # the client counts it as bad
        if m.mtype == coap.CON and m.mid == self._sep:
            # the gateway repeats a separate response we took (our ACK was lost): ACK it
            # again here, it must not reach the client as an answer to a newer request
            try:
                self._tr.send(coap.encode(coap.ACK, coap.EMPTY, m.mid, b""))
            except OSError:
                pass
            return 0
        if m.mid == self._wmid and self._wmid != self._mid and m.mtype >= coap.ACK:
            m.mid = self._mid  # the answer to our Echo retry: the client's message id
            if m.code == coap.EMPTY:
                return self._copy(coap.encode(m.mtype, 0, m.mid, b""), buf)
        if (m.code < 0x40 or self._req is None or m.token != self._token
                or (m.mtype == coap.ACK and m.mid != self._mid)):
            # not an answer to our request (a piggybacked one carries our message id)
            return self._copy(self._rxv[:n], buf)
        try:
            code, opts, payload = self.ctx.unprotect_response(
                self._req, m.code, m.options, m.payload)
        except oscore.OscoreError as e:
            self.dropped += 1
            if _DEBUG:
                print("oscore drop", e.reason, coap.code_str(m.code))
            return 0
        if code == coap.UNAUTHORIZED and not self._echoed:
            for num, val in opts:
                if num == oscore.OPT_ECHO:
                    self._echo(val)
                    return 0
        if m.mtype == coap.CON:
            self._sep = m.mid
        return self._copy(coap.encode(m.mtype, code, m.mid, m.token, opts, payload), buf)

    def _echo(self, value):
        # the gateway lost its replay window: the same request again, with its Echo value
        self._echoed = True
        self.echoes += 1
        m = coap.decode(self._plain)
        opts = list(m.options)
        opts.append((oscore.OPT_ECHO, value))
        self._protect(m, opts, (self._mid + _ECHO_MID) & 0xFFFF)
        try:
            self._tr.send(self._out)
        except OSError:
            pass  # lost like any datagram: the client's retransmission resends it

    def _copy(self, data, buf):
        k = min(len(data), len(buf))
        buf[:k] = data[:k]
        return k

    # what select.poll can wait on (coap_client.Client.pollable): the inner transport's
    def pollable(self):
        f = getattr(self._tr, "pollable", None)
        if f:
            return f()
        return getattr(self._tr, "_sock", None)

    def close(self):
        close = getattr(self._tr, "close", None)
        if close:
            close()


# An OscoreTransport from the node config's "oscore" section (nodeconfig.py): the node's
# Sender ID is its short_id (2 bytes big-endian), the gateway's is empty, the master
# secret the device key (docs/security.md §2.1). Sequence numbers in <state_dir>/oscore.
def wrap(inner, section, state_dir, block=16):
    import binascii
    import os

    import seqstore

    d = state_dir + "/oscore"
    try:
        os.mkdir(d)
    except OSError:
        pass  # exists
    sid = section["short_id"].to_bytes(2, "big")
    ctx = oscore.Context(sid, b"", binascii.unhexlify(section["key"]),
                         seq_store=seqstore.SeqStore(d, block))
    return OscoreTransport(inner, ctx)


# The answer of coap_server.Server (srv) to a request m on an OSCORE node: unprotected with
# the node's context as the server, routed, protected bound to the request; a request that
# does not unprotect is refused (with a fresh Echo after a boot). Here, not in
# coap_server.py, so a light without OSCORE does not carry these names (firmware/README.md,
# budgets).
def serve(srv, m):
    ctx = srv.ctx
    try:
        req, code, opts, payload = ctx.unprotect_request(m.code, m.options, m.payload)
    except oscore.OscoreError as e:
        srv.refused += 1
        srv.node.log("W", "serve", "refused reason=%s code=%s" % (e.reason,
                                                                  coap.code_str(e.code)))
        if e.reason == "echo":
            c, o, ct = ctx.protect_response(e.request, coap.UNAUTHORIZED,
                                            [(oscore.OPT_ECHO, e.echo)])
            return coap.encode(coap.ACK, c, m.mid, m.token, o, ct)
        return coap.encode(coap.ACK, e.code, m.mid, m.token)
    rcode, rpl = srv._route(code, opts, payload)
    ropts = [(coap.CONTENT_FORMAT, b"")] if rpl else []  # text/plain; charset=utf-8
    c, o, ct = ctx.protect_response(req, rcode, ropts, rpl)
    return coap.encode(coap.ACK, c, m.mid, m.token, o, ct)


# A fresh server-role Echo value for this boot (security.md §2.4): the replay window is in
# RAM, so the first request after a boot must return it (coap_server.attach)
def fresh_echo(ctx):
    import os

    ctx._echo = bytes(os.urandom(8))
