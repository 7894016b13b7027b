"""`machi provision`: give a board its identity, firmware and config, register it, test it.

Steps (each idempotent, so re-running on a provisioned board updates it):
 1. connect (raw REPL), read the board's platform, cwd and current `config.json`/`identity.json`
 2. build the firmware for that board (or use `--build-dir`), check the manifest
 3. register with the cloud: `PUT /v1/devices/{id}`, then `POST /v1/devices/{id}/keys` (a new
    key each run: the old one stops working, the board gets the new one in step 5)
 4. copy the firmware files whose sha256 differs on the board (one hashing round trip), remove
    firmware files the build no longer has (a stale `.py` would shadow its `.mpy`)
 5. write `config.json` (lib/nodeconfig.py's format) and `identity.json` (device id, key, site,
    location, firmware version: what the label shows; the key never leaves the board again).
    A CoAP node's config gets the `oscore` section (docs/security.md §2.9): the key and the
    short id the cloud assigned, so the gateway (which syncs both from the cloud) can check
    every request. The key is never printed, logged or put in the `--json` result.
 6. self-test on the board: import every module of the build, a CBOR round trip, the config
    checked by the firmware's own nodeconfig.load()

Files land relative to the board's cwd: `/` on an ESP32, the root directory of an emulated one.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .boardlink import Board, BoardError
from .build import BuildError, Manifest, build, verify
from .cloudapi import CloudClient

TYPES = ("env", "bin", "light")
DEVICE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
FIRMWARE_DIRS = ("lib", "apps", "boards", "transports", "drivers")


class SelfTestError(RuntimeError):
    """The firmware was copied but does not work on the board."""


@dataclass
class ProvisionOptions:
    port: str
    type: str | None = None
    site: str | None = None
    lat: float | None = None
    lon: float | None = None
    device_id: str | None = None
    gateway_id: str = "gw-01"
    gateway_addr: tuple[str, int] | None = None
    cloud: str | None = None
    admin_token: str | None = None
    interval_s: float = 60.0
    transport: str = "coap"
    build_dir: Path | None = None
    wifi_ssid: str | None = None
    wifi_key: str | None = None
    connect_timeout_s: float = 10.0


@dataclass
class ProvisionResult:
    device: str
    type: str
    site: str | None
    lat: float | None
    lon: float | None
    gateway: str
    board: str
    firmware: str
    updated: bool  # the board had been provisioned before
    registered: bool
    created: bool | None
    copied: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    selftest: dict[str, Any] = field(default_factory=dict)
    took_s: float = 0.0
    short_id: int | None = None  # the cloud's, also the node's OSCORE Sender ID
    oscore: bool = False  # config.json has the `oscore` section

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def qr_text(self) -> str:
        loc = "" if self.lat is None or self.lon is None else f"&lat={self.lat}&lon={self.lon}"
        return f"machi:{self.device}?type={self.type}{loc}"


def board_kind(platform: str) -> str:
    return "esp32" if platform.startswith("esp32") else "unix"


def new_device_id(node_type: str) -> str:
    return f"{node_type}-{secrets.token_hex(3)}"


def oscore_section(old: dict[str, Any] | None, *, key: bytes, short_id: int | None,
                   registered: bool, transport: str) -> dict[str, Any] | None:
    """The node's `oscore` config section (docs/security.md §2.9), or None for none.

    Registered now: the key just issued and the cloud's short id. Not registered (no
    `--cloud`): the board's old section is kept only while it still holds the same key; a
    LoRa node never gets one (its frames carry their own MIC)."""
    if transport == "lora" or (old or {}).get("transport") == "lora":
        return None
    if registered:
        return None if short_id is None else {"key": key.hex(), "short_id": short_id}
    prev = (old or {}).get("oscore")
    if isinstance(prev, dict) and prev.get("key") == key.hex():
        return dict(prev)
    return None


def node_config(opts: ProvisionOptions, *, device_id: str, node_type: str, cwd: str,
                old: dict[str, Any] | None, lat: float | None, lon: float | None,
                kind: str, oscore: dict[str, Any] | None = None) -> dict[str, Any]:
    """The board's config.json: the old one updated with what this run says."""
    cfg: dict[str, Any] = dict(old or {})
    cfg.pop("oscore", None)
    if oscore is not None:
        cfg["oscore"] = oscore
    root = cwd.rstrip("/")
    gw = opts.gateway_addr
    if gw is None and not (old and "gateway" in old):
        raise ValueError("--gateway-addr HOST:PORT is needed (the gateway's CoAP address)")
    cfg.update({
        "device_id": device_id,
        "type": node_type,
        "gateway": {"host": gw[0], "port": gw[1]} if gw else old["gateway"],  # type: ignore[index]
        "interval_s": float(opts.interval_s),
        "state_dir": f"{root}/state",
    })
    app = dict(cfg.get("app") or {})
    if node_type == "light" and lat is not None and lon is not None:
        app.update({"lat": lat, "lon": lon})
    if node_type != "light":
        app.pop("lat", None)
        app.pop("lon", None)
    cfg["app"] = app
    if kind == "esp32" and opts.wifi_ssid:
        board = dict(cfg.get("board") or {})
        board["wifi"] = {"ssid": opts.wifi_ssid, "key": opts.wifi_key or ""}
        cfg["board"] = board
    return cfg


