"""A MicroPython board on a serial port, through mpremote's raw REPL, with errors a
technician can act on.

mpremote's Python API (`SerialTransport`) is used rather than its command line: one
connection serves the whole provisioning (read the old config, compare hashes, copy only
changed files, run the self-test) and its exceptions can be told apart and explained.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import serial
from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport


class BoardError(RuntimeError):
    """The board could not be reached or did something unexpected; the message says why and
    what to do."""


def check_port(port: str) -> None:
    """Fail early, with the right advice, for a missing, wrong or busy port."""
    if not os.path.exists(port):
        raise BoardError(
            f"no serial port {port}: is the board plugged in (a data cable, not a charge-only "
            "one)? List ports with `ls /dev/ttyUSB* /dev/ttyACM*` or `machi doctor`")
    mode = os.stat(port).st_mode
    if not stat.S_ISCHR(mode):
        raise BoardError(f"{port} is not a serial device")
    try:
        probe = serial.Serial(port, 115200, timeout=0, exclusive=True)
    except serial.SerialException as exc:
        text = str(exc)
        if "exclusively lock" in text or "busy" in text.lower():
            raise BoardError(
                f"{port} is busy: another program holds it (machi monitor, mpremote, screen, "
                "a serial console in an IDE?): close it and retry") from exc
        if "ermission" in text:
            raise BoardError(
                f"no permission to open {port}: add yourself to the `dialout` group "
                "(`sudo usermod -aG dialout $USER`, then log in again)") from exc
        raise BoardError(f"cannot open {port}: {text}") from exc
    probe.close()


class Board:
    """An open raw-REPL session with the board on `port`."""

    def __init__(self, port: str, *, soft_reset: bool = True, timeout: float = 10.0) -> None:
        check_port(port)
        self.port = port
        try:
            # a read timeout: on a pty mpremote reads byte by byte, and without one a port
            # where nothing answers would block forever instead of failing after 10 s
            self.t = SerialTransport(port, baudrate=115200, timeout=0.5)
        except TransportError as exc:
            raise BoardError(f"cannot open {port}: {exc}") from exc
        try:
            self.t.enter_raw_repl(soft_reset=soft_reset, timeout_overall=timeout)
        except (TransportError, OSError) as exc:
            self.t.close()
            raise BoardError(
                f"the board on {port} does not answer at its MicroPython prompt: press its "
                "reset (EN) button and retry; a blank or non-MicroPython board needs "
                "`machi flash` first") from exc

    def close(self) -> None:
        try:
            self.t.exit_raw_repl()
        except (TransportError, OSError):
            pass
        self.t.close()

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- code and files

    def exec(self, code: str, timeout: float = 30) -> str:
        try:
            out = self.t.exec_raw(code, timeout=timeout)
        except TransportError as exc:
            raise BoardError(f"lost the board on {self.port} ({exc}): check the cable") from exc
        data, err = out
        if err:
            raise BoardError(f"the board reported an error:\n{err.decode(errors='replace')}")
        return bytes(data).decode(errors="replace")

    def exec_json(self, code: str, timeout: float = 30) -> Any:
        """Run `code`, which prints one JSON document last; return it."""
        out = self.exec(code, timeout)
        lines = [ln for ln in out.splitlines() if ln.strip()]
        if not lines:
            raise BoardError(f"the board printed nothing for:\n{code}")
        try:
            return json.loads(lines[-1])
        except ValueError as exc:
            raise BoardError(f"unexpected answer from the board: {out[-300:]!r}") from exc

    def info(self) -> dict[str, Any]:
        """Platform, cwd (the filesystem root the firmware lives in), free space, config."""
        info: dict[str, Any] = self.exec_json(
            "import os, sys, json, gc\n"
            "try:\n with open('config.json') as f: c = json.load(f)\n"
            "except (OSError, ValueError): c = None\n"
            "try:\n s = os.statvfs('.'); free = s[0] * s[3]\n"
            "except (OSError, AttributeError): free = -1\n"
            "gc.collect()\n"
            "print(json.dumps({'platform': sys.platform, 'cwd': os.getcwd(), 'config': c,"
            " 'free': free, 'mem_free': gc.mem_free(), 'version': sys.version}))\n")
        return info

    def hashes(self, paths: Iterable[str]) -> dict[str, str | None]:
        """sha256 (hex) of each file on the board, None where it is missing: one round trip."""
        listing = json.dumps(sorted(paths))
        result: dict[str, str | None] = self.exec_json(
            "import hashlib, json, binascii\n"
            "r = {}\nb = bytearray(512)\nm = memoryview(b)\n"
            f"for p in json.loads({listing!r}):\n"
            " try:\n  h = hashlib.sha256()\n  with open(p, 'rb') as f:\n"
            "   while True:\n    n = f.readinto(b)\n    if not n: break\n    h.update(m[:n])\n"
            "  r[p] = binascii.hexlify(h.digest()).decode()\n"
            " except OSError:\n  r[p] = None\n"
            "print(json.dumps(r))\n", timeout=120)
        return result

    def listdir(self, path: str) -> list[str]:
        names: list[str] = self.exec_json(
            "import os, json\n"
            f"try:\n r = os.listdir({path!r})\nexcept OSError:\n r = []\n"
            "print(json.dumps(r))\n")
        return names

    def mkdirs(self, path: str) -> None:
        parts = [p for p in path.split("/") if p]
        self.exec("import os\n" + "".join(
            f"try:\n os.mkdir({'/'.join(parts[:i + 1])!r})\nexcept OSError:\n pass\n"
            for i in range(len(parts))))

    def write_file(self, path: str, data: bytes,
                   progress: Callable[[int], None] | None = None) -> None:
        if "/" in path:
            self.mkdirs(path.rsplit("/", 1)[0])
        tmp = path + ".tmp"
        try:
            self.t.fs_writefile(tmp, data, chunk_size=512,
                                progress_callback=(lambda done, total: progress(done))
                                if progress else None)
        except (TransportError, OSError) as exc:
            raise BoardError(f"writing {path} on the board failed ({exc}): is its flash "
                             "full? (`machi doctor --port` shows free space)") from exc
        # rename last: a cut cable never leaves half a file under the real name
        self.exec(f"import os\ntry:\n os.remove({path!r})\nexcept OSError:\n pass\n"
                  f"os.rename({tmp!r}, {path!r})")

    def remove(self, path: str) -> None:
        self.exec(f"import os\ntry:\n os.remove({path!r})\nexcept OSError:\n pass\n")

    def read_file(self, path: str) -> bytes | None:
        try:
            return bytes(self.t.fs_readfile(path))
        except (TransportExecError, OSError):
            return None


def local_files(build_dir: Path, manifest_files: Iterable[str]) -> dict[str, bytes]:
    return {rel: (build_dir / rel).read_bytes() for rel in manifest_files}
