"""A full gateway disk (issue #7): the durable queue sits on a real filesystem that fills up.

The gateway's data directory (queue.sqlite3 and its WAL, the OSCORE state) is a 4 MiB tmpfs
mounted for the test; a filler file takes all of it but one page, so the queue's next
commits fail with SQLITE_FULL (ENOSPC underneath). Real nodes (the firmware under
MicroPython, OSCORE) keep sending: the gateway must answer 5.03 with Max-Age
(`retry_after_s`), stay up, and lose nothing it acknowledged. When the operator deletes the
filler the readings flow again and the cloud ends with every recorded reading exactly once.

Needs root (mount); elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from machi_tools.system import Cloud, Fleet, Gateway, NodeSpec, fleet_specs

DISK = "4m"
RETRY_AFTER_S = 1  # the 5.03's Max-Age: short, so the test takes seconds


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own, lazily unmounted whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs mount: run as root")
    mnt = tmp_path / "gwdisk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0700", "tmpfs",
                           str(mnt)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


@pytest.fixture
def gateway(workdir: Path, cloud: Cloud, small_disk: Path) -> Iterator[Gateway]:
    """The conftest gateway, with its data_dir on the small disk (overrides conftest's)."""
    g = Gateway(workdir=workdir, cloud_url=cloud.url, token=cloud.token, batch_age_s=0.3,
                data_dir=small_disk, retry_after_s=RETRY_AFTER_S)
    try:
        g.start()
        yield g
    finally:
        g.stop()


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(path: Path, leave: int) -> Path:
    """Write a filler file until the filesystem is full, then give back `leave` bytes."""
    filler = path / "filler"
    chunk = b"\xa5" * 65536
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk if _free(path) > len(chunk) else chunk[:4096])
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        f.truncate(max(0, f.tell() - leave))
        os.fsync(f.fileno())
    return filler


