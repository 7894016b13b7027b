"""Shared fixtures for the gateway tests: vectors, readings, a store, a fake cloud."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest

from machi_gateway.model import Measurement, Reading
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


@pytest.fixture
def devices_file(tmp_path: Path) -> Path:
    path = tmp_path / "devices.json"
    ids = ["env-0001", "env-0003", "env-0004", "bin-0002", "light-0001"]
    path.write_text(json.dumps({"devices": [{"id": i, "type": i.split("-")[0]} for i in ids]}))
    return path


# ---- a fake cloud: a real HTTP server on 127.0.0.1 -----------------------------------


@dataclass
class Post:
    """One request the fake cloud received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


Behaviour = Callable[[Post], "tuple[int, Any] | None"]


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
        for r in post.body["readings"]:
            key = (r["device"], r["seq"])
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
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            path = head[0].split()[1]
            headers = {k.lower(): v.strip() for k, _, v in
                       (h.partition(":") for h in head[1:] if h)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            post = Post(path, headers, cbor2.loads(body))
            self.posts.append(post)
            answer = self.script.pop(0)(post) if self.script else None
            status, doc = answer if answer is not None else self.default_answer(post)
            if status == 0:
                await self.release.wait()
                return
            payload = cbor2.dumps(doc) if status == 200 else json.dumps(doc).encode()
            ctype = "application/cbor" if status == 200 else "application/problem+json"
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            await writer.drain()
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
