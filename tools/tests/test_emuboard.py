"""The emulated board speaks the raw REPL that mpremote uses, soft reset included."""

from __future__ import annotations

import subprocess
import time

from machi_tools.emuboard import EmuBoard
from machi_tools.procs import executable


def mpremote(board: EmuBoard, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([executable("mpremote"), "connect", board.port, *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_mpremote_command_line_works_against_the_emulated_board(emuboard: EmuBoard) -> None:
    result = mpremote(emuboard, "exec", "open('hello.txt','w').write('hi')", "+",
                      "fs", "ls", ":", "+", "exec", "import os; print(os.getcwd())")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hello.txt" in result.stdout
    assert str(emuboard.root) in result.stdout
    assert (emuboard.root / "hello.txt").read_text() == "hi"


def test_soft_reset_gives_a_fresh_interpreter(emuboard: EmuBoard) -> None:
    boots = emuboard.boots
    result = mpremote(emuboard, "exec", "x = 41", "+", "exec", "print(x + 1)", "+",
                      "soft-reset", "+", "exec",
                      "try:\n print(x)\nexcept NameError:\n print('fresh')")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["42", "fresh"], result.stdout
    assert emuboard.boots > boots  # the shim restarted micropython
    assert "soft reboot" in emuboard.output()


def test_ctrl_c_stops_a_running_app_and_the_repl_takes_over(emuboard: EmuBoard) -> None:
    (emuboard.root / "main.py").write_text(
        "import time\nprint('app running')\nwhile True:\n time.sleep(0.05)\n")
    (emuboard.root / "config.json").write_text("{}")
    emuboard.reset(run_main=True)
    deadline = time.monotonic() + 20
    while "app running" not in emuboard.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert emuboard.running_app()
    result = mpremote(emuboard, "exec", "print('repl here')")
    assert result.returncode == 0, result.stdout + result.stderr + emuboard.output()
    assert "repl here" in result.stdout
    assert not emuboard.running_app()
