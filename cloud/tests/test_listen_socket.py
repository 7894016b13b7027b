"""The service's listening socket: connections accepted on it have Nagle off.

`machi-cloud` binds its socket itself (so `--port 0` works) and hands it to uvicorn. asyncio
sets TCP_NODELAY only on accepted sockets whose `proto` is IPPROTO_TCP; a socket made with
protocol 0 got none, and every answer then waited ~40 ms for the client's delayed ACK
between its head and its body (cli.bind's docstring). Checked on the accepted socket
itself, not by timing.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from machi_cloud.cli import bind


async def _accepted_nodelay(host: str) -> int:
    """TCP_NODELAY of the server side of one connection to a socket from `bind()`."""
    sock = bind(host, 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            conn = transport.get_extra_info("socket")
            accepted.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Server, sock=sock)
    try:
        port = sock.getsockname()[1]
        _, writer = await asyncio.open_connection(host, port)
        try:
            return await asyncio.wait_for(accepted, 10)
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_bind_names_tcp() -> None:
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_accepted_connections_have_nagle_off() -> None:
    assert asyncio.run(_accepted_nodelay("127.0.0.1")) != 0


def test_accepted_connections_have_nagle_off_on_ipv6() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")
    assert asyncio.run(_accepted_nodelay("::1")) != 0
