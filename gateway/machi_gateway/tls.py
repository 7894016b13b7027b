"""TLS to the cloud: the one place where the gateway's HTTP clients get their trust settings.

Every client that talks to the cloud (uplink batches, the command long-poll, registry sync)
calls :func:`client_kwargs`, so all of them trust the same anchors and check the same pins.

- ``[cloud] ca_file``: trust only this CA (or this self-signed server certificate) instead
  of the system store: pinning at the trust-anchor level.
- ``[cloud] pin_sha256``: RFC 7469-style pins, base64 SHA-256 of a SubjectPublicKeyInfo.
  The check runs inside the TLS handshake of every new connection: the context's
  ``sslobject_class`` / ``sslsocket_class`` are subclasses whose ``do_handshake`` compares
  the verified chain's keys with the pins as soon as OpenSSL reports the handshake done and
  raises ``ssl.SSLCertVerificationError`` when none matches. httpx/httpcore (and anyio under
  them) only write a request after ``do_handshake`` returned, so a server with the wrong key
  never receives one byte of it (not even the token); the client's TLS 1.3 Finished is not
  sent either, so the server's own handshake fails. Because the hook is in the SSLContext
  and not in a pre-flight request, a pooled client cannot skip it: each new connection
  does a handshake, each handshake checks.
- TLS 1.2 minimum, certificate and hostname verification always on.
- ``http://`` is refused unless the host is loopback or ``[cloud] allow_plain_http``.

``python -m machi_gateway.tls pin FILE.pem|https://host[:port]`` prints the pin of a
certificate (or public key) file or of a server's certificate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import socket
import ssl
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

PIN_BYTES = 32


class PinMismatch(ssl.SSLCertVerificationError):
    """The server's verified chain holds no key matching ``[cloud] pin_sha256``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudTls:
    """``[cloud]``: how the gateway trusts the cloud. Pins are raw 32-byte digests."""

    ca_file: Path | None = None
    pins: tuple[bytes, ...] = ()
    allow_plain_http: bool = False

    def describe(self) -> str:
        trust = f"ca_file {self.ca_file}" if self.ca_file else "system CA store"
        pins = f", {len(self.pins)} pin(s)" if self.pins else ""
        plain = ", plain http allowed" if self.allow_plain_http else ""
        return f"{trust}{pins}{plain}"


def parse_pin(text: Any) -> bytes:
    """One pin as configured (base64 of a SHA-256 digest, optionally ``sha256/``-prefixed)."""
    if not isinstance(text, str):
        raise ValueError(f"a pin must be a base64 string, got {text!r}")
    raw = text.strip().removeprefix("sha256/")
    try:
        digest = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"pin {text!r} is not base64") from None
    if len(digest) != PIN_BYTES:
        raise ValueError(f"pin {text!r} is {len(digest)} bytes, a SHA-256 pin is {PIN_BYTES}")
    return digest


