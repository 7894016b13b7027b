"""The column path of ingest gives what the reading path gives, on both backends.

A fast-lane batch (`batch.ReadingColumns`) is written from its columns
(`storage.rows.SortedColumns`: SQLite's `_insert_columns`, PostgreSQL's
`_PreparedColumns`), any other batch from its `Reading`s (`rows.first_of_each`,
`in_key_order`, `newest`, `device_rows`); the answer is encoded by `BatchResult.encode`
instead of `cbor2.dumps(answer())`. Each pair is compared here on random batches: the same
rows, the same order, the same value types, the same bytes; the same batches stored both
ways into two databases must end with the same tables and give the same answers. The
equivalence tests pass on reading-only code too, by design;
`test_pg_columns_are_never_made_readings` is the one that tells PostgreSQL takes the
column path.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machi_cloud import fastbatch
from machi_cloud.batch import Reading, ReadingColumns, Rejection
from machi_cloud.storage import ReadingQuery, base, rows
from machi_cloud.storage.base import BatchResult, Storage
from machi_cloud.storage.pgserver import PostgresServer
from machi_cloud.storage.postgres import PostgresStorage
from machi_cloud.storage.sqlite import SQLiteStorage

T0 = 1795390000
TEMPLATE_DB = "machi_template"  # conftest's migrated template
_names = itertools.count()

times = st.integers(T0, T0 + 100) | st.floats(T0, T0 + 100) | st.sampled_from([T0, float(T0)])
measurement = st.fixed_dictionaries(
    {
        "n": st.sampled_from(["temp", "hum", "bat", "B"]),
        "v": st.integers(-5, 5) | st.floats(-1, 1) | st.sampled_from([2**63 - 1, -(2**63), 0.0]),
    },
    optional={"u": st.sampled_from(["Cel", "%RH"])},
)
reading = st.fixed_dictionaries(
    {
        "device": st.sampled_from(["env-0001", "env-0002", "bin-7", "a"]),
        "seq": st.integers(0, 12) | st.sampled_from([2**40, 2**63 - 1]),
        "time": times,
        "m": st.lists(measurement, max_size=3, unique_by=lambda m: m["n"]),
    },
    optional={"received": times | st.none(), "transport": st.sampled_from(["coap", "lora"])},
)
uniform_m = st.sampled_from([[], ["temp"], ["temp", "hum"], ["hum", "temp"], ["a", "b", "c"]])


@st.composite
def batches(draw: Any) -> list[dict[str, Any]]:
    """Numeric batches (keys repeated in and across batches, seqs in any order): random
    ones, and ones where every reading has the same metrics (ints, floats or both)."""
    items: list[dict[str, Any]] = draw(st.lists(reading, max_size=12))
    if draw(st.booleans()):
        names = draw(uniform_m)
        kind = draw(st.sampled_from([int, float, None]))
        for i, item in enumerate(items):
            item["m"] = [
                {"n": n, "u": "u", "v": (kind or (int if (i + j) % 2 else float))(i + j)}
                for j, n in enumerate(names)
            ]
    return items


def columns(items: list[dict[str, Any]]) -> ReadingColumns:
    body = cbor2.dumps({"gateway": "gw-01", "batch_id": "b", "readings": items})
    got = fastbatch.parse_batch(body, max_readings=1000).readings
    assert type(got) is ReadingColumns  # numeric batches take the whole-batch lane
    return got


def typed(value: Any) -> Any:
    """`value` with every scalar tagged by its type (1, 1.0 and True must differ)."""
    if isinstance(value, (list, tuple, asyncpg.Record)):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


@settings(max_examples=400, deadline=None)
@given(batches(), st.data())
def test_sorted_columns_give_the_rows_of_the_readings(items: Any, data: st.DataObject) -> None:
    cols = columns(items)
    readings = tuple(cols)
    unique = rows.first_of_each(readings)
    c = rows.SortedColumns.of(cols)
    if c is None:  # only a batch that repeats a key goes the reading way
        assert len(unique) < len(readings)
        return
    assert len(unique) == len(readings)
    ordered = rows.in_key_order(unique)
    new = data.draw(st.sets(st.sampled_from(sorted(unique))) if unique else st.just(set()))
    if data.draw(st.booleans()):  # some readings were in the database already
        c = c.only(new)
        ordered = [r for r in ordered if (r[0], r[1]) in new]
    assert c.acked == tuple(unique)
    assert len(c) == len(ordered)
    assert typed(c.sample_rows("gw-01", "b-1", 1.5)) == typed(
        [(d, q, t, rc, tr, "gw-01", "b-1", 1.5) for d, q, t, rc, tr, _ in ordered]
    )
    ms = [(d, q, n, u, v) for d, q, _, _, _, m in ordered for n, u, v in m]
    assert typed(c.measurement_rows()) == typed(
        [(d, q, n, t, u, v) for d, q, t, _, _, m in ordered for n, u, v in m]
    )
    assert list(c.m_texts()) == [rows.m_text(m) for *_, m in ordered]  # SQLite's samples.m
    time_of = {(r[0], r[1]): r[2] for r in ordered}
    assert typed(c.latest_rows()) == typed(
        [(d, n, q, time_of[d, q], u, v) for d, q, n, u, v in rows.newest(ms).values()]
    )
    assert typed(c.device_rows()) == typed(rows.device_rows(ordered))


def test_reading_columns_are_the_readings() -> None:
    items = [
        {"device": "env-0001", "seq": 3, "time": T0, "m": [{"n": "t", "v": 1}]},
        {"device": "env-0001", "seq": 1, "time": T0 + 0.5, "received": T0 + 1, "m": []},
    ]
    cols = columns(items)
    want = (
        Reading("env-0001", 3, T0, None, "unknown", (("t", None, 1),)),  # type: ignore[arg-type]
        Reading("env-0001", 1, T0 + 0.5, T0 + 1, "unknown", ()),
    )
    assert cols == want and want == cols and len(cols) == 2
    assert cols[1] == want[1] and list(cols) == list(want) and cols[:1] == want[:1]
    assert cols != want[:1] and cols != list(want)


seqs = st.integers(0, 2**64 - 1) | st.sampled_from([0, 23, 24, 255, 256, 2**16, 2**32])
keys = st.tuples(st.text(max_size=30), seqs)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(keys, max_size=40) | st.lists(st.tuples(st.text(max_size=3), st.integers(300, 400))),
    st.lists(st.builds(Rejection, st.text(max_size=5), seqs, st.text(max_size=20)), max_size=2),
    st.integers(0, 2**40),
)
def test_encoded_answer_is_cbor2s(
    acked: list[tuple[str, int]], rejected: list[Rejection], stored: int
) -> None:
    r = BatchResult("b-1", stored, 3, tuple(acked), tuple(rejected))
    assert r.encode() == cbor2.dumps(r.answer())


def test_answers_stay_cbor2s_when_the_device_cache_fills(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_pair_heads` keeps devices' encodings across batches and starts over when full."""
    monkeypatch.setattr(base, "_PAIR_HEADS", {})
    monkeypatch.setattr(base, "_PAIR_HEADS_MAX", 5)
    for n in range(6):
        acked = tuple((f"dev-{(n + i) % 9}", 300 + i) for i in range(4))
        r = BatchResult("b-1", 4, 0, acked, ())
        assert r.encode() == cbor2.dumps(r.answer())
        assert len(base._PAIR_HEADS) <= 5


