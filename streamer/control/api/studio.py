"""The browser studio: a WebRTC microphone (``streamer/live/webrtc.py``) and push-to-talk.

A session is the connected microphone; talking is a broadcast of it. Opening a session needs
the operator role somewhere (the zones are chosen when talking); each press of the talk button
is checked like any broadcast — roles on the zones, quiet hours, approval (a voice cannot wait,
so a zone that needs approval needs an approver at the microphone) — and each release ends it
as ``done``, after which whatever it preempted resumes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from streamer.control import auth
from streamer.control.auth import Forbidden
from streamer.control.live import studio_input
from streamer.control.models import BroadcastState
from streamer.control.schemas import (
    BadRequest,
    Body,
    BroadcastOut,
    EmergencyIn,
    LiveSource,
    Zones,
)
from wire.priority import PriorityName

from .broadcasts import air
from .core import API, ApiError, Conflict, Ctx, NotFound

if TYPE_CHECKING:
    from streamer.live.webrtc import StudioSession, StudioSessions

MAX_SDP = 64 * 1024


class OfferIn(Body):
    sdp: str = Field(min_length=1, max_length=MAX_SDP, description="the browser's SDP offer "
                     "(Opus audio, ICE candidates gathered)")
    type: str = Field("offer", pattern="^offer$")


class SessionOut(BaseModel):
    id: str
    sdp: str = Field("", description="the answer (only when the session is opened)")
    connected: bool = False
    level_dbfs: float = -120.0
    talking: BroadcastOut | None = None


class TalkIn(Body):
    zones: Zones
    priority: PriorityName = "normal"
    label: str = Field("", max_length=200)
    override_quiet_hours: bool = False


def _sessions(ctx: Ctx) -> StudioSessions:
    studio: StudioSessions | None = ctx.services.studio
    if studio is None:
        raise ApiError(503, "the browser studio is not enabled on this streamer")
    return studio


def _session(ctx: Ctx) -> StudioSession:
    sid = ctx.path("id")
    s = _sessions(ctx).get(sid)
    if s is None or s.owner != ctx.me.name:
        raise NotFound(f"studio session {sid}")
    return s


def _talking(ctx: Ctx, sid: str) -> BroadcastOut | None:
    recs = ctx.services.inputs.airing(studio_input(sid))
    return ctx.services.broadcasts.out(recs[0]) if recs else None


def _out(ctx: Ctx, s: StudioSession, sdp: str = "") -> SessionOut:
    return SessionOut(id=s.id, sdp=sdp, connected=s.connected, level_dbfs=s.level_dbfs(),
                      talking=_talking(ctx, s.id))


@API.route("POST", "/api/v1/studio/sessions", summary="Connect a browser microphone (WebRTC "
           "offer in, answer out)", tag="studio", body=OfferIn, response=SessionOut, status=201)
async def open_session(ctx: Ctx) -> SessionOut:
    from streamer.live.webrtc import SdpError, TooManySessions

    studio = _sessions(ctx)
    if not any(g.role in auth.OPERATE | auth.EMERGENCY for g in ctx.me.grants):
        raise Forbidden("the studio needs the operator or emergency role on some zone")
    try:
        s = await studio.open(ctx.body.sdp, ctx.me.name)
    except SdpError as e:
        raise BadRequest(e.field, e.message) from None
    except TooManySessions as e:
        raise Conflict(str(e), "sdp") from None
    ctx.services.inputs.open(studio_input(s.id), s.buffer)
    await ctx.audit("studio_open", s.id, [])
    return _out(ctx, s, s.answer_sdp)


@API.route("GET", "/api/v1/studio/sessions/{id}", summary="A studio session: connected, level, "
           "what it is airing", tag="studio", response=SessionOut)
async def get_session(ctx: Ctx) -> SessionOut:
    return _out(ctx, _session(ctx))


@API.route("DELETE", "/api/v1/studio/sessions/{id}", summary="Disconnect the microphone (ends "
           "any talk)", tag="studio", response=SessionOut)
async def close_session(ctx: Ctx) -> SessionOut:
    s = _session(ctx)
    out = _out(ctx, s)
    await ctx.services.inputs.close(studio_input(s.id))
    await _sessions(ctx).close(s.id)
    await ctx.audit("studio_close", s.id, [])
    return out


@API.route("POST", "/api/v1/studio/sessions/{id}/talk", summary="Push to talk: the microphone "
           "goes on air in the zones", tag="studio", body=TalkIn, response=BroadcastOut,
           status=201)
async def talk(ctx: Ctx) -> BroadcastOut:
    s = _session(ctx)
    if _talking(ctx, s.id) is not None:
        raise Conflict("this microphone is already on air; release first", "id")
    b: TalkIn = ctx.body
    live = ctx.services.inputs.source_of(studio_input(s.id))
    if b.priority == "emergency":
        body = EmergencyIn(zones=b.zones, source=LiveSource(kind="live",
                           input=studio_input(s.id)), label=b.label, chime=False)
        return await air(ctx, b.zones, "emergency", body, built=live)
    return await air(ctx, b.zones, b.priority, b, b.override_quiet_hours, built=live)


@API.route("DELETE", "/api/v1/studio/sessions/{id}/talk", summary="Release: the talk ends and "
           "what it preempted resumes", tag="studio", response=BroadcastOut)
async def release(ctx: Ctx) -> BroadcastOut:
    s = _session(ctx)
    plane = ctx.services
    recs = plane.inputs.airing(studio_input(s.id))
    if not recs:
        raise Conflict("this microphone is not on air", "id")
    rec = recs[0]
    await plane.broadcasts.stop(rec, BroadcastState.DONE)
    await ctx.audit("studio_release", str(rec.id), rec.zones)
    return plane.broadcasts.out(rec)
