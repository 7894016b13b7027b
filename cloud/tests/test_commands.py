"""Downlink commands (protocol §5): queueing by role, long-poll, forward-only states, expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import cbor2
import httpx
import pytest

from machi_cloud import commands
from machi_cloud.app import create_app
from machi_cloud.settings import Settings
from machi_cloud.storage import Storage
from machi_cloud.storage.postgres import PostgresStorage
from machi_cloud.storage.records import Command

Register = Callable[..., Awaitable[dict[str, Any]]]
Check = Callable[[httpx.Response, int], dict[str, Any]]


@pytest.fixture
async def fleet(register: Register) -> None:
    await register("lamp-01", type="light", lat=35.0, lon=139.0)
    await register("bin-0001", type="bin")
    await register("lamp-02", type="light", gateway="gw-02")


async def _send(
    client: httpx.AsyncClient, headers: dict[str, str], device: str, name: str, **kw: Any
) -> httpx.Response:
    return await client.post(
        "/v1/commands", json={"device": device, "name": name, **kw}, headers=headers
    )


async def test_operators_queue_commands_and_rules_are_explained(
    client: httpx.AsyncClient, fleet: None, auth: dict[str, dict[str, str]], assert_problem: Check
) -> None:
    op = auth["operator"]
    assert_problem(await _send(client, {}, "lamp-01", "on"), 401)
    assert_problem(await _send(client, auth["viewer"], "lamp-01", "on"), 403)
    assert_problem(await _send(client, auth["gw-01"], "lamp-01", "on"), 403)
    made = await _send(client, op, "lamp-01", "dim", args={"level": 40}, ttl_s=60)
    assert made.status_code == 201, made.text
    cmd = made.json()
    assert (
        cmd["state"] == "queued" and cmd["gateway"] == "gw-01" and cmd["actor"] == "operator:olga"
    )
    assert cmd["expires"] == pytest.approx(cmd["created"] + 60)
    assert (await _send(client, auth["admin"], "lamp-01", "off")).status_code == 201
    for name, args in (("dim", {"level": 101}), ("dim", {}), ("on", {"x": 1}),
                       ("schedule", {"mode": "sometimes"}), ("interval", {"s": 0}),
                       ("config", {})):  # fmt: skip
        p = assert_problem(await _send(client, op, "lamp-01", name, args=args), 422)
        assert name in p["detail"]
    p = assert_problem(await _send(client, op, "bin-0001", "on"), 422)
    assert "streetlights" in p["detail"]
    ok = await _send(client, op, "bin-0001", "interval", args={"s": 300})
    assert ok.status_code == 201
    ok = await _send(client, op, "bin-0001", "config", args={"full_at": 90, "mode": "eco"})
    assert ok.status_code == 201
    assert_problem(await _send(client, op, "ghost-1", "interval", args={"s": 5}), 404)
    listed = await client.get("/v1/commands", params={"device": "lamp-01"})
    assert [c["name"] for c in listed.json()["commands"]] == ["off", "dim"]  # newest first
    one = await client.get(f"/v1/commands/{cmd['id']}")
    assert one.json()["args"] == {"level": 40}


async def test_long_poll_answers_at_once_when_pending_and_wakes_on_a_new_command(
    client: httpx.AsyncClient, fleet: None, auth: dict[str, dict[str, str]]
) -> None:
    gw = auth["gw-01"]
    empty = await client.get("/v1/gateways/gw-01/commands", params={"wait": 0}, headers=gw)
    assert empty.status_code == 200 and empty.json() == {"commands": []}

    async def later() -> httpx.Response:
        await asyncio.sleep(0.3)
        return await _send(client, auth["operator"], "lamp-01", "on")

    poll = client.get("/v1/gateways/gw-01/commands", params={"wait": 20}, headers=gw)
    got, made = await asyncio.gather(poll, later())
    assert made.status_code == 201
    commands = got.json()["commands"]
    assert [(c["id"], c["device"], c["name"], c["args"]) for c in commands] == [
        (made.json()["id"], "lamp-01", "on", {})
    ]
    assert set(commands[0]) == {"id", "device", "name", "args", "created", "expires"}
    # returned again (and in CBOR if asked) until its state moves past queued
    again = await client.get(
        "/v1/gateways/gw-01/commands", headers={**gw, "Accept": "application/cbor"}
    )
    assert cbor2.loads(again.content)["commands"][0]["id"] == made.json()["id"]
    # another gateway does not see it
    other = await client.get("/v1/gateways/gw-02/commands", headers=auth["gw-02"])
    assert other.json() == {"commands": []}


async def test_states_move_forward_only_and_reports_are_idempotent(
    client: httpx.AsyncClient, fleet: None, auth: dict[str, dict[str, str]], assert_problem: Check
) -> None:
    gw = auth["gw-01"]
    cid = (await _send(client, auth["operator"], "lamp-01", "off")).json()["id"]

    async def report(state: str, headers: dict[str, str] = gw, **kw: Any) -> httpx.Response:
        return await client.post(
            f"/v1/commands/{cid}/state", json={"state": state, **kw}, headers=headers
        )

    sent = await report("sent", time=1795390000.5)
    assert sent.json()["state"] == "sent" and sent.json()["changed"] is True
    pending = await client.get("/v1/gateways/gw-01/commands", headers=gw)
    assert pending.json() == {"commands": []}  # past queued: no longer offered
    assert (await report("sent")).json()["changed"] is False  # a retry
    acked = await client.post(
        f"/v1/commands/{cid}/state",
        content=cbor2.dumps({"state": "acknowledged"}),
        headers={**gw, "Content-Type": "application/cbor", "Accept": "application/cbor"},
    )
    assert cbor2.loads(acked.content)["state"] == "acknowledged"
    late = await report("sent")  # out of order: ignored
    assert late.status_code == 200 and late.json()["state"] == "acknowledged"
    done = await report("executed", detail="ok")
    assert done.json()["state"] == "executed" and done.json()["detail"] == "ok"
    assert (await report("failed")).json() == {**done.json(), "changed": False}  # final stays
    assert_problem(await report("executed", auth["gw-02"]), 403)
    assert_problem(await report("executed", auth["operator"]), 403)
    assert_problem(await report("bogus"), 422)
    assert_problem(
        await client.post("/v1/commands/nope/state", json={"state": "sent"}, headers=gw), 404
    )
    bad = await client.post(
        f"/v1/commands/{cid}/state",
        content=b"\xff",
        headers={**gw, "Content-Type": "application/cbor"},
    )
    assert_problem(bad, 400)
    audit = (await client.get("/v1/audit", headers=auth["admin"])).json()["entries"]
    moves = [
        (e["details"]["from"], e["details"]["to"]) for e in audit if e["action"] == "command.state"
    ]
    assert moves == [("queued", "sent"), ("sent", "acknowledged"), ("acknowledged", "executed")]


async def test_queued_commands_expire_and_the_expiry_is_audited(
    client: httpx.AsyncClient,
    fleet: None,
    storage: Storage,
    auth: dict[str, dict[str, str]],
) -> None:
    now = time.time()
    old = Command(
        id="c-old", device="lamp-01", gateway="gw-01", name="on", created=now - 100,
        expires=now - 1, updated=now - 100,
    )  # fmt: skip
    await storage.add_command(old, actor="operator:olga")
    got = await client.get("/v1/gateways/gw-01/commands", headers=auth["gw-01"])
    assert got.json() == {"commands": []}
    listed = (await client.get("/v1/commands")).json()["commands"]
    assert [(c["id"], c["state"]) for c in listed] == [("c-old", "expired")]
    audit = (await client.get("/v1/audit", headers=auth["admin"])).json()["entries"]
    assert audit[-1]["actor"] == "system:expiry" and audit[-1]["subject"] == "c-old"
    assert (await client.get("/v1/audit/verify", headers=auth["admin"])).json()["ok"] is True


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_command_queued_on_one_instance_wakes_a_long_poll_on_another(
    settings: Settings,
    storage: Storage,
    register: Register,
    auth: dict[str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two app instances on one PostgreSQL database: the gateway long-polls B, an operator
    queues on A. With every periodic re-check pushed past the poll's end, only A's NOTIFY
    (heard by B's LISTEN) can deliver the command before the poll's 30 s are over (it takes
    milliseconds; the test allows 20 s for a loaded machine). Then B's LISTEN connection is
    killed: the next long-poll opens a new one, and the next command arrives as fast."""
    monkeypatch.setattr(commands, "RECHECK_S", 120.0)
    monkeypatch.setattr(commands, "LISTENING_RECHECK_S", 120.0)
    await register("lamp-01", type="light")  # through the `client` of instance A
    assert settings.database_url
    async with PostgresStorage(settings.database_url, pool_size=2) as storage_b:
        app_b = create_app(settings, storage_b)
        transport_b = httpx.ASGITransport(app=app_b)
        async with httpx.AsyncClient(transport=transport_b, base_url="http://b.test") as b:
            app_a = create_app(settings, storage)
            transport_a = httpx.ASGITransport(app=app_a)
            async with httpx.AsyncClient(transport=transport_a, base_url="http://a.test") as a:
                for name in ("on", "off"):
                    poll = asyncio.create_task(
                        b.get(
                            "/v1/gateways/gw-01/commands?wait=30",
                            headers=auth["gw-01"],
                            timeout=60,
                        )
                    )
                    # B's long-poll waits once its wake-up event exists (LISTEN came first)
                    await _until(lambda: "gw-01" in app_b.state.wakeups._events, poll)
                    sent = await _send(a, auth["operator"], "lamp-01", name)
                    assert sent.status_code == 201, sent.text
                    # the poll's own end (30 s) would also find it: it must come well before
                    answer = await asyncio.wait_for(poll, 20)
                    assert answer.status_code == 200, answer.text
                    assert [c["id"] for c in answer.json()["commands"]] == [sent.json()["id"]]
                    state = {"state": "sent"}
                    done = await b.post(
                        f"/v1/commands/{sent.json()['id']}/state", json=state, headers=auth["gw-01"]
                    )
                    assert done.status_code == 200, done.text
                    if name == "on":  # the LISTEN connection dies: the next poll reconnects
                        pid = storage_b._listener.get_server_pid()
                        conn = await asyncpg.connect(settings.database_url)
                        try:
                            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
                        finally:
                            await conn.close()
                        await _until(lambda: storage_b._listener is None, None)


async def _until(condition: Callable[[], bool], task: asyncio.Task[Any] | None) -> None:
    """Wait (at most 30 s) for `condition`; fails early if `task` ends first."""
    deadline = time.monotonic() + 30
    while not condition():
        assert task is None or not task.done(), task.result()
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        await asyncio.sleep(0.01)


async def test_long_poll_without_a_command_ends_empty_after_the_wait(
    client: httpx.AsyncClient, fleet: None, auth: dict[str, dict[str, str]]
) -> None:
    got = await client.get("/v1/gateways/gw-01/commands?wait=0.2", headers=auth["gw-01"])
    assert got.status_code == 200 and got.json() == {"commands": []}
