"""`machi flash` as far as esptool goes without a chip: argument handling and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from machi_tools.flash import FlashError, explain, flash

Machi = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def silent_port() -> Iterator[str]:
    """A serial port (pty) where no chip answers."""
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield os.ttyname(slave)
    finally:
        os.close(slave)
        os.close(master)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "micropython.bin"
    path.write_bytes(b"\xe9" + bytes(4095))
    return path


def test_no_chip_answering_is_a_clear_error(silent_port: str, image: Path,
                                            machi: Machi) -> None:
    result = machi("flash", "--port", silent_port, "--firmware", str(image), "--json")
    assert result.returncode == 1
    assert "no chip answers" in result.stderr and "hold BOOT" in result.stderr, result.stderr
    assert json.loads(result.stdout) == {"ok": False,
                                         "error": json.loads(result.stdout)["error"]}


def test_missing_port_and_missing_image(tmp_path: Path, image: Path, silent_port: str,
                                        machi: Machi) -> None:
    result = machi("flash", "--port", str(tmp_path / "ttyUSB3"), "--firmware", str(image))
    assert result.returncode == 1 and "no serial port" in result.stderr
    result = machi("flash", "--port", silent_port, "--firmware", str(tmp_path / "nope.bin"))
    assert result.returncode == 1 and "no firmware image" in result.stderr
    assert "micropython.org/download" in result.stderr


def test_busy_port(silent_port: str, image: Path) -> None:
    import serial

    holder = serial.Serial(silent_port, 115200, exclusive=True)
    try:
        with pytest.raises(FlashError, match="busy"):
            flash(silent_port, image)
    finally:
        holder.close()


def test_bad_usage(machi: Machi) -> None:
    result = machi("flash", "--port", "/dev/null", "--chip", "esp8266")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    result = machi("flash")
    assert result.returncode == 2 and "--port" in result.stderr


@pytest.mark.parametrize(("output", "expected"), [
    # esptool v5's own words for each failure
    ("A fatal error occurred: This chip is ESP32-S3, not ESP32. Wrong --chip argument?",
     "the board is an ESP32-S3, not an esp32: use --chip esp32s3"),
    ("A fatal error occurred: Failed to connect to ESP32: No serial data received.",
     "no chip answers on P"),
    ("Could not open /dev/ttyUSB9, the port is busy or doesn't exist.\n"
     "[Errno 2] No such file or directory", "no serial port P"),
    ("Could not open /dev/ttyUSB0, the port is busy or doesn't exist.\n"
     "([Errno 16] could not open port /dev/ttyUSB0: [Errno 16] Device or resource busy)",
     "P is busy"),
    ("A fatal error occurred: MD5 of file does not match data in flash!",
     "the flash did not verify"),
    ("something new and strange\nlast line", "esptool failed:\nsomething new and strange"),
])
def test_esptool_failures_are_explained(output: str, expected: str) -> None:
    assert explain(output, "P", "esp32").startswith(expected)


def test_help_shows_examples(machi: Machi) -> None:
    for cmd, example in [("flash", "machi flash --port /dev/ttyUSB0"),
                         ("build", "machi build --board esp32"),
                         ("provision", "machi provision --port /dev/ttyUSB0 --type env"),
                         ("monitor", "machi monitor --port"),
                         ("doctor", "machi doctor --port")]:
        result = machi(cmd, "--help")
        assert result.returncode == 0 and example in result.stdout, cmd
