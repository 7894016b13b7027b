"""An emulated MicroPython board on a serial port: the unix `micropython` behind a pseudo-terminal.

`EmuBoard(root)` gives a serial device path (`board.port`, a /dev/pts/N) that `mpremote`,
pyserial and `machi provision/monitor/doctor` open exactly like an ESP32's USB serial port. The
board's filesystem is the directory `root` (the cwd of the micropython process; the board's
`sys.path` is `['', '.frozen', 'lib']` like an ESP32's `['', '.frozen', '/lib']`).

The unix port already speaks the raw REPL that mpremote uses (Ctrl-A raw mode, Ctrl-E raw-paste
with flow control, Ctrl-C, Ctrl-B) when its stdin is a terminal. What it lacks, and what the
relay thread here fakes (the *shim*), is only this:

* **Soft reset.** Ctrl-D on an empty raw-REPL line (and `sys.exit()`, and Ctrl-D at `>>>`)
  makes the unix REPL *exit*, where a board soft-resets. When the REPL process exits, the shim
  starts a fresh one on a fresh pty (a clean interpreter, as after a soft reset), prints
  `MPY: soft reboot\\r\\n`, and, if the host had put the board in raw mode (its last mode byte
  was Ctrl-A, not Ctrl-B), enters raw mode on the new process, swallows its banner and prints
  `raw REPL; CTRL-B to exit\\r\\n>` as a board does.
* **Boot running main.py.** `reset()` is the power-on/hard reset: the board runs
  `micropython main.py config.json` in `root` (the emulated board passes the config path
  because its filesystem root is a directory, not `/`). While the app runs, host bytes other
  than Ctrl-C are held back, as a UART buffers them, and reach the REPL that starts when the
  app exits: so mpremote's "Ctrl-C, then Ctrl-A" works on a board running its app. The
  Ctrl-C itself becomes a SIGINT to the app process (what a terminal would send; a board's
  UART raises KeyboardInterrupt).

Everything the board prints is also kept in `board.output()` for test diagnostics.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import subprocess
import threading
import time
import tty
from pathlib import Path
from types import TracebackType

from .procs import ProcessError, executable

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"
SOFT_REBOOT = b"MPY: soft reboot\r\n"


class EmuBoard:
    """One emulated board. Use as a context manager, or start()/stop()."""

    def __init__(self, root: Path, *, heapsize: str = "512K", config: str = "config.json"):
        self.root = root
        self.heapsize = heapsize
        self.config = config
        self._host_master = -1
        self._host_slave = -1
        self._board_master = -1
        self._proc: subprocess.Popen[bytes] | None = None
        self._app = False  # the process is main.py, not the REPL
        self._raw = False  # the host's last mode byte was Ctrl-A
        self._held = bytearray()  # host bytes held while the app runs / a REPL starts
        self._out = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reset_request: bool | None = None  # run_main of a pending hard reset
        self.boots = 0
        self.port = ""

    # ---- lifecycle

    def start(self, *, run_main: bool = False) -> EmuBoard:
        self.root.mkdir(parents=True, exist_ok=True)
        self._host_master, self._host_slave = os.openpty()
        tty.setraw(self._host_slave)
        self.port = os.ttyname(self._host_slave)
        self._spawn(app=run_main and self._has_app())
        self._thread = threading.Thread(target=self._relay, name=f"emuboard {self.port}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._kill()
        for fd in (self._host_master, self._host_slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._host_master = self._host_slave = -1

    def __enter__(self) -> EmuBoard:
        return self.start() if not self.port else self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def reset(self, *, run_main: bool = True) -> None:
        """Hard reset (the EN button / power cycle): boots into main.py when there is one."""
        with self._lock:
            self._reset_request = run_main
        deadline = time.monotonic() + 10
        while self._reset_request is not None and time.monotonic() < deadline:
            time.sleep(0.02)

    def output(self) -> str:
        with self._lock:
            return self._out.decode(errors="replace")

    def running_app(self) -> bool:
        return self._app and self._proc is not None and self._proc.poll() is None

    # ---- the board process

    def _has_app(self) -> bool:
        return (self.root / "main.py").exists() and (self.root / self.config).exists()

    def _spawn(self, *, app: bool) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        argv = [executable("micropython"), "-X", f"heapsize={self.heapsize}"]
        if app:
            argv += ["main.py", self.config]
        env = dict(os.environ)
        env["MICROPYPATH"] = ":.frozen:lib"
        self._proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                      cwd=self.root, env=env, close_fds=True,
                                      start_new_session=True)
        os.close(slave)
        self._board_master = master
        self._app = app
        self.boots += 1

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        if self._board_master >= 0:
            with contextlib.suppress(OSError):
                os.close(self._board_master)
        self._board_master = -1

    def _to_host(self, data: bytes) -> None:
        with self._lock:
            self._out += data
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._host_master, view)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            view = view[n:]

    def _read_board_until(self, marker: bytes, timeout: float = 15.0) -> bytes:
        got = b""
        deadline = time.monotonic() + timeout
        while not got.endswith(marker):
            if time.monotonic() > deadline:
                raise ProcessError(f"emulated board: no {marker!r} from micropython: {got!r}")
            r, _, _ = select.select([self._board_master], [], [], 0.1)
            if r:
                got += os.read(self._board_master, 4096)
        return got

    def _boot_repl(self, *, announce: bool) -> None:
        """A fresh REPL process (after a soft reset or the app's end), in the host's mode."""
        self._kill()
        self._spawn(app=False)
        self._read_board_until(b">>> ")
        if announce:
            self._to_host(SOFT_REBOOT)
        if self._raw:
            os.write(self._board_master, b"\x01")
            self._read_board_until(RAW_BANNER)
            self._to_host(RAW_BANNER if announce else b"")
        elif announce:
            self._to_host(b">>> ")

    def _host_bytes(self, data: bytes) -> None:
        for b in data:
            if b == 0x01:
                self._raw = True
            elif b == 0x02:
                self._raw = False
        if self._app:
            if b"\x03" in data:
                self._held += data[data.index(b"\x03") + 1:]
                # a board's UART turns Ctrl-C into KeyboardInterrupt; the unix port running a
                # script gets it from the terminal as SIGINT
                if self._proc is not None and self._proc.poll() is None:
                    self._proc.send_signal(signal.SIGINT)
            else:
                self._held += data
            return
        with contextlib.suppress(OSError):
            os.write(self._board_master, data)

    def _relay(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                reset, self._reset_request = self._reset_request, None
            if reset is not None:
                self._kill()
                self._held.clear()
                if reset and self._has_app():
                    self._spawn(app=True)
                else:
                    self._boot_repl(announce=False)
                    self._to_host(b">>> ")
            fds = [self._host_master, self._board_master]
            try:
                r, _, _ = select.select(fds, [], [], 0.05)
            except (OSError, ValueError):
                r = []
            if self._host_master in r:
                try:
                    self._host_bytes(os.read(self._host_master, 4096))
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
            if self._board_master in r:
                try:
                    data = os.read(self._board_master, 4096)
                except OSError:
                    data = b""
                if data:
                    self._to_host(data)
                    continue
            if self._proc is not None and self._proc.poll() is not None:
                # drain what it printed last, then: app ended -> REPL; REPL ended -> soft reset
                with contextlib.suppress(OSError):
                    while select.select([self._board_master], [], [], 0)[0]:
                        data = os.read(self._board_master, 4096)
                        if not data:
                            break
                        self._to_host(data)
                was_app = self._app
                held = bytes(self._held)
                self._held.clear()
                if was_app:
                    self._raw = False
                    self._boot_repl(announce=False)
                    self._to_host(b"MicroPython (emulated board)\r\n>>> ")
                    # what the host typed meanwhile (Ctrl-A ...) reaches the REPL now
                    self._host_bytes(held)
                else:
                    self._boot_repl(announce=True)
