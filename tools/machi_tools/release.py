"""`machi release`: the city's firmware signing key and signed update manifests.

A node accepts an image only with a manifest signed by a key it holds (docs/security.md,
"Firmware updates"): a COSE_Sign1 (RFC 9052) with protected header ``{1: -8}`` (EdDSA), the payload
``{"version", "type", "size", "digest", "name"}`` (digest = SHA-256 of the image) and an
Ed25519 signature over ``["Signature1", protected, h'', payload]``. The node's checker is
``firmware/lib/fwupdate.py``; the signer here uses ``cryptography`` (OpenSSL).

Output of ``sign``: ``OUT/<type>.manifest`` and ``OUT/<type>.bin`` (the image, copied): the
layout the gateway's ``[firmware] dir`` serves and ``mpremote cp`` puts on a board.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from rich.console import Console

TYPES = ("env", "bin", "light")
COSE_SIGN1_TAG = 18
ALG_EDDSA = -8
HDR_ALG = 1
HDR_KID = 4
MAX_VERSION = 2**31 - 1  # a node keeps it in a signed 32-bit NVS slot
MAX_NAME = 64


class ReleaseError(RuntimeError):
    """Signing or checking failed: the message says what to fix."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestInfo:
    version: int
    type: str
    size: int
    digest: bytes
    name: str

    def __post_init__(self) -> None:
        if not 1 <= self.version <= MAX_VERSION:
            raise ReleaseError(f"version must be 1..{MAX_VERSION}, got {self.version}")
        if self.type not in TYPES:
            raise ReleaseError(f"type must be one of {', '.join(TYPES)}, got {self.type!r}")
        if self.size < 1:
            raise ReleaseError("the image is empty")
        if len(self.digest) != 32:
            raise ReleaseError("digest must be 32 bytes (SHA-256)")
        if len(self.name) > MAX_NAME:
            raise ReleaseError(f"name longer than {MAX_NAME} characters")

    def payload(self) -> dict[str, Any]:
        return {"version": self.version, "type": self.type, "size": self.size,
                "digest": self.digest, "name": self.name}


def key_id(public: bytes) -> bytes:
    """The COSE kid we put in the unprotected header: 8 bytes of SHA-256(raw public key)."""
    return hashlib.sha256(public).digest()[:8]


def public_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload])


def make_manifest(key: Ed25519PrivateKey, info: ManifestInfo) -> bytes:
    """The signed manifest (tagged COSE_Sign1) for ``info``."""
    protected = cbor2.dumps({HDR_ALG: ALG_EDDSA})
    payload = cbor2.dumps(info.payload(), canonical=True)
    signature = key.sign(sig_structure(protected, payload))
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [
        protected, {HDR_KID: key_id(public_raw(key))}, payload, signature]))


def verify_manifest(raw: bytes, public_keys: list[bytes]) -> ManifestInfo:
    """The host-side twin of the node's check (structure, alg, signature, fields)."""
    try:
        obj = cbor2.loads(raw)
    except (cbor2.CBORDecodeError, ValueError) as exc:
        raise ReleaseError(f"not CBOR: {exc}") from exc
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != COSE_SIGN1_TAG:
            raise ReleaseError(f"tag {obj.tag} is not COSE_Sign1 (18)")
        obj = obj.value
    if not (isinstance(obj, list | tuple) and len(obj) == 4 and isinstance(obj[0], bytes)
            and isinstance(obj[2], bytes) and isinstance(obj[3], bytes)):
        raise ReleaseError("not a COSE_Sign1 array [protected, unprotected, payload, sig]")
    protected, _, payload, signature = obj
    if cbor2.loads(protected) != {HDR_ALG: ALG_EDDSA}:
        raise ReleaseError("protected header is not {1: -8} (EdDSA)")
    signed = sig_structure(protected, payload)
    for pub in public_keys:
        try:
            Ed25519PublicKey.from_public_bytes(pub).verify(signature, signed)
            break
        except InvalidSignature:
            continue
    else:
        raise ReleaseError("no given public key verifies the signature")
    p = cbor2.loads(payload)
    try:
        return ManifestInfo(version=p["version"], type=p["type"], size=p["size"],
                            digest=p["digest"], name=p["name"])
    except (KeyError, TypeError) as exc:
        raise ReleaseError(f"payload field missing or wrong: {exc}") from exc


# ---- key files


