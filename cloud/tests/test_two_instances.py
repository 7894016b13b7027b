"""Two `machi-cloud` processes on one PostgreSQL: the database, not memory, keeps order.

Both start at once on an empty database (so their schema migrations race too), then get
the same batches at the same moment, overlapping batches, and one batch id with two
different bodies. Every reading must be stored exactly once and the conflict detected.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest

from machi_cloud.cli import build_parser, load_settings
from machi_cloud.settings import DATABASE_URL_ENV, ConfigError
from machi_cloud.storage.pgserver import PostgresServer

Ready = Callable[..., dict[str, Any]]  # conftest.wait_ready
Start = Callable[..., subprocess.Popen[bytes]]  # conftest.start_cloud

T0 = 1795390000
TOKEN = "two-secret"
HEADERS = {
    "Authorization": f"Bearer {TOKEN}",
    "Content-Type": "application/cbor",
    "Accept": "application/json",
}


@pytest.fixture
def instances(
    pg: PostgresServer, tmp_path: Path, start_cloud: Start, wait_ready: Ready
) -> Iterator[list[str]]:
    """Two machi-cloud processes started together on one fresh database; their URLs."""
    dsn = pg.create_database("two_instances")
    env = {**os.environ, "MACHI_CLOUD_GATEWAY_TOKENS": f"gw-01={TOKEN}"}
    procs: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    try:
        for name in ("a", "b"):
            ready, log = tmp_path / f"{name}.ready", tmp_path / f"{name}.log"
            procs.append((start_cloud(["--database-url", dsn], ready, log, env), ready, log))
        yield [wait_ready(proc, ready, log)["url"] for proc, ready, log in procs]
        for proc, _, log in procs:
            proc.terminate()
            assert proc.wait(timeout=20) == 0, log.read_text()
            assert "postgresql://machi@127.0.0.1" in log.read_text()  # where it stored
    finally:
        for proc, _, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
                print(log.read_text())


def batch(batch_id: str, seqs: list[int], device: str = "env-0001", value: float = 0.0) -> bytes:
    readings = [
        {"device": device, "seq": s, "time": T0 + s, "m": [{"n": "temp", "v": value + s}]}
        for s in seqs
    ]
    return cbor2.dumps({"gateway": "gw-01", "batch_id": batch_id, "readings": readings})


async def post(client: httpx.AsyncClient, url: str, body: bytes) -> tuple[int, Any]:
    resp = await client.post(f"{url}/v1/batches", content=body, headers=HEADERS)
    return resp.status_code, resp.json()


async def race(instances: list[str]) -> None:
    a, b = instances
    async with httpx.AsyncClient(timeout=60) as client:
        # 1. the same batch to both at once, ten times: one stores, the other replays
        same = [batch(f"same-{i}", list(range(50 * i, 50 * i + 50))) for i in range(10)]
        answers = await asyncio.gather(*(post(client, u, body) for body in same for u in (a, b)))
        for first, second in zip(answers[::2], answers[1::2], strict=True):
            assert first == second and first[0] == 200, (first, second)
            assert first[1]["stored"] == 50 and first[1]["duplicates"] == 0
        # 2. overlapping batches (windows of 200 seqs, step 100) alternating a/b, at once
        overlap = [
            batch(f"ovl-{i}", list(range(100 * i, 100 * i + 200)), "env-0002") for i in range(8)
        ]
        answers = await asyncio.gather(
            *(post(client, (a, b)[i % 2], body) for i, body in enumerate(overlap))
        )
        assert all(status == 200 for status, _ in answers)
        assert sum(ans["stored"] for _, ans in answers) == 900  # seqs 0..899, each once
        assert all(ans["stored"] + ans["duplicates"] == 200 for _, ans in answers)
        assert all(len(ans["acked"]) == 200 for _, ans in answers)
        # 3. one batch id, two bodies, at once: exactly one is stored, the other is a 409
        clash = await asyncio.gather(
            post(client, a, batch("clash", [1], "env-0003")),
            post(client, b, batch("clash", [2], "env-0003")),
        )
        assert sorted(status for status, _ in clash) == [200, 409]
        conflict = next(body for status, body in clash if status == 409)
        assert conflict["type"] == "urn:machi:problem:batch-conflict"
        # both instances see the same, duplicate-free data
        for url in (a, b):
            resp = await client.get(f"{url}/v1/readings", params={"limit": 100000})
            rows = resp.json()["readings"]
            keys = [(r["device"], r["seq"]) for r in rows]
            assert len(keys) == len(set(keys)) == 500 + 900 + 1
            health = (await client.get(f"{url}/healthz")).json()
            assert (health["readings"], health["batches"]) == (1401, 10 + 8 + 1)


def test_two_processes_on_one_postgres_store_each_reading_once(instances: list[str]) -> None:
    asyncio.run(race(instances))


def test_database_url_comes_from_flag_env_or_toml_and_is_checked(tmp_path: Path) -> None:
    toml = tmp_path / "cloud.toml"
    toml.write_text('database_url = "postgresql://toml@db/machi"\n')
    env = {DATABASE_URL_ENV: "postgresql://env@db/machi"}
    parse = build_parser().parse_args
    assert load_settings(parse([]), {}).database_url is None
    assert load_settings(parse(["--config", str(toml)]), {}).database_url == (
        "postgresql://toml@db/machi"
    )
    assert load_settings(parse(["--config", str(toml)]), env).database_url == (
        "postgresql://env@db/machi"
    )
    flag = parse(["--config", str(toml), "--database-url", "postgres://flag@db/m"])
    assert load_settings(flag, env).database_url == "postgres://flag@db/m"
    with pytest.raises(ConfigError, match="database_url"):
        load_settings(parse(["--database-url", "mysql://x@db/m"]), {})
    toml.write_text("database_url = 5\n")
    with pytest.raises(ConfigError, match="database_url"):
        load_settings(parse(["--config", str(toml)]), {})
