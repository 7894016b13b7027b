"""Config: defaults, errors that name the key, the example file, --check-config."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from machi_gateway import config
from machi_gateway.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "gateway.example.toml"
EXE = Path(sys.executable).with_name("machi-gateway")


def test_defaults(tmp_path: Path) -> None:
    cfg = config.from_mapping({}, base_dir=tmp_path)
    assert cfg.gateway_id == "gw-01"
    assert cfg.coap.port == 5683 and cfg.coap.max_payload == 1024
    assert cfg.devices_file == tmp_path / "devices.json"
    assert cfg.queue_file == Path("/var/lib/machi-gateway/queue.sqlite3")
    assert cfg.uplink.batch_max == 2000 and cfg.uplink.batch_age_s == 2.0
    assert cfg.queue.retry_after_s == 30 and cfg.health.port == 8081


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"coap": {"port": 70000}}, "[coap] port: must be an integer 0..65535"),
        ({"coap": {"port": "5683"}}, "[coap] port"),
        ({"coap": {"port": True}}, "[coap] port"),
        ({"coap": {"prot": 1}}, "[coap] prot: unknown key"),
        ({"coapp": {}}, "[coapp]: unknown section"),
        ({"gateway": {"id": "GW 1"}}, "[gateway] id"),
        ({"uplink": {"url": "ftp://x"}}, "[uplink] url"),
        ({"uplink": {"batch_max": 0}}, "[uplink] batch_max"),
        ({"uplink": {"batch_age_s": -1}}, "[uplink] batch_age_s"),
        ({"uplink": {"backoff_initial_s": 5, "backoff_max_s": 1}}, "[uplink] backoff_max_s"),
        ({"uplink": {"token": "a", "token_file": "t"}}, "[uplink] token_file: set either"),
        ({"uplink": {"token_file": "missing"}}, "[uplink] token_file: cannot read"),
        ({"log": {"format": "xml"}}, "[log] format: must be one of text, json"),
        ({"queue": 3}, "[queue]: must be a table"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config.from_mapping(doc, base_dir=tmp_path)
    assert str(exc.value).startswith(message)


def test_token_file_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("abc123\n")
    cfg = config.from_mapping(
        {"uplink": {"token_file": "token"}, "gateway": {"data_dir": "state"}},
        base_dir=tmp_path)
    assert cfg.uplink.token == "abc123"
    assert cfg.data_dir == tmp_path / "state"
    assert "abc123" not in repr(cfg) and "abc123" not in cfg.summary()


def test_bad_toml(tmp_path: Path) -> None:
    p = tmp_path / "g.toml"
    p.write_text("[coap\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(p)


def test_example_lists_every_key_with_its_default() -> None:
    """The example file is the schema, uncommented: same keys, same defaults."""
    text = EXAMPLE.read_text()
    uncommented = "\n".join(
        line[2:] if re.match(r"^# [a-z0-9_]+ = ", line) else line for line in text.splitlines())
    doc = tomllib.loads(uncommented)
    for section, keys in config.SCHEMA.items():
        for key, spec in keys.items():
            assert doc[section][key] == spec.default, (section, key)
    assert set(doc) == set(config.SCHEMA)


def test_example_passes_check_config(tmp_path: Path) -> None:
    out = subprocess.run([str(EXE), "--config", str(EXAMPLE), "--check-config"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "config ok" in out.stdout and "gw-01" in out.stdout


def test_json_logs_carry_extra_fields() -> None:
    import json as _json
    import logging

    from machi_gateway.logs import JsonFormatter

    rec = logging.LogRecord("machi_gateway.ingress.coap", logging.WARNING, __file__, 1,
                            "coap %s from %s", ("4.01", "10.0.0.7"), None)
    rec.__dict__.update(device="env-0001", seq=5, reason="unknown-device")
    doc = _json.loads(JsonFormatter().format(rec))
    assert doc["msg"] == "coap 4.01 from 10.0.0.7" and doc["level"] == "warning"
    assert (doc["device"], doc["seq"], doc["reason"]) == ("env-0001", 5, "unknown-device")
