"""Known devices, from the JSON file the tools (or the cloud sync) write.

The file is ``{"devices": [{"id": "env-0001", "type": "env", "short_id": 17,
"key": "<32 hex>", "revoked": false}, ...]}`` (contract C5: ``short_id``, ``key`` and
``revoked`` are optional). LoRa frames name a device by ``short_id``; ``key`` is the
16-byte per-device key (OSCORE master secret / LoRa MIC key); a revoked device is
refused like an unknown one. :meth:`Registry.watch`
re-reads it when it changes (checked at most once a second), so registering a device
needs no restart; a broken file keeps the last good registry and logs one error per
change, because refusing every node over a half-written file would be worse.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import DEVICE_RE

log = logging.getLogger(__name__)

_Signature = tuple[int, int, int] | None


KEY_BYTES = 16


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device."""

    id: str
    type: str
    short_id: int | None = None
    key: bytes | None = field(default=None, repr=False)  # never in logs
    revoked: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not DEVICE_RE.match(self.id):
            raise ValueError(f"bad device id {self.id!r}")
        if not isinstance(self.type, str):
            raise ValueError(f"device {self.id}: type must be a string")
        if self.short_id is not None and (
            isinstance(self.short_id, bool) or not isinstance(self.short_id, int)
            or not 0 <= self.short_id <= 0xFFFF
        ):
            raise ValueError(f"device {self.id}: short_id must be an integer 0..65535")
        if self.key is not None and (not isinstance(self.key, bytes)
                                     or len(self.key) != KEY_BYTES):
            raise ValueError(f"device {self.id}: key must be {KEY_BYTES} bytes")
        if not isinstance(self.revoked, bool):
            raise ValueError(f"device {self.id}: revoked must be true or false")


def _key(i: int, raw: Any) -> bytes | None:
    if raw is None:
        return None
    try:
        key = bytes.fromhex(raw) if isinstance(raw, str) else None
    except ValueError:
        key = None
    if key is None or len(key) != KEY_BYTES:
        raise ValueError(f"devices[{i}]: key must be {2 * KEY_BYTES} hex digits")
    return key


def parse_devices(text: str) -> dict[str, Device]:
    """Parse the registry file's text; ValueError names what is wrong."""
    doc: Any = json.loads(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("devices"), list):
        raise ValueError('expected {"devices": [...]}')
    out: dict[str, Device] = {}
    short_ids: dict[int, str] = {}
    for i, item in enumerate(doc["devices"]):
        if not isinstance(item, dict) or "id" not in item:
            raise ValueError(f"devices[{i}]: expected an object with an id")
        dev = Device(id=item["id"], type=item.get("type") or "",
                     short_id=item.get("short_id"), key=_key(i, item.get("key")),
                     revoked=item.get("revoked", False))
        if dev.id in out:
            raise ValueError(f"devices[{i}]: duplicate id {dev.id!r}")
        if dev.short_id is not None and dev.short_id in short_ids:
            raise ValueError(f"devices[{i}]: short_id {dev.short_id} is also "
                             f"{short_ids[dev.short_id]!r}'s")
        if dev.short_id is not None:
            short_ids[dev.short_id] = dev.id
        out[dev.id] = dev
    return out


def dump_devices(devices: Iterable[Device]) -> str:
    """The registry file's text for ``devices`` (the inverse of :func:`parse_devices`)."""
    items: list[dict[str, Any]] = []
    for d in devices:
        item: dict[str, Any] = {"id": d.id, "type": d.type}
        if d.short_id is not None:
            item["short_id"] = d.short_id
        if d.key is not None:
            item["key"] = d.key.hex()
        if d.revoked:
            item["revoked"] = True
        items.append(item)
    return json.dumps({"devices": items}, indent=1) + "\n"


def write_atomically(path: Path, text: str, *, mode: int = 0o600) -> None:
    """tmp + fsync + rename (+ fsync of the directory): readers see old or new, never half.

    Mode 0600 by default: the file holds device keys.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Registry:
    """The set of devices this gateway accepts readings from."""

    def __init__(self, path: Path, *, interval_s: float = 1.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self._devices: dict[str, Device] = {}
        self._short: dict[int, Device] = {}
        self._signature: _Signature = None
        self.last_error: str | None = None

    def __contains__(self, device_id: object) -> bool:
        """Known *and* not revoked: what the core accepts readings from."""
        dev = self._devices.get(device_id) if isinstance(device_id, str) else None
        return dev is not None and not dev.revoked

    def __len__(self) -> int:
        return len(self._devices)

    def get(self, device_id: str) -> Device | None:
        """The device's entry, revoked or not."""
        return self._devices.get(device_id)

    def by_short_id(self, short_id: int) -> Device | None:
        """The device a LoRa frame names, or None; a revoked device is returned (the
        caller refuses it, and can say why)."""
        return self._short.get(short_id)

    def devices(self) -> list[Device]:
        return list(self._devices.values())

    def _stat(self) -> _Signature:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload_if_changed(self) -> bool:
        """Re-read the file if its mtime/size/inode changed; True if the registry changed.

        Blocking (file I/O): the daemon calls it through ``asyncio.to_thread``.
        """
        sig = self._stat()
        if sig == self._signature:
            return False
        self._signature = sig
        if sig is None:
            self.last_error = f"{self.path}: missing"
            log.error("device registry %s is missing; keeping %d devices", self.path, len(self))
            return False
        try:
            devices = parse_devices(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            self.last_error = f"{self.path}: {exc}"
            log.error("device registry %s is broken (%s); keeping %d devices",
                      self.path, exc, len(self))
            return False
        self._devices = devices
        self._short = {d.short_id: d for d in devices.values() if d.short_id is not None}
        self.last_error = None
        log.info("device registry loaded: %d devices from %s", len(devices), self.path)
        return True

    async def watch(self) -> None:
        """Poll the file forever (cancel to stop)."""
        while True:
            await asyncio.to_thread(self.reload_if_changed)
            await asyncio.sleep(self.interval_s)
