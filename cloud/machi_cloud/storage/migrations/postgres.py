"""The PostgreSQL schema as ordered steps, and the runner that applies the missing ones.

`STEPS[i]` takes the schema from version `i` to `i + 1`; a step is never edited once
released, a change is a new step. `migrate()` runs at every `open()`: in one transaction,
under a transaction-level advisory lock, so two `machi-cloud` instances starting at once
against one database apply each step exactly once (the second waits, then finds nothing
to do). DDL is transactional in PostgreSQL: a failing step leaves the previous version.

Design of version 1 (docs/cloud.md "PostgreSQL and scale"):

- Identity and idempotency live in unique keys, never in process memory: `samples`
  `(device, seq)`, `batches` `(gateway, batch_id)`. Several instances may insert at once.
- `measurements` repeats the reading's `time`, so queries by device, metric and time need
  no join and the table can become a TimescaleDB hypertable without `samples`.
- A value keeps its kind: `value_int` (bigint) or `value_real` (double) or `value_text` or
  `value_bool`, exactly one set (CHECK): 40 stays 40 and 12.0 stays 12.0.
- Version 2 adds the control plane (`registry`, `commands`, `audit`); the audit table
  refuses UPDATE, DELETE and TRUNCATE through triggers (the hash chain shows the rest).
- Text keys use `COLLATE "C"`, so ordering (and therefore paging cursors) is bytewise, as in
  SQLite, whatever the database's default locale.
"""

from __future__ import annotations

from typing import Any

LOCK_KEY = 0x6D61636869  # "machi": pg_advisory_xact_lock key of schema migrations

STEPS: tuple[str, ...] = (
    # 1: readings, latest values, devices, batch answers
    """
    CREATE TABLE samples (
        device    text COLLATE "C" NOT NULL,
        seq       bigint NOT NULL CHECK (seq >= 0),
        time      double precision NOT NULL,
        received  double precision,
        gateway   text NOT NULL,
        transport text NOT NULL,
        batch_id  text NOT NULL,
        ingested  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (device, seq)
    );
    CREATE TABLE measurements (
        device     text COLLATE "C" NOT NULL,
        seq        bigint NOT NULL,
        metric     text COLLATE "C" NOT NULL,
        time       double precision NOT NULL,
        unit       text,
        value_int  bigint,
        value_real double precision,
        value_text text,
        value_bool boolean,
        PRIMARY KEY (device, seq, metric),
        CHECK (num_nonnulls(value_int, value_real, value_text, value_bool) = 1)
    );
    CREATE INDEX measurements_metric_time ON measurements (metric, time);
    CREATE TABLE latest (
        device     text COLLATE "C" NOT NULL,
        metric     text COLLATE "C" NOT NULL,
        seq        bigint NOT NULL,
        time       double precision NOT NULL,
        unit       text,
        value_int  bigint,
        value_real double precision,
        value_text text,
        value_bool boolean,
        PRIMARY KEY (device, metric)
    );
    CREATE TABLE devices (
        device     text COLLATE "C" PRIMARY KEY,
        first_seen double precision NOT NULL,
        last_seen  double precision NOT NULL,
        last_seq   bigint NOT NULL,
        readings   bigint NOT NULL
    );
    CREATE TABLE batches (
        gateway     text COLLATE "C" NOT NULL,
        batch_id    text COLLATE "C" NOT NULL,
        body_sha256 bytea NOT NULL,
        answer      bytea NOT NULL,
        created     timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (gateway, batch_id)
    );
    """,
    # 2: the control plane: device registry, downlink commands, the append-only audit log
    """
    CREATE TABLE registry (
        device     text COLLATE "C" PRIMARY KEY,
        type       text NOT NULL,
        gateway    text COLLATE "C" NOT NULL,
        site       text,
        lat        double precision,
        lon        double precision,
        transport  text NOT NULL,
        interval_s bigint,
        personal   boolean NOT NULL DEFAULT false,
        short_id   integer NOT NULL,
        key        bytea,
        revoked    boolean NOT NULL DEFAULT false,
        created    double precision NOT NULL,
        updated    double precision NOT NULL,
        UNIQUE (gateway, short_id)
    );
    CREATE TABLE commands (
        id      text COLLATE "C" PRIMARY KEY,
        device  text COLLATE "C" NOT NULL,
        gateway text COLLATE "C" NOT NULL,
        name    text NOT NULL,
        args    text NOT NULL,
        created double precision NOT NULL,
        expires double precision NOT NULL,
        state   text NOT NULL,
        updated double precision NOT NULL,
        detail  text NOT NULL,
        actor   text NOT NULL
    );
    CREATE INDEX commands_by_gateway ON commands (gateway, state, created);
    CREATE INDEX commands_by_device ON commands (device, created);
    CREATE TABLE audit (
        seq       bigint PRIMARY KEY,
        time      double precision NOT NULL,
        actor     text NOT NULL,
        action    text NOT NULL,
        subject   text NOT NULL,
        details   text NOT NULL,  -- canonical JSON as hashed: not jsonb, which reorders
        prev_hash text NOT NULL,
        hash      text NOT NULL
    );
    CREATE FUNCTION machi_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the audit log is append-only';
    END
    $$;
    CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
        FOR EACH ROW EXECUTE FUNCTION machi_audit_append_only();
    CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
        FOR EACH STATEMENT EXECUTE FUNCTION machi_audit_append_only();
    """,
)

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY,
    applied timestamptz NOT NULL DEFAULT now()
)
"""


class SchemaTooNew(Exception):
    """The database was migrated by a newer machi-cloud than this one."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"schema version {found}; this machi-cloud knows up to {known}")
        self.found = found
        self.known = known


async def migrate(conn: Any, steps: tuple[str, ...] = STEPS) -> tuple[int, int]:
    """Apply the missing steps on an asyncpg connection; returns (version before, after)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute(_VERSION_TABLE)
        before: int = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        if before > len(steps):
            raise SchemaTooNew(before, len(steps))
        for version in range(before + 1, len(steps) + 1):
            await conn.execute(steps[version - 1])
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
    return before, len(steps)
