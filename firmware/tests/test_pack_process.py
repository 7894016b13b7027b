"""A real node process catches up on its backlog in packs, against the real gateway ingress.

The node (`micropython firmware/main.py`, flash ring) runs while no gateway listens, so its
readings wait in the ring; then the gateway's CoAP ingress and durable queue (the real
`CoapIngress`, `Core` and SQLite `Store`, in this process) come up on that port and the node
is started again: the waiting readings go several per request (docs/protocol.md §2,
"Several readings in one pack") and every one is stored exactly once.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from machi_gateway.core import Core
from machi_gateway.ingress.coap import CoapIngress
from machi_gateway.registry import Registry
from machi_gateway.stats import IngressStats
from machi_gateway.store import Store

from .conftest import run_node_main

pytestmark = pytest.mark.micropython


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _run_node(binary: str, tmp: Path, cfg: dict[str, Any], within: float) -> tuple[int, str]:
    path = tmp / "cfg.json"
    path.write_text(json.dumps(cfg))
    return await run_node_main(binary, path, within)


def _events(out: str, event: str) -> list[dict[str, str]]:
    return [dict(re.findall(r"(\w+)=(\S+)", ln)) for ln in out.splitlines()
            if ln.split()[2:3] == [event]]


async def test_backlog_after_an_outage_goes_in_packs_and_is_stored_once(
    tmp_path: Path, micropython: str
) -> None:
    port = _free_udp_port()
    cfg: dict[str, Any] = {
        "device_id": "env-0001", "type": "env", "seed": 1,
        "gateway": {"host": "127.0.0.1", "port": port},
        "interval_s": 0.1, "count": 7, "drain_timeout_s": 0.3, "pack_max": 4,
        "state_dir": str(tmp_path / "state"),
        "coap": {"ack_timeout_s": 0.3, "ack_random_factor": 1.5, "max_retransmit": 4},
    }
    # 1. no gateway: the readings stay in the ring (exit 3: not drained)
    code, out = await _run_node(micropython, tmp_path, cfg, 60)
    assert code == 3, out
    waiting = [int(e["seq"]) for e in _events(out, "rec")]
    assert len(waiting) == 7 and not _events(out, "ack"), out

    # 2. the gateway is back: the node sends the backlog, then 2 fresh readings
    devices = tmp_path / "devices.json"
    devices.write_text(json.dumps({"devices": [{"id": "env-0001", "type": "env"}]}))
    registry = Registry(devices)
    assert registry.reload_if_changed()
    stats = IngressStats()
    async with Store(tmp_path / "q.db", max_readings=1000, retry_after_s=30,
                     dedup_window_s=3600) as store:
        groups: list[int] = []
        real = store._add_group

        def counting(readings: Any) -> Any:
            groups.append(len(readings))
            return real(readings)

        store._add_group = counting  # type: ignore[method-assign]
        async with CoapIngress(Core(registry, store, stats), host="127.0.0.1", port=port,
                               max_payload=1024):
            code, out = await _run_node(micropython, tmp_path, {
                **cfg, "count": 2, "interval_s": 0.5, "drain_timeout_s": 30}, 60)
            assert code == 0, out
            fresh = [int(e["seq"]) for e in _events(out, "rec")]
            rows = await store.oldest(100)
    assert int(_events(out, "start")[0]["waiting"]) == 7
    seqs = [r.seq for r in rows]
    assert sorted(seqs) == sorted(waiting + fresh)  # all of them, each stored once
    assert len(set(seqs)) == len(seqs) == 9 and stats.readings_in == 9
    # the backlog (and the reading taken at start) went in packs of pack_max 4: one
    # request and one commit per pack, each ack line naming its pack's size
    acks = _events(out, "ack")
    assert [int(e["seq"]) for e in acks][:7] == waiting
    assert [e.get("n") for e in acks[:8]] == ["4"] * 8, acks
    assert groups[:2] == [4, 4] and sum(groups) == 9 and len(groups) <= 3, groups
    # each reading kept its own sample time
    times = {r.seq: r.time for r in rows}
    assert [times[s] for s in waiting] == sorted(times[s] for s in waiting)
