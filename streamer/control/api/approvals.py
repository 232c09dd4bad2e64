"""Approvals: bulletins held in zones that require approval, released or rejected by an
approver of those zones. Emergency never waits here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from streamer.control import auth
from streamer.control.models import BroadcastState
from streamer.control.schedules import Schedule
from streamer.control.schemas import Body, BroadcastOut

from .broadcasts import _broadcast
from .core import API, Conflict, Ctx
from .schedules import ScheduleOut, _out, _schedule, _store


class Decision(Body):
    decision: Literal["approve", "reject"]
    note: str = Field("", max_length=500)


class PendingList(BaseModel):
    broadcasts: list[BroadcastOut]
    schedules: list[Schedule]


@API.route("GET", "/api/v1/approvals", summary="What waits for your approval", tag="approvals",
           response=PendingList)
async def list_approvals(ctx: Ctx) -> PendingList:
    plane = ctx.services
    recs = await plane.state.recent_broadcasts(1000)
    schedules = await plane.state.schedules.all()
    return PendingList(broadcasts=[
        plane.broadcasts.out(r) for r in recs if r.state == BroadcastState.PENDING_APPROVAL
        and all(auth.allowed(ctx.me, auth.APPROVE, z) for z in r.zones)], schedules=[
        s for s in schedules if not s.approved
        and all(auth.allowed(ctx.me, auth.APPROVE, z) for z in s.zones)])


@API.route("POST", "/api/v1/approvals/broadcasts/{id}", summary="Approve or reject a broadcast",
           tag="approvals", body=Decision, response=BroadcastOut, path_types={"id": int})
async def decide_broadcast(ctx: Ctx) -> BroadcastOut:
    body: Decision = ctx.body
    rec = await _broadcast(ctx)
    ctx.require(auth.APPROVE, rec.zones, "approve broadcasts")
    if rec.state != BroadcastState.PENDING_APPROVAL:
        raise Conflict(f"broadcast {rec.id} is {rec.state.value}, not waiting for approval",
                       "id")
    b = ctx.services.broadcasts
    if body.decision == "approve":
        rec = await b.approve(rec, ctx.me.name, requested_at=ctx.received)
    else:
        rec = await b.reject(rec, ctx.me.name)
    await ctx.audit(body.decision, str(rec.id), rec.zones, note=body.note)
    return b.out(rec)


@API.route("POST", "/api/v1/approvals/schedules/{id}", summary="Approve or reject a schedule",
           tag="approvals", body=Decision, response=ScheduleOut)
async def decide_schedule(ctx: Ctx) -> ScheduleOut:
    body: Decision = ctx.body
    s = await _schedule(ctx)
    ctx.require(auth.APPROVE, list(s.zones), "approve schedules")
    if s.approved:
        raise Conflict(f"schedule {s.id} is already approved", "id")
    if body.decision == "approve":
        s = s.model_copy(update={"approved": True})
        await _store(ctx, s)
    else:  # a rejected schedule is removed; the audit entry keeps what it was
        await ctx.services.state.delete_schedule(s.id)
    await ctx.audit(body.decision, s.id, list(s.zones), kind="schedule", note=body.note)
    return _out(ctx, s, None)
