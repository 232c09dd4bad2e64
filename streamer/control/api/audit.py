"""The audit stream, newest first, filtered to what the caller administers or can see."""

from __future__ import annotations

from pydantic import BaseModel, Field

from streamer.control import auth
from streamer.control.models import AuditEntry

from .core import API, Ctx


class AuditQuery(BaseModel):
    limit: int = Field(100, ge=1, le=1000)
    user: str | None = Field(None, max_length=64)
    action: str | None = Field(None, max_length=64)


class AuditList(BaseModel):
    entries: list[AuditEntry]


@API.route("GET", "/api/v1/audit", summary="Who did what, when, where (newest first)",
           tag="audit", query=AuditQuery, response=AuditList)
async def audit_log(ctx: Ctx) -> AuditList:
    q: AuditQuery = ctx.query
    me = ctx.me
    root_admin = any(g.role == "admin" and "." not in g.zone for g in me.grants)
    out: list[AuditEntry] = []
    before: str | None = "+"
    while before is not None and len(out) < q.limit:
        page, before = await ctx.services.state.audit_page(before)
        for e in page:
            if q.user and e.user != q.user or q.action and e.action != q.action:
                continue
            if (any(auth.allowed(me, auth.VIEW, z) for z in e.zones) if e.zones
                    else root_admin or e.user == me.name):
                out.append(e)
    return AuditList(entries=out[: q.limit])
