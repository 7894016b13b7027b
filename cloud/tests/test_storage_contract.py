"""The `Storage` contract, run against every backend: SQLite and PostgreSQL.

PostgreSQL tests start a throwaway server of their own (initdb + pg_ctl on a free port, see
`machi_cloud.storage.pgserver`), one per module, and a fresh database per test. They skip
only when the PostgreSQL server binaries are not installed.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import cbor2
import httpx
import pytest

from machi_cloud import audit
from machi_cloud.app import create_app
from machi_cloud.batch import Measurement, Reading, Rejection
from machi_cloud.errors import BatchConflict, NotFound, StorageUnavailable
from machi_cloud.settings import GatewayTokens, Settings
from machi_cloud.storage import Cursor, ReadingQuery, Storage
from machi_cloud.storage.migrations.postgres import STEPS, migrate
from machi_cloud.storage.pgserver import PostgresServer, PostgresUnavailable
from machi_cloud.storage.postgres import SCHEMA_VERSION, PostgresStorage
from machi_cloud.storage.records import (
    AggregateQuery,
    AggregateRow,
    Command,
    CommandQuery,
    DeliveryReport,
    DeviceRegistration,
)
from machi_cloud.storage.sqlite import SQLiteStorage

T0 = 1795390000
H1, H2 = b"\x01" * 32, b"\x02" * 32
_names = itertools.count()

Factory = Callable[[], Storage]


def fresh_database(pg: PostgresServer) -> str:
    return pg.create_database(f"contract_{next(_names)}")


@pytest.fixture(params=["sqlite", "postgres"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """Makes unopened storages that all share one new, empty database."""
    if request.param == "sqlite":
        path = tmp_path / "contract.sqlite"
        return lambda: SQLiteStorage(path)
    dsn = fresh_database(request.getfixturevalue("pg"))
    return lambda: PostgresStorage(dsn, pool_size=4)


@pytest.fixture
async def st(factory: Factory) -> AsyncIterator[Storage]:
    async with factory() as storage:
        yield storage


def reading(
    device: str, seq: int, *ms: Measurement, time: float | None = None, received: Any = "auto"
) -> Reading:
    t = T0 + seq if time is None else time
    rc = t + 0.5 if received == "auto" else received
    return Reading(device, seq, t, rc, "coap", ms or (Measurement("temp", "Cel", 20.0 + seq),))


async def store(
    st: Storage, batch_id: str, readings: list[Reading], *, body: bytes = H1, gw: str = "gw-01"
) -> Any:
    return await st.store_batch(gateway=gw, batch_id=batch_id, body_hash=body, readings=readings)


async def everything(st: Storage, **kw: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await st.readings(ReadingQuery(limit=100_000, **kw))]


# -- ingest ------------------------------------------------------------------------------


async def test_values_keep_their_kind_and_exact_value(st: Storage) -> None:
    ms = (
        Measurement("on", None, True),
        Measurement("off", None, False),
        Measurement("mode", None, "dim ☀"),
        Measurement("level", "%", 40),
        Measurement("power", "W", 12.0),
        Measurement("max", None, 2**63 - 1),
        Measurement("min", None, -(2**63)),
        Measurement("tiny", None, 5e-324),
        Measurement("pi", None, 3.141592653589793),
    )
    result = await store(st, "b1", [reading("light-0001", 1, *ms, received=None)])
    assert (result.stored, result.duplicates, result.replayed) == (1, 0, False)
    rows = await st.readings(ReadingQuery(limit=100))
    got = {r.metric: r.value for r in rows}
    want = {m.name: m.value for m in ms}
    assert got == want
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}
    assert {(r.device, r.seq, r.time, r.received, r.gateway) for r in rows} == {
        ("light-0001", 1, T0 + 1, None, "gw-01")
    }
    assert {r.metric: r.unit for r in rows}["level"] == "%"


async def test_replay_gets_the_recorded_answer_and_changes_nothing(st: Storage) -> None:
    batch = [reading("env-0001", 1), reading("env-0001", 2)]
    rejected = [Rejection("Bad!", 3, "device id must match ...")]
    first = await st.store_batch(
        gateway="gw-01", batch_id="b1", body_hash=H1, readings=batch, rejected=rejected
    )
    before = await everything(st)
    again = await st.store_batch(
        gateway="gw-01", batch_id="b1", body_hash=H1, readings=batch, rejected=rejected
    )
    assert again.replayed and not first.replayed
    assert again.answer() == first.answer()
    assert first.answer()["rejected"] == [
        {"device": "Bad!", "seq": 3, "reason": "device id must match ..."}
    ]
    assert await everything(st) == before
    assert (await st.stats()).batches == 1


async def test_a_replay_acks_again_what_the_cloud_holds(st: Storage) -> None:
    """The record leaves the acked keys out (`BatchResult.record`): a replay gives them
    again, the keys held before the batch included, from the readings it carries."""
    await store(st, "b1", [reading("env-0001", 1), reading("env-0001", 2)])
    batch = [reading("env-0001", 3), reading("env-0001", 2), reading("env-0002", 1)]
    first = await store(st, "b2", batch, body=H2)
    assert (first.stored, first.duplicates) == (2, 1)
    assert first.acked == (("env-0001", 3), ("env-0001", 2), ("env-0002", 1))
    again = await store(st, "b2", batch, body=H2)
    assert again.replayed and again.answer() == first.answer()


async def test_a_replay_never_acks_a_reading_the_cloud_does_not_hold(st: Storage) -> None:
    """Were the parser's rules to change between two deliveries of one body, the replay
    could carry a reading the first delivery rejected: it is not acked (nor stored), so
    the gateway keeps it instead of deleting an unstored reading."""
    bad = Rejection("env-0001", 3, "value out of range")
    first = await st.store_batch(
        gateway="gw-01", batch_id="b1", body_hash=H1,
        readings=[reading("env-0001", 1)], rejected=[bad],
    )  # fmt: skip
    again = await store(st, "b1", [reading("env-0001", 1), reading("env-0001", 3)])
    assert again.replayed and again.answer() == first.answer()
    assert again.acked == (("env-0001", 1),) and again.rejected == (bad,)
    assert [r.seq for r in await st.readings(ReadingQuery())] == [1]


async def test_batch_id_reused_with_another_body_conflicts(st: Storage) -> None:
    await store(st, "b1", [reading("env-0001", 1)])
    with pytest.raises(BatchConflict) as info:
        await store(st, "b1", [reading("env-0001", 2)], body=H2)
    assert info.value.status == 409 and "b1" in info.value.detail
    assert [r[1] for r in await everything(st)] == [1]
    other_gw = await store(st, "b1", [reading("env-0002", 1)], body=H2, gw="gw-02")
    assert other_gw.stored == 1  # batch ids are per gateway


async def test_duplicates_across_and_within_batches_first_content_wins(st: Storage) -> None:
    a = await store(st, "b1", [reading("env-0001", 1), reading("env-0001", 2)])
    late = reading("env-0001", 2, Measurement("temp", "Cel", 99.0))
    b = await store(
        st, "b2", [reading("env-0001", 3), late, reading("env-0001", 3), reading("env-0001", 1)]
    )
    assert (a.stored, a.duplicates) == (2, 0)
    assert (b.stored, b.duplicates) == (1, 3)
    assert b.acked == (("env-0001", 3), ("env-0001", 2), ("env-0001", 1))
    rows = await everything(st)
    assert [(r[1], r[7]) for r in rows] == [(1, 21.0), (2, 22.0), (3, 23.0)]
    (dev,) = await st.devices()
    assert (dev.readings, dev.last_seq) == (3, 3)


async def test_empty_batch_and_reading_without_measurements(st: Storage) -> None:
    empty = await store(st, "b0", [])
    assert (empty.stored, empty.duplicates, empty.acked) == (0, 0, ())
    bare = Reading("bin-0001", 7, T0, None, "lora", ())
    assert (await store(st, "b1", [bare], body=H2)).stored == 1
    assert await everything(st) == []
    (dev,) = await st.devices()
    assert (dev.device, dev.readings, dev.last_seq, dev.last_seen, dict(dev.latest)) == (
        "bin-0001", 1, 7, T0, {},
    )  # fmt: skip


async def test_large_batch_stores_every_reading(st: Storage) -> None:
    batch = [reading(f"env-{d:04d}", s) for d in range(10) for s in range(300)]
    assert (await store(st, "big", batch)).stored == 3000
    stats = await st.stats()
    assert (stats.devices, stats.readings, stats.batches) == (10, 3000, 1)


# -- queries -----------------------------------------------------------------------------


@pytest.fixture
async def loaded(st: Storage) -> Storage:
    ms = (
        Measurement("Temp", "Cel", 1.5),
        Measurement("hum", "%RH", 40),
        Measurement("a-b", None, 1),
    )
    batch = [reading("env-0002", s, *ms) for s in range(3)]
    batch += [reading("env-0001", s) for s in range(10)]
    batch += [reading("env-0001-x", 0)]
    await store(st, "b1", batch)
    return st


async def test_filters_and_bytewise_order(loaded: Storage) -> None:
    rows = await everything(loaded)
    keys = [(r[0], r[1], r[5]) for r in rows]
    assert keys == sorted(keys, key=lambda k: (k[0].encode(), k[1], k[2].encode()))
    assert keys[10:13] == [
        ("env-0001-x", 0, "temp"),
        ("env-0002", 0, "Temp"),
        ("env-0002", 0, "a-b"),
    ]
    assert len(rows) == 20
    assert {r[5] for r in await everything(loaded, device="env-0002")} == {"Temp", "hum", "a-b"}
    hum = await everything(loaded, metric="hum")
    assert [(r[0], r[1], r[7]) for r in hum] == [("env-0002", s, 40) for s in range(3)]
    window = await everything(loaded, device="env-0001", since=T0 + 3, until=T0 + 6)
    assert [r[1] for r in window] == [3, 4, 5]
    assert await everything(loaded, since=T0 + 100) == []
    frac = await everything(loaded, device="env-0001", since=T0 + 2.5, until=T0 + 3.5)
    assert [r[1] for r in frac] == [3]


async def test_limit_and_cursor_page_through_everything(loaded: Storage) -> None:
    seen: list[tuple[Any, ...]] = []
    after: Cursor | None = None
    while True:
        page = await loaded.readings(ReadingQuery(limit=3, after=after))
        seen += [tuple(r) for r in page]
        if len(page) < 3:
            break
        after = Cursor(page[-1].device, page[-1].seq, page[-1].metric)
    assert seen == await everything(loaded)


async def test_devices_keep_latest_by_seq_and_last_seen(st: Storage) -> None:
    await store(st, "b1", [reading("env-0001", 5), reading("env-0001", 3, received=None)])
    late = reading("env-0001", 4, Measurement("temp", "Cel", -1.0), received=T0 + 900)
    await store(st, "b2", [late], body=H2)
    (dev,) = await st.devices()
    assert (dev.device, dev.last_seq, dev.readings, dev.last_seen) == ("env-0001", 5, 3, T0 + 900)
    temp = dev.latest["temp"]
    assert (temp.value, temp.unit, temp.time, temp.seq) == (25.0, "Cel", T0 + 5, 5)


async def test_stats_count_devices_readings_batches(loaded: Storage) -> None:
    stats = await loaded.stats()
    assert (stats.devices, stats.readings, stats.batches) == (3, 14, 1)


# -- lifecycle and concurrency ------------------------------------------------------------


async def test_data_survives_reopen_and_open_close_are_idempotent(factory: Factory) -> None:
    st = factory()
    await st.open()
    await st.open()
    await store(st, "b1", [reading("env-0001", 1)])
    await st.close()
    await st.close()
    with pytest.raises(StorageUnavailable):
        await st.stats()
    async with factory() as again:
        assert (await again.stats()).readings == 1
        assert (await store(again, "b1", [reading("env-0001", 1)])).replayed


async def test_two_instances_on_one_database_store_each_reading_once(factory: Factory) -> None:
    """Instances share nothing but the database: races must be settled by it."""
    async with factory() as a, factory() as b:
        same = [reading("env-0001", s) for s in range(200)]
        ra, rb = await asyncio.gather(store(a, "same", same), store(b, "same", same))
        assert sorted([ra.replayed, rb.replayed]) == [False, True]
        assert ra.answer() == rb.answer() and ra.stored == 200
        # overlapping batches with different ids, in opposite orders (deadlock bait)
        up = [reading("env-0002", s) for s in range(0, 300)]
        down = [reading("env-0002", s) for s in reversed(range(150, 450))]
        rs = await asyncio.gather(store(a, "up", up), store(b, "down", down, body=H2))
        assert rs[0].stored + rs[1].stored == 450
        assert rs[0].stored + rs[0].duplicates == 300 and rs[1].stored + rs[1].duplicates == 300
        # the same batch id with different bodies: exactly one wins, the other conflicts
        got = await asyncio.gather(
            store(a, "clash", [reading("env-0003", 1)]),
            store(b, "clash", [reading("env-0003", 2)], body=H2),
            return_exceptions=True,
        )
        assert sorted(type(g).__name__ for g in got) == ["BatchConflict", "BatchResult"]
        stats = await a.stats()
        assert (stats.readings, stats.batches) == (200 + 450 + 1, 4)
        rows = await everything(b)
        assert len(rows) == len({(r[0], r[1]) for r in rows}) == 651


# -- PostgreSQL specifics ------------------------------------------------------------------


async def test_pg_migrations_are_recorded_and_a_newer_schema_is_refused(
    pg: PostgresServer,
) -> None:
    dsn = fresh_database(pg)
    stores = [PostgresStorage(dsn, pool_size=2) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))  # racing first opens: advisory lock
    try:
        assert [await s.schema_version() for s in stores] == [SCHEMA_VERSION] * 3
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    pg.psql("INSERT INTO schema_version (version) VALUES (99)", dsn.rsplit("/", 1)[1])
    with pytest.raises(StorageUnavailable, match="upgrade machi-cloud"):
        await PostgresStorage(dsn).open()


async def test_pg_older_schema_is_migrated_and_keeps_its_data(pg: PostgresServer) -> None:
    dsn = fresh_database(pg)
    conn = await asyncpg.connect(dsn)
    try:
        assert await migrate(conn, STEPS[:1]) == (0, 1)
        await conn.execute(
            "INSERT INTO samples (device, seq, time, gateway, transport, batch_id)"
            " VALUES ('env-0001', 1, 1, 'gw-01', 'coap', 'b0')"
        )
    finally:
        await conn.close()
    async with PostgresStorage(dsn) as st:
        assert await st.schema_version() == SCHEMA_VERSION == len(STEPS) >= 2
        assert (await st.store_batch(
            gateway="gw-01", batch_id="b1", body_hash=H1, readings=[reading("env-0001", 1)]
        )).duplicates == 1  # fmt: skip
        assert await st.registry() == []


async def test_pg_unreachable_database_is_unavailable_without_password(
    pg: PostgresServer,
) -> None:
    st = PostgresStorage(
        f"postgresql://machi:hunter2@127.0.0.1:{pg.port}/no_such_db", connect_timeout_s=5
    )
    with pytest.raises(StorageUnavailable) as info:
        await st.open()
    assert "no_such_db" in info.value.detail and "hunter2" not in info.value.detail


# -- the API on both backends ---------------------------------------------------------------


async def _api_transcript(storage: Storage, tmp_path: Path) -> list[Any]:
    settings = Settings(
        db=tmp_path / "unused.sqlite",
        gateway_tokens=GatewayTokens.from_mapping({"gw-01": "s1"}),
    )
    app = create_app(settings, storage)
    headers = {
        "Authorization": "Bearer s1",
        "Content-Type": "application/cbor",
        "Accept": "application/json",
    }
    batches = [
        {"batch_id": "b1", "readings": [
            {"device": "env-0001", "seq": s, "time": T0 + s, "received": T0 + s + 0.25,
             "transport": "coap", "m": [{"n": "temp", "u": "Cel", "v": 20.5 + s},
                                        {"n": "on", "vb": s % 2 == 0}, {"n": "n", "v": s}]}
            for s in range(6)] + [{"device": "Bad!", "seq": 1, "time": T0, "m": []}]},
        {"batch_id": "b2", "readings": [
            {"device": "env-0001", "seq": 4, "time": T0, "m": [{"n": "temp", "v": 1.0}]},
            {"device": "bin-0002", "seq": 0, "time": T0 + 0.5, "m": [{"n": "fill", "vs": "½"}]}]},
    ]  # fmt: skip
    out: list[Any] = []
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://cloud.test"
    ) as client:
        for b in [*batches, batches[0], {**batches[1], "batch_id": "b1"}]:
            body = cbor2.dumps({"gateway": "gw-01", **b})
            resp = await client.post("/v1/batches", content=body, headers=headers)
            out.append((resp.status_code, resp.json()))
        queries: list[dict[str, Any]] = [
            {},
            {"device": "env-0001", "since": T0 + 2, "limit": 4},
            {"format": "csv"},
        ]
        for params in queries:
            resp = await client.get("/v1/readings", params=params)
            out.append((resp.status_code, resp.text))
        for path in ("/v1/devices", "/healthz"):
            resp = await client.get(path)
            out.append((resp.status_code, resp.text))
    return out


async def test_api_answers_are_identical_on_both_backends(
    pg: PostgresServer, tmp_path: Path
) -> None:
    async with SQLiteStorage(tmp_path / "api.sqlite") as lite:
        expected = await _api_transcript(lite, tmp_path)
    async with PostgresStorage(fresh_database(pg)) as post:
        got = await _api_transcript(post, tmp_path)
    assert [s for s, _ in expected] == [200, 200, 200, 409, 200, 200, 200, 200, 200]
    assert got == expected


# -- control plane: registry, commands, audit, reports --------------------------------------


def command(cid: str, device: str = "light-0001", created: float = T0, ttl: float = 60) -> Command:
    return Command(
        id=cid,
        device=device,
        gateway="gw-01",
        name="dim",
        args={"level": 40},
        created=created,
        expires=created + ttl,
    )


async def _control_transcript(st: Storage) -> list[Any]:
    """Every control-plane method once or more; the results, for comparison."""
    out: list[Any] = []
    reg = DeviceRegistration(device="light-0001", type="light", gateway="gw-01", lat=1.5, lon=2.0)
    out.append(await st.put_device(reg, actor="admin:a", now=T0))
    out.append(await st.put_device(reg, actor="admin:a", now=T0 + 1))  # unchanged: no entry
    other = DeviceRegistration(device="env-0001", type="env", gateway="gw-01", interval_s=60)
    out.append(await st.put_device(other, actor="admin:a", now=T0 + 2))
    moved = DeviceRegistration(device="env-0001", type="env", gateway="gw-02", personal=True)
    out.append(await st.put_device(moved, actor="admin:a", now=T0 + 3))
    out.append(await st.set_device_key("light-0001", bytes(range(16)), actor="admin:a", now=T0 + 4))
    out.append(await st.set_device_key("light-0001", None, actor="admin:a", now=T0 + 5))
    with pytest.raises(NotFound):
        await st.set_device_key("nope-0001", None, actor="admin:a", now=T0 + 6)
    out.append(await st.registry())
    out.append(await st.registry(gateway="gw-02"))
    out.append(await st.add_command(command("c1"), actor="operator:o"))
    out.append(await st.add_command(command("c2", created=T0 + 1, ttl=5), actor="operator:o"))
    out.append(await st.add_command(command("c3", "light-0002", T0 + 2), actor="operator:o"))
    out.append(await st.commands(CommandQuery()))
    out.append(await st.commands(CommandQuery(device="light-0001", limit=1)))
    out.append(await st.commands(CommandQuery(gateway="gw-01", pending_at=T0 + 3)))
    out.append(await st.advance_command("c1", "sent", detail="", actor="gateway:gw-01", now=T0 + 7))
    out.append(await st.advance_command("c1", "queued", detail="x", actor="gateway:gw-01", now=T0))
    with pytest.raises(NotFound):
        await st.advance_command("c9", "sent", detail="", actor="gateway:gw-01", now=T0)
    out.append(await st.expire_commands(T0 + 10))
    out.append(await st.commands(CommandQuery(id="c2")))
    out.append(await st.audit_log())
    out.append(await st.audit_log(after=3, limit=2))
    # reports over readings: seq gaps, ints and floats mixed, booleans and text ignored
    ms = [Measurement("temp", "Cel", v) for v in (20, 21.5, 19, 30.25, 22)]
    batch = [
        reading("env-0009", s, m, time=T0 + 1800 * s)
        for s, m in zip((0, 1, 4, 5, 9), ms, strict=True)
    ]
    batch.append(reading("env-0009", 10, Measurement("temp", None, "n/a")))
    await store(st, "agg", batch)
    for q in (
        AggregateQuery(metric="temp", bucket_s=3600),
        AggregateQuery(
            metric="temp", bucket_s=7200, device="env-0009", since=T0 + 1, until=T0 + 9000
        ),
        AggregateQuery(metric="temp", bucket_s=60, limit=2),
        AggregateQuery(metric="none", bucket_s=60),
    ):
        out.append(await st.aggregate(q))
    out.append(await st.delivery("env-0009"))
    out.append(await st.delivery("env-0009", max_gaps=1))
    out.append(await st.delivery("nope-0001"))
    return out


async def test_control_plane_answers_match_sqlite(pg: PostgresServer, tmp_path: Path) -> None:
    async with SQLiteStorage(tmp_path / "control.sqlite") as lite:
        expected = await _control_transcript(lite)
        assert await audit.verify_storage(lite) == []
    async with PostgresStorage(fresh_database(pg)) as post:
        got = await _control_transcript(post)
        assert await audit.verify_storage(post) == []
    assert got == expected
    entries = expected[-9]
    assert [(e.seq, e.action) for e in entries] == list(
        enumerate(
            ["device.create", "device.create", "device.update", "device.key.issue"]
            + ["device.key.revoke"]
            + ["command.create"] * 3
            + ["command.state"] * 2,
            start=1,
        )
    )
    b = 1795388400  # the hour T0 falls in
    assert expected[-7] == [  # ints stay ints in min/max, as stored; text is left out
        AggregateRow("env-0009", b, 2, 20.75, 20, 21.5),
        AggregateRow("env-0009", b + 7200, 2, 24.625, 19, 30.25),
        AggregateRow("env-0009", b + 14400, 1, 22.0, 22, 22),
    ]
    assert expected[-3] == DeliveryReport("env-0009", 6, 0, 10, 5, ((2, 3), (6, 8)))


async def test_control_changes_of_two_instances_keep_one_gapless_chain(factory: Factory) -> None:
    async with factory() as a, factory() as b:
        regs = [
            DeviceRegistration(device=f"light-{i:04d}", type="light", gateway="gw-01")
            for i in range(12)
        ]
        await asyncio.gather(
            *(
                (a, b)[i % 2].put_device(reg, actor="admin:a", now=T0 + i)
                for i, reg in enumerate(regs)
            ),
            *((a, b)[i % 2].add_command(command(f"c{i}"), actor="op:o") for i in range(12)),
        )
        entries = await a.audit_log(limit=1000)
        assert [e.seq for e in entries] == list(range(1, 25))
        assert await audit.verify_storage(b) == []
        short_ids = sorted(d.short_id for d in await b.registry(gateway="gw-01"))
        assert short_ids == list(range(1, 13))  # allocated once each, no duplicates


async def test_pg_audit_table_refuses_update_delete_truncate(pg: PostgresServer) -> None:
    dsn = fresh_database(pg)
    async with PostgresStorage(dsn) as st:
        await st.add_command(command("c1"), actor="op:o")
    name = dsn.rsplit("/", 1)[1]
    for sql in ("UPDATE audit SET actor = 'x'", "DELETE FROM audit", "TRUNCATE audit"):
        with pytest.raises(PostgresUnavailable, match="append-only"):
            pg.psql(sql, name)
