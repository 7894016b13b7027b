"""A throwaway PostgreSQL cluster: for tests, benchmarks and trying the PostgreSQL backend.

`PostgresServer` runs `initdb` into a fresh temporary directory and `pg_ctl start` on a free
127.0.0.1 port, and removes everything on `stop()`. It is not a way to run production:
trust authentication, and with `durable=False` no fsync at all (fast, and the only sane
setting for tests that create a database each).

PostgreSQL refuses to run as root; when we are root, every server command runs as the
`postgres` OS user (`runuser -u postgres --`) and the directory is handed over to it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

SEARCH = ("/usr/lib/postgresql", "/usr/local/pgsql/bin", "/opt/homebrew/bin", "/usr/local/bin")
SUPERUSER = "machi"


class PostgresUnavailable(RuntimeError):
    """The binaries are missing, or the server would not start (the message says which)."""


def find_bindir() -> Path | None:
    """Where `initdb` and `pg_ctl` live: $MACHI_PG_BINDIR, the newest Debian one, or PATH."""
    env = os.environ.get("MACHI_PG_BINDIR")
    candidates: list[Path] = [Path(env)] if env else []
    debian = Path(SEARCH[0])
    if debian.is_dir():
        versions = sorted(
            (p for p in debian.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        candidates += [v / "bin" for v in reversed(versions)]
    candidates += [Path(p) for p in SEARCH[1:]]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file():
            return c
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """`with PostgresServer() as pg: pg.dsn(pg.create_database("t1"))`."""

    def __init__(self, *, durable: bool = False, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise PostgresUnavailable(
                "no PostgreSQL server binaries (initdb, pg_ctl) found: install postgresql "
                "or set MACHI_PG_BINDIR"
            )
        self.bindir = found
        self.durable = durable
        self.port = 0
        self._dir: Path | None = None
        self._as: list[str] = []

    @property
    def data(self) -> Path:
        if self._dir is None:
            raise PostgresUnavailable("the server is not started")
        return self._dir / "data"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as, *argv], capture_output=True, text=True, timeout=120, check=False
        )

    def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="machi-pg-"))
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PostgresUnavailable(
                    "running as root and there is no 'postgres' user to run PostgreSQL as"
                ) from exc
            os.chown(self._dir, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        init = self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
            "-E", "UTF8", "--locale=C", *([] if self.durable else ["--no-sync"]),
        )  # fmt: skip
        if init.returncode != 0:
            self.stop()
            raise PostgresUnavailable(f"initdb failed: {init.stderr.strip()[-2000:]}")
        options = f"-k {self._dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        for _attempt in range(3):  # another process may take the free port before we do
            self.port = _free_port()
            started = self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60",
                "-l", str(self._dir / "server.log"), "-o", f"-p {self.port} {options}", "start",
            )  # fmt: skip
            if started.returncode == 0:
                return
        log = (self._dir / "server.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise PostgresUnavailable(f"pg_ctl start failed: {started.stderr.strip()}\n{log}")

    def psql(self, sql: str, database: str = "postgres") -> None:
        """Run one statement through psql (no driver needed); raises on error."""
        out = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
             self.dsn(database), "-c", sql],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise PostgresUnavailable(f"psql {sql!r}: {out.stderr.strip()}")

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """A new database (empty, or a copy of `template`, which must have no connections);
        returns its DSN. FILE_COPY is the quick way for tiny databases."""
        copy = f' TEMPLATE "{template}"' if template else ""
        self.psql(f'CREATE DATABASE "{name}"{copy} STRATEGY = FILE_COPY')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, closing its remaining connections (PostgreSQL >= 13)."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory; idempotent."""
        if self._dir is None:
            return
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast",
                      "stop")  # fmt: skip
        with contextlib.suppress(OSError):
            shutil.rmtree(self._dir)
        self._dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
