"""/fw/<type>/manifest and /image (ingress/firmware.py) behind the real CoapIngress, asked by
aiocoap as a client: Block2 blocks cut statelessly (any block, any time), ETag and Size2,
aiocoap's own blockwise client gets the whole image, and the refusals."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from machi_gateway.ingress.coap import CoapIngress
from machi_gateway.ingress.firmware import FirmwareResource
from machi_gateway.model import Reading
from machi_tools.release import ManifestInfo, make_manifest

SIZE = 5000


class NoSink:
    """Readings are not what these tests send; a refusal is only counted."""

    def __init__(self) -> None:
        self.rejects: list[str] = []

    async def accept(self, reading: Reading, fits: Any = None) -> object:
        raise AssertionError("no reading expected")

    def rejected(self, transport: str, reason: str) -> None:
        self.rejects.append(reason)


def _sign(fw_dir: Path, image: bytes, version: int = 2) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    man = make_manifest(key, ManifestInfo(version=version, type="env", size=len(image),
                                          digest=hashlib.sha256(image).digest(), name="t"))
    (fw_dir / "env.bin").write_bytes(image)
    (fw_dir / "env.manifest").write_bytes(man)
    return man


class Fw:
    def __init__(self, client: aiocoap.Context, port: int, fw_dir: Path, sink: NoSink) -> None:
        self.client, self.port, self.dir, self.sink = client, port, fw_dir, sink

    async def get(self, path: str, block2: tuple[int, bool, int] | None = None,
                  code: Code = aiocoap.GET) -> aiocoap.Message:
        msg = aiocoap.Message(code=code, uri=f"coap://127.0.0.1:{self.port}/{path}")
        if block2 is not None:
            msg.opt.block2 = block2
        return await self.client.request(msg, handle_blockwise=block2 is None).response


@pytest.fixture
async def fw(tmp_path: Path) -> AsyncIterator[Fw]:
    sink = NoSink()
    async with CoapIngress(sink, host="127.0.0.1", port=0, max_payload=1024,  # type: ignore[arg-type]
                           others=FirmwareResource(tmp_path)) as coap:
        client = await aiocoap.Context.create_client_context()
        try:
            yield Fw(client, coap.address[1], tmp_path, sink)
        finally:
            await client.shutdown()


async def test_blocks_etag_size2_and_whole_image(fw: Fw) -> None:
    image = os.urandom(SIZE)
    man = _sign(fw.dir, image)
    etag = hashlib.sha256(image).digest()[:8]
    r = await fw.get("fw/env/manifest")
    assert r.code == aiocoap.CONTENT and r.payload == man and r.opt.content_format == 18
    assert r.opt.block2 is None
    # any block, out of order, with the total size and the image's ETag
    for num in (3, 0, 9):
        r = await fw.get("fw/env/image", (num, False, 5))
        assert r.code == aiocoap.CONTENT, r
        assert r.payload == image[num * 512:(num + 1) * 512]
        assert tuple(r.opt.block2) == (num, num < 9, 5)
        assert r.opt.size2 == SIZE and r.opt.etag == etag and r.opt.content_format == 42
    r = await fw.get("fw/env/image", (10, False, 5))
    assert r.code == Code.BAD_OPTION
    # aiocoap's own blockwise client: block 0 unasked (1024 B), then the rest
    r = await fw.get("fw/env/image")
    assert r.code == aiocoap.CONTENT and r.payload == image


async def test_refusals(fw: Fw) -> None:
    image = os.urandom(SIZE)
    assert (await fw.get("fw/env/image", (0, False, 5))).code == aiocoap.NOT_FOUND  # none yet
    _sign(fw.dir, image)
    assert (await fw.get("fw/bin/image", (0, False, 5))).code == aiocoap.NOT_FOUND
    assert (await fw.get("fw/env/other")).code == aiocoap.NOT_FOUND
    assert (await fw.get("fw/env")).code == aiocoap.NOT_FOUND
    r = await fw.get("fw/env/image", (0, False, 5), code=aiocoap.POST)
    assert r.code == aiocoap.METHOD_NOT_ALLOWED
    # an image replaced without a new manifest is not served (a release being copied in)
    (fw.dir / "env.bin").write_bytes(os.urandom(SIZE))
    r = await fw.get("fw/env/image", (0, False, 5))
    assert r.code == aiocoap.SERVICE_UNAVAILABLE and r.opt.max_age == 10
    new = os.urandom(SIZE + 1)
    _sign(fw.dir, new, version=3)
    r = await fw.get("fw/env/image", (0, False, 5))
    assert r.code == aiocoap.CONTENT and r.opt.etag == hashlib.sha256(new).digest()[:8]
    # /r is still the reading resource
    r = await fw.client.request(aiocoap.Message(
        code=aiocoap.POST, uri=f"coap://127.0.0.1:{fw.port}/r", payload=b"\x00")).response
    assert r.code == Code.UNSUPPORTED_CONTENT_FORMAT and fw.sink.rejects == ["wrong-format"]
