"""`machi fleet` with a transport mix: LoRa nodes behind a virtual concentrator, NB-IoT nodes
through emulated modems and UDP nodes through the fault proxy, all into one real gateway
and cloud; and the mix syntax, the specs and the node configs it makes."""

from __future__ import annotations

import base64
import json
import re
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from machi_gateway.lora.frame import encode
from machi_gateway.lora.profiles import table
from machi_tools.system import (
    Cloud,
    Gateway,
    Node,
    NodeSpec,
    mix_specs,
    parse_mix,
    stop_system,
    with_radio_ids,
)

# the `machi` fixture (conftest.py): the installed command, run as a technician would
Machi = Callable[..., subprocess.CompletedProcess[str]]


def test_fleet_help_shows_the_transport_examples() -> None:
    from machi_tools.cli import build_parser

    text = build_parser().format_help()
    assert "--mix env:lora=3,bin:nbiot=2,light=1" in text and "--loss 0.2" in text


def test_mix_syntax() -> None:
    assert parse_mix("env:lora=3, bin:nbiot=2,light=1,env:lora=1") == {
        ("env", "lora"): 4, ("bin", "nbiot"): 2, ("light", "udp"): 1}
    for bad in ("env:lora", "toaster=1", "env:wifi=2", "env=x", ""):
        with pytest.raises(ValueError):
            parse_mix(bad)


def test_mix_specs_number_per_type_and_give_lora_nodes_ids_and_keys() -> None:
    specs = mix_specs({("env", "udp"): 1, ("env", "lora"): 2, ("bin", "lora"): 1}, count=3)
    assert [(s.device_id, s.transport) for s in specs] == [
        ("env-0001", "udp"), ("env-0002", "lora"), ("env-0003", "lora"), ("bin-0001", "lora")]
    lora = [s for s in specs if s.transport == "lora"]
    assert len({s.short_id for s in lora}) == 3 and len({s.key for s in lora}) == 3
    # the UDP node has its own short id and key too: OSCORE (docs/security.md §2.9)
    assert len({s.short_id for s in specs}) == 4 and len({s.key for s in specs}) == 4
    # ids already given are kept and not handed out again
    kept = with_radio_ids([NodeSpec("env-0009", "env", transport="lora", short_id=1,
                                    key="ab" * 16), NodeSpec("env-0010", "env",
                                                             transport="lora")])
    assert [s.short_id for s in kept] == [1, 2] and kept[0].key == "ab" * 16
    with pytest.raises(ValueError, match="transport"):
        NodeSpec("env-0001", "env", transport="zigbee")
    with pytest.raises(ValueError, match="key"):
        NodeSpec("env-0001", "env", transport="lora", key="xyz")


def test_node_configs_per_transport(tmp_path: Path) -> None:
    [spec] = mix_specs({("env", "lora"): 1})
    node = Node(spec=spec, workdir=tmp_path, gateway=("127.0.0.1", 5683),
                radio=("127.0.0.1", 1681))
    cfg = node.config()
    assert cfg["transport"] == "lora" and cfg["gateway"] == {"host": "127.0.0.1", "port": 1681}
    assert cfg["lora"] == {"short_id": spec.short_id, "key": spec.key, "budget_s": 36.0}
    cfg = Node(spec=NodeSpec("bin-0001", "bin", transport="nbiot"), workdir=tmp_path,
               gateway=("127.0.0.1", 5683), uart="/dev/pts/9").config()
    assert cfg["nbiot"] == {"uart": "/dev/pts/9"} and cfg["gateway"]["port"] == 5683
    with pytest.raises(ValueError, match="radio"):
        Node(spec=spec, workdir=tmp_path, gateway=("127.0.0.1", 5683)).config()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mix", "env:wifi=1"], "transport one of"),
        (["--radio-loss", "1.5"], "probability"),
        (["--env", "0", "--mix", "env:lora=1"], "--lora-gateway"),
        (["--lora-budget", "0"], "--lora-budget"),
        (["--env", "1", "--registry-wait", "-1"], "--registry-wait"),
    ],
)
def test_bad_fleet_usage_exits_2(
    argv: list[str], message: str, tmp_path: Path, machi: Machi
) -> None:
    r = machi("fleet", "--gateway", "127.0.0.1:5683", "--workdir", str(tmp_path), *argv)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stdout + r.stderr


