"""Shared fixtures for the gateway tests: vectors, readings, a store, a CoAP ingress in
front of a real core, a fake cloud."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest

from machi_gateway.core import Core
from machi_gateway.ingress.coap import CoapIngress
from machi_gateway.model import Measurement, Reading
from machi_gateway.registry import Registry
from machi_gateway.stats import IngressStats
from machi_gateway.store import Store

VECTORS = Path(__file__).resolve().parents[2] / "tests" / "vectors"


@pytest.fixture(scope="session")
def vectors() -> Callable[[str], Any]:
    """Load a shared vector file by name (read only)."""
    def load(name: str) -> Any:
        return json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return load


@pytest.fixture
def make_reading() -> Callable[..., Reading]:
    def make(device: str = "env-0001", seq: int = 1, **kw: Any) -> Reading:
        now = time.time()
        return Reading(
            device=device, seq=seq, time=kw.get("time", now), received=kw.get("received", now),
            transport="coap",
            measurements=kw.get("measurements", (Measurement("temp", "Cel", 21.5),)),
        )
    return make


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(tmp_path / "q.sqlite3", max_readings=1000, retry_after_s=30,
                     dedup_window_s=86400) as s:
        yield s


@dataclass(frozen=True)
class QueueFile:
    """The store's SQLite file seen from outside, as disk damage and a person would."""

    path: Path

    def damage(self, seq: int, body: Any) -> None:
        """Overwrite the queued body of ``seq`` behind the store's back."""
        conn = sqlite3.connect(self.path)
        try:
            conn.execute("UPDATE queue SET body = ? WHERE seq = ?", (body, seq))
            conn.commit()
        finally:
            conn.close()

    def dead(self) -> list[tuple[Any, ...]]:
        """The dead letters' (device, seq, reason)."""
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute("SELECT device, seq, reason FROM dead_letters").fetchall()
        finally:
            conn.close()


@pytest.fixture
def queue_file(store: Store) -> QueueFile:
    """The ``store`` fixture's file, to damage bodies and read dead letters."""
    return QueueFile(store.path)


@pytest.fixture
def devices_file(tmp_path: Path) -> Path:
    path = tmp_path / "devices.json"
    ids = ["env-0001", "env-0003", "env-0004", "bin-0002", "light-0001"]
    path.write_text(json.dumps({"devices": [{"id": i, "type": i.split("-")[0]} for i in ids]}))
    return path


@dataclass
class ServedCoap:
    """A running CoAP ingress and what it writes to."""

    coap: CoapIngress
    store: Store
    stats: IngressStats

    @property
    def port(self) -> int:
        return int(self.coap.address[1])


ServeCoap = Callable[..., contextlib.AbstractAsyncContextManager[ServedCoap]]


@pytest.fixture
def serve_coap(tmp_path: Path, devices_file: Path) -> ServeCoap:
    """``async with serve_coap(**kw) as gw``: the CoAP ingress on a free port in front of a
    real registry (``devices``, default the ``devices_file`` fixture), core and store
    (``store_kw`` over max 1,000 readings, retry after 30 s, dedup 1 h); other keywords
    go to ``CoapIngress`` (``host`` 127.0.0.1, ``max_payload`` 1024 unless given)."""

    @contextlib.asynccontextmanager
    async def serve(*, devices: Path | None = None, store_kw: dict[str, Any] | None = None,
                    **ingress_kw: Any) -> AsyncIterator[ServedCoap]:
        registry = Registry(devices or devices_file)
        assert registry.reload_if_changed()
        stats = IngressStats()
        kw = {"max_readings": 1000, "retry_after_s": 30, "dedup_window_s": 3600,
              **(store_kw or {})}
        async with Store(tmp_path / "q.db", **kw) as store:
            ingress = {"host": "127.0.0.1", "port": 0, "max_payload": 1024, **ingress_kw}
            async with CoapIngress(Core(registry, store, stats), **ingress) as coap:
                yield ServedCoap(coap, store, stats)

    return serve


