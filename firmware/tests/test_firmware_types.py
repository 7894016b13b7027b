"""The firmware type-checks with mypy against MicroPython's own stubs (issue #3).

A fake `machine` in a host test accepts any call, and CPython's typeshed knows nothing of
`time.ticks_ms` or `select.poll().ipoll`: neither can tell that a call would fail on the
device. mypy can, given MicroPython's API: the ESP32 port's stubs (micropython-esp32-stubs:
`machine`, `network`, `esp32`, `time`, `select`, `micropython`, ...) and the stdlib
typeshed they build on (micropython-stdlib-stubs). mypy treats stdlib modules specially
(only its typeshed may provide `time` or `sys`), so both go into one typeshed directory,
assembled here from the installed packages and passed as `--custom-typeshed-dir`.

The firmware has no annotations (they would cost heap on the device), so the config
(`firmware/mypy.ini`) checks untyped defs; every `# type: ignore[code]` in the firmware
says why and must still be needed (`warn_unused_ignores`).

By hand: `.venv/bin/python firmware/tests/test_firmware_types.py` prints mypy's report.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

FIRMWARE = Path(__file__).resolve().parents[1]
TESTS = FIRMWARE / "tests"
CONFIG = FIRMWARE / "mypy.ini"
# Every module that ships: the ESP32's and the unix port's alike (the unix board, its
# scenario and slots are imported by nodemain/multinode anyway, so mypy reads them too).
# tests/ is left out: MicroPython scripts driving fakes that monkeypatch the modules.
SOURCES = sorted(
    p.relative_to(FIRMWARE).as_posix() for p in FIRMWARE.rglob("*.py") if TESTS not in p.parents
)
# what the ESP32 runs, which must be among them
ESP32 = [
    "boards/esp32.py",
    "boards/slots_esp32.py",
    "boards/bootstate.py",
    "boards/bootcount.py",
    "main.py",
    "multi.py",
    "lib/node.py",
    "lib/nodemain.py",
    "drivers/bme280.py",
    "transports/udp.py",
    "apps/env_sensor.py",
]
TIMEOUT_S = 240  # cold mypy takes a few seconds; a loaded CI machine gets margin


def _dist_files(name: str) -> tuple[Path, list[Path]]:
    """The install root of distribution `name` and the files it installed there."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    root = Path(str(dist.locate_file("")))
    files = [Path(str(f)) for f in dist.files or []]
    return root, [f for f in files if not f.parts[0].endswith(".dist-info")]


def build_typeshed(dest: Path) -> Path:
    """A typeshed directory: MicroPython's stdlib stubs plus the ESP32 port's modules.

    `stdlib/` holds links to micropython-stdlib-stubs' `stdlib/*` and `_mpy_shed`, and to
    every top-level module of micropython-esp32-stubs (the port's version wins where both
    have one); each added module is listed in `stdlib/VERSIONS`, which mypy requires.
    """
    std_root, _ = _dist_files("micropython-stdlib-stubs")
    esp_root, esp_files = _dist_files("micropython-esp32-stubs")
    std = std_root / "stdlib"
    if not (std / "VERSIONS").is_file() or not (std_root / "_mpy_shed").is_dir():
        pytest.fail(f"micropython-stdlib-stubs: no stdlib/VERSIONS or _mpy_shed under {std_root}")
    out = dest / "stdlib"
    out.mkdir(parents=True)
    for entry in std.iterdir():
        if entry.name != "VERSIONS":
            (out / entry.name).symlink_to(entry)
    versions = (std / "VERSIONS").read_text(encoding="utf-8")
    listed = set(re.findall(r"^([\w.]+):", versions, re.M))
    # the port's modules: "machine.pyi" or "umqtt/simple.pyi" -> machine, umqtt
    port = {
        f.parts[0] if len(f.parts) > 1 else f.stem: f.parts[0]
        for f in esp_files
        if f.suffix == ".pyi"
    }
    added = {"_mpy_shed": std_root / "_mpy_shed"}
    added.update({mod: esp_root / first for mod, first in port.items()})
    for mod, src in sorted(added.items()):
        for old in (out / mod, out / (mod + ".pyi")):
            if old.is_symlink():
                old.unlink()
        (out / src.name).symlink_to(src)
        if mod not in listed:
            versions += f"{mod}: 3.0-\n"
    (out / "VERSIONS").write_text(versions, encoding="utf-8")
    (dest / "stubs").mkdir()
    (dest / "stubs" / "mypy-extensions").symlink_to(std_root / "stubs" / "mypy-extensions")
    for must in ("machine.pyi", "network.pyi", "esp32.pyi", "time.pyi", "micropython.pyi"):
        assert (out / must).exists(), f"{must} missing from the assembled typeshed"
    return dest