async def store_all(
    storage: Storage, batch_list: Sequence[list[dict[str, Any]]], as_columns: bool
) -> tuple[Any, ...]:
    """Store the batches (as columns or as a tuple of `Reading`s, each batch twice: the
    second a replay); the answers and what the queries give."""
    answers = []
    for n, items in enumerate(batch_list):
        cols = columns(items)
        for _ in range(2):
            result = await storage.store_batch(
                gateway="gw-01",
                batch_id=f"b-{n}",
                body_hash=bytes(32),
                readings=cols if as_columns else tuple(cols),
            )
            answers.append((result, result.encode()))
    found = await storage.readings(ReadingQuery(limit=100_000))
    return answers, (typed(found), await storage.devices(), await storage.stats())


def dump_sqlite(path: Path) -> dict[str, list[Any]]:
    conn = sqlite3.connect(path)
    try:
        return {
            "samples": typed(
                conn.execute(
                    "SELECT device, seq, time, received, gateway, transport, batch_id, m"
                    " FROM samples ORDER BY device, seq"
                ).fetchall()
            ),
            **{
                table: typed(conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall())
                for table in ("measurements", "latest", "devices")  # measurements: the view
            },
            "batches": conn.execute(
                "SELECT gateway, batch_id, answer FROM batches ORDER BY 1, 2"
            ).fetchall(),
        }
    finally:
        conn.close()


async def store_sqlite(path: Path, batch_list: list[Any], as_columns: bool) -> Any:
    async with SQLiteStorage(path) as storage:
        got = await store_all(storage, batch_list, as_columns)
    return got, dump_sqlite(path)


@settings(max_examples=40, deadline=None)
@given(st.lists(batches(), min_size=1, max_size=4))
def test_sqlite_stores_columns_as_it_stores_readings(batch_list: list[Any]) -> None:
    """Batches overlapping in keys (duplicates, first content wins), through the column
    path into one database and as plain `Reading`s into another: the same tables."""
    with tempfile.TemporaryDirectory() as tmp:
        got = [
            asyncio.run(store_sqlite(Path(tmp) / f"{kind}.sqlite", batch_list, kind == "columns"))
            for kind in ("columns", "readings")
        ]
    assert got[0] == got[1]


