"""Every MicroPython test script in `mp/` runs and passes under the real interpreter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

MP_TESTS = Path(__file__).parent / "mp"
VECTORS = Path(__file__).resolve().parents[2] / "tests" / "vectors"
SCRIPTS = sorted(MP_TESTS.glob("test_*.py"))


@pytest.mark.micropython
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script_passes_under_micropython(script: Path, run_mp: Any) -> None:
    result = run_mp(script, str(VECTORS))
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{script.name} failed under micropython:\n{output}"
    assert " passed, 0 failed" in output, output
