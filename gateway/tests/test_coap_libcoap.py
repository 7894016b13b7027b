"""Interoperability with a CoAP client nobody here wrote: libcoap's ``coap-client``.

It needs the Debian package ``libcoap3-bin``; when it is missing this test fails (it does
not skip) with a message naming the package.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2

from machi_gateway.core import Core
from machi_gateway.ingress.coap import CoapIngress
from machi_gateway.registry import Registry
from machi_gateway.stats import IngressStats
from machi_gateway.store import Store

_NAMES = ("coap-client", "coap-client-notls", "coap-client-openssl", "coap-client-gnutls")


def coap_client() -> str:
    for name in _NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("libcoap's coap-client is missing: apt-get install -y libcoap3-bin")


async def run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        coap_client(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, (out + err).decode("utf-8", "replace")


async def test_libcoap_posts_a_reading_and_gets_204_with_time(
    tmp_path: Path, devices_file: Path, vectors: Callable[[str], Any]
) -> None:
    registry = Registry(devices_file)
    assert registry.reload_if_changed()
    case = vectors("senml-readings.json")[0]
    reading_file = tmp_path / "reading.cbor"
    reading_file.write_bytes(bytes.fromhex(case["hex"]))
    answer = tmp_path / "answer.cbor"
    async with Store(tmp_path / "q.db", max_readings=100, retry_after_s=30,
                     dedup_window_s=3600) as store:
        async with CoapIngress(Core(registry, store, IngressStats()), host="127.0.0.1",
                               port=0, max_payload=1024) as coap:
            uri = f"coap://127.0.0.1:{coap.address[1]}/r"
            before = int(time.time())
            rc, log = await run("-m", "post", "-t", "112", "-f", str(reading_file),
                                "-o", str(answer), "-v", "7", uri)
            assert rc == 0, log
            # libcoap's debug log shows the response header it parsed.
            assert re.search(r"t:ACK c:2\.04 .*Content-Format:application/cbor", log), log
            doc = cbor2.loads(answer.read_bytes())
            assert abs(doc[1] - before) <= 5
            assert store.depth == 1
            [r] = await store.oldest(1)
            assert (r.device, r.seq) == (case["reading"]["device"], case["reading"]["seq"])
            # An invalid payload gets 4.00 with our diagnostic, as libcoap prints it.
            bad = tmp_path / "bad.cbor"
            bad.write_bytes(b"\x9f\x01")
            rc, log = await run("-m", "post", "-t", "112", "-f", str(bad), uri)
            assert "4.00" in log and "cbor:" in log, log
            assert store.depth == 1
