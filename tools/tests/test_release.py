"""`machi release`: keygen, sign, verify, and the errors a release engineer can make."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from machi_tools.cli import main
from machi_tools.release import ReleaseError, key_id, verify_manifest


def _said(capsys: pytest.CaptureFixture[str]) -> str:
    """What the command printed, with rich's line wrapping undone."""
    return " ".join(capsys.readouterr().out.split())


def _keys(tmp_path: Path) -> tuple[Path, Path]:
    assert main(["release", "keygen", "--out", str(tmp_path / "k" / "city")]) == 0
    return tmp_path / "k" / "city.key", tmp_path / "k" / "city.pub"


def test_sign_writes_a_cose_sign1_the_key_verifies(tmp_path: Path) -> None:
    key, pub = _keys(tmp_path)
    assert key.stat().st_mode & 0o777 == 0o600
    image = b"\x01\x02" * 3000
    (tmp_path / "img").write_bytes(image)
    out = tmp_path / "out"
    assert main(["release", "sign", "--key", str(key), "--version", "7", "--type", "light",
                 str(tmp_path / "img"), "-o", str(out)]) == 0
    raw = (out / "light.manifest").read_bytes()
    assert (out / "light.bin").read_bytes() == image
    tag = cbor2.loads(raw)
    assert tag.tag == 18
    protected, unprotected, payload, sig = tag.value
    assert cbor2.loads(protected) == {1: -8}
    pub_raw = bytes.fromhex(pub.read_text().strip())
    assert unprotected == {4: key_id(pub_raw)}
    Ed25519PublicKey.from_public_bytes(pub_raw).verify(
        sig, cbor2.dumps(["Signature1", protected, b"", payload]))
    assert cbor2.loads(payload) == {"version": 7, "type": "light", "size": len(image),
                                    "digest": hashlib.sha256(image).digest(), "name": "img"}
    assert main(["release", "verify", "--pub", str(pub), str(out / "light.manifest"),
                 str(out / "light.bin")]) == 0


def test_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, pub = _keys(tmp_path)
    assert main(["release", "keygen", "--out", str(tmp_path / "k" / "city")]) == 1
    assert "refusing to overwrite" in _said(capsys)
    img = tmp_path / "img"
    img.write_bytes(b"x" * 100)
    out = str(tmp_path / "out")
    for bad in ("0", "-1", "2147483648", "x"):
        with pytest.raises(SystemExit) as exc:
            main(["release", "sign", "--key", str(key), "--version", bad, "--type", "env",
                  str(img), "-o", out])
        assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["release", "sign", "--key", str(key), "--version", "1", "--type", "lamp",
              str(img), "-o", out])
    capsys.readouterr()
    assert main(["release", "sign", "--key", str(tmp_path / "none.key"), "--version", "1",
                 "--type", "env", str(img), "-o", out]) == 1
    assert "cannot read the key" in _said(capsys)
    ec = tmp_path / "ec.key"
    ec.write_bytes(generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    assert main(["release", "sign", "--key", str(ec), "--version", "1", "--type", "env",
                 str(img), "-o", out]) == 1
    assert "not an Ed25519 key" in _said(capsys)
    (tmp_path / "empty").write_bytes(b"")
    assert main(["release", "sign", "--key", str(key), "--version", "1", "--type", "env",
                 str(tmp_path / "empty"), "-o", out]) == 1
    assert "empty" in _said(capsys)
    assert main(["release", "sign", "--key", str(key), "--version", "1", "--type", "env",
                 str(img), "-o", out]) == 0
    # another key, another image: verify says so
    other = tmp_path / "other"
    assert main(["release", "keygen", "--out", str(other)]) == 0
    capsys.readouterr()
    assert main(["release", "verify", "--pub", str(other.with_suffix(".pub")),
                 f"{out}/env.manifest"]) == 1
    assert "no given public key verifies" in _said(capsys)
    img.write_bytes(b"y" * 100)
    assert main(["release", "verify", "--pub", str(pub), f"{out}/env.manifest",
                 str(img)]) == 1
    assert "does not match" in _said(capsys)
    with pytest.raises(ReleaseError, match="not CBOR"):
        verify_manifest(b"\xff", [])