def run_mypy(
    typeshed: Path, cache: Path, files: list[str], extra_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """mypy with the firmware's config; modules resolve as on the device (lib/, root)."""
    path = [str(FIRMWARE / "lib"), str(FIRMWARE)] + ([str(extra_path)] if extra_path else [])
    env = dict(os.environ, MYPYPATH=os.pathsep.join(path))
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(CONFIG),
        "--custom-typeshed-dir",
        str(typeshed),
        "--cache-dir",
        str(cache),
        *files,
    ]
    return subprocess.run(
        cmd, cwd=FIRMWARE, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


@pytest.fixture(scope="module")
def typeshed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_typeshed(tmp_path_factory.mktemp("mp-typeshed"))


def test_every_shipped_module_is_checked() -> None:
    assert set(ESP32) <= set(SOURCES), sorted(set(ESP32) - set(SOURCES))
    assert not [s for s in SOURCES if s.startswith("tests/")]


def test_firmware_type_checks(typeshed: Path, tmp_path: Path) -> None:
    r = run_mypy(typeshed, tmp_path / "cache", SOURCES)
    report = r.stdout + r.stderr
    assert r.returncode == 0, report
    assert f"Success: no issues found in {len(SOURCES)} source files" in report, report


# MicroPython's API passes, CPython's and mistakes fail: the check has teeth. Each line
# ending in "# E: code" must give exactly that error, every other line none.
PROBE = """
import time
import machine
import network
import select
import esp32
from micropython import const
import cbor
import coap

_N = const(4)
t0 = time.ticks_ms()
time.sleep_ms(_N)
elapsed = time.ticks_diff(time.ticks_ms(), t0)
p = select.poll()
for ev in p.ipoll(100):
    pass
pin = machine.Pin(4, machine.Pin.IN, machine.Pin.PULL_UP)
uart = machine.UART(2, baudrate=9600, tx=17, rx=16)
part = esp32.Partition("ota_0")
enc = cbor.Encoder()
time.perf_counter()  # E: attr-defined
time.sleep_ms("10")  # E: arg-type
time.ticks_diff(t0)  # E: call-overload
machine.UART(2, baud=9600)  # E: call-overload
network.WLAN(network.STA_IF).isconected()  # E: attr-defined
part.erase()  # E: attr-defined
pin.value(1, 2)  # E: call-overload
coap.no_such_thing  # E: attr-defined
"""


def test_the_check_catches_what_the_device_lacks(typeshed: Path, tmp_path: Path) -> None:
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    (probe_dir / "probe.py").write_text(PROBE, encoding="utf-8")
    r = run_mypy(typeshed, tmp_path / "cache", [str(probe_dir / "probe.py")], probe_dir)
    report = r.stdout + r.stderr
    want = {
        (i, m.group(1))
        for i, line in enumerate(PROBE.splitlines(), 1)
        if (m := re.search(r"# E: ([\w-]+)$", line))
    }
    got = {
        (int(m.group(1)), m.group(2))
        for m in re.finditer(r"probe\.py:(\d+): error: .*\[([\w-]+)\]$", report, re.M)
    }
    assert got == want, report


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        r = run_mypy(build_typeshed(Path(tmp) / "typeshed"), Path(tmp) / "cache", SOURCES)
    sys.stdout.write(r.stdout + r.stderr)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