# ---- a fake cloud: a real HTTP server on 127.0.0.1 -----------------------------------


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes]:
    """One HTTP/1.1 request of the fake clouds: method, target, headers, body."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    method, target = head[0].split()[:2]
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, target, headers, body


async def write_response(
    writer: asyncio.StreamWriter, status: int, ctype: str, payload: bytes
) -> None:
    writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    await writer.drain()


@dataclass
class Post:
    """One request the fake cloud received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


Behaviour = Callable[[Post], "tuple[int, Any] | None"]


def batch_keys(body: dict[str, Any]) -> list[tuple[str, int]]:
    """The (device, seq) of a batch body's readings, sent as columns or as rows."""
    if "columns" in body:
        return list(zip(body["columns"]["device"], body["columns"]["seq"], strict=True))
    return [(r["device"], r["seq"]) for r in body["readings"]]


@pytest.fixture(name="batch_keys")
def _batch_keys() -> Callable[[dict[str, Any]], list[tuple[str, int]]]:
    """:func:`batch_keys` for the test modules (they cannot import conftest)."""
    return batch_keys


@dataclass
class FakeCloud:
    """POST /v1/batches; by default acks every reading. ``script`` overrides per request.

    A script entry returns (status, answer) or None for "the default"; the special
    status 0 means "hang without answering" (a timeout for the gateway).
    """

    posts: list[Post] = field(default_factory=list)
    script: list[Behaviour] = field(default_factory=list)
    stored: set[tuple[str, int]] = field(default_factory=set)
    port: int = 0
    reject: dict[tuple[str, int], str] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def default_answer(self, post: Post) -> tuple[int, Any]:
        acked, rejected = [], []
        for key in batch_keys(post.body):
            if key in self.reject:
                rejected.append({"device": key[0], "seq": key[1], "reason": self.reject[key]})
            else:
                self.stored.add(key)
                acked.append([key[0], key[1]])
        return 200, {"batch_id": post.body["batch_id"], "stored": len(acked), "duplicates": 0,
                     "acked": acked, "rejected": rejected}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            _method, path, headers, body = await read_request(reader)
            post = Post(path, headers, cbor2.loads(body))
            self.posts.append(post)
            answer = self.script.pop(0)(post) if self.script else None
            status, doc = answer if answer is not None else self.default_answer(post)
            if status == 0:
                await self.release.wait()
                return
            if status == 200:
                await write_response(writer, status, "application/cbor", cbor2.dumps(doc))
            else:
                await write_response(writer, status, "application/problem+json",
                                     json.dumps(doc).encode())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.handlers.discard(task)


@pytest.fixture
async def fake_cloud() -> AsyncIterator[FakeCloud]:
    cloud = FakeCloud()
    server = await asyncio.start_server(cloud.handle, "127.0.0.1", 0)
    cloud.port = server.sockets[0].getsockname()[1]
    try:
        yield cloud
    finally:
        cloud.release.set()
        server.close()
        if cloud.handlers:
            await asyncio.wait(cloud.handlers, timeout=5)
        await server.wait_closed()


Until = Callable[..., "asyncio.Future[None] | Any"]


async def poll_until(cond: Callable[[], Any], within: float = 10, every: float = 0.02) -> None:
    """Wait until ``cond()`` (sync or async) is true: observing another process or a
    loop we do not own has no event to wait on, so tests poll, always with a bound."""
    async with asyncio.timeout(within):
        while True:
            result = cond()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(every)


@pytest.fixture
def until() -> Callable[..., Any]:
    return poll_until


UploadAll = Callable[..., Awaitable[Any]]


