"""Random CBOR-ish bodies at POST /v1/batches never produce a 5xx (nor an unhandled error)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import cbor2
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machi_cloud.app import create_app
from machi_cloud.settings import GatewayTokens, Settings
from machi_cloud.storage.sqlite import SQLiteStorage

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=8),
    st.sampled_from(["env-0001", "gw-01", "temp", "Cel", "v", "vs", "vb", "n", "u", "m"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
measurement = st.dictionaries(
    st.sampled_from(["n", "u", "v", "vs", "vb", "t"]), values, max_size=4
) | st.fixed_dictionaries({"n": st.sampled_from(["temp", "x", "-"]), "v": scalars})
reading = st.fixed_dictionaries(
    {"device": st.sampled_from(["env-0001", "env-0002", "BAD"]) | st.text(max_size=4)},
    optional={
        "seq": st.integers(min_value=-5, max_value=2**64) | scalars,
        "time": scalars | st.integers(min_value=0, max_value=2**34),
        "received": scalars,
        "transport": scalars,
        "m": st.lists(measurement, max_size=3) | values,
    },
)
batch = st.fixed_dictionaries(
    {},
    optional={
        "gateway": st.sampled_from(["gw-01", "gw-02"]) | scalars,
        "batch_id": st.text(min_size=0, max_size=70) | scalars,
        "readings": st.lists(reading | values, max_size=5) | values,
    },
)


def _encode(obj: Any) -> bytes:
    return cbor2.dumps(obj)


bodies = st.one_of(
    st.binary(max_size=64),
    batch.map(_encode),
    values.map(_encode),
    st.tuples(batch.map(_encode), st.integers(0, 200), st.binary(max_size=3)).map(
        lambda t: t[0][: t[1]] + t[2]  # truncated or with trailing garbage
    ),
)


def test_random_bodies_never_get_a_5xx() -> None:
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Settings(
            db=Path(tmp) / "fuzz.sqlite",
            gateway_tokens=GatewayTokens.from_mapping({"gw-01": "t"}),
        )
        storage = SQLiteStorage(conf.db)
        loop.run_until_complete(storage.open())
        app = create_app(conf, storage)

        async def post(body: bytes) -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await c.post(
                    "/v1/batches",
                    content=body,
                    headers={"Authorization": "Bearer t", "Content-Type": "application/cbor"},
                )

        @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(bodies)
        def check(body: bytes) -> None:
            resp = loop.run_until_complete(post(body))
            assert resp.status_code < 500, (body.hex(), resp.text)
            if resp.status_code == 200:
                answer = cbor2.loads(resp.content)
                assert answer["stored"] + answer["duplicates"] >= len(answer["acked"])
            else:
                assert resp.headers["content-type"].startswith("application/problem+json")
                assert resp.status_code in (400, 403, 409, 413)

        try:
            check()
        finally:
            loop.run_until_complete(storage.close())
            loop.close()
