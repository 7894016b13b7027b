"""`machi-cloud`: run the ingest service.

The listening socket is bound here, not by uvicorn, so `--port 0` works and the real port is
known; once uvicorn serves on it, a *ready file* is written atomically (tmp + rename) with
`{"url": "http://127.0.0.1:<port>", "pid": <pid>}` for orchestration to poll (`https://`
with `--tls-cert/--tls-key`, which serve HTTPS directly, TLS 1.2 minimum). SIGTERM and
SIGINT stop it gracefully (in-flight requests finish, the database is closed) with exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from .app import create_app, freeze_startup_objects
from .commands import app_wakeups
from .errors import StorageUnavailable
from .settings import (
    API_TOKENS_ENV,
    DATABASE_URL_ENV,
    TOKENS_ENV,
    ConfigError,
    GatewayTokens,
    Settings,
    parse_api_token_list,
    parse_token_list,
    settings_from_toml,
    with_overrides,
)
from .storage import Storage

log = logging.getLogger("machi_cloud")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="machi-cloud",
        description="machi cloud ingest service: gateways POST CBOR batches, people query them.",
        epilog=f"Gateway tokens may also come from {TOKENS_ENV}='gw-01=secret,gw-02=...'. "
        "`machi-cloud audit-verify --db PATH` checks the audit log's hash chain.",
    )
    p.add_argument("--config", type=Path, help="TOML settings file (flags override it)")
    p.add_argument("--db", type=Path, help="SQLite database file (default machi-cloud.sqlite)")
    p.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL instead of SQLite: postgresql://user[:password]@host[:port]/db "
        f"(or {DATABASE_URL_ENV}, which keeps a password off the command line)",
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on; 0 = any free port (default 8080)")
    p.add_argument(
        "--gateway-token",
        action="append",
        default=[],
        metavar="GW=TOKEN",
        help="a gateway's bearer token (repeatable); TOKEN may be sha256:<hex digest>",
    )
    p.add_argument(
        "--api-token",
        action="append",
        default=[],
        metavar="NAME=ROLE:TOKEN",
        help="a person's bearer token (repeatable); ROLE viewer, operator or admin; TOKEN may "
        f"be sha256:<hex digest>; also {API_TOKENS_ENV}",
    )
    p.add_argument(
        "--private-reads",
        action="store_true",
        default=None,
        help="reading endpoints and the dashboard data need a viewer token (default: open)",
    )
    p.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="serve HTTPS with this PEM certificate (chain); needs --tls-key. In production "
        "prefer a reverse proxy terminating TLS (docs/cloud.md)",
    )
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="the certificate's private key")
    p.add_argument("--ready-file", type=Path, help="write {url, pid} JSON here once listening")
    p.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="default info",
    )
    p.add_argument(
        "--access-log", action="store_true", default=None, help="log every request (off by default)"
    )
    return p


def load_settings(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """Defaults < --config file < environment tokens < flags."""
    env = os.environ if environ is None else environ
    settings = Settings()
    if args.config is not None:
        settings = settings_from_toml(args.config)
    tokens = settings.gateway_tokens
    if env.get(TOKENS_ENV):
        tokens = tokens.merged(parse_token_list(env[TOKENS_ENV], key=TOKENS_ENV))
    if args.gateway_token:
        tokens = tokens.merged(
            parse_token_list(",".join(args.gateway_token), key="--gateway-token")
        )
    people = settings.api_tokens
    if env.get(API_TOKENS_ENV):
        people = people.merged(parse_api_token_list(env[API_TOKENS_ENV], key=API_TOKENS_ENV))
    if args.api_token:
        people = people.merged(parse_api_token_list(",".join(args.api_token), key="--api-token"))
    return with_overrides(
        settings,
        api_tokens=people,
        open_reads=False if args.private_reads else None,
        db=args.db,
        database_url=args.database_url or env.get(DATABASE_URL_ENV) or None,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        gateway_tokens=tokens if tokens.digests else GatewayTokens(),
    )


def check_tls(cert: Path | None, key: Path | None) -> tuple[Path, Path] | None:
    """Both files or neither; readable, PEM, and the key belongs to the certificate.

    Loaded here once so that a mistake stops the start with a message naming the flag,
    instead of a traceback from uvicorn after the socket is bound."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
        raise ConfigError(f"{given} needs {missing} as well (or give neither: plain HTTP)")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{flag}: cannot read {path}: {exc.strerror}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def no_passphrase() -> bytes:  # never prompt on a terminal (uvicorn has no key password)
        raise ConfigError(f"--tls-key {key}: the key is encrypted; give an unencrypted key "
                          "(readable only by the service)")

    try:
        ctx.load_cert_chain(str(cert), str(key), password=no_passphrase)
    except ssl.SSLError as exc:
        why = "the key does not match the certificate" if "KEY_VALUES_MISMATCH" in str(exc) \
            else f"not a PEM certificate and its unencrypted private key ({exc.reason or exc})"
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key}: {why}") from None
    return cert, key


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (IPv6 when `host` is an IPv6 address).

    Made with ``IPPROTO_TCP`` named, not protocol 0: asyncio turns Nagle off
    (``TCP_NODELAY``) only on accepted sockets whose ``proto`` says TCP. Without it uvicorn's
    response head and body left in two segments, the body held until the client's delayed
    ACK: every answer, a 404 included, took ~44 ms instead of ~1 ms (bench/cloud_ingest.py
    `http`).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def write_ready_file(path: Path, url: str) -> None:
    """Atomically: readers see no file or the whole file, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    tmp.replace(path)


def _url(host: str, port: int, scheme: str = "http") -> str:
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, whose stop first answers the gateways' held command long-polls:
    uvicorn lets open requests finish before it stops (up to timeout_graceful_shutdown),
    and a long-poll would hold the stop that long, then be cut off with a 500."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app_wakeups(self.config.app).close()  # the FastAPI app _serve hands in
        await super().shutdown(sockets)


async def serve(
    settings: Settings,
    sock: socket.socket,
    ready_file: Path | None,
    *,
    stop_requested: Sequence[int] = (),
    tls: tuple[Path, Path] | None = None,
) -> None:
    """Serve until uvicorn is told to exit; write the ready file once it listens."""
    if not settings.database_url:  # SQLite: the app's lifespan opens settings.db
        await _serve(settings, sock, ready_file, stop_requested, None, str(settings.db), tls)
        return
    # PostgreSQL: opened here and handed to the app, which leaves opening/closing to us.
    from .storage.postgres import PostgresStorage, redact

    storage = PostgresStorage(settings.database_url)
    try:
        await storage.open()
    except StorageUnavailable as exc:
        raise SystemExit(f"machi-cloud: {exc.detail}") from exc
    try:
        where = redact(settings.database_url)
        await _serve(settings, sock, ready_file, stop_requested, storage, where, tls)
    finally:
        await storage.close()


async def _serve(
    settings: Settings,
    sock: socket.socket,
    ready_file: Path | None,
    stop_requested: Sequence[int],
    storage: Storage | None,
    where: str,
    tls: tuple[Path, Path] | None = None,
) -> None:
    app = create_app(settings, storage)
    freeze_startup_objects()
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        access_log=settings.access_log,
        lifespan="on",
        timeout_graceful_shutdown=10,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
    )
    if tls is not None:
        config.load()  # builds config.ssl; serve() then uses it as it is
        assert config.ssl is not None
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    server = _Server(config)
    if stop_requested:
        return
    url = _url(settings.host, sock.getsockname()[1], "https" if tls else "http")

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.02)
        if ready_file is not None:
            write_ready_file(ready_file, url)
        log.info("machi-cloud listening on %s (db %s)", url, where)

    async with asyncio.TaskGroup() as tasks:
        serving = tasks.create_task(server.serve(sockets=[sock]))
        tasks.create_task(announce())
        await serving
    if not server.started:
        raise SystemExit("machi-cloud did not start (see the log above)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["audit-verify"]:  # `machi-cloud audit-verify --db PATH`
        from .audit import main as audit_main

        return audit_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args)
        tls = check_tls(args.tls_cert, args.tls_key)
    except ConfigError as exc:
        print(f"machi-cloud: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper() if settings.log_level != "trace" else "DEBUG",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not settings.gateway_tokens.digests:
        log.warning("no gateway tokens configured: every POST /v1/batches will get 401")
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        print(
            f"machi-cloud: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr
        )
        return 1
    # uvicorn handles SIGTERM/SIGINT during serve() and re-raises them afterwards; these
    # handlers make that re-raise a no-op, so a requested stop ends with exit code 0.
    # A signal before uvicorn installs its own handlers is remembered and honoured.
    early: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: early.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: early.append(signum))
    try:
        asyncio.run(serve(settings, sock, args.ready_file, stop_requested=early, tls=tls))
    finally:
        sock.close()
        if args.ready_file is not None:
            with contextlib.suppress(OSError):
                args.ready_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
