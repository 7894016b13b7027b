"""TLS to the cloud (machi_gateway.tls): config checks, CA trust, SPKI pins, per connection.

The servers here are real TLS servers on 127.0.0.1 (a thread with ``ssl.wrap_socket``) that
record every application byte they receive, so "refused before sending anything" is
checked at the server, not inferred from the client's error.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from machi_gateway import config, tls
from machi_gateway.downlink.cloud import CommandClient
from machi_gateway.errors import ConfigError, UplinkUnavailable
from machi_gateway.model import Reading
from machi_gateway.registry_sync import RegistrySync
from machi_gateway.store import Queued
from machi_gateway.uplink.base import Batch
from machi_gateway.uplink.http import HttpUplink
from machi_tools.devcerts import Pair, make_ca, make_self_signed, make_server

EXE = Path(sys.executable).with_name("machi-gateway")


@dataclass(frozen=True)
class Pki:
    ca: Pair
    other_ca: Pair
    server: Pair  # 127.0.0.1 + localhost, signed by ca
    server2: Pair  # same names, another key, signed by ca
    wrong_name: Pair  # cloud.example only, signed by ca
    self_signed: Pair  # 127.0.0.1 + localhost, its own anchor


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d / "ca")
    return Pki(ca=ca, other_ca=make_ca(d / "other", "other CA"),
               server=make_server(d, ca, stem="server"),
               server2=make_server(d, ca, stem="server2"),
               wrong_name=make_server(d, ca, stem="wrong", hosts=("cloud.example",)),
               self_signed=make_self_signed(d))


def pin_of(pair: Pair) -> str:
    """The pin as the operator guide computes it: SHA-256 of the DER SPKI, base64."""
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@dataclass
class TlsServer:
    """HTTPS on 127.0.0.1; connection i uses certs[i % len]; answers 200 and closes."""

    certs: list[Pair]
    port: int = 0
    connections: int = 0
    handshakes_failed: int = 0
    received: list[bytes] = field(default_factory=list)  # application bytes per connection
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None and self._sock is not None
        self._thread.join(10)
        self._sock.close()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            pair = self.certs[self.connections % len(self.certs)]
            self.connections += 1
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(pair.cert, pair.key)
            conn.settimeout(10)
            data = b""
            try:
                with ctx.wrap_socket(conn, server_side=True) as tconn:
                    while b"\r\n\r\n" not in data:
                        chunk = tconn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if data:
                        body = b'{"ok": true}'
                        tconn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                      b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                                      % (len(body), body))
            except (ssl.SSLError, OSError):
                self.handshakes_failed += 1 if not data else 0
            finally:
                conn.close()
            self.received.append(data)


@pytest.fixture
def server(pki: Pki) -> Iterator[TlsServer]:
    s = TlsServer([pki.server])
    s.start()
    try:
        yield s
    finally:
        s.stop()


def cfg(**kw: object) -> tls.CloudTls:
    return tls.CloudTls(**kw)  # type: ignore[arg-type]


# ---- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(("url", "ok"), [
    ("http://127.0.0.1:8080", True), ("http://localhost:8080", True),
    ("http://[::1]:8080", True), ("http://127.3.4.5", True),
    ("http://cloud.example.org", False), ("http://10.0.0.5:8080", False),
    ("https://cloud.example.org", True),
])
def test_plain_http_only_to_loopback(tmp_path: Path, url: str, ok: bool) -> None:
    doc = {"uplink": {"url": url}}
    if ok:
        config.from_mapping(doc, base_dir=tmp_path)
        return
    with pytest.raises(ConfigError, match=r"^\[uplink\] url: .*allow_plain_http"):
        config.from_mapping(doc, base_dir=tmp_path)
    cfg_ = config.from_mapping({**doc, "cloud": {"allow_plain_http": True}}, base_dir=tmp_path)
    assert cfg_.cloud.allow_plain_http


@pytest.mark.parametrize(("cloud", "message"), [
    ({"pin_sha256": "not base64!"}, "[cloud] pin_sha256: pin 'not base64!' is not base64"),
    ({"pin_sha256": ["AAAA"]}, "[cloud] pin_sha256: pin 'AAAA' is 3 bytes"),
    ({"pin_sha256": 7}, "[cloud] pin_sha256: must be a base64 string"),
    ({"ca_file": "missing.pem"}, "[cloud] ca_file: "),
    ({"ca_file": "junk.pem"}, "[cloud] ca_file: "),
    ({"allow_plain_http": "yes"}, "[cloud] allow_plain_http: must be true or false"),
])
def test_bad_cloud_keys_name_the_key(tmp_path: Path, cloud: dict[str, object],
                                     message: str) -> None:
    (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n"
                                       "-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError) as exc:
        config.from_mapping({"uplink": {"url": "https://cloud.example.org"}, "cloud": cloud},
                            base_dir=tmp_path)
    assert str(exc.value).startswith(message), str(exc.value)


def test_tls_keys_with_plain_http_are_refused(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match=r"^\[cloud\] ca_file: set, but .* not https://"):
        config.from_mapping({"cloud": {"ca_file": str(pki.ca.cert)}}, base_dir=tmp_path)


def test_context_is_strict(pki: Pki) -> None:
    good = config.from_mapping(
        {"uplink": {"url": "https://127.0.0.1:1"},
         "cloud": {"ca_file": str(pki.ca.cert), "pin_sha256": [pin_of(pki.server)]}},
        base_dir=Path("/"))
    assert good.cloud.ca_file == pki.ca.cert and len(good.cloud.pins) == 1
    assert "ca_file" in good.summary() and "1 pin(s)" in good.summary()
    ctx = tls.ssl_context(good.cloud)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert len(ctx.get_ca_certs()) == 1  # only ca_file, not the system store


def test_check_config_cli_refuses_plain_http_off_loopback(tmp_path: Path) -> None:
    p = tmp_path / "g.toml"
    p.write_text('[uplink]\nurl = "http://cloud.example.org"\n')
    out = subprocess.run([str(EXE), "--config", str(p), "--check-config"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert "[uplink] url: http://cloud.example.org is plain http" in out.stderr


def test_pin_helper_prints_the_openssl_pin(pki: Pki, server: TlsServer) -> None:
    from_file = subprocess.run([sys.executable, "-m", "machi_gateway.tls", "pin",
                                str(pki.server.cert)], capture_output=True, text=True,
                               timeout=60, check=True)
    assert from_file.stdout.split()[0] == pin_of(pki.server)
    if shutil.which("openssl"):  # the recipe of the operator guide gives the same pin
        recipe = (f"openssl x509 -in {pki.server.cert} -pubkey -noout | openssl pkey -pubin "
                  "-outform der | openssl dgst -sha256 -binary | base64")
        out = subprocess.run(["sh", "-c", recipe], capture_output=True, text=True,
                             timeout=60, check=True)
        assert out.stdout.strip() == pin_of(pki.server)
    assert tls.server_pins(server.url)[0][0] == pin_of(pki.server)
    bad = subprocess.run([sys.executable, "-m", "machi_gateway.tls", "pin", "/nonexistent"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1 and "/nonexistent" in bad.stderr


# ---- real handshakes ---------------------------------------------------------------------


def client(url: str, c: tls.CloudTls) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=10, **tls.client_kwargs(url, c))


async def test_ca_file_and_pins(pki: Pki, server: TlsServer) -> None:
    ok = [cfg(ca_file=pki.ca.cert),
          cfg(ca_file=pki.ca.cert, pins=tls.parse_pins([pin_of(pki.server)])),
          # a CA key in the verified chain is a valid pin too (RFC 7469 §2.6)
          cfg(ca_file=pki.ca.cert, pins=tls.parse_pins(["A" * 43 + "=", pin_of(pki.ca)]))]
    for c in ok:
        async with client(server.url, c) as h:
            assert (await h.get(server.url + "/x")).status_code == 200
    server.stop()
    assert server.handshakes_failed == 0 and len(server.received) == 3


async def test_self_signed_server_as_its_own_anchor(pki: Pki) -> None:
    s = TlsServer([pki.self_signed])
    s.start()
    try:
        c = cfg(ca_file=pki.self_signed.cert, pins=tls.parse_pins(pin_of(pki.self_signed)))
        async with client(s.url, c) as h:
            assert (await h.get(s.url + "/x")).status_code == 200
        async with client(s.url, cfg(ca_file=pki.ca.cert)) as h:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await h.get(s.url + "/x")
    finally:
        s.stop()


async def test_wrong_ca_refused(pki: Pki, server: TlsServer) -> None:
    async with client(server.url, cfg(ca_file=pki.other_ca.cert)) as h:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await h.get(server.url + "/x")


async def test_hostname_is_verified(pki: Pki) -> None:
    s = TlsServer([pki.wrong_name])
    s.start()
    try:
        async with client(s.url, cfg(ca_file=pki.ca.cert)) as h:
            with pytest.raises(httpx.ConnectError, match="IP address mismatch"):
                await h.get(s.url + "/x")
    finally:
        s.stop()
    assert s.received == [b""]


async def test_pin_mismatch_sends_no_byte(pki: Pki, server: TlsServer,
                                          make_reading: Callable[..., Reading]) -> None:
    """The uplink with a pin of another key: refused in the handshake, the server got no
    request byte (nor the token), the error says which key the server has."""
    c = cfg(ca_file=pki.ca.cert, pins=tls.parse_pins([pin_of(pki.server2)]))
    up = HttpUplink(server.url, token="s3cret-token", timeout_s=10, tls_config=c)
    try:
        with pytest.raises(UplinkUnavailable) as exc:
            await up.send(Batch(gateway="gw-01", batch_id="b1",
                                readings=(Queued.of(make_reading()),)))
    finally:
        await up.aclose()
    assert "TLS handshake with" in str(exc.value) and "pin_sha256" in str(exc.value)
    assert pin_of(pki.server) in str(exc.value)
    server.stop()  # joins the thread: every connection has been recorded
    assert server.connections >= 1 and server.received and all(b == b"" for b in server.received)


@pytest.mark.parametrize("which", ["commands", "registry"])
async def test_downlink_and_registry_clients_use_the_same_tls(
        pki: Pki, server: TlsServer, tmp_path: Path, which: str) -> None:
    """Good ca_file: the request reaches the server; wrong pin: nothing does."""
    async def call(c: tls.CloudTls) -> None:
        if which == "commands":
            cc = CommandClient(server.url, gateway="gw-01", token="t", timeout_s=10,
                               tls_config=c)
            try:
                await cc.fetch(0)
            finally:
                await cc.aclose()
        else:
            rs = RegistrySync(server.url, gateway="gw-01", token="t", timeout_s=10,
                              path=tmp_path / "devices.json", tls_config=c)
            try:
                await rs.sync_once()
            finally:
                await rs.aclose()

    with pytest.raises(UplinkUnavailable, match="malformed"):  # {"ok": true}: TLS was fine
        await call(cfg(ca_file=pki.ca.cert))
    with pytest.raises(UplinkUnavailable, match=r"TLS handshake .* pin_sha256"):
        await call(cfg(ca_file=pki.ca.cert, pins=tls.parse_pins(pin_of(pki.server2))))
    server.stop()
    assert len(server.received) == 2 and server.received[0].startswith(b"GET /v1/gateways/")
    assert server.received[1] == b""


async def test_pin_checked_on_every_new_connection(pki: Pki) -> None:
    """One pooled client, pinned to the first key: the server closes each connection and
    presents another key on the second one, which is refused."""
    s = TlsServer([pki.server, pki.server2])
    s.start()
    try:
        c = cfg(ca_file=pki.ca.cert, pins=tls.parse_pins(pin_of(pki.server)))
        async with client(s.url, c) as h:
            assert (await h.get(s.url + "/one")).status_code == 200
            with pytest.raises(httpx.ConnectError, match="pin_sha256"):
                await h.get(s.url + "/two")
    finally:
        s.stop()
    assert s.connections == 2 and s.received[0].startswith(b"GET /one ")
    assert s.received[1] == b""


def test_blocking_clients_check_pins_too(pki: Pki, server: TlsServer) -> None:
    """The same context in a blocking httpx client (SSLSocket path)."""
    c = cfg(ca_file=pki.ca.cert, pins=tls.parse_pins(pin_of(pki.server2)))
    with httpx.Client(timeout=10, **tls.client_kwargs(server.url, c)) as h, \
            pytest.raises(httpx.ConnectError, match="pin_sha256"):
        h.get(server.url + "/x")
    server.stop()
    assert all(b == b"" for b in server.received)
