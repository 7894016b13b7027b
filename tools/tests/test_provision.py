"""`machi provision` on an emulated board against a fake cloud (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from machi_tools.emuboard import EmuBoard

Machi = Callable[..., subprocess.CompletedProcess[str]]


def provision_json(machi: Machi, board: EmuBoard, cloud: Any, build: Path, *extra: str,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return machi("provision", "--port", board.port, "--cloud", cloud.url, "--json",
                 "--build-dir", str(build), *extra,
                 env={"MACHI_ADMIN_TOKEN": cloud.token, **(env or {})})


def test_provision_copies_registers_selftests_and_is_idempotent(
        emuboard: EmuBoard, fake_cloud: Any, machi: Machi, unix_build: Path) -> None:
    first = provision_json(machi, emuboard, fake_cloud, unix_build, "--type", "light", "--site",
                           "Station square", "--lat", "36.115", "--lon", "137.954",
                           "--gateway-addr", "127.0.0.1:5683", "--interval", "30")
    assert first.returncode == 0, first.stdout + first.stderr
    res = json.loads(first.stdout)
    dev = res["device"]
    assert dev.startswith("light-") and res["registered"] and res["created"] is True
    assert res["updated"] is False and res["selftest"]["failed"] == {}
    assert res["qr"] == f"machi:{dev}?type=light&lat=36.115&lon=137.954"
    root = emuboard.root
    # every file of the build is on the board, byte for byte
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(res["copied"]) == set(manifest["files"])
    for rel, entry in manifest["files"].items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == entry["sha256"]
    cfg = json.loads((root / "config.json").read_text())
    assert cfg["device_id"] == dev and cfg["type"] == "light"
    assert cfg["gateway"] == {"host": "127.0.0.1", "port": 5683}
    assert cfg["app"] == {"lat": 36.115, "lon": 137.954} and cfg["interval_s"] == 30.0
    assert cfg["state_dir"] == f"{root}/state"
    ident = json.loads((root / "identity.json").read_text())
    assert ident["key"] == fake_cloud.keys[dev] and ident["site"] == "Station square"
    assert fake_cloud.devices[dev] == {"type": "light", "gateway": "gw-01", "transport": "coap",
                                       "interval_s": 30, "site": "Station square",
                                       "lat": 36.115, "lon": 137.954}
    assert fake_cloud.calls == [("PUT", f"/v1/devices/{dev}"), ("POST", f"/v1/devices/{dev}/keys")]

    # re-run with nothing but the port: same identity, nothing copied, key rotated
    old_key = ident["key"]
    again = provision_json(machi, emuboard, fake_cloud, unix_build)
    assert again.returncode == 0, again.stdout + again.stderr
    res2 = json.loads(again.stdout)
    assert (res2["device"], res2["type"], res2["site"]) == (dev, "light", "Station square")
    assert res2["updated"] is True and res2["created"] is False and res2["copied"] == []
    assert res2["unchanged"] == len(manifest["files"])
    ident2 = json.loads((root / "identity.json").read_text())
    assert ident2["key"] == fake_cloud.keys[dev] != old_key
    assert json.loads((root / "config.json").read_text())["app"] == cfg["app"]


def test_provision_replaces_changed_and_stale_files(emuboard: EmuBoard, fake_cloud: Any,
                                                    machi: Machi, unix_build: Path) -> None:
    args = ("--type", "env", "--id", "env-0042", "--gateway-addr", "127.0.0.1:5683")
    assert provision_json(machi, emuboard, fake_cloud, unix_build, *args).returncode == 0
    (emuboard.root / "lib" / "cbor.mpy").write_bytes(b"corrupted")
    (emuboard.root / "lib" / "old_module.py").write_text("x = 1\n")
    result = provision_json(machi, emuboard, fake_cloud, unix_build)
    assert result.returncode == 0, result.stderr
    res = json.loads(result.stdout)
    assert res["device"] == "env-0042"
    assert res["copied"] == ["lib/cbor.mpy"] and res["removed"] == ["lib/old_module.py"]
    assert not (emuboard.root / "lib" / "old_module.py").exists()


def test_human_output_has_a_label_and_a_qr_code(emuboard: EmuBoard, fake_cloud: Any,
                                                machi: Machi) -> None:
    result = machi("provision", "--port", emuboard.port, "--type", "bin", "--id", "bin-0007",
                   "--site", "Market", "--lat", "36.1", "--lon", "137.9", "--gateway-addr",
                   "10.0.0.2:5683", "--cloud", fake_cloud.url, "--admin-token", fake_cloud.token)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "provisioned" in out and "registered (new)" in out and "self-test passed" in out
    assert "bin-0007" in out and "Market" in out and "36.10000, 137.90000" in out
    assert "█" in out or "▀" in out  # the QR code's blocks


@pytest.mark.parametrize(("status", "hint"), [(401, "admin token"), (503, "database")])
def test_cloud_errors_are_explained_and_nothing_is_written(
        emuboard: EmuBoard, fake_cloud: Any, machi: Machi, unix_build: Path, status: int,
        hint: str) -> None:
    fake_cloud.fail_with = status
    result = provision_json(machi, emuboard, fake_cloud, unix_build, "--type", "env",
                            "--gateway-addr", "127.0.0.1:5683")
    assert result.returncode == 1
    assert f"HTTP {status}" in result.stderr and hint in result.stderr, result.stderr
    assert json.loads(result.stdout)["ok"] is False
    assert not (emuboard.root / "config.json").exists()


def test_wrong_token_and_unreachable_cloud(emuboard: EmuBoard, fake_cloud: Any,
                                           machi: Machi, unix_build: Path) -> None:
    result = provision_json(machi, emuboard, fake_cloud, unix_build, "--type", "env",
                            "--gateway-addr", "127.0.0.1:5683",
                            env={"MACHI_ADMIN_TOKEN": "wrong"})
    assert result.returncode == 1 and "HTTP 401" in result.stderr
    result = machi("provision", "--port", emuboard.port, "--type", "env", "--gateway-addr",
                   "127.0.0.1:5683", "--cloud", "http://127.0.0.1:9", "--admin-token", "t",
                   "--build-dir", str(unix_build))
    assert result.returncode == 1 and "cannot reach the cloud" in result.stderr


def test_usage_errors(emuboard: EmuBoard, machi: Machi, tmp_path: Path) -> None:
    result = machi("provision", "--port", emuboard.port, "--gateway-addr", "127.0.0.1:5683")
    assert result.returncode == 2 and "--type" in result.stderr
    result = machi("provision", "--port", emuboard.port, "--type", "env")
    assert result.returncode == 2 and "--gateway-addr" in result.stderr
    assert not (emuboard.root / "lib").exists()  # refused before copying anything
    result = machi("provision", "--port", emuboard.port, "--type", "env", "--lat", "99")
    assert result.returncode == 2 and "latitude" in result.stderr
    result = machi("provision", "--port", emuboard.port, "--type", "env", "--cloud", "http://x")
    assert result.returncode == 2 and "admin-token" in result.stderr
    result = machi("provision", "--port", str(tmp_path / "ttyUSB7"), "--type", "env")
    assert result.returncode == 1 and "no serial port" in result.stderr


def test_a_busy_port_is_named(emuboard: EmuBoard, machi: Machi) -> None:
    import serial

    holder = serial.Serial(emuboard.port, 115200, exclusive=True)
    try:
        result = machi("provision", "--port", emuboard.port, "--type", "env")
    finally:
        holder.close()
    assert result.returncode == 1 and "busy" in result.stderr, result.stderr


def test_a_port_without_micropython_says_flash_first(tmp_path: Path, machi: Machi) -> None:
    import os
    import tty

    master, slave = os.openpty()  # a serial port where nothing answers
    tty.setraw(slave)
    try:
        result = machi("provision", "--port", os.ttyname(slave), "--type", "env",
                       "--connect-timeout", "2")
    finally:
        os.close(slave)
        os.close(master)
    assert result.returncode == 1
    assert "does not answer" in result.stderr and "machi flash" in result.stderr