def parse_pins(value: Any) -> tuple[bytes, ...]:
    """``pin_sha256``: one string or a list of strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ValueError(f"must be a base64 string or a list of them, got {value!r}")
    return tuple(parse_pin(p) for p in items)


def spki_sha256(cert_der: bytes) -> bytes:
    """SHA-256 of the certificate's DER SubjectPublicKeyInfo (the RFC 7469 pin)."""
    cert = x509.load_der_x509_certificate(cert_der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def pin_text(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def pins_of_file(path: Path) -> list[tuple[str, str]]:
    """(pin, subject) of every certificate (or of the public key) in a PEM or DER file."""
    data = path.read_bytes()
    if b"-----BEGIN PUBLIC KEY-----" in data:
        key = serialization.load_pem_public_key(data)
        spki = key.public_bytes(serialization.Encoding.DER,
                                serialization.PublicFormat.SubjectPublicKeyInfo)
        return [(pin_text(hashlib.sha256(spki).digest()), "public key")]
    if b"-----BEGIN CERTIFICATE-----" in data:
        certs = x509.load_pem_x509_certificates(data)
    else:
        certs = [x509.load_der_x509_certificate(data)]
    return [(pin_text(spki_sha256(c.public_bytes(serialization.Encoding.DER))),
             c.subject.rfc4514_string()) for c in certs]


def _chain_der(obj: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """DER certificates of the verified chain (leaf first, trust anchor last).

    Python 3.13 has ``get_verified_chain()``; 3.10-3.12 have it on the private ``_sslobj``.
    Without either, the leaf alone (always available)."""
    public = getattr(obj, "get_verified_chain", None)
    if public is not None:
        return [bytes(c) for c in public()]
    inner = getattr(obj, "_sslobj", None)
    private = getattr(inner, "get_verified_chain", None)
    if private is not None:
        der = ssl._ssl.ENCODING_DER  # type: ignore[attr-defined]
        return [c.public_bytes(der) for c in private()]
    leaf = obj.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def check_pins(obj: ssl.SSLObject | ssl.SSLSocket, pins: Iterable[bytes]) -> None:
    """Raise :class:`PinMismatch` unless a key of the verified chain is pinned."""
    wanted = set(pins)
    seen = [spki_sha256(der) for der in _chain_der(obj)]
    if not wanted.intersection(seen):
        got = ", ".join(pin_text(d) for d in seen[:1]) or "none"
        raise PinMismatch(
            f"[cloud] pin_sha256: the server's key does not match any pin (server key "
            f"pin_sha256 = {got}); connection refused before sending anything")


def _pinned_classes(pins: tuple[bytes, ...]) -> tuple[type[ssl.SSLObject], type[ssl.SSLSocket]]:
    """SSLObject (asyncio/anyio) and SSLSocket (blocking) that check pins in the handshake."""

    class PinnedSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()  # SSLWantReadError etc. pass through: not done yet
            check_pins(self, pins)

    class PinnedSSLSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            try:
                check_pins(self, pins)
            except PinMismatch:
                self.close()
                raise

    return PinnedSSLObject, PinnedSSLSocket


def ssl_context(cfg: CloudTls) -> ssl.SSLContext:
    """The client context: verification + hostname check on, TLS 1.2+, our anchors/pins.

    Raises ValueError naming the key when ``ca_file`` cannot be used."""
    if cfg.ca_file is None:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # the system store
    else:
        try:  # with a cafile, only that file is loaded: the system store stays out
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cfg.ca_file))
        except FileNotFoundError:
            raise ValueError(f"[cloud] ca_file: {cfg.ca_file} does not exist") from None
        except OSError as exc:
            raise ValueError(f"[cloud] ca_file: cannot read {cfg.ca_file}: "
                             f"{exc.strerror}") from None
        except ssl.SSLError as exc:
            raise ValueError(f"[cloud] ca_file: {cfg.ca_file} holds no usable PEM "
                             f"certificate ({exc.reason or exc})") from None
        if not ctx.get_ca_certs():
            raise ValueError(f"[cloud] ca_file: {cfg.ca_file} holds no certificate")
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.pins:
        ctx.sslobject_class, ctx.sslsocket_class = _pinned_classes(cfg.pins)
    return ctx


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, cfg: CloudTls) -> None:
    """Refuse a plain-HTTP cloud URL off loopback, and TLS keys that would not apply."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if cfg.ca_file is not None or cfg.pins:
        key = "ca_file" if cfg.ca_file is not None else "pin_sha256"
        raise ValueError(f"[cloud] {key}: set, but [uplink] url {url} is not https://: "
                         "the token and readings would still go in clear")
    if not cfg.allow_plain_http and not is_loopback(parts.hostname or ""):
        raise ValueError(f"[uplink] url: {url} is plain http to a host that is not loopback: "
                         "the token would travel in clear; use https:// or set [cloud] "
                         "allow_plain_http = true")


def client_kwargs(url: str, cfg: CloudTls | None) -> dict[str, Any]:
    """The httpx client arguments for talking to ``url`` (``{}``: httpx defaults).

    ``cfg`` None is for tests with an in-memory transport; the daemon always passes the
    validated ``[cloud]`` section."""
    if cfg is None:
        return {}
    check_url(url, cfg)
    if urlsplit(url).scheme != "https":
        return {}
    # trust_env stays on: an HTTPS_PROXY tunnels (CONNECT) and the handshake inside it is
    # still ours, verified and pinned end to end
    return {"verify": ssl_context(cfg)}


def validate(url: str, cfg: CloudTls) -> None:
    """What ``--check-config`` and the daemon's start check: URL policy and ca_file."""
    check_url(url, cfg)
    ssl_context(cfg)


# ---- `python -m machi_gateway.tls pin TARGET` ------------------------------------------


def server_pins(url: str, timeout_s: float = 10.0) -> list[tuple[str, str]]:
    """The pins of the chain a server presents (unverified: compare it out of band)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout_s) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        chain = getattr(tls, "get_unverified_chain", None) or getattr(
            tls._sslobj, "get_unverified_chain", None)  # type: ignore[attr-defined]
        if chain is None:
            leaf = tls.getpeercert(binary_form=True)
            ders = [leaf] if leaf else []
        else:
            ders = [c if isinstance(c, bytes) else c.public_bytes(
                ssl._ssl.ENCODING_DER) for c in chain()]  # type: ignore[attr-defined]
    return [(pin_text(spki_sha256(d)), x509.load_der_x509_certificate(d).subject
             .rfc4514_string()) for d in ders]


def transport_error(endpoint: str, exc: BaseException) -> str:
    """A log-friendly reason for a failed request; TLS failures say so and why."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError) and not isinstance(cause, PinMismatch):
        return (f"TLS handshake with {endpoint} failed: {cause} (the server's certificate is "
                "not trusted: check [cloud] ca_file and the server's certificate)")
    if cause is not None:
        return f"TLS handshake with {endpoint} failed: {cause}"
    return f"cannot reach {endpoint}: {exc!r}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "pin":
        print("usage: python -m machi_gateway.tls pin CERT.pem|https://host[:port]",
              file=sys.stderr)
        return 2
    target = args[1]
    try:
        if target.startswith("https://"):
            pins = server_pins(target)
            print("# as the server presents them (not verified: compare with the cert file "
                  "or over a second path)")
        else:
            pins = pins_of_file(Path(target))
    except (OSError, ValueError) as exc:
        print(f"error: {target}: {exc}", file=sys.stderr)
        return 1
    for pin, subject in pins:
        print(f"{pin}  {subject}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
