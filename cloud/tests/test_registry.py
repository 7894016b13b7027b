"""Roles, the device registry, provisioning and the gateway's registry sync (protocol §6)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import cbor2
import httpx

Register = Callable[..., Awaitable[dict[str, Any]]]
Check = Callable[[httpx.Response, int], dict[str, Any]]


async def test_registration_needs_an_admin(
    client: httpx.AsyncClient, auth: dict[str, dict[str, str]], assert_problem: Check
) -> None:
    body = {"type": "light", "gateway": "gw-01", "lat": 35.0, "lon": 139.0}
    assert_problem(await client.put("/v1/devices/lamp-01", json=body), 401)
    assert_problem(
        await client.put("/v1/devices/lamp-01", json=body, headers={"Authorization": "Bearer x"}),
        401,
    )
    for who in ("operator", "viewer", "gw-01"):
        p = assert_problem(
            await client.put("/v1/devices/lamp-01", json=body, headers=auth[who]), 403
        )
        assert "admin" in p["detail"]
    created = await client.put("/v1/devices/lamp-01", json=body, headers=auth["admin"])
    assert created.status_code == 201, created.text
    again = await client.put("/v1/devices/lamp-01", json=body, headers=auth["admin"])
    assert again.status_code == 200 and again.json() == created.json()  # no change, no entry


async def test_bad_registrations_are_explained(
    client: httpx.AsyncClient, auth: dict[str, dict[str, str]], assert_problem: Check
) -> None:
    async def put(body: dict[str, Any]) -> httpx.Response:
        return await client.put("/v1/devices/x-1", json=body, headers=auth["admin"])

    assert_problem(await put({"type": "toaster", "gateway": "gw-01"}), 422)
    assert_problem(await put({"type": "env", "gateway": "gw-01", "lat": 95, "lon": 0}), 422)
    p = assert_problem(await put({"type": "env", "gateway": "gw-01", "lat": 35.0}), 422)
    assert "lat and lon" in p["detail"]
    assert_problem(
        await client.put("/v1/devices/Bad_Id", json={"type": "env", "gateway": "gw-01"},
                         headers=auth["admin"]),
        422,
    )  # fmt: skip


async def test_short_ids_are_unique_per_gateway_and_reused_when_freed(register: Register) -> None:
    a = await register("env-0001")
    b = await register("env-0002")
    c = await register("env-0003", gateway="gw-02")
    assert (a["short_id"], b["short_id"], c["short_id"]) == (1, 2, 1)
    moved = await register("env-0001", gateway="gw-02")  # frees 1 on gw-01, takes 2 on gw-02
    assert moved["short_id"] == 2
    d = await register("env-0004")
    assert d["short_id"] == 1
    kept = await register("env-0002", site="renamed")
    assert kept["short_id"] == 2


async def test_keys_are_shown_once_rotated_revoked_and_synced_to_the_gateway(
    client: httpx.AsyncClient,
    register: Register,
    auth: dict[str, dict[str, str]],
    assert_problem: Check,
) -> None:
    await register("lamp-01", type="light", lat=35.68, lon=139.76, transport="lora")
    await register("env-0009", gateway="gw-02")
    assert_problem(await client.post("/v1/devices/nope-1/keys", headers=auth["admin"]), 404)
    assert_problem(await client.post("/v1/devices/lamp-01/keys", headers=auth["operator"]), 403)
    first = await client.post("/v1/devices/lamp-01/keys", headers=auth["admin"])
    assert first.status_code == 201 and first.headers["cache-control"] == "no-store"
    key1 = first.json()["key"]
    assert len(bytes.fromhex(key1)) == 16
    # the registration never shows the key, only that there is one
    view = (await client.get("/v1/devices/lamp-01")).json()
    assert view["has_key"] is True and key1 not in str(view)

    sync = await client.get("/v1/gateways/gw-01/devices", headers=auth["gw-01"])
    assert sync.status_code == 200, sync.text
    assert sync.json() == {
        "devices": [
            {
                "id": "lamp-01",
                "type": "light",
                "short_id": 1,
                "key": key1,
                "revoked": False,
                "lat": 35.68,
                "lon": 139.76,
                "transport": "lora",
            }
        ]
    }
    cbor = await client.get(
        "/v1/gateways/gw-01/devices", headers={**auth["gw-01"], "Accept": "application/cbor"}
    )
    assert cbor2.loads(cbor.content) == sync.json()
    # rotation replaces the key; revocation removes it
    key2 = (await client.post("/v1/devices/lamp-01/keys", headers=auth["admin"])).json()["key"]
    assert key2 != key1
    synced = (await client.get("/v1/gateways/gw-01/devices", headers=auth["gw-01"])).json()
    assert synced["devices"][0]["key"] == key2
    revoked = await client.delete("/v1/devices/lamp-01/keys", headers=auth["admin"])
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    synced = (await client.get("/v1/gateways/gw-01/devices", headers=auth["gw-01"])).json()
    assert synced["devices"][0]["key"] is None and synced["devices"][0]["revoked"] is True
    # a gateway sees only its own devices, and only with its own token
    assert_problem(await client.get("/v1/gateways/gw-01/devices", headers=auth["gw-02"]), 403)
    assert_problem(await client.get("/v1/gateways/gw-01/devices", headers=auth["admin"]), 403)
    other = (await client.get("/v1/gateways/gw-02/devices", headers=auth["gw-02"])).json()
    assert [d["id"] for d in other["devices"]] == ["env-0009"]


async def test_devices_show_health_battery_and_firmware(
    client: httpx.AsyncClient, register: Register, post: Any
) -> None:
    now = time.time()
    await register("env-0001", interval_s=60, lat=35.0, lon=139.0)
    await register("env-0002")  # never seen: silent
    batch = {
        "gateway": "gw-01",
        "batch_id": "h-1",
        "readings": [
            {"device": "env-0001", "seq": 1, "time": now - 1000, "received": now - 1000,
             "m": [{"n": "bat", "u": "V", "v": 3.9}, {"n": "fw", "vs": "0.3.1"}]},
            {"device": "env-0001", "seq": 2, "time": now - 250, "received": now - 250,
             "m": [{"n": "bat", "u": "V", "v": 3.2}]},
            {"device": "env-0003", "seq": 7, "time": now - 5, "received": now - 5,
             "m": [{"n": "bat", "u": "%", "v": 80}]},
        ],
    }  # fmt: skip
    assert (await post(batch)).json()["stored"] == 3
    devices = {d["device"]: d for d in (await client.get("/v1/devices")).json()["devices"]}
    assert list(devices) == ["env-0001", "env-0002", "env-0003"]
    e1 = devices["env-0001"]
    assert e1["health"] == "stale"  # 250 s > 3 x 60 s
    assert e1["battery"]["value"] == 3.2 and e1["low_battery"] is True
    assert e1["firmware"] == "0.3.1" and e1["registered"] is True and e1["short_id"] == 1
    assert e1["last_seq"] == 2 and e1["readings"] == 2
    assert devices["env-0002"]["health"] == "silent" and devices["env-0002"]["last_seen"] is None
    e3 = devices["env-0003"]
    assert e3["health"] == "ok" and e3["low_battery"] is False and e3["registered"] is False


async def test_reads_can_require_a_viewer_token(
    client: httpx.AsyncClient, app: Any, auth: dict[str, dict[str, str]], assert_problem: Check
) -> None:
    import dataclasses

    app.state.settings = dataclasses.replace(app.state.settings, open_reads=False)
    for path in ("/v1/devices", "/v1/readings", "/v1/commands", "/v1/latest", "/v1/open-data"):
        assert_problem(await client.get(path), 401)
        assert (await client.get(path, headers=auth["viewer"])).status_code == 200, path
        assert_problem(await client.get(path, headers=auth["gw-01"]), 403)


def test_people_tokens_come_from_toml_environment_and_flags(tmp_path: Any) -> None:
    import hashlib

    import pytest

    from machi_cloud.cli import build_parser, load_settings
    from machi_cloud.settings import ConfigError, Role

    digest = hashlib.sha256(b"alice-secret").hexdigest()
    toml = tmp_path / "cloud.toml"
    toml.write_text(f'open_reads = false\n[api_tokens]\nalice = "admin:sha256:{digest}"\n')
    args = build_parser().parse_args(["--config", str(toml), "--api-token", "bob=operator:b"])
    s = load_settings(args, {"MACHI_CLOUD_API_TOKENS": "vic=viewer:v"})
    assert s.open_reads is False
    assert s.api_tokens.lookup("alice-secret") == ("alice", Role.admin)
    assert s.api_tokens.lookup("b") == ("bob", Role.operator)
    assert s.api_tokens.lookup("v") == ("vic", Role.viewer)
    assert s.api_tokens.lookup("nope") is None
    flags = build_parser().parse_args(["--private-reads"])
    assert load_settings(flags, {}).open_reads is False
    assert load_settings(build_parser().parse_args([]), {}).open_reads is True
    with pytest.raises(ConfigError, match=r"unknown role 'root'.*viewer, operator, admin"):
        load_settings(build_parser().parse_args(["--api-token", "x=root:t"]), {})
