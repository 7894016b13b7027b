"""schemathesis against the served OpenAPI document: no input makes the service answer 5xx.

Runs against a real `machi-cloud` process. Every operation gets 25 generated cases, drawn
both from the schema (valid) and against it (negative mode), with a fixed seed
(`derandomize`), sent with a token that can reach the operation (gateway endpoints get the
gateway's token, the others an admin's), so the code behind the auth check is exercised.
Every answer must be below 500, and every error a problem document. A device is
registered first so that commands and keys have something to act on.
"""

from __future__ import annotations

import json
from typing import Any

import cbor2
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

MAX_EXAMPLES = 25
MAX_WAIT_S = 0.2  # long-poll `wait` is clamped so a run takes seconds, not minutes


@schemathesis.serializer("application/cbor")
def _cbor(ctx: Any, value: Any) -> bytes:
    return cbor2.dumps(value)


def _headers(path: str, tokens: dict[str, str]) -> dict[str, str]:
    gateway = path.startswith("/v1/gateways/") or path.endswith("/state") or path == "/v1/batches"
    return {"Authorization": f"Bearer {tokens['gw-01' if gateway else 'admin']}"}


def _fuzz(
    op: Any, url: str, tokens: dict[str, str], failures: list[str], succeeded: set[str]
) -> None:
    """Send MAX_EXAMPLES generated cases to one operation; record 5xx and non-problem errors."""
    name = f"{op.method.upper()} {op.path}"
    headers = _headers(op.path, tokens)
    strategy = st.one_of(
        op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE)
    )

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: Any) -> None:
        if isinstance(case.query, dict) and "wait" in case.query:
            try:
                case.query["wait"] = min(float(case.query["wait"]), MAX_WAIT_S)
            except (TypeError, ValueError):
                pass
        resp = case.call(base_url=url, headers=headers, timeout=60)
        where = f"{case.method} {case.formatted_path} query={case.query!r}"
        if resp.status_code < 300:
            succeeded.add(name)
        if resp.status_code >= 500:
            failures.append(f"{resp.status_code} on {where}: {resp.text[:300]}")
        elif resp.status_code >= 400:
            kind = "".join(resp.headers.get("content-type") or [])
            if not kind.startswith("application/problem+json"):
                failures.append(f"{resp.status_code} not a problem document on {where}")
            else:
                json.loads(resp.text)

    check()


def test_no_operation_answers_5xx(cloud: str, process_tokens: dict[str, str]) -> None:
    with httpx.Client(base_url=cloud, timeout=30) as c:
        reg = c.put(
            "/v1/devices/lamp-01",
            json={"type": "light", "gateway": "gw-01", "lat": 35.0, "lon": 139.0},
            headers={"Authorization": f"Bearer {process_tokens['admin']}"},
        )
        assert reg.status_code == 201, reg.text
    schema = schemathesis.openapi.from_url(cloud + "/openapi.json")
    failures: list[str] = []
    succeeded: set[str] = set()
    operations = 0
    for result in schema.get_all_operations():
        operations += 1
        assert isinstance(result, Ok), f"the served schema is invalid: {result}"
        _fuzz(result.ok(), cloud, process_tokens, failures, succeeded)
    assert operations >= 15, operations
    print(f"{len(succeeded)} of {operations} operations answered 2xx at least once")
    assert len(succeeded) >= operations // 2, sorted(succeeded)
    assert not failures, "\n".join(failures[:20])


def test_openapi_lists_every_endpoint(cloud: str) -> None:
    doc = httpx.get(cloud + "/openapi.json", timeout=30).json()
    for path in (
        "/v1/batches",
        "/v1/readings",
        "/v1/readings/aggregate",
        "/v1/latest",
        "/v1/open-data",
        "/v1/devices",
        "/v1/devices/{device}",
        "/v1/devices/{device}/keys",
        "/v1/devices/{device}/delivery",
        "/v1/gateways/{gw}/devices",
        "/v1/gateways/{gw}/commands",
        "/v1/commands",
        "/v1/commands/{cmd_id}",
        "/v1/commands/{cmd_id}/state",
        "/v1/audit",
        "/v1/audit/verify",
    ):
        assert path in doc["paths"], path


pytestmark = pytest.mark.filterwarnings(
    # schemathesis/hypothesis internals warn about features we do not use
    "ignore::DeprecationWarning:schemathesis.*",
)


def test_the_openapi_copy_in_docs_is_current() -> None:
    from pathlib import Path

    from machi_cloud.openapi_doc import document

    copy = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
    assert copy.read_text() == document(), (
        "docs/openapi.json is out of date: python -m machi_cloud.openapi_doc > docs/openapi.json"
    )
