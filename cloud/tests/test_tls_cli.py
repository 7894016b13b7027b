"""`machi-cloud --tls-cert/--tls-key`: refused with a clear message unless both are usable.

Serving HTTPS for real is tested end to end in tools/tests/test_tls_e2e.py (machi-cloud
with TLS, machi-gateway trusting it by ca_file and pin)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from machi_cloud import cli
from machi_tools.devcerts import Pair, make_ca, make_server


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pair, Pair]:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    return make_server(d, ca, stem="a"), make_server(d, ca, stem="b")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["--host", "127.0.0.1", "--port", "0", *argv])
    return code, capsys.readouterr().err


def test_only_one_of_the_two(pairs: tuple[Pair, Pair], capsys: pytest.CaptureFixture[str],
                             tmp_path: Path) -> None:
    a, _ = pairs
    code, err = run(["--tls-cert", str(a.cert)], capsys)
    assert code == 2 and "--tls-cert needs --tls-key as well" in err
    code, err = run(["--tls-key", str(a.key)], capsys)
    assert code == 2 and "--tls-key needs --tls-cert as well" in err


def test_unreadable_file(pairs: tuple[Pair, Pair], capsys: pytest.CaptureFixture[str],
                         tmp_path: Path) -> None:
    a, _ = pairs
    code, err = run(["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(a.key)], capsys)
    assert code == 2 and f"--tls-cert: cannot read {tmp_path / 'nope.pem'}" in err


def test_key_of_another_certificate(pairs: tuple[Pair, Pair],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    a, b = pairs
    code, err = run(["--tls-cert", str(a.cert), "--tls-key", str(b.key)], capsys)
    assert code == 2 and "the key does not match the certificate" in err


def test_not_pem(pairs: tuple[Pair, Pair], capsys: pytest.CaptureFixture[str],
                 tmp_path: Path) -> None:
    a, _ = pairs
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    code, err = run(["--tls-cert", str(junk), "--tls-key", str(a.key)], capsys)
    assert code == 2 and "not a PEM certificate" in err


def test_good_pair_is_accepted(pairs: tuple[Pair, Pair]) -> None:
    a, _ = pairs
    assert cli.check_tls(a.cert, a.key) == (a.cert, a.key)
    assert cli.check_tls(None, None) is None
    assert cli._url("0.0.0.0", 8443, "https") == "https://127.0.0.1:8443"
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(a.cert, a.key)


def test_encrypted_key_is_refused_without_a_prompt(pairs: tuple[Pair, Pair],
                                                   capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    a, _ = pairs
    key = serialization.load_pem_private_key(a.key.read_bytes(), password=None)
    enc = tmp_path / "enc.key"
    enc.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"secret")))
    code, err = run(["--tls-cert", str(a.cert), "--tls-key", str(enc)], capsys)
    assert code == 2 and "the key is encrypted" in err
