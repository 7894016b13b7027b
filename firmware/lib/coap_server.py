# The node's CoAP server path (docs/protocol.md §5 "Push"): an always-on node (a streetlight)
# takes commands the gateway sends at once, outside the ACK of a reading:
#   CON POST /c, Content-Format 60, payload CBOR [cid, name, args, exp]
#   -> ACK 2.04, Content-Format 0, payload the result text ("ok", "err:stale", ...)
# executed through Node._command, the same path as commands in a 2.04 (dedup by cid,
# freshness by exp, the result also reported as cmd/<cid> in the next reading).
# Unknown path 4.04, another method 4.05, another Content-Format 4.15, bad payload 4.00.
#
# Requests arrive on the node's one socket (connected to the gateway, so the kernel drops
# datagrams from anyone else): coap_client hands a CON request to Server.handle, during an
# exchange and while the node idles (Client.listen). NON requests are ignored (the gateway
# sends CON only). A retransmitted CON (same message id: one peer only) gets the same answer
# bytes again from a small cache, without executing again (RFC 7252 §4.5); with OSCORE it is
# not unprotected again either (it would be a replay).
#
# OSCORE (docs/security.md §2.4, §2.10): with the node's oscore section the server uses the
# SAME oscore.Context as the client (one sender sequence space, so the node never reuses a
# nonce of its own), as the server: it unprotects the gateway's request (kid empty, replay
# window of 32) and protects the answer bound to it. The window is in RAM: attach() sets a
# fresh Echo value at every boot, so the first request after a boot gets a protected 4.01
# with Echo and only a request that returns it is taken (captures from before the boot stay
# refused). A plain request to an OSCORE node is refused 4.01: only the gateway that holds
# the device key can command the light. That part is oscore_transport.serve(), loaded only
# on an OSCORE node: a light without OSCORE does not intern its names.
import cbor
import coap

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_CACHE = const(4)  # answers kept for retransmitted CONs (the gateway has one in flight)


class Server:
    # node: a node.Node (its _command executes); transport: where answers go (the client's
    # transport: an OscoreTransport passes responses through unchanged); ctx: the node's
    # oscore.Context or None for plain CoAP
    def __init__(self, node, transport, ctx=None):
        self.node = node
        self._tr = transport
        self.ctx = ctx
        self._cache = []  # (message id, answer bytes), newest last
        self.served = 0  # requests answered (any code)
        self.duplicates = 0  # retransmitted CONs answered from the cache
        self.refused = 0  # requests refused by OSCORE (forged, replayed, plain, echo)

    # A decoded CON/NON request from the gateway (coap_client calls this).
    def handle(self, m):
        if m.mtype != coap.CON:
            return
        mid = m.mid
        for k, out in self._cache:
            if k == mid:
                self.duplicates += 1
                self._send(out)
                return
        out = self._answer(m)
        self._cache.append((mid, out))
        if len(self._cache) > _CACHE:
            self._cache.pop(0)
        self.served += 1
        self._send(out)

    def _send(self, out):
        try:
            self._tr.send(out)
        except OSError:
            pass  # lost like any datagram: the gateway retransmits, the cache answers

    def _answer(self, m):
        if self.ctx is not None:
            import oscore_transport  # loaded already on an OSCORE node

            return oscore_transport.serve(self, m)
        rcode, rpl = self._route(m.code, m.options, m.payload)
        # a result is text/plain; charset=utf-8 (Content-Format 0)
        return coap.encode(coap.ACK, rcode, m.mid, m.token,
                           ((coap.CONTENT_FORMAT, b""),) if rpl else (), rpl)

    def _route(self, code, opts, payload):
        path = []
        cf = None
        for num, val in opts:
            if num == coap.URI_PATH:
                path.append(bytes(val))
            elif num == coap.CONTENT_FORMAT:
                cf = int.from_bytes(bytes(val), "big") if len(val) else 0
        if len(path) != 1 or path[0] != b"c":
            return coap.NOT_FOUND, b""
        if code != coap.POST:
            return coap.METHOD_NOT_ALLOWED, b""
        if cf is not None and cf != coap.CF_CBOR:
            return coap.UNSUPPORTED_CONTENT_FORMAT, b""
        try:
            c = cbor.loads(payload)
        except cbor.CBORError:
            return coap.BAD_REQUEST, b"cbor"
        res = self.node._command(c)
        if res is None:
            return coap.BAD_REQUEST, b"command"
        return coap.CHANGED, res.encode()


# Serve /c on this node: coap_client hands requests over, Node waits on the socket while
# idle. The OSCORE context (if any) is the client's, with a fresh Echo value for this boot.
def attach(node):
    client = node.client
    tr = client.transport
    ctx = getattr(tr, "ctx", None)
    if ctx is not None:
        import oscore_transport

        oscore_transport.fresh_echo(ctx)
    srv = Server(node, tr, ctx)
    client.server = srv.handle
    node.server = srv
    return srv
