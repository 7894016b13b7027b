"""Who is calling: bearer tokens of people (viewer, operator, admin) and of gateways.

People's tokens (`Settings.api_tokens`) carry a role; each role may do everything the roles
below it may. Gateway tokens (`Settings.gateway_tokens`) act only for their own gateway
(ingest, command fetch and state reports, registry sync). Tokens are compared as SHA-256
digests with `hmac.compare_digest` against every configured digest.

Routes declare what they need with FastAPI dependencies: `Depends(require(Role.operator))`,
`Depends(gateway_only)`, `Depends(reader)` (open unless `open_reads` is false).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from .errors import Forbidden, Unauthorized
from .settings import Role, Settings


@dataclass(frozen=True)
class Principal:
    """The caller: a person with a role, or a gateway (`role` None)."""

    name: str
    role: Role | None = None

    @property
    def is_gateway(self) -> bool:
        return self.role is None

    @property
    def actor(self) -> str:
        """How the audit log names the caller: `operator:bob`, `gateway:gw-01`."""
        return f"gateway:{self.name}" if self.role is None else f"{self.role.name}:{self.name}"


def bearer_token(request: Request) -> str | None:
    """The bearer token of the request, None without an Authorization header."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def identify(request: Request) -> Principal:
    """The caller, or 401 when there is no token or an unknown one."""
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("no Authorization header: send 'Authorization: Bearer <token>'")
    settings: Settings = request.app.state.settings
    person = settings.api_tokens.lookup(token)
    gateway = settings.gateway_tokens.gateway_for(token)
    if person is not None:
        return Principal(person[0], person[1])
    if gateway is not None:
        return Principal(gateway)
    raise Unauthorized(
        "unknown token: check it against the cloud's --api-token / MACHI_CLOUD_API_TOKENS "
        "(people) or --gateway-token / MACHI_CLOUD_GATEWAY_TOKENS (gateways)"
    )


def require(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency admitting people whose role is `role` or higher."""

    async def dependency(request: Request) -> Principal:
        who = identify(request)
        if who.role is None or who.role < role:
            held = "a gateway token" if who.role is None else f"a {who.role.name} token"
            raise Forbidden(
                f"this needs a {role.name} (or higher) token; {who.name!r} holds {held}"
            )
        return who

    return dependency


async def reader(request: Request) -> Principal | None:
    """Reading endpoints: open by default; with `open_reads = false` a viewer token or more."""
    settings: Settings = request.app.state.settings
    if settings.open_reads:
        return None
    return await require(Role.viewer)(request)


async def gateway_only(request: Request) -> Principal:
    """A gateway's own endpoints: its token, and the `{gw}` in the path must be its id."""
    who = identify(request)
    if not who.is_gateway:
        raise Forbidden(
            f"{who.name!r} holds a {who.role.name if who.role else ''} token; "
            "this endpoint is for gateways: use the gateway's token"
        )
    gw = request.path_params.get("gw")
    if gw is not None and gw != who.name:
        raise Forbidden(
            f"this token belongs to gateway {who.name!r}, not {gw!r}: each gateway uses its own"
        )
    return who
