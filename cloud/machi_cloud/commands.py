"""Downlink commands (docs/protocol.md §5): operators queue them, gateways fetch them by
long-poll and report how far each got; every step is in the audit log.

States only move forward: queued -> sent -> acknowledged -> executed | failed | expired
(`storage.records.moves_forward`). A report that would move a command backwards or out of
a final state is answered 200 with the command as it stands (`changed: false`), so a
gateway retrying an old report is never stuck. A queued command past its `expires` becomes
expired (actor `system:expiry`) the next time commands are listed or fetched.

Long-poll: the handler waits on an in-process event that `POST /v1/commands` sets. On
PostgreSQL the storage also LISTENs for the NOTIFY every new command sends
(`Storage.watch_commands`), which sets the same event, so a command queued through another
instance on the same database is delivered at once; the database is re-checked every
`LISTENING_RECHECK_S` anyway (a lost LISTEN connection), and every `RECHECK_S` on a backend
that cannot notify.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from .auth import Principal, gateway_only, reader, require
from .batch import DEVICE_ID
from .errors import Forbidden, InvalidRequest, NotFound
from .settings import GATEWAY_ID, Role
from .storage import Storage
from .storage.records import Command, CommandQuery
from .wire import body_doc, read_model, respond

router = APIRouter(tags=["commands"])
MAX_WAIT_S = 30.0
RECHECK_S = 1.0
LISTENING_RECHECK_S = 10.0
DEFAULT_TTL_S = 3600
MAX_TTL_S = 7 * 86400
LIGHT_ONLY = frozenset({"on", "off", "dim", "schedule"})
_MAX_CONFIG_KEYS = 16
CommandId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class CommandIn(BaseModel):
    """What an operator asks a device to do."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field(pattern=DEVICE_ID.pattern)
    name: Literal["on", "off", "dim", "schedule", "interval", "config", "update"]
    args: dict[str, Any] = Field(default_factory=dict)
    ttl_s: int = Field(DEFAULT_TTL_S, ge=1, le=MAX_TTL_S, description="expires after this")


