"""The device registry follows its file without a restart and survives a broken one."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from machi_gateway.registry import Registry, parse_devices


def _write(path: Path, doc: object, *, bump: int) -> None:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def test_reload_on_change_and_keep_last_good(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                             ) -> None:
    path = tmp_path / "devices.json"
    reg = Registry(path)
    assert not reg.reload_if_changed() and len(reg) == 0  # missing: empty, logged
    _write(path, {"devices": [{"id": "env-0001", "type": "env"}]}, bump=1)
    assert reg.reload_if_changed() and "env-0001" in reg
    assert not reg.reload_if_changed()  # unchanged: not re-read
    _write(path, {"devices": [{"id": "env-0001"}, {"id": "bin-0002", "type": "bin"}]}, bump=2)
    assert reg.reload_if_changed() and "bin-0002" in reg
    _write(path, "{not json", bump=3)
    with caplog.at_level("ERROR"):
        assert not reg.reload_if_changed()
    assert "broken" in caplog.text and "bin-0002" in reg and reg.last_error
    _write(path, {"devices": [{"id": "Bad Id"}]}, bump=4)
    assert not reg.reload_if_changed() and len(reg) == 2


@pytest.mark.parametrize("text", ['[]', '{"devices": {}}', '{"devices": [{"type": "x"}]}',
                                  '{"devices": [{"id": "a"}, {"id": "a"}]}'])
def test_parse_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_devices(text)


async def test_watch_picks_up_a_new_device(tmp_path: Path, until: Any) -> None:
    path = tmp_path / "devices.json"
    _write(path, {"devices": []}, bump=0)
    reg = Registry(path, interval_s=0.05)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(reg.watch())
        await asyncio.sleep(0.1)
        assert "env-0009" not in reg
        _write(path, {"devices": [{"id": "env-0009", "type": "env"}]}, bump=1)
        await until(lambda: "env-0009" in reg, within=5)
        task.cancel()


def test_short_id_key_and_revoked(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    key = "000102030405060708090a0b0c0d0e0f"
    _write(path, {"devices": [
        {"id": "env-0001", "type": "env", "short_id": 0x0101, "key": key},
        {"id": "bin-0002", "type": "bin", "short_id": 7, "key": None, "revoked": True},
        {"id": "light-0001"}]}, bump=1)
    reg = Registry(path)
    assert reg.reload_if_changed()
    dev = reg.by_short_id(0x0101)
    assert dev is not None and dev.id == "env-0001" and dev.key == bytes(range(16))
    assert key not in repr(dev)  # keys never reach a log line
    assert "env-0001" in reg and "light-0001" in reg
    # Revoked: known (by_short_id still finds it, to say why) but not accepted.
    assert "bin-0002" not in reg and reg.get("bin-0002") is not None
    assert reg.by_short_id(7) is not None and reg.by_short_id(8) is None
    # Revocation and key rotation take effect at the next reload, no restart.
    _write(path, {"devices": [{"id": "env-0001", "short_id": 0x0101, "revoked": True}]},
           bump=2)
    assert reg.reload_if_changed() and "env-0001" not in reg
    assert reg.by_short_id(0x0101) is not None and reg.by_short_id(7) is None


@pytest.mark.parametrize("item", [{"short_id": 70000}, {"short_id": True}, {"key": "00"},
                                  {"key": "zz" * 16}, {"revoked": "yes"}])
def test_bad_c5_fields(item: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        parse_devices(json.dumps({"devices": [{"id": "env-0001", **item}]}))


def test_short_ids_are_unique() -> None:
    with pytest.raises(ValueError, match="short_id 3"):
        parse_devices(json.dumps({"devices": [{"id": "a", "short_id": 3},
                                              {"id": "b", "short_id": 3}]}))


async def test_revoked_device_gets_401_reason_revoked(
    tmp_path: Path, store: Any, make_reading: Any
) -> None:
    from machi_gateway.core import Core
    from machi_gateway.errors import UnknownDevice
    from machi_gateway.stats import IngressStats

    path = tmp_path / "devices.json"
    _write(path, {"devices": [{"id": "env-0001", "revoked": True}]}, bump=1)
    reg = Registry(path)
    reg.reload_if_changed()
    stats = IngressStats()
    with pytest.raises(UnknownDevice) as info:
        await Core(reg, store, stats).accept(make_reading())
    assert info.value.code == "4.01" and info.value.reason == "revoked"
    assert stats.rejected["revoked"] == 1 and store.depth == 0
