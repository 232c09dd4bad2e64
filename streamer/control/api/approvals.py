"""Approvals: bulletins held in zones that require approval, released or rejected by an
approver of those zones. Emergency never waits here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from streamer.control import auth
from streamer.control.models import BroadcastState
from streamer.control.schemas import Body, BroadcastOut

from .broadcasts import _broadcast
from .core import API, Conflict, Ctx


class Decision(Body):
    decision: Literal["approve", "reject"]
    note: str = Field("", max_length=500)


class PendingList(BaseModel):
    broadcasts: list[BroadcastOut]


@API.route("GET", "/api/v1/approvals", summary="What waits for your approval", tag="approvals",
           response=PendingList)
async def list_approvals(ctx: Ctx) -> PendingList:
    plane = ctx.services
    recs = await plane.state.recent_broadcasts(1000)
    return PendingList(broadcasts=[
        plane.broadcasts.out(r) for r in recs if r.state == BroadcastState.PENDING_APPROVAL
        and all(auth.allowed(ctx.me, auth.APPROVE, z) for z in r.zones)])


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
    rec = await (b.approve if body.decision == "approve" else b.reject)(rec, ctx.me.name)
    await ctx.audit(body.decision, str(rec.id), rec.zones, note=body.note)
    return b.out(rec)
