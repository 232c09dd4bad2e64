"""Broadcasts, emergency and "stop everything here", and reach (proof of play).

Who may air what: operators air normal, priority and background in their zones; emergency
needs the emergency role. Quiet hours refuse non-emergency broadcasts unless an admin of every
target zone overrides (audited). Zones that require approval hold the broadcast for an
approver; emergency never waits.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from streamer.control import auth
from streamer.control.models import BroadcastRecord, EmergencyPlan
from streamer.control.schemas import (
    BadRequest,
    BroadcastIn,
    BroadcastList,
    BroadcastOut,
    EmergencyIn,
    LiveSource,
    ReachOut,
    ReachSpeaker,
    StopIn,
    StopOut,
)
from streamer.mixer.sources.base import Source

from .core import API, Conflict, Ctx, NotFound


class ListQuery(BaseModel):
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000)


def _check_zones(ctx: Ctx, zones: list[str]) -> list[str]:
    known = ctx.services.zones
    for z in zones:
        if z not in known:
            raise BadRequest("zones", f"unknown zone {z!r}")
    return list(dict.fromkeys(zones))


async def air(ctx: Ctx, zones: list[str], priority: str, body: Any, override: bool = False,
              built: tuple[Source, dict[str, Any]] | None = None, **extra: Any) -> BroadcastOut:
    """The one path from an API request to the mixer, shared by broadcasts, emergencies,
    studio talk-over and CAP alerts. ``body`` has a ``label`` and a ``source``, unless
    ``built`` (a source already built, with its description: a live input, a CAP alert's
    speech) is given; an :class:`EmergencyIn` also carries the emergency's plan."""
    plane = ctx.services
    zones = _check_zones(ctx, zones)
    if priority == "emergency":
        ctx.require(auth.EMERGENCY, zones, "air an emergency")
    else:
        ctx.require(auth.OPERATE, zones, f"air a {priority} broadcast")
    quiet = [] if priority == "emergency" else plane.quiet_now(zones)
    if quiet and not override:
        raise Conflict(f"quiet hours in {', '.join(quiet[:5])} ({plane.quiet_hours(quiet[0])});"
                       " only emergency airs now, or an admin sets override_quiet_hours",
                       "zones")
    if quiet:
        ctx.require(auth.ADMIN, zones, "override quiet hours")
    pending = priority != "emergency" and plane.requires_approval(zones)
    live = built is not None and built[1]["kind"] == "live"
    if pending and live:  # a voice cannot wait for an approver
        ctx.require(auth.APPROVE, zones, "go live where broadcasts need approval")
        pending = False
    plan = None
    if isinstance(body, EmergencyIn):
        plan = EmergencyPlan(chime=body.chime, volume=body.volume, repeat_s=body.repeat_s,
                             expires=None if body.expires_s is None else
                             time.time() + body.expires_s)
        if isinstance(body.source, LiveSource) and built is None:
            built = plane.inputs.source(body.source)
    source, desc = built if built is not None else (body.source, None)
    rec = await plane.broadcasts.create(zones, priority, source, label=body.label,
                                        user=ctx.me.name, pending=pending,
                                        override_quiet_hours=bool(quiet), emergency=plan,
                                        desc=desc, requested_at=ctx.received)
    await ctx.audit("broadcast", str(rec.id), zones, priority=priority, source=rec.source,
                    pending_approval=pending, override_quiet_hours=bool(quiet),
                    **({"emergency": plan.model_dump()} if plan else {}), **extra)
    return plane.broadcasts.out(rec)


async def _broadcast(ctx: Ctx, emergency: bool = False) -> BroadcastRecord:
    bid = int(ctx.path("id"))
    rec = await ctx.services.broadcasts.get(bid)
    if rec is None or not any(auth.visible(ctx.me, z)
                              for z in ctx.services.zones_then_and_now(rec.zones)) or (
            emergency and rec.priority != "emergency"):
        raise NotFound(f"{'emergency' if emergency else 'broadcast'} {bid}")
    return rec


@API.route("POST", "/api/v1/broadcasts", summary="Air a broadcast in zones", tag="broadcasts",
           body=BroadcastIn, response=BroadcastOut, status=201)
async def create_broadcast(ctx: Ctx) -> BroadcastOut:
    b: BroadcastIn = ctx.body
    return await air(ctx, b.zones, b.priority, b, b.override_quiet_hours)


@API.route("GET", "/api/v1/broadcasts", summary="Recent broadcasts in zones you can see",
           tag="broadcasts", query=ListQuery, response=BroadcastList)
