"""Batch parsing and settings on their own, without HTTP."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import cbor2
import pytest

from machi_cloud.batch import parse_batch
from machi_cloud.errors import BadBatch, TooLarge
from machi_cloud.settings import ConfigError, GatewayTokens, Settings, settings_from_toml


def test_vector_parses_into_typed_readings(vector_body: bytes, vector: dict[str, Any]) -> None:
    batch = parse_batch(vector_body, max_readings=5000)
    assert (batch.gateway, batch.batch_id, batch.rejected) == ("gw-01", "gw-01-000000000001", ())
    env, bin_ = batch.readings
    assert (env.device, env.seq, env.time, env.received, env.transport) == (
        "env-0001",
        17,
        1795390000,
        1795390000.5,
        "coap",
    )
    assert [(m.name, m.unit, m.value) for m in env.measurements] == [
        ("temp", "Cel", 21.5),
        ("hum", "%RH", 48.25),
    ]
    assert [(m.name, m.unit, m.value) for m in bin_.measurements] == [
        ("fill", "%", 85),
        ("tilt", None, False),
    ]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"seq": -1}, "seq"),
        ({"seq": 2**63}, "seq"),
        ({"device": "ENV-1"}, "device id"),
        ({"time": float("nan")}, '"time"'),
        ({"time": 1795390000000}, '"time"'),  # milliseconds, not seconds
        ({"m": [{"n": "t", "v": 2**64}]}, "64-bit"),
        ({"m": [{"n": "t", "v": float("inf")}]}, "finite"),
        ({"m": [{"n": "t", "v": True}]}, "number"),
        ({"m": [{"n": "t", "vb": 1}]}, "true or false"),
        ({"m": [{"n": "t"}]}, "exactly one"),
        ({"m": [{"n": "-bad", "v": 1}]}, "metric name"),
        ({"m": [{"n": "t", "v": 1}, {"n": "t", "v": 2}]}, "more than once"),
        ({"m": "temp=1"}, '"m"'),
        ({"transport": 5}, '"transport"'),
    ],
)
def test_bad_reading_is_rejected_with_reason(change: dict[str, Any], reason: str) -> None:
    reading = {"device": "env-0001", "seq": 1, "time": 1795390000, "m": [{"n": "t", "v": 1}]}
    ok = {"device": "env-0001", "seq": 2, "time": 1795390000, "m": []}
    body = cbor2.dumps(
        {"gateway": "gw-01", "batch_id": "b", "readings": [{**reading, **change}, ok]}
    )
    batch = parse_batch(body, max_readings=10)
    assert [r.seq for r in batch.readings] == [2]
    (rejected,) = batch.rejected
    assert reason in rejected.reason, rejected.reason


def test_batch_errors() -> None:
    with pytest.raises(BadBatch, match="not well-formed CBOR"):
        parse_batch(b"\xa1", max_readings=10)
    with pytest.raises(BadBatch, match="trailing"):
        parse_batch(cbor2.dumps({}) + b"\x00", max_readings=10)
    readings = [{"device": "d", "seq": i, "time": 1, "m": []} for i in range(3)]
    with pytest.raises(TooLarge):
        parse_batch(
            cbor2.dumps({"gateway": "gw-01", "batch_id": "b", "readings": readings}),
            max_readings=2,
        )


def test_tokens_are_hashed_and_matched() -> None:
    digest = hashlib.sha256(b"two").hexdigest()
    tokens = GatewayTokens.from_mapping({"gw-01": "one", "gw-02": f"sha256:{digest}"})
    assert tokens.gateway_for("one") == "gw-01"
    assert tokens.gateway_for("two") == "gw-02"
    assert tokens.gateway_for("three") is None
    assert "one" not in repr(tokens)


def test_settings_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(
        'db = "data/cloud.sqlite"\nport = 0\n[gateway_tokens]\ngw-01 = "s"\n'
        "[limits]\nmax_batch_readings = 10\n"
    )
    s = settings_from_toml(path)
    assert s.db == tmp_path / "data" / "cloud.sqlite"
    assert (s.port, s.limits.max_batch_readings, s.limits.max_body_bytes) == (0, 10, 4 * 2**20)
    assert s.gateway_tokens.gateway_for("s") == "gw-01"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("prot = 1\n", "'prot'"),
        ('port = "80"\n', "port"),
        ("port = 70000\n", "port"),
        ("[limits]\nmax_body_bytes = 0\n", "limits.max_body_bytes"),
        ("[limits]\nmax_bytes = 1\n", "limits.max_bytes"),
        ('[gateway_tokens]\n"GW 1" = "x"\n', "gateway id"),
        ('[gateway_tokens]\ngw-01 = "sha256:zz"\n', "gateway_tokens.gw-01"),
        ("port = \n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)) as info:
        settings_from_toml(path)
    assert key in str(info.value)


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="log_level"):
        Settings(log_level="loud")
