"""`GET /v1/audit` and `GET /v1/audit/verify` (admin): read and check the hash chain."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from .audit import verify_entries
from .auth import Principal, require
from .settings import Role
from .storage import Storage
from .storage.records import AuditEntry
from .wire import respond

router = APIRouter(tags=["audit"])
Admin = Annotated[Principal, Depends(require(Role.admin))]


def entry_json(e: AuditEntry) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "time": e.time,
        "actor": e.actor,
        "action": e.action,
        "subject": e.subject,
        "details": dict(e.details),
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    }


@router.get("/v1/audit", summary="Audit entries in seq order, page by page (admin)")
async def get_audit(
    request: Request,
    _: Admin,
    after: Annotated[int, Query(ge=0, le=2**62, description="last seq of the previous page")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    storage: Storage = request.app.state.storage
    entries = await storage.audit_log(after=after, limit=limit)
    nxt = entries[-1].seq if len(entries) == limit else None
    return respond(request, {"entries": [entry_json(e) for e in entries], "next": nxt})


@router.get("/v1/audit/verify", summary="Check the whole hash chain (admin)")
async def get_audit_verify(request: Request, _: Admin) -> Response:
    storage: Storage = request.app.state.storage
    entries: list[AuditEntry] = []
    while True:
        page = await storage.audit_log(after=entries[-1].seq if entries else 0, limit=10_000)
        entries += page
        if len(page) < 10_000:
            break
    problems = verify_entries(entries)
    head = {"seq": entries[-1].seq, "hash": entries[-1].hash} if entries else None
    return respond(
        request, {"ok": not problems, "problems": problems, "entries": len(entries), "head": head}
    )