@pytest.fixture
def upload_all() -> UploadAll:
    """``await upload_all(store, transport, policy, **until_kw)``: a batcher over an httpx
    ``transport`` (a stand-in cloud) run until the queue is empty; returns the batcher."""
    from machi_gateway.uplink.batcher import Batcher, BatchPolicy
    from machi_gateway.uplink.http import HttpUplink

    async def run(store: Store, transport: Any, policy: BatchPolicy, **wait: Any) -> Batcher:
        async with HttpUplink("http://c", token="t", timeout_s=1, transport=transport) as up:
            batcher = Batcher(store, up, gateway="gw-01", policy=policy)
            task = asyncio.create_task(batcher.run())
            try:
                await poll_until(lambda: store.depth == 0, **wait)
            finally:
                task.cancel()
        return batcher
    return run


# ---- LoRa-family adapters: a stub compact-frame decoder ---------------------------------
#
# The real decoder (machi_gateway.lora.frame, contract C6) belongs to the LoRa work; the
# adapters take the decoder as a parameter, so their tests use this stub, whose frame is
# short_id (2 bytes) | seq (4) | temp in centi-degrees (int16), all big-endian.

SHORT_IDS = {"env-0001": 0x0101, "env-0003": 0x0103, "bin-0002": 0x0202}


def stub_frame(short_id: int, seq: int, centi: int) -> bytes:
    return short_id.to_bytes(2, "big") + seq.to_bytes(4, "big") + centi.to_bytes(2, "big",
                                                                                 signed=True)


def stub_decode(payload: bytes, *, registry_lookup: Any, received: float,
                transport: str) -> Reading:
    from machi_gateway.errors import BadReading, UnknownDevice
    if len(payload) != 8:
        raise BadReading("stub-length", f"stub frame of {len(payload)} bytes")
    dev = registry_lookup(int.from_bytes(payload[:2], "big"))
    if dev is None:
        raise UnknownDevice("unknown-short-id", "no device with that short id")
    return Reading(device=dev.id, seq=int.from_bytes(payload[2:6], "big"), time=received,
                   received=received, transport=transport, measurements=(
                       Measurement("temp", "Cel",
                                   int.from_bytes(payload[6:], "big", signed=True) / 100),))


@pytest.fixture
def lora_devices_file(tmp_path: Path) -> Path:
    path = tmp_path / "devices.json"
    path.write_text(json.dumps({"devices": [
        {"id": i, "type": i.split("-")[0], "short_id": s, "key": "00" * 16}
        for i, s in SHORT_IDS.items()]}))
    return path


@dataclass
class Parts:
    """A gateway core without any adapter: registry, store, commands, stats, readings seen."""

    core: Any
    store: Store
    commands: Any
    stats: Any
    registry: Any
    seen: list[Reading]


@pytest.fixture
async def parts(tmp_path: Path, lora_devices_file: Path) -> AsyncIterator[Parts]:
    from machi_gateway.core import Core
    from machi_gateway.downlink.queue import CommandQueue
    from machi_gateway.registry import Registry
    from machi_gateway.stats import IngressStats

    registry = Registry(lora_devices_file)
    assert registry.reload_if_changed()
    stats = IngressStats()
    async with (
        Store(tmp_path / "q.sqlite3", max_readings=1000, retry_after_s=30,
              dedup_window_s=86400) as store,
        CommandQueue(tmp_path / "commands.sqlite3") as commands,
    ):
        core = Core(registry, store, stats, commands=commands)
        seen: list[Reading] = []
        core.subscribe(seen.append)
        yield Parts(core, store, commands, stats, registry, seen)


@dataclass(frozen=True)
class LoraStub:
    """The stub codec as a fixture (test modules cannot import conftest under importlib)."""

    short_ids: dict[str, int]
    frame: Callable[[int, int, int], bytes]
    decode: Callable[..., Reading]


@pytest.fixture
def lora() -> LoraStub:
    return LoraStub(dict(SHORT_IDS), stub_frame, stub_decode)


# ---- a real Mosquitto broker on a free port ------------------------------------------------


