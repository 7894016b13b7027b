"""The hash-chained audit log: every change is recorded, and tampering is detected.

Tampering is done the way an intruder with the database would: directly in SQLite (or
PostgreSQL), after dropping (disabling) the append-only triggers, while the service is
stopped. Every test runs on both backends.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from machi_cloud import audit
from machi_cloud.settings import Settings
from machi_cloud.storage import Storage

Register = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
async def history(
    client: httpx.AsyncClient, register: Register, auth: dict[str, dict[str, str]]
) -> list[dict[str, Any]]:
    """Six entries: two registrations, an update, a key, a command and its first state."""
    await register("lamp-01", type="light", lat=35.0, lon=139.0)
    await register("env-0001")
    await register("lamp-01", type="light", lat=35.0, lon=139.5, site="north gate")
    assert (await client.post("/v1/devices/lamp-01/keys", headers=auth["admin"])).status_code == 201
    cmd = await client.post(
        "/v1/commands",
        json={"device": "lamp-01", "name": "dim", "args": {"level": 30}},
        headers=auth["operator"],
    )
    assert cmd.status_code == 201, cmd.text
    state = await client.post(
        f"/v1/commands/{cmd.json()['id']}/state", json={"state": "sent"}, headers=auth["gw-01"]
    )
    assert state.status_code == 200, state.text
    resp = await client.get("/v1/audit", headers=auth["admin"])
    assert resp.status_code == 200, resp.text
    entries: list[dict[str, Any]] = resp.json()["entries"]
    return entries


async def test_every_change_is_chained_with_its_actor(history: list[dict[str, Any]]) -> None:
    assert [e["action"] for e in history] == [
        "device.create",
        "device.create",
        "device.update",
        "device.key.issue",
        "command.create",
        "command.state",
    ]
    assert [e["actor"] for e in history] == [
        "admin:alice",
        "admin:alice",
        "admin:alice",
        "admin:alice",
        "operator:olga",
        "gateway:gw-01",
    ]
    assert [e["seq"] for e in history] == [1, 2, 3, 4, 5, 6]
    assert history[0]["prev_hash"] == audit.GENESIS
    for before, after in itertools.pairwise(history):
        assert after["prev_hash"] == before["hash"]
    assert history[2]["details"] == {
        "changed": {"lon": [139.0, 139.5], "site": [None, "north gate"]}
    }
    key_entry = history[3]["details"]
    assert len(key_entry["key_id"]) == 16 and "key" not in key_entry  # never the key itself
    assert history[5]["details"]["from"] == "queued" and history[5]["details"]["to"] == "sent"


async def test_verify_endpoint_and_function_agree_on_a_sound_chain(
    client: httpx.AsyncClient,
    history: list[dict[str, Any]],
    auth: dict[str, dict[str, str]],
    storage: Storage,
    settings: Settings,
) -> None:
    resp = await client.get("/v1/audit/verify", headers=auth["admin"])
    assert resp.json() == {
        "ok": True,
        "problems": [],
        "entries": 6,
        "head": {"seq": 6, "hash": history[-1]["hash"]},
    }
    assert await audit.verify_storage(storage) == []
    assert await _problems(settings) == []
    for role in ("operator", "viewer", "gw-01"):
        assert (await client.get("/v1/audit", headers=auth[role])).status_code == 403


def _where(settings: Settings) -> list[str]:
    """The `audit-verify` arguments naming the test's database."""
    if settings.database_url:
        return ["--database-url", settings.database_url]
    return ["--db", str(settings.db)]


async def _problems(settings: Settings) -> list[str]:
    """`audit.verify` of the database itself, read as `audit-verify` reads it."""
    if settings.database_url:
        return audit.verify_entries(await audit.read_postgres(settings.database_url))
    return audit.verify(settings.db)


async def _tamper(settings: Settings, *sql: str) -> None:
    if settings.database_url:
        conn = await asyncpg.connect(settings.database_url)
        try:
            async with conn.transaction():
                await conn.execute("ALTER TABLE audit DISABLE TRIGGER USER")
                for statement in sql:
                    await conn.execute(statement)
        finally:
            await conn.close()
        return
    conn3 = sqlite3.connect(settings.db)
    try:
        conn3.execute("DROP TRIGGER audit_append_only_update")
        conn3.execute("DROP TRIGGER audit_append_only_delete")
        for statement in sql:
            conn3.execute(statement)
        conn3.commit()
    finally:
        conn3.close()