def keygen(prefix: Path) -> tuple[Path, Path]:
    """Write ``<prefix>.key`` (PKCS#8 PEM, mode 0600) and ``<prefix>.pub`` (hex)."""
    key_path, pub_path = prefix.with_suffix(".key"), prefix.with_suffix(".pub")
    for p in (key_path, pub_path):
        if p.exists():
            raise ReleaseError(f"{p} exists: refusing to overwrite a signing key")
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_text(public_raw(key).hex() + "\n")
    return key_path, pub_path


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ReleaseError(f"cannot read the key {path}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise ReleaseError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(f"{path} is not an Ed25519 key (make one with machi release keygen)")
    return key


def load_public(path: Path) -> list[bytes]:
    """Hex public keys, one per line (the node's key file has the same format)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ReleaseError(f"cannot read {path}: {exc.strerror}") from exc
    keys = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                k = bytes.fromhex(line)
            except ValueError as exc:
                raise ReleaseError(f"{path}: not hex: {line[:20]}...") from exc
            if len(k) != 32:
                raise ReleaseError(f"{path}: a public key is 32 bytes, got {len(k)}")
            keys.append(k)
    if not keys:
        raise ReleaseError(f"{path}: no public key in it")
    return keys


def sign_release(*, key: Path, version: int, type: str, bundle: Path, out: Path,
                 name: str | None = None) -> tuple[Path, Path, ManifestInfo]:
    """Sign ``bundle``; write ``out/<type>.manifest`` and ``out/<type>.bin``."""
    signer = load_private(key)
    try:
        image = bundle.read_bytes()
    except OSError as exc:
        raise ReleaseError(f"cannot read the image {bundle}: {exc.strerror}") from exc
    info = ManifestInfo(version=version, type=type, size=len(image),
                        digest=hashlib.sha256(image).digest(), name=name or bundle.name)
    manifest = make_manifest(signer, info)
    out.mkdir(parents=True, exist_ok=True)
    man_path, img_path = out / f"{type}.manifest", out / f"{type}.bin"
    # the image first, the manifest last: a gateway reading the directory meanwhile sees
    # the old manifest (its ETag check stops a node mixing the two)
    tmp = img_path.with_name(f".{img_path.name}.tmp")
    shutil.copyfile(bundle, tmp)
    os.replace(tmp, img_path)
    tmp = man_path.with_name(f".{man_path.name}.tmp")
    tmp.write_bytes(manifest)
    os.replace(tmp, man_path)
    return man_path, img_path, info


# ---- the CLI


EXAMPLES = """examples:
  machi release keygen --out keys/city-fw        keys/city-fw.key (secret) + .pub (hex)
  machi release sign --key keys/city-fw.key --version 7 --type env build/env.bin -o releases
  machi release verify --pub keys/city-fw.pub releases/env.manifest releases/env.bin
"""


def _version(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= v <= MAX_VERSION:
        raise argparse.ArgumentTypeError(f"version must be 1..{MAX_VERSION}, got {v}")
    return v


def add_release_command(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    rel = sub.add_parser("release", help="signing key and signed firmware update manifests",
                         epilog=EXAMPLES, formatter_class=fmt)
    rs = rel.add_subparsers(dest="release_command", required=True)
    k = rs.add_parser("keygen", help="make an Ed25519 signing key pair", epilog=EXAMPLES,
                      formatter_class=fmt)
    k.add_argument("--out", type=Path, required=True, help="path prefix of the .key/.pub files")
    s = rs.add_parser("sign", help="sign an image: OUT/<type>.manifest + OUT/<type>.bin",
                      epilog=EXAMPLES, formatter_class=fmt)
    s.add_argument("--key", type=Path, required=True, help="the .key file from keygen")
    s.add_argument("--version", type=_version, required=True,
                   help="monotonic version (nodes refuse anything <= what they confirmed)")
    s.add_argument("--type", choices=TYPES, required=True, help="the app the image is for")
    s.add_argument("--name", default=None, help="a label (default: the image's file name)")
    s.add_argument("bundle", type=Path, help="the image file")
    s.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    v = rs.add_parser("verify", help="check a manifest (and an image) like a node would",
                      epilog=EXAMPLES, formatter_class=fmt)
    v.add_argument("--pub", type=Path, required=True, help="public key file (hex lines)")
    v.add_argument("manifest", type=Path)
    v.add_argument("image", type=Path, nargs="?", default=None)


def run_release(args: argparse.Namespace, console: Console) -> int:
    try:
        if args.release_command == "keygen":
            key_path, pub_path = keygen(args.out)
            console.print(f"secret key {key_path} (keep it offline), public key {pub_path}: "
                          f"{pub_path.read_text().strip()}")
            return 0
        if args.release_command == "sign":
            man, img, info = sign_release(key=args.key, version=args.version, type=args.type,
                                          bundle=args.bundle, out=args.out, name=args.name)
            console.print(f"{man} + {img}: {info.type} version {info.version}, "
                          f"{info.size} bytes, sha256 {info.digest.hex()}")
            return 0
        info = verify_manifest(args.manifest.read_bytes(), load_public(args.pub))
        if args.image is not None:
            data = args.image.read_bytes()
            if len(data) != info.size or hashlib.sha256(data).digest() != info.digest:
                raise ReleaseError(f"{args.image} does not match the manifest's size/digest")
        console.print(f"ok: {info.type} version {info.version}, {info.size} bytes, "
                      f"name {info.name!r}")
        return 0
    except (ReleaseError, OSError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
