"""`machi provision` writes the node's OSCORE section from the real cloud's registration.

An emulated board (unix micropython on a pty) and the real `machi-cloud` (SQLite): the key
and the short id in the board's `config.json` must be the ones the gateway will fetch from
the cloud (`GET /v1/gateways/{gw}/devices`), or the node's requests would be refused. The
key must never appear in what provisioning prints.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from machi_tools.cloudapi import CloudClient, CloudError
from machi_tools.emuboard import EmuBoard
from machi_tools.provision import oscore_section
from machi_tools.system import Cloud

Machi = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def real_cloud(tmp_path: Path) -> Iterator[tuple[Cloud, str]]:
    admin = secrets.token_urlsafe(12)
    cloud = Cloud(workdir=tmp_path / "cloud", api_tokens=f"tech=admin:{admin}")
    try:
        cloud.start()
        yield cloud, admin
    finally:
        cloud.stop()


def _gateway_view(cloud: Cloud, device: str) -> dict[str, Any]:
    """What the gateway syncs for the device (its key and short id)."""
    resp = httpx.get(f"{cloud.url}/v1/gateways/{cloud.gateway_id}/devices",
                     headers={"Authorization": f"Bearer {cloud.token}"}, timeout=10)
    resp.raise_for_status()
    [dev] = [d for d in resp.json()["devices"] if d["id"] == device]
    return dict(dev)


def test_provision_writes_oscore_section_matching_the_cloud(
        emuboard: EmuBoard, real_cloud: tuple[Cloud, str], machi: Machi,
        unix_build: Path) -> None:
    cloud, admin = real_cloud
    env = {"MACHI_ADMIN_TOKEN": admin}
    first = machi("provision", "--port", emuboard.port, "--cloud", cloud.url, "--json",
                  "--build-dir", str(unix_build), "--type", "env", "--id", "env-0007",
                  "--gateway", cloud.gateway_id, "--gateway-addr", "127.0.0.1:5683", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    res = json.loads(first.stdout)
    cfg = json.loads((emuboard.root / "config.json").read_text())
    ident = json.loads((emuboard.root / "identity.json").read_text())
    gw = _gateway_view(cloud, "env-0007")
    assert isinstance(gw["short_id"], int) and gw["key"]
    assert cfg["oscore"] == {"key": gw["key"], "short_id": gw["short_id"]}
    assert ident["key"] == gw["key"]
    assert res["oscore"] is True and res["short_id"] == gw["short_id"]
    # the board's own nodeconfig accepted the section (the self-test loads config.json)
    assert res["selftest"]["config_error"] is None
    assert gw["key"] not in first.stdout + first.stderr

    # a second device on the same gateway gets another short id; the human output of a
    # re-provisioning (key rotated) does not show the new key either
    again = machi("provision", "--port", emuboard.port, "--cloud", cloud.url,
                  "--build-dir", str(unix_build), "--id", "env-0008", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    cfg2 = json.loads((emuboard.root / "config.json").read_text())
    gw2 = _gateway_view(cloud, "env-0008")
    assert cfg2["oscore"] == {"key": gw2["key"], "short_id": gw2["short_id"]}
    assert gw2["short_id"] != gw["short_id"]
    assert gw2["key"] not in again.stdout + again.stderr
    assert "OSCORE" in again.stdout and f"short id {gw2['short_id']}" in again.stdout


def test_oscore_section_rules() -> None:
    key = bytes(range(16))
    assert oscore_section(None, key=key, short_id=5, registered=True, transport="coap") == {
        "key": key.hex(), "short_id": 5}
    # no short id from the cloud: no section rather than a guessed kid
    assert oscore_section(None, key=key, short_id=None, registered=True,
                          transport="coap") is None
    assert oscore_section(None, key=key, short_id=5, registered=True, transport="lora") is None
    old = {"oscore": {"key": key.hex(), "short_id": 9}}
    # not registered this time: the old section stays while its key is still the board's
    assert oscore_section(old, key=key, short_id=None, registered=False,
                          transport="coap") == {"key": key.hex(), "short_id": 9}
    assert oscore_section(old, key=b"\x01" * 16, short_id=None, registered=False,
                          transport="coap") is None


def test_register_refuses_a_bad_short_id() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return httpx.Response(201, json={"device": "env-0001", "short_id": 70000})
        return httpx.Response(201, json={"device": "env-0001", "key": "00" * 16})

    with CloudClient("http://cloud.test", "t", transport=httpx.MockTransport(handler)) as c, \
            pytest.raises(CloudError, match="short_id 70000"):
        c.register("env-0001", {"type": "env", "gateway": "gw-01"})


def test_register_falls_back_to_get_for_the_short_id() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if request.method == "PUT":
            return httpx.Response(200, json={"device": "env-0001"})
        if request.method == "POST":
            return httpx.Response(201, json={"device": "env-0001", "key": "ab" * 16})
        return httpx.Response(200, json={"device": "env-0001", "short_id": 12})

    with CloudClient("http://cloud.test", "t", transport=httpx.MockTransport(handler)) as c:
        reg = c.register("env-0001", {"type": "env", "gateway": "gw-01"})
    assert (reg.short_id, reg.created, seen) == (12, False, ["PUT", "POST", "GET"])
    assert "abab" not in repr(reg)
