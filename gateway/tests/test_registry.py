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
