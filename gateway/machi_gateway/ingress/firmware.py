"""Firmware updates for nodes (docs/security.md, "Firmware updates"):
``GET /fw/<type>/manifest`` and ``GET /fw/<type>/image`` from the directory that
``machi release sign`` writes (``<type>.manifest`` + ``<type>.bin``), configured as
``[firmware] dir``.

Block2 (RFC 7959) is done here, statelessly: block N is cut from the file's bytes on every
request. aiocoap's own Block2 support keeps a rendered response only for MAX_TRANSMIT_WAIT
(about 93 s) and answers 4.08 to a later block number, so a node that lost power
mid-download could not resume; here any block can be asked for at any time. Every answer
for the image carries ETag = the first 8 bytes of its SHA-256 (the node compares it with
its signed manifest's digest: a release replaced mid-download is noticed) and Size2.

The gateway holds no key and signs nothing: the node verifies the manifest. The gateway
only refuses to serve a manifest whose size or digest does not match the image next to it
(5.03: a release being copied in), so nodes do not download what they would refuse.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import aiocoap
import aiocoap.resource
import cbor2
from aiocoap.numbers.codes import Code

log = logging.getLogger(__name__)

TYPES = ("env", "bin", "light")
CF_COSE_SIGN1 = 18  # application/cose; cose-type="cose-sign1"
CF_OCTETS = 42
MAX_SZX = 6  # 1024-byte blocks: BERT (SZX 7) is for CoAP over TCP only
RETRY_S = 10


@dataclass(frozen=True, slots=True)
class Release:
    """One type's manifest and image, as read from the directory."""

    manifest: bytes
    image: bytes
    etag: bytes
    stamp: tuple[int, int, int, int]  # (mtime_ns, size) of both files


class ReleaseMismatch(Exception):
    """The manifest does not describe the image next to it."""


def _stamp(man: Path, img: Path) -> tuple[int, int, int, int]:
    a, b = man.stat(), img.stat()
    return (a.st_mtime_ns, a.st_size, b.st_mtime_ns, b.st_size)


def _load(man: Path, img: Path) -> Release:
    stamp = _stamp(man, img)
    manifest, image = man.read_bytes(), img.read_bytes()
    digest = hashlib.sha256(image).digest()
    try:
        obj = cbor2.loads(manifest)
        parts = obj.value if isinstance(obj, cbor2.CBORTag) else obj
        payload = cbor2.loads(parts[2])
        ok = payload["digest"] == digest and payload["size"] == len(image)
    except (cbor2.CBORDecodeError, ValueError, LookupError, TypeError) as exc:
        raise ReleaseMismatch(f"{man}: not a COSE_Sign1 manifest: {exc}") from exc
    if not ok:
        raise ReleaseMismatch(f"{man} does not describe {img} (size or digest)")
    return Release(manifest=manifest, image=image, etag=digest[:8], stamp=stamp)


class FirmwareResource(aiocoap.resource.Resource):  # type: ignore[misc]  # untyped lib
    """Serves ``/fw/<type>/manifest`` and ``/fw/<type>/image``; 4.04 for anything else."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = Path(directory)
        self._cache: dict[str, Release] = {}
        self.served_blocks = 0

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return False  # Block2 is cut here, from the file, for any block at any time

    def _release(self, type_: str) -> Release | None:
        man = self.directory / f"{type_}.manifest"
        img = self.directory / f"{type_}.bin"
        try:
            stamp = _stamp(man, img)
        except OSError:
            return None
        cached = self._cache.get(type_)
        if cached is not None and cached.stamp == stamp:
            return cached
        release = _load(man, img)  # small files, read once per release
        self._cache[type_] = release
        log.info("firmware %s: %d-byte image, etag %s", type_, len(release.image),
                 release.etag.hex())
        return release

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        path = request.opt.uri_path
        if len(path) != 3 or path[0] != "fw" or path[1] not in TYPES \
                or path[2] not in ("manifest", "image"):
            return aiocoap.Message(code=aiocoap.NOT_FOUND)
        if request.code != aiocoap.GET:
            return aiocoap.Message(code=aiocoap.METHOD_NOT_ALLOWED)
        try:
            release = self._release(path[1])
        except (ReleaseMismatch, OSError) as exc:
            log.warning("firmware %s not served: %s", path[1], exc)
            return aiocoap.Message(code=aiocoap.SERVICE_UNAVAILABLE, max_age=RETRY_S)
        if release is None:
            return aiocoap.Message(code=aiocoap.NOT_FOUND)
        if path[2] == "manifest":
            body, cf = release.manifest, CF_COSE_SIGN1
        else:
            body, cf = release.image, CF_OCTETS
        return self._block(request, body, cf, release.etag if path[2] == "image" else None)

    def _block(self, request: aiocoap.Message, body: bytes, cf: int,
               etag: bytes | None) -> aiocoap.Message:
        want = request.opt.block2
        if want is None:
            if len(body) <= 1 << (MAX_SZX + 4):
                msg = aiocoap.Message(code=aiocoap.CONTENT, payload=body, content_format=cf)
                if etag is not None:
                    msg.opt.etag = etag
                return msg
            num, szx = 0, MAX_SZX  # too large for one datagram: the first block
        else:
            num, szx = want.block_number, want.size_exponent
            if szx > MAX_SZX:  # a smaller block than asked is allowed (RFC 7959 §2.2)
                num, szx = num << (szx - MAX_SZX), MAX_SZX
        size = 1 << (szx + 4)
        start = num * size
        if start >= len(body):
            return aiocoap.Message(code=Code.BAD_OPTION, payload=b"block beyond the end")
        end = min(start + size, len(body))
        msg = aiocoap.Message(code=aiocoap.CONTENT, payload=body[start:end], content_format=cf)
        msg.opt.block2 = (num, end < len(body), szx)
        msg.opt.size2 = len(body)
        if etag is not None:
            msg.opt.etag = etag
        self.served_blocks += 1
        return msg