@dataclass(frozen=True)
class Broker:
    host: str
    port: int


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_mosquitto(exe: str, tmp_path: Path, port: int) -> Any:
    import socket
    import subprocess

    conf = tmp_path / f"mosquitto-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log = tmp_path / f"mosquitto-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None  # the port was taken meanwhile: the caller tries another
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError(f"mosquitto did not listen within 15 s: {log.read_text()}")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto started for this test (anonymous, 127.0.0.1, a port chosen now)."""
    import shutil
    import subprocess

    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    assert Path(exe).exists(), "mosquitto is not installed (Debian package: mosquitto)"
    for _ in range(3):
        port = _free_port()
        proc = _start_mosquitto(exe, tmp_path, port)
        if proc is not None:
            break
    else:
        raise AssertionError("mosquitto could not bind a free port three times")
    try:
        yield Broker("127.0.0.1", port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- a fake cloud for the control plane: commands (C3) and the device registry (C4) ------


@dataclass
class ControlCloud:
    """GET /v1/gateways/{gw}/commands?wait=, POST /v1/commands/{id}/state,
    GET /v1/gateways/{gw}/devices; JSON, like the real cloud with Accept: json."""

    port: int = 0
    token: str = "gw-token"
    commands: list[dict[str, Any]] = field(default_factory=list)
    states: list[tuple[str, str, str]] = field(default_factory=list)  # (id, state, detail)
    devices: list[dict[str, Any]] = field(default_factory=list)
    polls: int = 0
    fail_next: int = 0  # answer this many requests with 503 first
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def state(self, cid: str) -> str:
        """The latest state reported for command ``cid`` ("queued" if none)."""
        return next((s for i, s, _ in reversed(self.states) if i == cid), "queued")

    def _pending(self) -> list[dict[str, Any]]:
        return [c for c in self.commands if self.state(c["id"]) == "queued"]

    async def route(self, method: str, target: str, body: bytes) -> tuple[int, Any]:
        from urllib.parse import parse_qs, urlsplit
        url = urlsplit(target)
        parts = url.path.strip("/").split("/")
        if method == "GET" and parts[-1] == "commands":
            self.polls += 1
            wait = min(float(parse_qs(url.query).get("wait", ["0"])[0]), 0.3)
            if not self._pending():
                self.changed.clear()
                try:
                    async with asyncio.timeout(wait):
                        await self.changed.wait()
                except TimeoutError:
                    pass
            return 200, {"commands": self._pending()}
        if method == "POST" and parts[-1] == "state":
            doc = json.loads(body)
            self.states.append((parts[-2], doc["state"], doc.get("detail", "")))
            return 200, {"id": parts[-2], "state": doc["state"]}
        if method == "GET" and parts[-1] == "devices":
            return 200, {"devices": self.devices}
        return 404, {"title": "not found"}

    def add(self, **command: Any) -> None:
        self.commands.append(command)
        self.changed.set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            method, target, headers, body = await read_request(reader)
            if headers.get("authorization") != f"Bearer {self.token}":
                status, doc = 401, {"title": "bad token"}
            elif self.fail_next > 0:
                self.fail_next -= 1
                status, doc = 503, {"title": "busy"}
            else:
                status, doc = await self.route(method, target, body)
            await write_response(writer, status, "application/json", json.dumps(doc).encode())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.tasks.discard(task)


@pytest.fixture
async def control_cloud() -> AsyncIterator[ControlCloud]:
    cloud = ControlCloud()
    server = await asyncio.start_server(cloud.handle, "127.0.0.1", 0)
    cloud.port = server.sockets[0].getsockname()[1]
    try:
        yield cloud
    finally:
        server.close()
        for task in list(cloud.tasks):
            task.cancel()
        if cloud.tasks:
            await asyncio.wait(cloud.tasks, timeout=5)
        await server.wait_closed()