# -- PostgreSQL ---------------------------------------------------------------------------


async def dump_pg(dsn: str) -> dict[str, Any]:
    """Every stored column but the server's own timestamps (`ingested`, `created`)."""
    conn = await asyncpg.connect(dsn)
    try:
        queries = {
            "samples": "SELECT device, seq, time, received, transport, gateway, batch_id"
            " FROM samples ORDER BY device, seq",
            "measurements": "SELECT * FROM measurements ORDER BY device, seq, metric",
            "latest": "SELECT * FROM latest ORDER BY device, metric",
            "devices": "SELECT * FROM devices ORDER BY device",
            "batches": "SELECT gateway, batch_id, body_sha256, answer FROM batches ORDER BY 1, 2",
        }
        return {table: typed(await conn.fetch(sql)) for table, sql in queries.items()}
    finally:
        await conn.close()


async def store_pg(dsn: str, batch_list: Sequence[list[dict[str, Any]]],
                   as_columns: bool) -> tuple[Any, ...]:
    async with PostgresStorage(dsn, pool_size=1) as storage:
        got = await store_all(storage, batch_list, as_columns)
    return got, await dump_pg(dsn)


def both_ways(pg: PostgresServer, batch_list: Sequence[list[dict[str, Any]]]) -> None:
    """The batches through the column path and the reading path: the same in the end."""
    got = []
    for as_columns in (True, False):
        name = f"pgcols{os.getpid()}_{next(_names)}"
        dsn = pg.create_database(name, template=TEMPLATE_DB)
        try:
            got.append(asyncio.run(store_pg(dsn, batch_list, as_columns)))
        finally:
            pg.drop_database(name)
    assert got[0] == got[1]


@settings(max_examples=40, deadline=None)
@given(st.lists(batches(), min_size=1, max_size=4))
def test_pg_stores_columns_as_it_stores_readings(
    pg: PostgresServer, batch_list: list[list[dict[str, Any]]]
) -> None:
    """Small random batches overlapping in keys: in-batch repeats (first wins), repeats of
    earlier batches (only the new readings get rows), ints, floats, several devices."""
    both_ways(pg, batch_list)


def gateway_batches(
    seed: int, n_batches: int = 6, size: int = 300, *, twice: bool = True
) -> list[list[dict[str, Any]]]:
    """Batches as a gateway sends them (20 devices, each one's seq counting up, two
    metrics), every other one mixed with a resend of part of the one before (other
    values); with `twice`, the last holds a key twice."""
    rnd = random.Random(seed)
    out: list[list[dict[str, Any]]] = []
    n = 0
    for b in range(n_batches):
        items = []
        for _ in range(size):
            device, seq = f"env-{n % 20:04d}", n // 20
            n += 1
            value: int | float = rnd.randrange(-100, 100) if rnd.random() < 0.3 else rnd.random()
            items.append(
                {
                    "device": device,
                    "seq": seq,
                    "time": T0 + seq + rnd.choice([0, 0.5]),
                    "received": rnd.choice([None, T0 + seq + 0.25]),
                    "transport": "coap",
                    "m": [{"n": "temp", "u": "Cel", "v": value}, {"n": "hum", "v": b}],
                }
            )
        if out and b % 2:  # a resend of part of the last batch, other values, mixed in
            resent = [{**item, "m": [{"n": "temp", "v": -1.5}]} for item in out[-1][::3]]
            items = rnd.sample(items + resent, len(items) + len(resent))
        if twice and b == n_batches - 1:
            items.append({**items[0], "m": [{"n": "temp", "v": 99}]})
        out.append(items)
    return out


def test_pg_stores_gateway_batches_from_columns_as_from_readings(pg: PostgresServer) -> None:
    for seed in range(3):
        both_ways(pg, gateway_batches(seed))


def test_pg_columns_are_never_made_readings(pg: PostgresServer) -> None:
    """A batch of distinct keys is written from its columns: no `Reading` is built, for
    new readings and for ones stored before (the dedup path) alike."""
    batch_list = gateway_batches(7, n_batches=2, size=50, twice=False)

    async def store() -> list[int]:
        async with PostgresStorage(dsn, pool_size=1) as storage:
            stored = []
            for n, items in enumerate([*batch_list, batch_list[1] + batch_list[1][:1]]):
                cols = columns(items)
                result = await storage.store_batch(
                    gateway="gw-01", batch_id=f"b-{n}", body_hash=bytes(32), readings=cols
                )
                stored.append(result.stored)
                # the last repeats a key: the reading path takes it, as in SQLite
                assert (cols._readings is None) is (n < 2)
            return stored

    name = f"pgcols{os.getpid()}_{next(_names)}"
    dsn = pg.create_database(name, template=TEMPLATE_DB)
    try:
        assert asyncio.run(store()) == [50, 50, 0]  # the second: 50 new of 67
    finally:
        pg.drop_database(name)