async def list_broadcasts(ctx: Ctx) -> BroadcastList:
    q: ListQuery = ctx.query
    plane = ctx.services
    recs = await plane.state.recent_broadcasts(q.limit, q.offset)
    return BroadcastList(broadcasts=[
        plane.broadcasts.out(plane.broadcasts.live.get(r.id, r)) for r in recs
        if any(auth.visible(ctx.me, z) for z in plane.zones_then_and_now(r.zones))])


@API.route("GET", "/api/v1/broadcasts/{id}", summary="One broadcast", tag="broadcasts",
           response=BroadcastOut, path_types={"id": int})
async def get_broadcast(ctx: Ctx) -> BroadcastOut:
    return ctx.services.broadcasts.out(await _broadcast(ctx))


async def _stop(ctx: Ctx, rec: BroadcastRecord) -> BroadcastOut:
    roles = auth.EMERGENCY if rec.priority == "emergency" else auth.OPERATE
    ctx.require(roles, rec.zones, "stop this broadcast")
    was = rec.state
    rec = await ctx.services.broadcasts.stop(rec)
    if was != rec.state:
        await ctx.audit("stop_broadcast", str(rec.id), rec.zones)
    return ctx.services.broadcasts.out(rec)


@API.route("DELETE", "/api/v1/broadcasts/{id}", summary="Stop a broadcast everywhere",
           tag="broadcasts", response=BroadcastOut, path_types={"id": int})
async def stop_broadcast(ctx: Ctx) -> BroadcastOut:
    return await _stop(ctx, await _broadcast(ctx))


@API.route("POST", "/api/v1/emergency", summary="Air an emergency: preempts everything in the "
           "zones at once, ignores quiet hours and approval", tag="emergency", body=EmergencyIn,
           response=BroadcastOut, status=201)
async def create_emergency(ctx: Ctx) -> BroadcastOut:
    b: EmergencyIn = ctx.body
    return await air(ctx, b.zones, "emergency", b)


@API.route("DELETE", "/api/v1/emergency/{id}", summary="Cancel an emergency", tag="emergency",
           response=BroadcastOut, path_types={"id": int})
async def cancel_emergency(ctx: Ctx) -> BroadcastOut:
    return await _stop(ctx, await _broadcast(ctx, emergency=True))


@API.route("POST", "/api/v1/stop", summary="Stop everything airing in a subtree",
           tag="broadcasts", body=StopIn, response=StopOut)
async def stop_all(ctx: Ctx) -> StopOut:
    b: StopIn = ctx.body
    zones = _check_zones(ctx, b.zones)
    plane = ctx.services
    recs = plane.broadcasts.stoppable(zones, b.priority)
    roles = auth.EMERGENCY if any(r.priority == "emergency" for r in recs) else auth.OPERATE
    ctx.require(roles, zones, "stop broadcasts")
    # Broadcasts that also cover zones outside the caller's subtree are stopped only if the
    # caller may stop them everywhere; otherwise they keep airing elsewhere (refused below).
    for r in recs:
        ctx.require(auth.EMERGENCY if r.priority == "emergency" else auth.OPERATE, r.zones,
                    f"stop broadcast {r.id}, which also airs outside these zones")
    stopped = [(await plane.broadcasts.stop(r)).id for r in recs]
    await ctx.audit("stop_all", "", zones, stopped=stopped)
    return StopOut(stopped=stopped)


@API.route("GET", "/api/v1/broadcasts/{id}/reach", summary="Which speakers confirmed playing "
           "it, which did not, which are offline", tag="broadcasts", response=ReachOut,
           path_types={"id": int})
async def reach(ctx: Ctx) -> ReachOut:
    return await reach_of(ctx.services, await _broadcast(ctx))


async def reach_of(plane: Any, rec: BroadcastRecord) -> ReachOut:
    """Which speakers of ``rec``'s zones confirmed playing it, which did not, which are
    offline."""
    chans = set(plane.broadcasts.channels_of(rec.zones))
    speakers = [s for s in await plane.state.speakers.all() if s.zone in chans]
    played = await plane.state.played(rec.id)
    presence = await plane.state.presence.many([s.id for s in speakers])
    out = ReachOut(broadcast=rec.id, expected=len(speakers), confirmed=[], not_confirmed=[],
                   offline=[], ratio=0.0)
    for s, p in zip(speakers, presence, strict=True):
        p = plane.recorder.view(s.id, p)
        ev = played.get(s.id)
        row = ReachSpeaker(id=s.id, zone=s.zone, **({k: ev.get(k) for k in
                                                     ("start", "end", "level_dbfs",
                                                      "local") if k in ev}
                                                    if ev else {}))
        if ev:
            out.confirmed.append(row)
        elif p.state != "online":  # offline, or not heard from lately
            out.offline.append(row)
        else:
            out.not_confirmed.append(row)
    out.ratio = len(out.confirmed) / len(speakers) if speakers else 0.0
    return out

