"""Registry sync (contract C4): the cloud's device list becomes devices.json, atomically;
the registry follows it; a cloud outage keeps the last file."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from machi_gateway.errors import UplinkRefused, UplinkUnavailable
from machi_gateway.registry import Registry
from machi_gateway.registry_sync import RegistrySync

KEY = "00112233445566778899aabbccddeeff"


async def test_sync_writes_the_file_and_revocation_follows(
    tmp_path: Path, control_cloud: Any
) -> None:
    path = tmp_path / "devices.json"
    control_cloud.devices = [
        {"id": "env-0001", "type": "env", "short_id": 257, "key": KEY, "revoked": False,
         "lat": 35.68, "lon": 139.76},
        {"id": "light-0001", "type": "light", "short_id": None, "key": None,
         "revoked": False, "lat": None, "lon": None},
        {"id": "Bad Id", "type": "env"},  # skipped, logged
    ]
    sync = RegistrySync(control_cloud.url, gateway="gw-01", token=control_cloud.token,
                        path=path, interval_s=0.1)
    try:
        assert await sync.sync_once()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds keys
        doc = json.loads(path.read_text())
        assert [d["id"] for d in doc["devices"]] == ["env-0001", "light-0001"]
        reg = Registry(path)
        assert reg.reload_if_changed()
        dev = reg.by_short_id(257)
        assert dev is not None and dev.key == bytes.fromhex(KEY) and "env-0001" in reg
        assert not await sync.sync_once()  # unchanged: not rewritten
        control_cloud.devices[0]["revoked"] = True
        assert await sync.sync_once()
        assert reg.reload_if_changed() and "env-0001" not in reg
        # Outage: the file stays as it was.
        before = path.read_text()
        control_cloud.fail_next = 1
        with pytest.raises(UplinkUnavailable):
            await sync.sync_once()
        assert path.read_text() == before
    finally:
        await sync.aclose()
    bad = RegistrySync(control_cloud.url, gateway="gw-01", token="wrong", path=path)
    try:
        with pytest.raises(UplinkRefused):
            await bad.sync_once()
    finally:
        await bad.aclose()