class StateIn(BaseModel):
    """A gateway's report on a command."""

    model_config = ConfigDict(extra="ignore")

    state: Literal["sent", "acknowledged", "executed", "failed", "expired"]
    time: float | None = Field(None, ge=0, le=1e11, description="when, at the gateway")
    detail: str = Field("", max_length=200)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_args(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """`args` if they suit `name` (contract C2), else `InvalidRequest` saying what to send."""
    if name in ("on", "off"):
        if args:
            raise InvalidRequest(f"'{name}' takes no args; send {{}}")
    elif name == "dim":
        level: Any = args.get("level")
        if set(args) != {"level"} or not _is_int(level) or not 0 <= level <= 100:
            raise InvalidRequest('dim needs args {"level": <integer 0..100>}')
    elif name == "interval":
        s: Any = args.get("s")
        if set(args) != {"s"} or not _is_int(s) or not 1 <= s <= 86400:
            raise InvalidRequest('interval needs args {"s": <integer seconds 1..86400>}')
    elif name == "schedule":
        if set(args) != {"mode"} or args.get("mode") not in ("auto", "on", "off"):
            raise InvalidRequest('schedule needs args {"mode": "auto" | "on" | "off"}')
    elif name == "update":
        unknown = set(args) - {"type", "version"}
        version: Any = args.get("version", 1)
        if unknown or args.get("type", "env") not in ("env", "bin", "light") or not (
                _is_int(version) and 1 <= version < 2**31):
            raise InvalidRequest('update takes args {} or {"type": "env" | "bin" | "light", '
                                 '"version": <integer >= 1>} (both optional)')
    elif name == "config":
        if not args or len(args) > _MAX_CONFIG_KEYS:
            raise InvalidRequest(f"config needs 1..{_MAX_CONFIG_KEYS} settings {{key: value}}")
        for key, value in args.items():
            if not DEVICE_ID.match(key.replace("_", "-")):
                raise InvalidRequest(f"config key {key!r}: use lower-case letters, digits, _ -")
            ok = isinstance(value, (str, bool, float)) or (_is_int(value) and abs(value) < 2**31)
            if not ok or (isinstance(value, str) and len(value) > 64):
                raise InvalidRequest(
                    f"config {key}: the value must be a number, a boolean or a text of at "
                    "most 64 characters"
                )
    return args


def command_json(c: Command) -> dict[str, Any]:
    return {
        "id": c.id,
        "device": c.device,
        "gateway": c.gateway,
        "name": c.name,
        "args": dict(c.args),
        "state": c.state,
        "created": c.created,
        "expires": c.expires,
        "updated": c.updated,
        "detail": c.detail,
        "actor": c.actor,
    }


class Wakeups:
    """Per-gateway events that a new command sets, waking that gateway's long-polls."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.closing = False

    def event(self, gateway: str) -> asyncio.Event:
        return self._events.setdefault(gateway, asyncio.Event())

    def notify(self, gateway: str) -> None:
        event = self._events.pop(gateway, None)
        if event is not None:
            event.set()

    def close(self) -> None:
        """The service is stopping: every long-poll answers what it has now, instead of
        holding the stop (uvicorn waits for open requests, up to its graceful timeout, then
        cuts them off with a 500)."""
        self.closing = True
        for event in self._events.values():
            event.set()
        self._events.clear()


def app_wakeups(app: Any) -> Wakeups:
    """The app's `Wakeups` (made on first use)."""
    w: Wakeups | None = getattr(app.state, "wakeups", None)
    if w is None:
        w = app.state.wakeups = Wakeups()
    return w


def wakeups(request: Request) -> Wakeups:
    return app_wakeups(request.app)


@router.post("/v1/commands", summary="Queue a command for a device (operator)", status_code=201)
async def post_command(
    request: Request,
    body: CommandIn,
    who: Annotated[Principal, Depends(require(Role.operator))],
) -> Response:
    storage: Storage = request.app.state.storage
    regs = await storage.registry(device=body.device)
    if not regs:
        raise NotFound(
            f"device {body.device!r} is not registered, so no gateway would deliver the "
            f"command: register it with PUT /v1/devices/{body.device}"
        )
    reg = regs[0]
    if body.name in LIGHT_ONLY and reg.type != "light":
        raise InvalidRequest(
            f"'{body.name}' is for streetlights; {body.device} is a {reg.type} device "
            "(it takes 'interval' and 'config')"
        )
    if body.name == "update" and who.role is not None and who.role < Role.admin:
        # a firmware image changes what the device is: the city's admins decide that
        raise Forbidden("'update' (a firmware update) needs an admin token")
    args = check_args(body.name, body.args)
    now = round(time.time(), 3)
    cmd = Command(
        id=uuid.uuid4().hex,
        device=body.device,
        gateway=reg.gateway,
        name=body.name,
        args=args,
        created=now,
        expires=now + body.ttl_s,
        updated=now,
    )
    stored = await storage.add_command(cmd, actor=who.actor)
    wakeups(request).notify(reg.gateway)
    return respond(request, command_json(stored), status=201)


@router.get("/v1/commands", summary="Commands, newest first (optionally of one device)")
async def list_commands(
    request: Request,
    _: Annotated[Principal | None, Depends(reader)],
    device: Annotated[str | None, Query(pattern=DEVICE_ID.pattern)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    storage: Storage = request.app.state.storage
    await storage.expire_commands(time.time())
    found = await storage.commands(CommandQuery(device=device, limit=limit))
    return respond(request, {"commands": [command_json(c) for c in found]})


@router.get("/v1/commands/{cmd_id}", summary="One command and where it stands")
async def get_command(
    request: Request, cmd_id: CommandId, _: Annotated[Principal | None, Depends(reader)]
) -> Response:
    storage: Storage = request.app.state.storage
    found = await storage.commands(CommandQuery(id=cmd_id, limit=1))
    if not found:
        raise NotFound(f"there is no command {cmd_id!r}; GET /v1/commands lists them")
    return respond(request, command_json(found[0]))


@router.get(
    "/v1/gateways/{gw}/commands",
    summary="Long-poll: the gateway's queued commands, as soon as there are any (gateway)",
)
async def gateway_commands(
    request: Request,
    gw: Annotated[str, Path(pattern=GATEWAY_ID.pattern)],
    who: Annotated[Principal, Depends(gateway_only)],
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait")] = 0,
) -> Response:
    storage: Storage = request.app.state.storage
    await storage.expire_commands(time.time())
    deadline = time.monotonic() + wait
    recheck = RECHECK_S
    w = wakeups(request)
    if wait > 0 and await storage.watch_commands(w.notify):
        recheck = LISTENING_RECHECK_S
    while True:
        event = w.event(who.name)  # before the check: no lost wakeup
        pending = await storage.commands(
            CommandQuery(gateway=who.name, pending_at=time.time(), limit=100)
        )
        remaining = deadline - time.monotonic()
        if pending or remaining <= 0 or w.closing:
            break
        try:
            await asyncio.wait_for(event.wait(), min(recheck, remaining))
        except TimeoutError:
            pass
    answer = {
        "commands": [
            {
                "id": c.id,
                "device": c.device,
                "name": c.name,
                "args": dict(c.args),
                "created": c.created,
                "expires": c.expires,
            }
            for c in pending
        ]
    }
    return respond(request, answer)


@router.post(
    "/v1/commands/{cmd_id}/state",
    summary="A gateway reports how far a command got (forward only, idempotent)",
    openapi_extra=body_doc(StateIn, cbor=True),
)
async def post_state(
    request: Request, cmd_id: CommandId, who: Annotated[Principal, Depends(gateway_only)]
) -> Response:
    storage: Storage = request.app.state.storage
    body = await read_model(request, StateIn)
    found = await storage.commands(CommandQuery(id=cmd_id, limit=1))
    if not found:
        raise NotFound(f"there is no command {cmd_id!r}: report only ids the cloud gave you")
    if found[0].gateway != who.name:
        raise Forbidden(f"command {cmd_id} is for gateway {found[0].gateway!r}, not {who.name!r}")
    detail = body.detail
    if body.time is not None:
        detail = f"{detail} (at {body.time:.3f})".strip()
    cmd, changed = await storage.advance_command(
        cmd_id, body.state, detail=detail, actor=who.actor, now=time.time()
    )
    return respond(request, {**command_json(cmd), "changed": changed})
