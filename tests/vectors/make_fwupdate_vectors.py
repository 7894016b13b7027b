"""Write fwupdate-manifests.json: signed update manifests for the firmware's update tests.

Made with the real signer (tools/machi_tools/release.py, `cryptography`); the firmware checks
them under MicroPython (firmware/tests/mp/test_fwupdate.py) and
firmware/tests/test_fwupdate_process.py checks that this script still writes the same file.
The keys are TEST KEYS (seeds in the clear): never trust them on a real node.

Images are not stored: `image(label, size)` is the concatenation of
SHA-256(label ":" i) for i = 0, 1, ..., cut to size; the MicroPython test computes the same.

    .venv/bin/python tests/vectors/make_fwupdate_vectors.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from machi_tools.release import (
    COSE_SIGN1_TAG,
    ManifestInfo,
    key_id,
    make_manifest,
    public_raw,
    sig_structure,
)

OUT = Path(__file__).with_name("fwupdate-manifests.json")
SEED = hashlib.sha256(b"machi fwupdate test key").digest()
OTHER_SEED = hashlib.sha256(b"machi fwupdate other key").digest()
SIZE = 20_000


def image(label: str, size: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(f"{label}:{i}".encode()).digest()
        i += 1
    return bytes(out[:size])


def info(version: int, type: str, label: str, size: int = SIZE) -> ManifestInfo:
    img = image(label, size)
    return ManifestInfo(version=version, type=type, size=size,
                        digest=hashlib.sha256(img).digest(), name=f"{label}.bin")


def _parts(raw: bytes) -> list[object]:
    return list(cbor2.loads(raw).value)


def vectors() -> dict[str, object]:
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    other = Ed25519PrivateKey.from_private_bytes(OTHER_SEED)
    good = make_manifest(key, info(2, "env", "A"))
    cases: list[dict[str, object]] = []

    def add(name: str, raw: bytes, image: str, expect: str, **extra: object) -> None:
        cases.append({"name": name, "manifest": raw.hex(), "image": image, "expect": expect,
                      **extra})

    add("good", good, "A", "ok", version=2)
    add("good-v3", make_manifest(key, info(3, "env", "B")), "B", "ok", version=3)
    add("good-v5-bin", make_manifest(key, info(5, "bin", "C")), "C", "ok", version=5)
    p = _parts(good)
    sig = bytearray(p[3])  # type: ignore[arg-type]
    sig[10] ^= 0x01
    add("bad-signature", cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [p[0], p[1], p[2],
                                                                     bytes(sig)])),
        "A", "signature")
    add("wrong-key", make_manifest(other, info(2, "env", "A")), "A", "signature")
    tampered = cbor2.loads(p[2])  # type: ignore[arg-type]
    tampered["version"] = 9
    add("tampered-payload", cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [
        p[0], p[1], cbor2.dumps(tampered, canonical=True), p[3]])), "A", "signature")
    add("wrong-type", make_manifest(key, info(2, "bin", "A")), "A", "type")
    add("rollback-v1", make_manifest(key, info(1, "env", "A")), "A", "rollback")
    # signed and well-formed, but the image served is another one: the digest stops it
    add("digest-mismatch", make_manifest(key, info(4, "env", "A")), "B", "digest")
    # a protected header naming ES256 (-7), correctly signed with the Ed25519 key
    protected = cbor2.dumps({1: -7})
    payload = cbor2.dumps(info(2, "env", "A").payload(), canonical=True)
    add("alg-es256", cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [
        protected, {4: key_id(public_raw(key))}, payload,
        key.sign(sig_structure(protected, payload))])), "A", "alg")
    add("untagged", cbor2.dumps(p), "A", "ok", version=2)

    def signed(fields: dict[str, object]) -> bytes:
        # correctly signed, whatever the payload says: only the node's field checks stop it
        prot = cbor2.dumps({1: -8})
        body = cbor2.dumps(fields, canonical=True)
        return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [
            prot, {}, body, key.sign(sig_structure(prot, body))]))

    fields = info(2, "env", "A").payload()
    add("signed-no-digest", signed({k: v for k, v in fields.items() if k != "digest"}),
        "A", "format")
    add("signed-version-0", signed({**fields, "version": 0}), "A", "format")
    add("signed-version-text", signed({**fields, "version": "2"}), "A", "format")
    add("signed-unknown-type", signed({**fields, "type": "lamp"}), "A", "format")
    add("signed-short-digest", signed({**fields, "digest": b"\x00" * 31}), "A", "format")
    add("not-cbor", b"\xa1\x01", "A", "format")
    add("too-large", make_manifest(key, info(6, "env", "A", 300_000)), "A", "too-large")
    return {
        "about": "Signed firmware update manifests (COSE_Sign1, Ed25519) with TEST keys; "
                 "written by make_fwupdate_vectors.py. image(label, size) = SHA-256(label:i) "
                 "for i = 0.. concatenated, cut to size.",
        "public_key": public_raw(key).hex(),
        "other_public_key": public_raw(other).hex(),
        "size": SIZE,
        "cases": cases,
    }


def text() -> str:
    return json.dumps(vectors(), indent=1) + "\n"


if __name__ == "__main__":
    OUT.write_text(text())
    print(f"wrote {OUT}")