def _modules(manifest: Manifest) -> list[str]:
    mods = []
    for rel in sorted(manifest.files):
        if rel == "main.py" or not rel.endswith(".mpy"):
            continue
        name = rel[: -len(".mpy")]
        mods.append(name[4:] if name.startswith("lib/") else name.replace("/", "."))
    return mods


def selftest(board: Board, manifest: Manifest) -> dict[str, Any]:
    """Import every module of the build on the board, then a CBOR round trip and the
    firmware's own check of config.json."""
    mods = json.dumps(_modules(manifest))
    result: dict[str, Any] = board.exec_json(
        "import sys, gc, json\n"
        "for p in ('lib', ''):\n if p not in sys.path and '/' + p not in sys.path:"
        " sys.path.append(p)\n"
        "bad = {}\n"
        f"mods = json.loads({mods!r})\n"
        "for m in mods:\n"
        " try:\n  __import__(m)\n"
        " except Exception as e:\n  bad[m] = '%s: %s' % (type(e).__name__, e)\n"
        " gc.collect()\n"
        "try:\n import cbor\n v = {1: [1.5, 'x', b'y', None, True], 'k': -70000}\n"
        " cbor_ok = cbor.loads(cbor.dumps(v)) == v\n"
        "except Exception as e:\n cbor_ok = False; bad['cbor-roundtrip'] = repr(e)\n"
        "try:\n import nodeconfig\n c = nodeconfig.load('config.json'); cfg_err = None\n"
        "except Exception as e:\n cfg_err = str(e)\n"
        "gc.collect()\n"
        "print(json.dumps({'modules': len(mods), 'failed': bad, 'cbor': cbor_ok,"
        " 'config_error': cfg_err, 'mem_free': gc.mem_free()}))\n", timeout=120)
    problems = [f"import {m}: {e}" for m, e in result["failed"].items()]
    if not result["cbor"]:
        problems.append("CBOR round trip failed")
    if result["config_error"]:
        problems.append(f"config.json: {result['config_error']}")
    if problems:
        raise SelfTestError("self-test failed on the board:\n  " + "\n  ".join(problems))
    return result


def _file_progress(report: Callable[[str, int, int], None] | None, rel: str,
                   total: int) -> Callable[[int], None] | None:
    if report is None:
        return None

    def progress(done: int) -> None:
        report(rel, done, total)

    return progress


