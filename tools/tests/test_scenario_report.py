"""The scenario report's accounting of readings a node wrote but was killed before logging,
and its /proc figures of node processes that come and go."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from machi_tools.scenario import _unlogged, process_resources
from machi_tools.system import parse_node_log

LOG = """\
I bin-0002 start seq=0 type=bin board=unix waiting=0
I bin-0002 rec seq=0
I bin-0002 ack seq=0 code=2.04 tries=1 ms=3
I bin-0002 rec seq=1
I bin-0002 start seq=16 type=bin board=unix waiting=2
I bin-0002 rec seq=16
I bin-0002 stop code=0 taken=1 left=0 rejected=0 dropped=0 sent=3 retx=0 stray=0 bad=0 neterr=0
I bin-0002 start seq=32 type=bin board=unix waiting=0
"""


def test_only_the_reading_being_written_at_each_kill_may_be_unlogged() -> None:
    events = list(parse_node_log(LOG))
    # run 1 was killed after rec 1 (seq 2 may be in the ring); run 2 stopped cleanly;
    # run 3 was killed before its first rec (its first seq, 32, may be in the ring)
    assert _unlogged(events) == {2, 32}


def test_a_clean_run_leaves_nothing_unlogged() -> None:
    events = list(parse_node_log(LOG.split("I bin-0002 start seq=32")[0]
                                 .replace("I bin-0002 start seq=16", "I bin-0002 stop code=0\n"
                                          "I bin-0002 start seq=16")))
    assert _unlogged(events) == set()


def test_process_resources_of_a_live_process_and_of_one_that_exited() -> None:
    # a node that exits between two samples leaves a zombie whose status has no VmHWM
    # line: that is "no figure", never an exception that fails the whole scenario
    live = process_resources(os.getpid())
    assert live["peak_rss_mib"] > 0 and live["cpu_s"] >= 0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        assert process_resources(child.pid) == {}
    finally:
        child.wait()
    assert process_resources(child.pid) == {}  # reaped: no /proc entry at all