async def _closed(storage: Storage) -> None:
    await storage.close()  # the intruder works on the database while the service is down


async def test_the_application_cannot_edit_or_delete_entries(
    history: list[dict[str, Any]], settings: Settings
) -> None:
    statements = ("UPDATE audit SET actor = 'x' WHERE seq = 1", "DELETE FROM audit")
    if settings.database_url:
        conn = await asyncpg.connect(settings.database_url)
        try:
            for statement in (*statements, "TRUNCATE audit"):
                with pytest.raises(asyncpg.RaiseError, match="append-only"):
                    await conn.execute(statement)
        finally:
            await conn.close()
        return
    conn3 = sqlite3.connect(settings.db)
    try:
        for statement in statements:
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn3.execute(statement)
    finally:
        conn3.close()


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            ["UPDATE audit SET details = replace(details, '30', '100') WHERE seq = 5"],
            ["entry 5: its content does not match its hash"],
        ),
        (["UPDATE audit SET actor = 'admin:mallory' WHERE seq = 2"], ["entry 2: its content"]),
        (["DELETE FROM audit WHERE seq = 3"], ["entry 4: expected seq 3", "entry 4: prev_hash"]),
        (
            [  # swap entries 2 and 3 (seq is the key, so via a free number)
                "UPDATE audit SET seq = 100 WHERE seq = 2",
                "UPDATE audit SET seq = 2 WHERE seq = 3",
                "UPDATE audit SET seq = 3 WHERE seq = 100",
            ],
            ["entry 2: prev_hash", "entry 2: its content", "entry 3: prev_hash"],
        ),
    ],
    ids=["edited-details", "edited-actor", "deleted", "reordered"],
)
async def test_verify_detects_tampering(
    history: list[dict[str, Any]],
    storage: Storage,
    settings: Settings,
    sql: list[str],
    expected: list[str],
) -> None:
    await _closed(storage)
    await _tamper(settings, *sql)
    problems = await _problems(settings)
    for fragment in expected:
        assert any(p.startswith(fragment) for p in problems), (fragment, problems)
    # and the console entry point says so with exit code 1
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "machi_cloud.cli", "audit-verify", *_where(settings)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "TAMPERED" in out.stdout


async def test_console_entry_point_on_a_sound_chain_and_on_a_missing_database(
    history: list[dict[str, Any]], storage: Storage, settings: Settings, tmp_path: Path
) -> None:
    await _closed(storage)
    cmd = [sys.executable, "-m", "machi_cloud.cli", "audit-verify"]
    run = subprocess.run
    ok = await asyncio.to_thread(run, [*cmd, *_where(settings)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"OK, 6 entries, head seq 6 hash {history[-1]['hash']}" in ok.stdout
    if settings.database_url:
        missing = ["--database-url", settings.database_url.rsplit("/", 1)[0] + "/nope"]
        says = "cannot connect"
    else:
        missing, says = ["--db", str(tmp_path / "nope")], "no such file"
    gone = await asyncio.to_thread(run, [*cmd, *missing], capture_output=True, text=True)
    assert gone.returncode == 2 and says in gone.stderr, gone.stderr


def test_console_entry_point_needs_a_database(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "machi_cloud.cli", "audit-verify"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "MACHI_CLOUD_DATABASE_URL"},
    )
    assert out.returncode == 2 and "--database-url" in out.stderr, out.stderr


def test_chain_entry_hash_is_the_documented_formula() -> None:
    e = audit.chain_entry(
        (41, "ab" * 32), time=1795390000.12345, actor="admin:a", action="x", subject="s",
        details={"b": 1, "a": "é"},
    )  # fmt: skip
    import hashlib

    body = (
        '{"action":"x","actor":"admin:a","details":{"a":"é","b":1},"prev_hash":"'
        + "ab" * 32
        + '","seq":42,"subject":"s","time":1795390000.123}'
    )
    assert e.seq == 42 and e.time == 1795390000.123
    assert e.hash == hashlib.sha256(body.encode()).hexdigest()
    assert audit.verify_entries([e]) != []  # not a chain start: seq 42 after nothing
