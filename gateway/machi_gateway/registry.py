"""Known devices, from the JSON file the lead's tools write.

The file is ``{"devices": [{"id": "env-0001", "type": "env"}, ...]}``. :meth:`Registry.watch`
re-reads it when it changes (checked at most once a second), so registering a device
needs no restart; a broken file keeps the last good registry and logs one error per
change, because refusing every node over a half-written file would be worse.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model import DEVICE_RE

log = logging.getLogger(__name__)

_Signature = tuple[int, int, int] | None


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device."""

    id: str
    type: str

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not DEVICE_RE.match(self.id):
            raise ValueError(f"bad device id {self.id!r}")
        if not isinstance(self.type, str):
            raise ValueError(f"device {self.id}: type must be a string")


def parse_devices(text: str) -> dict[str, Device]:
    """Parse the registry file's text; ValueError names what is wrong."""
    doc: Any = json.loads(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("devices"), list):
        raise ValueError('expected {"devices": [...]}')
    out: dict[str, Device] = {}
    for i, item in enumerate(doc["devices"]):
        if not isinstance(item, dict) or "id" not in item:
            raise ValueError(f"devices[{i}]: expected an object with an id")
        dev = Device(id=item["id"], type=item.get("type", ""))
        if dev.id in out:
            raise ValueError(f"devices[{i}]: duplicate id {dev.id!r}")
        out[dev.id] = dev
    return out


class Registry:
    """The set of devices this gateway accepts readings from."""

    def __init__(self, path: Path, *, interval_s: float = 1.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self._devices: dict[str, Device] = {}
        self._signature: _Signature = None
        self.last_error: str | None = None

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices

    def __len__(self) -> int:
        return len(self._devices)

    def get(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

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
        self.last_error = None
        log.info("device registry loaded: %d devices from %s", len(devices), self.path)
        return True

    async def watch(self) -> None:
        """Poll the file forever (cancel to stop)."""
        while True:
            await asyncio.to_thread(self.reload_if_changed)
            await asyncio.sleep(self.interval_s)