def provision(opts: ProvisionOptions, *, step: Callable[[str], None] = lambda s: None,
              file_progress: Callable[[str, int, int], None] | None = None) -> ProvisionResult:
    """The whole provisioning (see the module docstring). Raises BoardError, BuildError,
    CloudError, SelfTestError or ValueError (bad options) with a message for the technician."""
    started = time.monotonic()
    if opts.type is not None and opts.type not in TYPES:
        raise ValueError(f"--type must be one of {', '.join(TYPES)}, not {opts.type!r}")
    if opts.device_id is not None and not DEVICE_ID.fullmatch(opts.device_id):
        raise ValueError(f"--id {opts.device_id!r}: lowercase letters, digits and '-', "
                         "at most 32, not starting with '-'")
    step(f"connecting to the board on {opts.port}")
    with contextlib.ExitStack() as stack:
        board = stack.enter_context(Board(opts.port, timeout=opts.connect_timeout_s))
        info = board.info()
        kind = board_kind(str(info["platform"]))
        old_cfg = info.get("config") if isinstance(info.get("config"), dict) else None
        raw_ident = board.read_file("identity.json")
        try:
            old_ident: dict[str, Any] = json.loads(raw_ident) if raw_ident else {}
        except ValueError:
            old_ident = {}
        node_type = opts.type or (old_cfg or {}).get("type")
        if node_type not in TYPES:
            raise ValueError("--type env|bin|light is needed: this board is not provisioned")
        if opts.gateway_addr is None and not (old_cfg and "gateway" in old_cfg):
            raise ValueError("--gateway-addr HOST:PORT is needed (the gateway's CoAP address)")
        device_id = opts.device_id or (old_cfg or {}).get("device_id") \
            or new_device_id(node_type)
        site = opts.site if opts.site is not None else old_ident.get("site")
        lat = opts.lat if opts.lat is not None else old_ident.get("lat")
        lon = opts.lon if opts.lon is not None else old_ident.get("lon")

        if opts.build_dir is None:
            step(f"building the firmware for {kind}")
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="machi-build-"))
            build_dir = Path(scratch) / kind
            manifest = build(kind, build_dir)
        else:
            build_dir = opts.build_dir
            if not (build_dir / "manifest.json").exists():
                raise BuildError(f"{build_dir}: no manifest.json: run `machi build` first")
            manifest = Manifest.load(build_dir / "manifest.json")
            damaged = verify(build_dir)
            if damaged:
                raise BuildError(f"{build_dir}: files differ from the manifest: "
                                 f"{', '.join(damaged)}: run `machi build` again")
        if manifest.board != kind:
            raise BuildError(f"the build in {build_dir} is for {manifest.board} but the board "
                             f"is {kind}: `machi build --board {kind}`")

        registered, created, short_id = False, None, None
        key = bytes.fromhex(old_ident["key"]) if old_ident.get("key") and \
            old_ident.get("device") == device_id else secrets.token_bytes(16)
        if opts.cloud:
            step(f"registering {device_id} with {opts.cloud}")
            body: dict[str, Any] = {"type": node_type, "gateway": opts.gateway_id,
                                    "transport": opts.transport,
                                    "interval_s": max(1, round(opts.interval_s))}
            if site is not None:
                body["site"] = site
            if lat is not None and lon is not None:
                body.update({"lat": lat, "lon": lon})
            with CloudClient(opts.cloud, opts.admin_token) as cloud:
                reg = cloud.register(device_id, body)
            registered, created, key, short_id = True, reg.created, reg.key, reg.short_id
            if short_id is None and opts.transport != "lora":
                step(f"[yellow]the cloud gave {device_id} no short id: no OSCORE section[/]")

        step("comparing files on the board")
        on_board = board.hashes(manifest.files)
        result = ProvisionResult(device=device_id, type=node_type, site=site, lat=lat, lon=lon,
                                 gateway=opts.gateway_id, board=str(info["platform"]),
                                 firmware=manifest.version, updated=old_cfg is not None,
                                 registered=registered, created=created)
        for rel, entry in sorted(manifest.files.items()):
            if on_board.get(rel) == entry["sha256"]:
                result.unchanged += 1
                continue
            data = (build_dir / rel).read_bytes()
            board.write_file(rel, data, progress=_file_progress(file_progress, rel, len(data)))
            result.copied.append(rel)
        for d in FIRMWARE_DIRS:
            for name in board.listdir(d):
                rel = f"{d}/{name}"
                if rel.endswith((".py", ".mpy")) and rel not in manifest.files:
                    board.remove(rel)
                    result.removed.append(rel)
        board.write_file("manifest.json", json.dumps(manifest.to_json()).encode())

        step("writing config.json and identity.json")
        osc = oscore_section(old_cfg, key=key, short_id=short_id, registered=registered,
                             transport=opts.transport)
        cfg = node_config(opts, device_id=device_id, node_type=node_type,
                          cwd=str(info["cwd"]), old=old_cfg, lat=lat, lon=lon, kind=kind,
                          oscore=osc)
        board.write_file("config.json", json.dumps(cfg).encode())
        result.oscore = osc is not None
        result.short_id = osc["short_id"] if osc is not None else short_id
        if osc is not None:
            step(f"OSCORE on: short id {osc['short_id']}, key written to the board only")
        ident = {"device": device_id, "type": node_type, "key": key.hex(), "site": site,
                 "lat": lat, "lon": lon, "gateway": opts.gateway_id,
                 "firmware": manifest.version, "provisioned": int(time.time())}
        board.write_file("identity.json", json.dumps(ident).encode())

        step("self-test on the board")
        result.selftest = selftest(board, manifest)
    result.took_s = round(time.monotonic() - started, 2)
    return result


__all__ = ["BoardError", "ProvisionOptions", "ProvisionResult", "SelfTestError",
           "node_config", "oscore_section", "provision", "selftest"]
