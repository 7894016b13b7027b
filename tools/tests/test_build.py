"""`machi build`: .mpy files for each board and a manifest whose hashes match them."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from machi_tools.build import BuildError, build, sources, verify
from machi_tools.procs import REPO

Machi = Callable[..., subprocess.CompletedProcess[str]]


@pytest.mark.parametrize("board", ["unix", "esp32"])
def test_build_writes_mpy_files_and_a_matching_manifest(board: str, tmp_path: Path,
                                                        machi: Machi) -> None:
    out = tmp_path / board
    result = machi("build", "--board", board, "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    manifest = json.loads((out / "manifest.json").read_text())
    assert printed["files"] == manifest["files"]
    assert manifest["board"] == board
    assert manifest["version"].startswith("0.")
    files = manifest["files"]
    assert "main.py" in files and "lib/cbor.mpy" in files and "apps/streetlight.mpy" in files
    own, other = ("boards/esp32.mpy", "boards/unix.mpy") if board == "esp32" else \
        ("boards/unix.mpy", "boards/esp32.mpy")
    assert own in files and other not in files
    for rel, entry in files.items():
        data = (out / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], rel
        assert len(data) == entry["size"], rel
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == set(files) | {"manifest.json"}
    # .mpy header: 'M', version 6; the esp32 build names its architecture (xtensawin = 10)
    header = (out / "lib/cbor.mpy").read_bytes()[:4]
    assert header[:2] == b"M\x06"
    assert verify(out) == []
    (out / "lib/cbor.mpy").write_bytes(b"tampered")
    assert verify(out) == ["lib/cbor.mpy"]


def test_esp32_and_unix_builds_differ_only_in_their_hal(tmp_path: Path) -> None:
    unix = {p.as_posix() for p in sources("unix")}
    esp = {p.as_posix() for p in sources("esp32")}
    assert unix ^ esp == {"boards/unix.py", "boards/scenario.py", "boards/esp32.py",
                          "boards/bootstate.py", "boards/slots_unix.py", "boards/slots_esp32.py"}


def test_a_syntax_error_names_the_file_and_line(tmp_path: Path, machi: Machi) -> None:
    fw = tmp_path / "fw"
    shutil.copytree(REPO / "firmware", fw, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    lines = (fw / "lib" / "senml.py").read_text().splitlines()
    lines.insert(9, "def broken(:")
    (fw / "lib" / "senml.py").write_text("\n".join(lines) + "\n")
    result = machi("build", "--out", str(tmp_path / "out"),
                   env={"MACHI_FIRMWARE": str(fw)})
    assert result.returncode == 1
    assert "lib/senml.py:10" in result.stderr, result.stderr
    assert "SyntaxError" in result.stderr
    with pytest.raises(BuildError) as info:
        build("unix", tmp_path / "out2", root=fw)
    assert (info.value.file, info.value.line) == ("lib/senml.py", 10)
    assert not (tmp_path / "out2" / "manifest.json").exists()


def test_unknown_board_is_refused() -> None:
    with pytest.raises(BuildError, match="unknown board"):
        sources("arduino")
