"""Start, watch and stop the system's real processes: cloud, gateway and emulated nodes.

One piece of code serves `machi demo`, `machi fleet` and the hardware-in-the-loop tests, so the
tests exercise exactly what an engineer runs. Every process writes its output to a log file
(never a pipe that could fill up and block it), announces readiness through a *ready file*
written atomically once it listens (ports are chosen at run time, so nothing collides), and is
stopped with SIGTERM, then SIGKILL if it does not exit in time.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


_PR_SET_PDEATHSIG = 1


def stop_popen(popen: subprocess.Popen[Any], timeout: float = 10.0, *,
               sig: int = signal.SIGTERM, signalled: bool = False) -> int:
    """`sig` (unless already sent), then SIGKILL if it has not exited after `timeout`;
    its exit code. Every process this project starts is stopped this way."""
    if popen.poll() is None:
        if not signalled:
            popen.send_signal(sig)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)
    return popen.returncode


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to send SIGTERM to the child when the orchestrator dies, even by SIGKILL,
    so a crashed demo or test run never leaves gateways and nodes running in the background."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class ProcessError(RuntimeError):
    """A managed process failed to start, died early or did not become ready."""


def firmware_dir() -> Path:
    """The firmware tree run by emulated nodes (override with MACHI_FIRMWARE)."""
    path = Path(os.environ.get("MACHI_FIRMWARE", REPO / "firmware"))
    if not (path / "main.py").exists():
        raise ProcessError(f"no firmware at {path} (main.py missing); set MACHI_FIRMWARE")
    return path


def executable(name: str) -> str:
    """A console script of this installation: next to the interpreter first, then PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise ProcessError(f"`{name}` not found: install the project (make demo / make test)")
    return found


@dataclass
class ManagedProcess:
    """One child process with its log file and an optional ready file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    ready_file: Path | None = None
    env: Mapping[str, str] | None = None
    # the MicroPython unix port has no `signal` module: SIGTERM kills it outright, while
    # SIGINT raises KeyboardInterrupt and lets a node log its clean stop
    stop_signal: int = signal.SIGTERM
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        with open(self.log_path, "ab") as log:
            # A session of its own: a Ctrl-C in the terminal reaches only the orchestrator,
            # which then stops the children in order (nodes, gateway, cloud).
            self.popen = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise ProcessError(f"{self.name} was never started")
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the ready file; fail fast, with the log, if the process dies first."""
        if self.ready_file is None:
            raise ProcessError(f"{self.name} has no ready file")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                data: dict[str, Any] = json.loads(self.ready_file.read_text())
                return data
            if not self.alive():
                raise ProcessError(
                    f"{self.name} exited with code {self.returncode()} before it was ready:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)
        raise ProcessError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def wait(self, timeout: float) -> int:
        if self.popen is None:
            raise ProcessError(f"{self.name} was never started")
        return self.popen.wait(timeout)

    def signal(self, sig: int) -> None:
        if self.alive() and self.popen is not None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 10.0, *, signalled: bool = False) -> int | None:
        """`stop_signal` (unless the caller already sent it: a second SIGINT would cut a
        node's clean shutdown short), then SIGKILL after `timeout`: returns the exit code."""
        if self.popen is None:
            return None
        return stop_popen(self.popen, timeout, sig=self.stop_signal, signalled=signalled)

    def kill(self) -> None:
        """SIGKILL: the power cut / `kill -9` of the fault tests."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