def _wait(what: str, cond: Callable[[], bool], fleet: Fleet, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{fleet.logs()}")
        time.sleep(0.1)


def _count(node: Any, event: str) -> int:
    return sum(e.event == event for e in node.events())


def _busy(fleet: Fleet) -> dict[str, list[dict[str, str]]]:
    return {n.spec.device_id: [e.fields for e in n.events() if e.event == "busy"]
            for n in fleet.nodes}


def test_full_disk_answers_503_and_loses_nothing(
    start_fleet: Callable[[list[NodeSpec]], Fleet], gateway: Gateway, cloud_reader: Any,
    small_disk: Path,
) -> None:
    specs = fleet_specs({"env": 2, "bin": 1}, interval_s=0.2, count=30)
    assert all(s.key is not None for s in specs)  # OSCORE between node and gateway
    fleet = start_fleet(specs)
    assert gateway.process is not None
    pid = gateway.process.pid

    # some readings acknowledged (durable, uploaded or queued) before the disk fills
    _wait("3 acks per node", lambda: all(len(n.acked_seqs()) >= 3 for n in fleet.nodes), fleet)
    acked_before = {n.spec.device_id: set(n.acked_seqs()) for n in fleet.nodes}
    filler = _fill(small_disk, leave=4096)
    assert _free(small_disk) <= 8192, f"{_free(small_disk)} bytes still free"

    # every node is refused with 5.03 + Max-Age, the gateway counts it and stays up
    _wait("every node answered 5.03", lambda: all(_busy(fleet).values()), fleet)
    _wait("disk-full rejects", lambda: gateway.health()["rejected"].get("disk-full", 0) >= 6,
          fleet)
    health = gateway.health()
    busy = _busy(fleet)
    for dev, lines in busy.items():
        assert all(b["code"] == "5.03" for b in lines), f"{dev}: {lines}"
        assert all(float(b["wait_s"]) == RETRY_AFTER_S for b in lines), f"{dev}: {lines}"
    assert gateway.process.alive() and gateway.process.pid == pid, "the gateway went down"
    assert all(n.exit_code() is None for n in fleet.nodes), "a node gave up while refused"

    # the operator frees space: the readings flow again, every node finishes its count
    filler.unlink()
    codes = fleet.wait(timeout=120)
    assert all(code == 0 for code in codes.values()), f"node exit codes {codes}\n{fleet.logs()}"
    assert gateway.process.alive() and gateway.process.pid == pid, "the gateway restarted"

    expected = {n.spec.device_id: set(n.recorded_seqs()) for n in fleet.nodes}
    for dev, seqs in expected.items():
        assert len(seqs) == 30, f"{dev} recorded {len(seqs)} readings, not 30"
        assert acked_before[dev] <= seqs
    got = cloud_reader.wait_for_seqs(expected, timeout=30)
    for dev in expected:
        assert not expected[dev] - got[dev], f"{dev}: lost {sorted(expected[dev] - got[dev])}"
        assert not got[dev] - expected[dev], f"{dev}: extra {sorted(got[dev] - expected[dev])}"
        counts = cloud_reader.seqs(dev)
        assert all(n == 1 for n in counts.values()), f"{dev}: duplicated {counts}"

    # the queue survived intact and drained; the commit failures were SQLite's "disk full"
    assert gateway.stop() == 0, "the gateway did not shut down cleanly"
    with contextlib.closing(sqlite3.connect(small_disk / "queue.sqlite3")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM queue").fetchone()[0] == 0
    log = (gateway.workdir / "logs" / "gateway.log").read_text(errors="replace")
    assert "queue commit failed (disk-full)" in log
    print(f"\nfull disk: rejects {health['rejected']}, busy answers per node "
          f"{ {d: len(b) for d, b in busy.items()} }, readings {sum(map(len, expected.values()))}")


def test_gateway_stopped_and_restarted_on_a_full_disk(
    start_fleet: Callable[[list[NodeSpec]], Fleet], gateway: Gateway, cloud_reader: Any,
    small_disk: Path,
) -> None:
    specs = fleet_specs({"env": 1, "light": 1}, interval_s=0.2, count=20)
    fleet = start_fleet(specs)
    _wait("3 acks per node", lambda: all(len(n.acked_seqs()) >= 3 for n in fleet.nodes), fleet)
    filler = _fill(small_disk, leave=4096)
    _wait("every node answered 5.03", lambda: all(_busy(fleet).values()), fleet)

    # a clean stop with no room: the checkpoint and the replay windows cannot be written
    assert gateway.stop() == 0, "the gateway did not stop cleanly on a full disk"
    # it comes back on the same full disk, its queue intact; without saved windows every
    # node needs an Echo challenge, whose answer needs a new OSCORE sequence number, whose
    # reservation cannot be written: no answer at all (never a nonce that is not on disk),
    # so the nodes keep their readings and retransmit
    gateway.start()
    health = gateway.health()
    assert health["status"] == "ok" and health["queue_depth"] > 0, health
    assert "disk is full" in (health["uplink"]["last_error"] or ""), health
    acked = {n.spec.device_id: len(n.acked_seqs()) for n in fleet.nodes}
    retries = {n.spec.device_id: _count(n, "retry") for n in fleet.nodes}
    _wait("2 retransmissions per node",
          lambda: all(_count(n, "retry") >= retries[n.spec.device_id] + 2 for n in fleet.nodes),
          fleet)
    assert {n.spec.device_id: len(n.acked_seqs()) for n in fleet.nodes} == acked

    filler.unlink()
    codes = fleet.wait(timeout=120)
    assert all(code == 0 for code in codes.values()), f"node exit codes {codes}\n{fleet.logs()}"
    expected = {n.spec.device_id: set(n.recorded_seqs()) for n in fleet.nodes}
    assert all(len(s) == 20 for s in expected.values()), expected
    got = cloud_reader.wait_for_seqs(expected, timeout=30)
    for dev in expected:
        assert got[dev] == expected[dev], f"{dev}: lost {sorted(expected[dev] - got[dev])}"
        assert all(n == 1 for n in cloud_reader.seqs(dev).values()), f"{dev}: duplicated"
    log = (gateway.workdir / "logs" / "gateway.log").read_text(errors="replace")
    assert "replay windows not saved" in log
    assert not list(small_disk.glob(".oscore-seq*.tmp")), "a half-written sequence file"