@pytest.mark.hil
@pytest.mark.micropython
def test_fleet_mix_of_transports_delivers_exactly_once(tmp_path: Path, machi: Machi) -> None:
    cloud = Cloud(workdir=tmp_path / "sys")
    gateway: Gateway | None = None
    try:
        cloud.start()
        gateway = Gateway(workdir=tmp_path / "sys", cloud_url=cloud.url, token=cloud.token,
                          batch_age_s=0.2, lora_udp=True)
        host, port = gateway.start()
        lhost, lport = gateway.lora
        result = machi(
            "fleet", "--gateway", f"{host}:{port}", "--lora-gateway", f"{lhost}:{lport}",
            "--env", "0", "--mix", "env:lora=2,bin:nbiot=1,light=1", "--count", "3",
            "--interval", "0.3", "--ack-timeout", "0.5", "--radio-loss", "0.1",
            "--loss", "0.15", "--duplicate", "0.1", "--seed", "4",
            "--workdir", str(tmp_path / "fleet"), "--devices-file", str(gateway.devices_path),
        )
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        assert "4 nodes (1 udp, 2 lora, 1 nbiot)" in out, out
        devices = ("env-0001", "env-0002", "bin-0001", "light-0001")
        for dev in devices:
            assert re.search(rf"{dev}: 3 recorded, 3 acked, exit 0", out), out
        with httpx.Client(base_url=cloud.url, timeout=5) as client:
            for _ in range(200):
                rows = client.get("/v1/devices").json()["devices"]
                if sum(d["readings"] for d in rows) >= 12:
                    break
                time.sleep(0.1)
        assert sorted(d["device"] for d in rows) == sorted(devices)
        assert all(d["readings"] == 3 for d in rows), rows  # each reading stored once
        udp_stats = json.loads((tmp_path / "fleet" / "udpproxy.stats").read_text())
        assert udp_stats["up_in"] > 0  # the UDP and NB-IoT nodes went through the proxy
        radio = json.loads((tmp_path / "fleet" / "vconcentrator.stats").read_text())
        assert radio["down_lost"] >= 1  # seed 4: the 4th ack is lost, and yet no reading
        assert json.loads((tmp_path / "fleet" / "modem-bin-0001.stats").read_text())["sent"]

        # a replay of seq 1 and a forged frame, straight at the gateway's Semtech port
        dev = next(d for d in json.loads(gateway.devices_path.read_text())["devices"]
                   if d["id"] == "env-0001")
        frame = encode(table()[1], dev["short_id"], 1, bytes.fromhex(dev["key"]),
                       {"temp": 20.0})
        forged = frame[:-1] + bytes([frame[-1] ^ 0x55])
        dups = gateway.health()["duplicates"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for token, f in enumerate((frame, forged)):
                pk = {"tmst": token, "freq": 923.2, "stat": 1, "modu": "LORA",
                      "datr": "SF10BW125", "codr": "4/5", "size": len(f),
                      "data": base64.b64encode(f).decode()}
                s.sendto(struct.pack(">BHB", 2, token, 0) + bytes(8)
                         + json.dumps({"rxpk": [pk]}).encode(), gateway.lora)
        for _ in range(300):
            health = gateway.health()
            if health["rejected"].get("bad-mic") and health["duplicates"] > dups:
                break
            time.sleep(0.1)
        assert health["rejected"]["bad-mic"] == 1, health  # counted, dropped
        assert health["duplicates"] == dups + 1, health  # the replay: a duplicate
        with httpx.Client(base_url=cloud.url, timeout=5) as client:
            rows = client.get("/v1/devices").json()["devices"]
        assert {d["device"]: d["readings"] for d in rows}["env-0001"] == 3
    finally:
        stop_system(cloud, gateway)
