"""`machi flash`: erase an ESP32 and write the MicroPython firmware image with esptool.

esptool runs as a subprocess (`python -m esptool`), not through its Python API: the API has
changed shape between major versions (v4 `main()` argv, v5 `esptool.cmds`), it prints to our
stdout and may call sys.exit; its command line is its stable, documented interface. We read its
output line by line for progress ("Writing at 0x... 45.3%") and turn its fatal errors into
`FlashError`s that say what to do (the patterns below are esptool v4/v5's messages).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .boardlink import BoardError, check_port

# where the MicroPython image goes, per chip (MicroPython's download page says the same)
OFFSETS = {"esp32": 0x1000, "esp32s2": 0x1000, "esp32s3": 0x0, "esp32c3": 0x0,
           "esp32c6": 0x0, "esp32c2": 0x0}
_PROGRESS = re.compile(r"(?:Writing at 0x[0-9a-f]+.*?|Erasing.*?)\s(\d+(?:\.\d+)?)\s?%")
_WRONG_CHIP = re.compile(r"This chip is (?P<chip>[\w-]+),? not (?P<want>[\w-]+)", re.I)
# (pattern in esptool's output, message for the technician)
_FAILURES = [
    # esptool says "the port is busy or doesn't exist" for both: the errno tells them apart
    (re.compile(r"Resource busy|exclusively lock|Errno 16", re.I),
     "{port} is busy: close machi monitor / mpremote / screen / the IDE console and retry"),
    (re.compile(r"No such file or directory|Errno 2\b|doesn't exist", re.I),
     "no serial port {port}: is the board plugged in with a data cable?"),
    (re.compile(r"Permission denied", re.I),
     "no permission to open {port}: add yourself to the dialout group and log in again"),
    (re.compile(r"Failed to connect|No serial data received|Timed out waiting for packet",
                re.I),
     "no chip answers on {port}: hold BOOT, press and release EN (reset), release BOOT, "
     "then retry; check the cable and that this is the ESP32's port"),
    (re.compile(r"verify failed|MD5 of file does not match|Hash of data verified.*fail", re.I),
     "the flash did not verify (bad cable, weak USB power or failing flash): retry with a "
     "lower --baud; if it fails again the board is faulty"),
    (re.compile(r"Invalid head of packet|corrupt", re.I),
     "the link to {port} is garbled: use a shorter cable or a lower --baud"),
]


class FlashError(RuntimeError):
    pass


@dataclass(frozen=True)
class FlashResult:
    port: str
    chip: str
    firmware: str
    offset: int
    output: str


def esptool_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "esptool", *args]


def explain(output: str, port: str, chip: str) -> str:
    m = _WRONG_CHIP.search(output)
    if m:
        return (f"the board is an {m['chip']}, not an {chip}: use --chip "
                f"{m['chip'].lower().replace('-', '')} and that chip's MicroPython image")
    for pattern, message in _FAILURES:
        if pattern.search(output):
            return message.format(port=port)
    tail = "\n".join(output.strip().splitlines()[-5:])
    return f"esptool failed:\n{tail}"


def _run(argv: list[str], port: str, chip: str,
         progress: Callable[[str, float], None] | None, what: str) -> str:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        m = _PROGRESS.search(line)
        if m and progress:
            progress(what, float(m[1]))
    code = proc.wait()
    output = "".join(lines)
    if code != 0:
        raise FlashError(explain(output, port, chip))
    return output


def flash(port: str, firmware: Path, *, chip: str = "esp32", baud: int = 460800,
          erase: bool = True, progress: Callable[[str, float], None] | None = None,
          connect_attempts: int = 3) -> FlashResult:
    if chip not in OFFSETS:
        raise FlashError(f"unknown chip {chip!r}: one of {', '.join(OFFSETS)}")
    if not firmware.is_file():
        raise FlashError(f"no firmware image {firmware}: download the MicroPython .bin for "
                         f"{chip} from micropython.org/download and pass --firmware")
    try:
        check_port(port)
    except BoardError as exc:
        raise FlashError(str(exc)) from exc
    common = ["--chip", chip, "--port", port, "--baud", str(baud),
              "--connect-attempts", str(connect_attempts)]
    out = ""
    if erase:
        out += _run(esptool_argv(*common, "erase-flash"), port, chip, progress, "erase")
    out += _run(esptool_argv(*common, "write-flash", "-z", hex(OFFSETS[chip]), str(firmware)),
                port, chip, progress, "write")
    return FlashResult(port=port, chip=chip, firmware=str(firmware), offset=OFFSETS[chip],
                       output=out)
