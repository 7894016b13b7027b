"""Device registry and provisioning (docs/protocol.md §6): admins declare devices and issue
keys; each gateway syncs the devices it serves, keys included.

A key is shown once, in the answer of `POST /v1/devices/{id}/keys`, and replaces the old one
(rotation; the old key stops working once the gateway has synced). `DELETE` of the key
revokes it without a replacement. Device keys are symmetric (OSCORE master secret, LoRa MIC
key), so the cloud must store them to hand them to the gateway; they are never logged and
the audit log names them only by `key_id`. Answers carrying keys are `Cache-Control:
no-store`.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from .audit import key_id
from .auth import Principal, gateway_only, reader, require
from .batch import DEVICE_ID
from .errors import InvalidRequest, NotFound, NotSupported
from .settings import GATEWAY_ID, Role
from .status import device_view
from .storage import Storage
from .storage.records import DeviceRegistration, RegisteredDevice
from .wire import respond

router = APIRouter(tags=["registry"])
DeviceId = Annotated[str, Path(pattern=DEVICE_ID.pattern, description="device id")]
GatewayId = Annotated[str, Path(pattern=GATEWAY_ID.pattern, description="gateway id")]
NO_STORE = {"Cache-Control": "no-store"}


class DeviceIn(BaseModel):
    """A registration: what the device is, which gateway serves it, where it stands."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["env", "bin", "light"]
    gateway: str = Field(pattern=GATEWAY_ID.pattern)
    site: str | None = Field(None, max_length=128)
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    transport: Literal["coap", "lora", "nbiot"] = "coap"
    interval_s: int | None = Field(None, ge=1, le=86400, description="sampling interval")
    personal: bool = Field(False, description="never publish this device's data as open data")


def registration_json(reg: RegisteredDevice) -> dict[str, Any]:
    return {
        "device": reg.device,
        **reg.fields(),
        "short_id": reg.short_id,
        "has_key": reg.key is not None,
        "key_id": key_id(reg.key),
        "revoked": reg.revoked,
        "created": reg.created,
        "updated": reg.updated,
    }


@router.put(
    "/v1/devices/{device}",
    summary="Register a device or update its registration (admin)",
    status_code=201,
    responses={200: {"description": "updated"}, 201: {"description": "created"}},
)
async def put_device(
    request: Request,
    device: DeviceId,
    body: DeviceIn,
    who: Annotated[Principal, Depends(require(Role.admin))],
) -> Response:
    storage: Storage = request.app.state.storage
    try:
        reg = DeviceRegistration(device=device, **body.model_dump())
    except ValueError as exc:
        raise InvalidRequest(f"device {device}: {exc}") from exc
    stored, created = await storage.put_device(reg, actor=who.actor, now=time.time())
    return respond(request, registration_json(stored), status=201 if created else 200)


@router.post(
    "/v1/devices/{device}/keys",
    summary="Issue a new 16-byte device key, shown once; it replaces the old one (admin)",
    status_code=201,
)
async def issue_key(
    request: Request, device: DeviceId, who: Annotated[Principal, Depends(require(Role.admin))]
) -> Response:
    storage: Storage = request.app.state.storage
    key = secrets.token_bytes(16)
    await storage.set_device_key(device, key, actor=who.actor, now=time.time())
    answer = {"device": device, "key": key.hex(), "key_id": key_id(key)}
    return respond(request, answer, status=201, headers=NO_STORE)


@router.delete(
    "/v1/devices/{device}/keys", summary="Revoke the device's key without a new one (admin)"
)
async def revoke_key(
    request: Request, device: DeviceId, who: Annotated[Principal, Depends(require(Role.admin))]
) -> Response:
    storage: Storage = request.app.state.storage
    reg = await storage.set_device_key(device, None, actor=who.actor, now=time.time())
    return respond(request, registration_json(reg))


@router.get(
    "/v1/gateways/{gw}/devices",
    summary="The devices a gateway serves, with keys (that gateway's token)",
)
async def gateway_devices(
    request: Request, gw: GatewayId, who: Annotated[Principal, Depends(gateway_only)]
) -> Response:
    storage: Storage = request.app.state.storage
    devices = await storage.registry(gateway=who.name)
    answer = {
        "devices": [
            {
                "id": d.device,
                "type": d.type,
                "short_id": d.short_id,
                "key": None if d.key is None or d.revoked else d.key.hex(),
                "revoked": d.revoked,
                "lat": d.lat,
                "lon": d.lon,
                "transport": d.transport,
            }
            for d in devices
        ]
    }
    return respond(request, answer, headers=NO_STORE)


@router.get("/v1/devices/{device}", summary="One device: registration, status, latest values")
async def get_device(
    request: Request, device: DeviceId, _: Annotated[Principal | None, Depends(reader)]
) -> Response:
    storage: Storage = request.app.state.storage
    try:
        regs = await storage.registry(device=device)
    except NotSupported:
        regs = []
    summaries = [s for s in await storage.devices() if s.device == device]
    if not regs and not summaries:
        raise NotFound(
            f"device {device!r} is neither registered nor has it sent readings; "
            "GET /v1/devices lists the known ones"
        )
    view = device_view(
        device, regs[0] if regs else None, summaries[0] if summaries else None, time.time()
    )
    return respond(request, view)
