"""Firmware updates end to end with real processes: `machi release` signs, the real gateway
(`machi-gateway` with ``[firmware] dir``) serves over CoAP Block2, the real MicroPython node
code (`mp/fw_driver.py`: lib/fwupdate.py + boards/slots_unix.py) downloads, is killed -9
mid-download, resumes, and the new image boots on trial and confirms itself.

Also: the shared vector files are what the host signer and `cryptography` say they are.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .conftest import FIRMWARE, MP_TESTS, VECTORS, micropython_binary

DRIVER = MP_TESTS / "fw_driver.py"
GATEWAY = Path(sys.executable).with_name("machi-gateway")
MACHI = Path(sys.executable).with_name("machi")
SIZE = 20_000


def test_rfc8032_vector_file_matches_cryptography() -> None:
    doc = json.loads((VECTORS / "ed25519-rfc8032.json").read_text())
    assert len(doc["vectors"]) == 5
    for v in doc["vectors"]:
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["secret_key"]))
        pub = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        assert pub.hex() == v["public_key"], v["name"]
        assert key.sign(bytes.fromhex(v["message"])).hex() == v["signature"], v["name"]


def test_manifest_vector_file_is_what_the_signer_writes() -> None:
    spec = importlib.util.spec_from_file_location("mkfw", VECTORS / "make_fwupdate_vectors.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (VECTORS / "fwupdate-manifests.json").read_text() == mod.text()


class Gateway:
    """machi-gateway with a [firmware] dir, on a free loopback port, stopped in finally."""

    def __init__(self, tmp: Path, fw_dir: Path) -> None:
        self.ready = tmp / "ready.json"
        self.log = tmp / "gateway.log"
        (tmp / "devices.json").write_text('{"devices": []}\n')
        self.config = tmp / "gateway.toml"
        self.config.write_text("\n".join([
            "[gateway]", 'id = "gw-fw"', f'data_dir = "{tmp / "gwdata"}"',
            "[coap]", 'host = "127.0.0.1"', "port = 0",
            "[devices]", f'file = "{tmp / "devices.json"}"',
            "[uplink]", 'url = "http://127.0.0.1:9"',
            "[health]", "port = 0",
            "[firmware]", f'dir = "{fw_dir}"', ""]))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> tuple[str, int]:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([str(GATEWAY), "--config", str(self.config),
                                          "--ready-file", str(self.ready)],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gateway did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        host, port = json.loads(self.ready.read_text())["coap"]
        return str(host), int(port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["MICROPYPATH"] = f".frozen:{FIRMWARE / 'lib'}:{FIRMWARE}:{MP_TESTS}"
    return env


def _node(state: Path, *args: str) -> str:
    r = subprocess.run([micropython_binary(), "-X", "heapsize=256K", str(DRIVER), str(state),
                        *args], env=_env(), capture_output=True, text=True, timeout=120,
                       check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    return out


def _node_until_paused(state: Path, *args: str) -> str:
    """Run the driver until it prints PAUSED (a power-cut point), then kill -9 it."""
    proc = subprocess.Popen([micropython_binary(), "-X", "heapsize=256K", str(DRIVER),
                             str(state), *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("PAUSED"):
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    out = "".join(lines)
    assert "PAUSED" in out and proc.returncode == -signal.SIGKILL, out
    return out


@pytest.fixture
def release(tmp_path: Path) -> Iterator[tuple[Path, Path, bytes]]:
    """A signing key from `machi release keygen` and an env image signed by it (v2)."""
    keys = tmp_path / "keys"
    r = subprocess.run([str(MACHI), "release", "keygen", "--out", str(keys / "city")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    image = os.urandom(SIZE)
    assert len(image) == SIZE
    bundle = tmp_path / "build-env.bin"
    bundle.write_bytes(image)
    fw_dir = tmp_path / "releases"
    r = subprocess.run([str(MACHI), "release", "sign", "--key", str(keys / "city.key"),
                        "--version", "2", "--type", "env", str(bundle), "-o", str(fw_dir)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    yield fw_dir, keys / "city.pub", image


@pytest.mark.micropython
def test_update_over_coap_block2_resumes_after_kill_9(
        tmp_path: Path, release: tuple[Path, Path, bytes]) -> None:
    fw_dir, pub, image = release
    gw = Gateway(tmp_path, fw_dir)
    try:
        host, port = gw.start()
        # a clean download, for the figure and as the reference
        clean = tmp_path / "clean-node"
        out = _node(clean, "fetch", host, str(port), str(pub))
        assert "BOOT normal 0 0" in out and "PENDING 2" in out, out
        ms = int(out.split("PENDING 2 ms=")[1].split()[0])
        print(f"FIGURE fwupdate download {SIZE} B over CoAP Block2 (512 B blocks, loopback): "
              f"{ms} ms")
        assert (clean / "slots" / "slot1.img").read_bytes() == image

        # power cut in the middle of sector 2 (sectors 0 and 1 on flash)
        node = tmp_path / "node"
        out = _node_until_paused(node, "fetch", host, str(port), str(pub), "1")
        assert "SECTOR 1 8192" in out and "SECTOR 2" not in out, out
        progress = json.loads((node / "fw" / "download.json").read_text())
        assert progress["done"] == 8192
        boot = node / "slots" / "boot.json"  # nothing pending: no record or state "ok"
        assert not boot.exists() or json.loads(boot.read_text())["state"] == "ok"

        # power back: resumes at 8192, finishes, digest checked, pending
        out = _node(node, "fetch", host, str(port), str(pub))
        assert "I node fw resume version=2 at=8192" in out and "PENDING 2" in out, out
        assert "SECTOR 0 " not in out and "SECTOR 1 " not in out, out
        assert (node / "slots" / "slot1.img").read_bytes() == image
        assert not (node / "fw" / "download.json").exists()

        # reset: the new slot boots on trial and confirms itself; the floor rises
        out = _node(node, "confirm")
        assert "BOOT trial 1 2" in out and "CONFIRMED True floor=2" in out, out
        out = _node(node, "boot")
        assert "BOOT normal 1 2" in out, out
        # the same release again is a rollback now, refused before any download
        r = subprocess.run([micropython_binary(), str(DRIVER), str(node), "fetch", host,
                            str(port), str(pub)], env=_env(), capture_output=True, text=True,
                           timeout=120, check=False)
        assert r.returncode == 1 and "ERROR rollback" in r.stdout, r.stdout + r.stderr
    finally:
        gw.stop()
    assert gw.proc is not None and gw.proc.returncode == 0, gw.log.read_text()
