"""End to end on one machine: build -> copy -> register -> first reading in the cloud, from an
emulated board provisioned by `machi provision` against the real cloud and gateway; then
`machi doctor` on all three."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from machi_tools.emuboard import EmuBoard
from machi_tools.system import Cloud, Gateway

Machi = Callable[..., subprocess.CompletedProcess[str]]


def test_provisioned_emulated_board_reaches_the_cloud_and_doctor_agrees(
        tmp_path: Path, machi: Machi) -> None:
    admin = secrets.token_urlsafe(16)
    cloud = Cloud(workdir=tmp_path / "sys", api_tokens=f"tech=admin:{admin}")
    gateway: Gateway | None = None
    board = EmuBoard(tmp_path / "board")
    try:
        cloud.start()
        gateway = Gateway(workdir=tmp_path / "sys", cloud_url=cloud.url, token=cloud.token,
                          devices_sync=True, sync_interval_s=0.5)
        host, port = gateway.start()
        board.start()
        started = time.monotonic()
        build = machi("build", "--out", str(tmp_path / "build"), "--json")
        assert build.returncode == 0, build.stderr
        result = machi("provision", "--port", board.port, "--type", "env", "--site", "Lab",
                       "--lat", "36.1", "--lon", "137.9", "--gateway-addr", f"{host}:{port}",
                       "--interval", "0.5", "--cloud", cloud.url, "--build-dir",
                       str(tmp_path / "build"), "--json", env={"MACHI_ADMIN_TOKEN": admin})
        assert result.returncode == 0, result.stdout + result.stderr
        device = json.loads(result.stdout)["device"]
        provisioned = time.monotonic() - started
        # the gateway learns the device (and its key) from the cloud
        gateway.wait_devices(1, timeout=30)
        synced = json.loads(gateway.devices_path.read_text())["devices"]
        ident = json.loads((board.root / "identity.json").read_text())
        assert [(d["id"], d.get("key")) for d in synced] == [(device, ident["key"])]
        board.reset(run_main=True)  # power on: the copied firmware runs from the board's files
        with httpx.Client(base_url=cloud.url, timeout=5,
                          headers={"Authorization": f"Bearer {admin}"}) as client:
            view: dict[str, object] = {}
            for _ in range(300):
                view = client.get(f"/v1/devices/{device}").json()
                if int(view.get("readings") or 0) > 0:  # type: ignore[call-overload]
                    break
                time.sleep(0.2)
            first_reading = time.monotonic() - started
            assert int(view["readings"]) > 0, board.output()[-2000:]  # type: ignore[call-overload]
            assert view["registered"] is True and view["site"] == "Lab"
        print(f"\nprovisioned in {provisioned:.1f}s; first reading in the cloud "
              f"{first_reading:.1f}s after the build started")
        assert "env" in board.output() and f"I {device} ack" in board.output()

        doc = machi("doctor", "--port", board.port, "--gateway-health", gateway.health_url,
                    "--cloud", cloud.url, "--json", env={"MACHI_ADMIN_TOKEN": admin})
        assert doc.returncode == 0, doc.stdout + doc.stderr
        checks = {c["name"]: c for c in json.loads(doc.stdout)["checks"]}
        assert checks["board"]["status"] == "ok"
        assert device in checks["board config"]["detail"]
        assert checks["gateway"]["status"] == "ok" and checks["cloud"]["status"] == "ok"
        assert checks["device in cloud"]["status"] == "ok"
        assert "last seen" in checks["device in cloud"]["detail"]

        # the gateway goes away: doctor says so, with what to do, and exits 3
        gateway.stop()
        doc = machi("doctor", "--gateway-health", gateway.health_url, "--cloud", cloud.url)
        assert doc.returncode == 3, doc.stdout
        assert "FAIL gateway" in doc.stdout and "fix:" in doc.stdout
    finally:
        board.stop()
        if gateway is not None:
            gateway.stop()
        cloud.stop()


def test_doctor_on_an_unprovisioned_board_and_unknown_device(emuboard: EmuBoard,
                                                             machi: Machi) -> None:
    doc = machi("doctor", "--port", emuboard.port, "--json")
    assert doc.returncode == 3
    checks = {c["name"]: c for c in json.loads(doc.stdout)["checks"]}
    assert checks["board"]["status"] == "ok"
    assert checks["board config"]["status"] == "fail"
    assert "machi provision" in checks["board config"]["fix"]
    assert machi("doctor").returncode == 2
