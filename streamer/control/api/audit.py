"""The audit stream, newest first, filtered to what the caller administers or can see."""

from __future__ import annotations

from pydantic import BaseModel, Field

from streamer.control import auth
from streamer.control.models import AuditEntry, ZoneId, covers

from .core import API, Ctx


class AuditQuery(BaseModel):
    limit: int = Field(100, ge=1, le=1000)
    user: str | None = Field(None, max_length=64)
    action: str | None = Field(None, max_length=64)
    zone: ZoneId | None = Field(None, description="entries touching this zone or below it")
    outcome: str | None = Field(None, max_length=16, description="ok, denied, skipped, …")
    # up to 19 digits each: always below 2**64, so Redis never refuses the id
    before: str | None = Field(None, pattern=r"^[0-9]{1,19}-[0-9]{1,19}$",
                               description="the `next` of the previous page")


class AuditList(BaseModel):
    entries: list[AuditEntry]
    next: str | None = Field(None, description="pass as `before` for older entries; absent "
                             "at the oldest")


def _matches(q: AuditQuery, e: AuditEntry, zones: list[str]) -> bool:
    """``zones``: the entry's, then and now (``Plane.zones_then_and_now``)."""
    return ((not q.user or e.user == q.user) and (not q.action or e.action == q.action)
            and (not q.outcome or e.outcome == q.outcome)
            and (not q.zone or any(covers(q.zone, z) for z in zones)))


@API.route("GET", "/api/v1/audit", summary="Who did what, when, where (newest first)",
           tag="audit", query=AuditQuery, response=AuditList)
async def audit_log(ctx: Ctx) -> AuditList:
    q: AuditQuery = ctx.query
    me = ctx.me
    root_admin = any(g.role == "admin" and "." not in g.zone for g in me.grants)
    out: list[AuditEntry] = []
    if q.before and set(q.before) <= {"0", "-"}:
        return AuditList(entries=[])  # nothing is older than 0-0 (and Redis refuses "(0-0")
    before: str | None = "(" + q.before if q.before else "+"
    while before is not None and len(out) <= q.limit:
        page, before = await ctx.services.state.audit_page(before)
        for e in page:
            zones = ctx.services.zones_then_and_now(e.zones)
            if not _matches(q, e, zones):
                continue
            if (any(auth.allowed(me, auth.VIEW, z) for z in zones) if e.zones
                    else root_admin or e.user == me.name):
                out.append(e)
    more = len(out) > q.limit
    return AuditList(entries=out[: q.limit], next=out[q.limit - 1].id if more else None)
