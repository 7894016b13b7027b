# UDP transport for the CoAP client (Wi-Fi on an ESP32, loopback on the unix port):
# a connected datagram socket, so the kernel filters datagrams from other peers and an ICMP
# port unreachable surfaces as OSError(ECONNREFUSED) on the next recv, which the client
# treats as "no answer this time".
#   send(buf)                      one datagram
#   recv_into(buf, timeout_ms)     -> bytes received, 0 on timeout
import select
import socket

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_DEBUG = const(False)


class UdpTransport:
    def __init__(self, host, port):
        # resolve once; a node whose gateway moves gets a new config
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
        self._sock = socket.socket(ai[0], socket.SOCK_DGRAM)
        self._sock.connect(ai[-1])
        self._poll = select.poll()
        self._poll.register(self._sock, select.POLLIN)

    def send(self, buf):
        self._sock.send(buf)

    def recv_into(self, buf, timeout_ms):
        if timeout_ms < 0:
            timeout_ms = 0
        if not self._poll.poll(timeout_ms):
            return 0
        # readiness may also be an error (POLLERR): recv raises it as OSError for the client.
        # recv allocates; datagrams are rare (one answer per reading), and readinto on a UDP
        # socket is not available on every port.
        data = self._sock.recv(len(buf))
        n = len(data)
        buf[:n] = data
        return n

    def close(self):
        try:
            self._poll.unregister(self._sock)
        except Exception:
            pass
        self._sock.close()
