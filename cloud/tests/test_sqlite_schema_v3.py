"""SQLite schema version 3: one `samples` row per reading, its measurements in `m`.

A version 1 or 2 file (built here with the frozen DDL of those versions and filled by
plain SQL, as the code of that time wrote it) opens as version 3 and answers every query
as a fresh file given the same readings does; the rewritten schema is the fresh one; a
newer file is refused. Values keep their type (21, 21.0, True, texts with a NUL or an
emoji) through `m`, the `measurements` view and the migration; the column path's JSON
template is checked on awkward units; the read queries seek through the samples key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cbor2
import pytest

from machi_cloud.batch import Measurement, Reading, ReadingColumns, Value
from machi_cloud.errors import StorageUnavailable
from machi_cloud.storage import Cursor, ReadingQuery, rows
from machi_cloud.storage import sqlite_control as control
from machi_cloud.storage.base import BatchResult, LatestValue, ReadingRow
from machi_cloud.storage.records import AggregateQuery, AggregateRow, DeliveryReport
from machi_cloud.storage.sqlite import SCHEMA_VERSION, SQLiteStorage, readings_sql

T0 = 1795390000
H = b"\x07" * 32

# The data tables of versions 1 and 2, frozen as they were (do not update them).
V1_DDL = """
CREATE TABLE IF NOT EXISTS samples (
    device    TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    time               NOT NULL,
    received,
    gateway   TEXT    NOT NULL,
    transport TEXT    NOT NULL,
    batch_id  TEXT    NOT NULL,
    ingested  REAL    NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS measurements (
    device     TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    metric     TEXT    NOT NULL,
    unit       TEXT,
    value_num,
    value_text TEXT,
    value_bool INTEGER,
    PRIMARY KEY (device, seq, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latest (
    device     TEXT    NOT NULL,
    metric     TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    time               NOT NULL,
    unit       TEXT,
    value_num,
    value_text TEXT,
    value_bool INTEGER,
    PRIMARY KEY (device, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
    device     TEXT    PRIMARY KEY,
    first_seen         NOT NULL,
    last_seen          NOT NULL,
    last_seq   INTEGER NOT NULL,
    readings   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    gateway     TEXT NOT NULL,
    batch_id    TEXT NOT NULL,
    body_sha256 BLOB NOT NULL,
    answer      BLOB NOT NULL,
    created     REAL NOT NULL,
    PRIMARY KEY (gateway, batch_id)
) WITHOUT ROWID;
"""
# version 2 added the control plane: registry, commands and audit
V2_DDL = V1_DDL + control.SCHEMA


def m(name: str, value: Value, unit: str | None = None) -> Measurement:
    return Measurement(name, unit, value)


READINGS = (
    Reading("env-0001", 1, T0, T0 + 0.25, "coap", (m("temp", 21, "Cel"), m("hum", 40.5))),
    Reading("env-0001", 2, T0 + 60, None, "coap", (m("temp", 21.0, "Cel"), m("hum", 41))),
    Reading("env-0001", 5, T0 + 3600.5, T0 + 3601, "lora", (m("temp", 0.1 + 0.2, "Cel"),)),
    Reading("env-0001", 6, T0 + 3700, None, "lora", ()),  # no measurements
    Reading(
        "bin-7",
        3,
        T0 + 10,
        None,
        "lora",
        (
            m("open", True),
            m("full", False),
            m("label", 'a\x00b "q" \\ 😀 é', "%RH"),  # a NUL, quotes, non-ASCII
            m("big", 2**63 - 1, "%r]"),
            m("small", -(2**63)),
            m("tiny", 5e-324),
            m("huge", 1.7976931348623157e308),
        ),
    ),
    Reading(
        "bin-7",
        4,
        T0 + 20,
        T0 + 21,
        "lora",
        (m("open", False), m("level", 7), m("note", '["temp",1] [\\"hum\\",'), m("temp", 3)),
    ),
)


def value_columns(value: Value) -> tuple[Any, Any, Any]:
    if isinstance(value, bool):
        return None, None, int(value)
    if isinstance(value, str):
        return None, value, None
    return value, None, None


def fill_old(path: Path, version: int, readings: Sequence[Reading]) -> None:
    """A file of `version` holding `readings` as one batch, as that version's code wrote
    it: samples, measurements, latest, devices and the batch's row."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executescript(V1_DDL if version == 1 else V2_DDL)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("BEGIN")
        for d, q, t, rc, tr, ms in readings:
            conn.execute(
                "INSERT INTO samples VALUES (?, ?, ?, ?, 'gw-01', ?, 'b-0', 1.5)",
                (d, q, t, rc, tr),
            )
            for name, unit, value in ms:
                conn.execute(
                    "INSERT INTO measurements VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (d, q, name, unit, *value_columns(value)),
                )
        ms_rows = [(d, q, n, u, v) for d, q, _, _, _, ms in sorted(readings) for n, u, v in ms]
        time_of = {(r.device, r.seq): r.time for r in readings}
        for d, q, n, u, v in rows.newest(ms_rows).values():
            conn.execute(
                "INSERT INTO latest VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (d, n, q, time_of[d, q], u, *value_columns(v)),
            )
        conn.executemany(
            "INSERT INTO devices VALUES (?, ?, ?, ?, ?)", rows.device_rows(sorted(readings))
        )
        answer = BatchResult("b-0", len(readings), 0, tuple(r[:2] for r in readings), ()).encode()
        conn.execute("INSERT INTO batches VALUES ('gw-01', 'b-0', ?, ?, 1.5)", (H, answer))
        conn.execute("COMMIT")
    finally:
        conn.close()


def typed(found: Sequence[Sequence[Any]]) -> list[list[tuple[str, Any]]]:
    """Rows with each value tagged by its type (21, 21.0 and True must differ)."""
    return [[(type(v).__name__, v) for v in r] for r in found]


QUERIES = [
    ReadingQuery(limit=1000),
    ReadingQuery(device="bin-7"),
    ReadingQuery(metric="temp"),
    ReadingQuery(device="env-0001", metric="hum", since=T0 + 30, until=T0 + 61),
    ReadingQuery(after=Cursor("bin-7", 3, "huge"), limit=4),
    ReadingQuery(device="env-0001", after=Cursor("env-0001", 1, "hum"), limit=2),
    ReadingQuery(device="env-0001", after=Cursor("bin-7", 9, "z"), limit=3),
    ReadingQuery(limit=3),
]
AGGREGATES = [
    AggregateQuery(metric="temp", bucket_s=3600),
    AggregateQuery(metric="hum", bucket_s=60, device="env-0001", since=T0, until=T0 + 61),
    AggregateQuery(metric="open", bucket_s=60),  # booleans are not numbers
    AggregateQuery(metric="big", bucket_s=86400),
]


def expected(q: ReadingQuery) -> list[ReadingRow]:
    """What `readings(q)` must answer for `READINGS`, worked out in Python."""
    found = sorted(
        (
            ReadingRow(r.device, r.seq, r.time, r.received, "gw-01", n, u, v)
            for r in READINGS
            for n, u, v in r.measurements
        ),
        key=lambda row: (row.device, row.seq, row.metric),
    )
    return [
        row
        for row in found
        if q.device in (None, row.device)
        and q.metric in (None, row.metric)
        and (q.since is None or row.time >= q.since)
        and (q.until is None or row.time < q.until)
        and (q.after is None or (row.device, row.seq, row.metric) > q.after)
    ][: q.limit]


async def test_readings_answer_the_queries(tmp_path: Path) -> None:
    """Filters, pages and order against a reference (a metric filter first narrows the
    readings by text in `m`: a text value that looks like a triple must not fool it)."""
    async with SQLiteStorage(tmp_path / "v3.sqlite") as st:
        await st.store_batch(gateway="gw-01", batch_id="b-0", body_hash=H, readings=READINGS)
        for q in [*QUERIES, ReadingQuery(metric="hum"), ReadingQuery(metric="temp", limit=2)]:
            assert typed(await st.readings(q)) == typed(expected(q)), q


async def answers(st: SQLiteStorage) -> dict[str, Any]:
    """Everything a client can ask about the stored readings."""
    return {
        "readings": [typed(await st.readings(q)) for q in QUERIES],
        "devices": await st.devices(),
        "stats": await st.stats(),
        "aggregate": [await st.aggregate(q) for q in AGGREGATES],
        "delivery": [await st.delivery(d) for d in ("env-0001", "bin-7", "none")],
    }


def schema_of(path: Path) -> tuple[int, list[tuple[Any, ...]]]:
    """The file's `user_version` and every table, index, view and trigger."""
    conn = sqlite3.connect(path)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        found = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name")
        return version, found.fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("version", [1, 2])
async def test_an_older_file_becomes_v3_with_the_same_answers(tmp_path: Path, version: int) -> None:
    old, fresh = tmp_path / "old.sqlite", tmp_path / "fresh.sqlite"
    fill_old(old, version, READINGS)
    async with SQLiteStorage(fresh) as st:
        await st.store_batch(gateway="gw-01", batch_id="b-0", body_hash=H, readings=READINGS)
        want = await answers(st)
    hour = T0 // 3600 * 3600
    assert want["aggregate"][0] == [
        AggregateRow("bin-7", hour, 1, 3.0, 3, 3),
        AggregateRow("env-0001", hour, 2, 21.0, 21, 21),
        AggregateRow("env-0001", hour + 3600, 1, 0.1 + 0.2, 0.1 + 0.2, 0.1 + 0.2),
    ]
    assert want["delivery"][0] == DeliveryReport("env-0001", 4, 1, 6, 2, ((3, 4),))
    latest = {d.device: d.latest for d in want["devices"]}
    assert latest["env-0001"]["temp"] == LatestValue(0.1 + 0.2, "Cel", T0 + 3600.5, 5)
    assert latest["bin-7"]["open"] == LatestValue(False, None, T0 + 20, 4)
    assert latest["bin-7"]["open"].value is False
    async with SQLiteStorage(old) as st:
        assert await answers(st) == want
        again = await st.store_batch(gateway="gw-01", batch_id="b-0", body_hash=H, readings=())
        assert again.replayed and again.stored == len(READINGS)  # the batches table stayed
        # an older record has its acked keys: they are answered as recorded
        assert again.acked == tuple((r.device, r.seq) for r in READINGS)
        more = await st.store_batch(
            gateway="gw-01", batch_id="b-1", body_hash=H, readings=READINGS[:2]
        )
        assert (more.stored, more.duplicates) == (0, 2)  # the samples key stayed
    assert schema_of(old) == schema_of(fresh)
    assert schema_of(old)[0] == SCHEMA_VERSION == 3


async def test_a_batch_is_recorded_without_its_keys(tmp_path: Path) -> None:
    """Version 3 records `BatchResult.record()`: the answer less its acked keys, which a
    replay looks up again (test_storage_contract's replay tests)."""
    path = tmp_path / "record.sqlite"
    async with SQLiteStorage(path) as st:
        first = await st.store_batch(
            gateway="gw-01", batch_id="b-1", body_hash=H, readings=READINGS
        )
    conn = sqlite3.connect(path)
    try:
        (recorded,) = conn.execute("SELECT answer FROM batches").fetchone()
    finally:
        conn.close()
    assert first.acked and "acked" not in cbor2.loads(recorded)
    assert cbor2.loads(recorded) == {k: v for k, v in first.answer().items() if k != "acked"}


async def test_values_keep_their_types(tmp_path: Path) -> None:
    """Through the migration and through a fresh ingest alike (the test above shows
    they agree), with the exact values of the readings."""
    path = tmp_path / "old.sqlite"
    fill_old(path, 2, READINGS)
    async with SQLiteStorage(path) as st:
        found = {(r.device, r.seq, r.metric): r for r in await st.readings(ReadingQuery())}
    want = {(r.device, r.seq, n): (u, v) for r in READINGS for n, u, v in r.measurements}
    assert {k: (r.unit, r.value) for k, r in found.items()} == want
    assert {k: type(r.value) for k, r in found.items()} == {
        k: type(v) for k, (_, v) in want.items()
    }


async def test_the_view_shows_the_measurements_as_version_2_held_them(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite"
    async with SQLiteStorage(path) as st:
        await st.store_batch(gateway="gw-01", batch_id="b-0", body_hash=H, readings=READINGS)
    conn = sqlite3.connect(path)
    try:
        got = conn.execute(
            "SELECT * FROM measurements WHERE device = 'bin-7' AND seq = 3 ORDER BY metric"
        ).fetchall()
        (m_text,) = conn.execute(
            "SELECT m FROM samples WHERE device = 'env-0001' AND seq = 2"
        ).fetchone()
    finally:
        conn.close()
    assert typed(got) == typed(
        [
            ("bin-7", 3, "big", "%r]", 2**63 - 1, None, None),
            ("bin-7", 3, "full", None, None, None, 0),
            ("bin-7", 3, "huge", None, 1.7976931348623157e308, None, None),
            ("bin-7", 3, "label", "%RH", None, "a", None),  # SQLite's JSON stops at a NUL
            ("bin-7", 3, "open", None, None, None, 1),
            ("bin-7", 3, "small", None, -(2**63), None, None),
            ("bin-7", 3, "tiny", None, 5e-324, None, None),
        ]
    )
    assert m_text == '[["temp","Cel",21.0],["hum",null,41]]'


async def test_a_newer_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    async with SQLiteStorage(path):
        pass
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    finally:
        conn.close()
    with pytest.raises(StorageUnavailable, match="upgrade machi-cloud"):
        await SQLiteStorage(path).open()


def test_the_template_encodes_awkward_units_as_the_reading_path_does() -> None:
    """`m_texts`' templates (one for the batch when every reading has the same metrics and
    units, else one per shape) with units holding `%` or a NUL, which must not cut the
    batch's one formatted text wrongly, against `m_text` of each reading."""
    for units in (["%r]", 'a"%s'], ["%%", None], ["x\x00", "y"]):
        for mixed in (False, True):
            ms = [
                (("a", "other" if mixed and seq == 2 else units[0], seq / 3), ("b", units[1], seq))
                for seq in range(4)
            ]
            flat = [m for group in ms for m in group]
            cols = ReadingColumns(
                ["env-0001"] * 4, list(range(4)), [T0] * 4, [None] * 4, ["coap"] * 4,
                [m[0] for m in flat], [m[1] for m in flat], [m[2] for m in flat], [2] * 4,
            )  # fmt: skip
            c = rows.SortedColumns.of(cols)
            assert c is not None
            assert list(c.m_texts()) == [rows.m_text(group) for group in ms]


def plan(sql: str, args: Sequence[Any]) -> str:
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(
            "CREATE TABLE samples (device TEXT NOT NULL, seq INTEGER NOT NULL, time NOT NULL,"
            " received, gateway TEXT NOT NULL, transport TEXT NOT NULL, batch_id TEXT NOT NULL,"
            " ingested REAL NOT NULL, m TEXT NOT NULL, PRIMARY KEY (device, seq)) WITHOUT ROWID"
        )
        return " / ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("query", "search"),
    [
        (ReadingQuery(device="env-0001"), "(device=?)"),
        (ReadingQuery(device="env-0001", metric="temp", since=T0), "(device=?)"),
        (ReadingQuery(device="env-0001", after=Cursor("env-0001", 5, "t")), "(device=? AND seq>?)"),
        (ReadingQuery(after=Cursor("env-0001", 5, "t")), "((device,seq)>(?,?))"),
    ],
)
def test_reads_seek_through_the_samples_key_and_never_sort(
    query: ReadingQuery, search: str
) -> None:
    got = plan(*readings_sql(query))
    assert got.startswith(f"SEARCH s USING PRIMARY KEY {search}") and "TEMP B-TREE" not in got
    agg = plan(*control.aggregate_sql(AggregateQuery(metric="t", bucket_s=60, device="env-0001")))
    assert agg.startswith("SEARCH s USING PRIMARY KEY (device=?)")


@pytest.mark.parametrize("where", ["json", "last statement"])
async def test_a_failed_migration_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """One transaction: a failure half-way (the third reading's JSON) or at the end (the
    last schema statement) changes nothing, and the next open migrates the file."""
    path = tmp_path / "old.sqlite"
    fill_old(path, 2, READINGS)
    before = schema_of(path)
    calls = iter(range(100))

    def failing(measurements: Sequence[tuple[Any, ...]]) -> str:
        if next(calls) == 2:
            raise RuntimeError("stand-in for a crash")
        return rows.m_text(measurements)

    with monkeypatch.context() as patch:
        if where == "json":
            patch.setattr(rows, "m_text", failing)
        else:
            patch.setattr(control, "SCHEMA", control.SCHEMA + "CREATE TABLE broken (;\n")
        with pytest.raises((RuntimeError, StorageUnavailable), match=r"stand-in|syntax error"):
            await SQLiteStorage(path).open()
    assert schema_of(path) == before
    async with SQLiteStorage(path) as st:
        assert len(await st.readings(ReadingQuery())) == sum(len(r[5]) for r in READINGS)
    assert schema_of(path)[0] == SCHEMA_VERSION
