"""`machi doctor`: check a node, the gateway and the cloud from the laptop; say what to fix.

Each check gives ok / warn / fail, what was seen, and (when not ok) what to do. Nothing is
changed anywhere: doctor only reads (the board through a raw-REPL session without soft reset,
so a running node is interrupted only for the seconds the check takes... then reset it).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from .boardlink import Board, BoardError
from .cloudapi import CloudClient, CloudError

MAX_SKEW_S = 5.0
BACKLOG_WARN = 1000


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def _get_json(url: str, timeout: float = 5.0) -> tuple[dict[str, Any], float | None]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        data: dict[str, Any] = json.load(resp)
        date = resp.headers.get("Date")
    server = None
    if date:
        try:
            server = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            server = None
    return data, server


def _skew_check(name: str, server: float | None, before: float, after: float) -> Check | None:
    if server is None:
        return None
    # the Date header has 1 s resolution: allow for it and the round trip
    skew = server + 0.5 - (before + after) / 2
    if abs(skew) > MAX_SKEW_S:
        return Check(f"{name} clock", "warn", f"{skew:+.1f} s from this laptop",
                     "set the clock right (NTP: `timedatectl set-ntp true`) on whichever is "
                     "wrong; nodes learn their time from the gateway")
    return Check(f"{name} clock", "ok", f"{skew:+.1f} s from this laptop")


def check_board(port: str) -> tuple[list[Check], str | None]:
    try:
        with Board(port, soft_reset=False) as board:
            info = board.info()
            raw = board.read_file("identity.json")
    except BoardError as exc:
        return [Check("board", "fail", str(exc).split(":")[0], str(exc))], None
    out = [Check("board", "ok", f"{info['platform']} answers on {port}, "
                 f"{info['mem_free']} bytes of RAM free")]
    free = int(info.get("free", -1))
    if 0 <= free < 32 * 1024:
        out.append(Check("board flash", "warn", f"{free} bytes free",
                         "erase old state/ or reflash (machi flash) if files fail to copy"))
    cfg = info.get("config")
    if not isinstance(cfg, dict):
        out.append(Check("board config", "fail", "no valid config.json",
                         "machi provision --port ... --type ... --site ... --lat ... --lon ..."))
        return out, None
    ident: dict[str, Any] = {}
    if raw:
        try:
            ident = json.loads(raw)
        except ValueError:
            ident = {}
    gw = cfg.get("gateway", {})
    out.append(Check("board config", "ok",
                     f"{cfg.get('device_id')} ({cfg.get('type')}), gateway "
                     f"{gw.get('host')}:{gw.get('port')}, firmware {ident.get('firmware', '?')}"))
    if not ident.get("key"):
        out.append(Check("board identity", "warn", "no identity.json with a key",
                         "re-run machi provision with --cloud to register the board"))
    return out, str(cfg.get("device_id"))


def check_gateway(url: str) -> list[Check]:
    before = time.time()
    try:
        data, server = _get_json(url.rstrip("/") + "/healthz")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return [Check("gateway", "fail", f"{url}: {exc}",
                      "is machi-gateway running (systemctl status machi-gateway)? is the "
                      "address right and the laptop on the gateway's network?")]
    after = time.time()
    out = [Check("gateway", "ok", f"{data.get('gateway')} up, {data.get('devices')} devices, "
                 f"{data.get('readings_in')} readings in")]
    uplink = data.get("uplink", {})
    backlog = int(uplink.get("backlog", data.get("queue_depth", 0)) or 0)
    lag = float(uplink.get("lag_s", 0) or 0)
    if uplink.get("last_error") and backlog:
        out.append(Check("gateway uplink", "fail",
                         f"{backlog} readings queued, {lag:.0f} s old; last error: "
                         f"{uplink['last_error']}",
                         "the gateway cannot reach the cloud: check its internet link and "
                         "[uplink] url/token in gateway.toml; readings wait safely meanwhile"))
    elif backlog > BACKLOG_WARN:
        out.append(Check("gateway uplink", "warn", f"{backlog} readings queued",
                         "uplink slower than intake: check the gateway's bandwidth"))
    else:
        out.append(Check("gateway uplink", "ok", f"backlog {backlog}, lag {lag:.1f} s"))
    skew = _skew_check("gateway", server, before, after)
    if skew:
        out.append(skew)
    return out


def check_cloud(url: str, token: str | None, device: str | None) -> list[Check]:
    out: list[Check] = []
    with CloudClient(url, token) as cloud:
        before = time.time()
        try:
            health, server = cloud.health()
        except CloudError as exc:
            return [Check("cloud", "fail", str(exc),
                          "check --cloud, the laptop's internet, and the cloud's status")]
        after = time.time()
        if health.get("status") != "ok":
            out.append(Check("cloud", "fail", f"database: {health.get('db')}",
                             "the cloud's database is down: tell the operator"))
        else:
            out.append(Check("cloud", "ok", f"{health.get('devices')} devices, "
                             f"{health.get('readings')} readings"))
        skew = _skew_check("cloud", server, before, after)
        if skew:
            out.append(skew)
        if device:
            try:
                view = cloud.device(device)
            except CloudError as exc:
                out.append(Check("device in cloud", "fail", str(exc)))
                return out
            out.append(device_check(device, view, time.time()))
    return out


def device_check(device: str, view: dict[str, Any] | None, now: float) -> Check:
    if view is None:
        return Check("device in cloud", "fail", f"{device} unknown to the cloud",
                     "machi provision ... --cloud URL --admin-token T registers it")
    if view.get("registered") is False:
        return Check("device in cloud", "warn", f"{device} sends readings but is not "
                     "registered", "machi provision ... --cloud registers it")
    last = view.get("last_seen")
    if not last:
        return Check("device in cloud", "warn", f"{device} registered, no reading yet",
                     "power the node and watch `machi monitor --port`: `W noanswer` means "
                     "it cannot reach the gateway")
    age = now - float(last)
    interval = float(view.get("interval_s") or 60)
    if age > 3 * interval + 60:
        return Check("device in cloud", "warn", f"{device} last seen {age:.0f} s ago",
                     "the node stopped reporting: check its power and `machi monitor`")
    return Check("device in cloud", "ok", f"{device} last seen {age:.0f} s ago, "
                 f"{view.get('readings')} readings")


def doctor(port: str | None, gateway_health: str | None, cloud: str | None,
           token: str | None = None, device: str | None = None) -> list[Check]:
    checks: list[Check] = []
    if port:
        board_checks, dev = check_board(port)
        checks += board_checks
        device = device or dev
    if gateway_health:
        checks += check_gateway(gateway_health)
    if cloud:
        checks += check_cloud(cloud, token, device)
    return checks
