"""The zone tree with its settings (quiet hours, approval, test zones), and channels."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from streamer.control import auth
from streamer.control.models import QUIET_RE, VOICE_RE, Zone, valid_zone_id
from streamer.control.schedules import QuietHours
from streamer.control.schemas import BadRequest, Patch, left_out

from .core import API, Ctx, NotFound


class ZoneNode(Zone):
    quiet_hours_in_force: str = Field(description="own or inherited; '' = none")
    channel: bool = Field(description="a leaf zone: one channel")
    children: list[ZoneNode] = Field(default_factory=list)


class ZoneTreeOut(BaseModel):
    zones: list[ZoneNode]


class ZonePatch(Patch):
    name: str = left_out(min_length=1, max_length=200)
    quiet_hours: Annotated[str, StringConstraints(pattern=QUIET_RE)] = left_out(
        description='"HH:MM-HH:MM", or "" for none (inherit_quiet_hours drops them)')
    inherit_quiet_hours: bool = Field(False, description="drop this zone's own quiet hours")
    requires_approval: bool = left_out()
    test: bool = left_out()
    public_listen: bool = left_out(description="anyone may listen in to the channels here "
                                   "(or below), without signing in")
    voice: Annotated[str, StringConstraints(pattern=VOICE_RE)] = left_out(
        description="the voice TTS broadcasts here (and below) are read in: a name from the "
                    "streamer's voice file (GET /api/v1/tts/voices)")
    inherit_voice: bool = Field(False, description="drop this zone's own voice")


class Channel(BaseModel):
    id: str
    name: str
    ssrc: int
    on_air: int = Field(description="broadcast id on air, 0 for none")


class ChannelList(BaseModel):
    channels: list[Channel]


def _node(ctx: Ctx, zid: str) -> ZoneNode:
    plane = ctx.services
    z = plane.zones[zid]
    kids = [_node(ctx, c) for c in plane.tree.zones[zid].children
            if auth.visible(ctx.me, c)]
    return ZoneNode(**z.model_dump(), quiet_hours_in_force=plane.quiet_hours(zid),
                    channel=plane.tree.zones[zid].is_leaf, children=kids)


def _zone_id(ctx: Ctx) -> str:
    zid = ctx.path("id")
    if not valid_zone_id(zid) or zid not in ctx.services.zones or not auth.visible(ctx.me, zid):
        raise NotFound(f"zone {zid[:64]!r}")
    return zid


@API.route("GET", "/api/v1/zones", summary="The zone tree you can see", tag="zones",
           response=ZoneTreeOut)
async def list_zones(ctx: Ctx) -> ZoneTreeOut:
    return ZoneTreeOut(zones=[_node(ctx, r) for r in ctx.services.tree.roots
                              if auth.visible(ctx.me, r)])


@API.route("GET", "/api/v1/zones/{id}", summary="One zone and its subtree", tag="zones",
           response=ZoneNode)
async def get_zone(ctx: Ctx) -> ZoneNode:
    return _node(ctx, _zone_id(ctx))


@API.route("PATCH", "/api/v1/zones/{id}", summary="Change a zone's settings (admin)",
           tag="zones", body=ZonePatch, response=ZoneNode)
async def patch_zone(ctx: Ctx) -> ZoneNode:
    zid = _zone_id(ctx)
    body: ZonePatch = ctx.body
    ctx.require(auth.ADMIN, [zid], "change zone settings")
    if body.quiet_hours:
        QuietHours.parse(body.quiet_hours)  # refuses e.g. 10:00-10:00, naming the field
    plane = ctx.services
    if body.voice is not None and body.voice not in plane.tts.voice_names:
        raise BadRequest("voice", f"no voice {body.voice!r}: the voices are "
                         f"{', '.join(plane.tts.voice_names) or 'none (espeak-ng only)'}")
    z = plane.zones[zid].model_copy()
    changes = body.model_dump(exclude_none=True, exclude={"inherit_quiet_hours",
                                                          "inherit_voice"})
    for k, v in changes.items():
        setattr(z, k, v)
    if body.inherit_quiet_hours:
        z.quiet_hours = None
        changes["quiet_hours"] = None
    if body.inherit_voice:
        z.voice = None
        changes["voice"] = None
    await plane.state.zones.put(zid, z)
    plane.zones[zid] = z
    await ctx.audit("patch_zone", zid, [zid], **changes)
    return _node(ctx, zid)


@API.route("GET", "/api/v1/channels", summary="Leaf channels you can see, with what is on air",
           tag="zones", response=ChannelList)
async def list_channels(ctx: Ctx) -> ChannelList:
    plane = ctx.services
    return ChannelList(channels=[
        Channel(id=c.id, name=plane.tree.zones[c.id].name, ssrc=c.ssrc,
                on_air=c.program.current or 0)
        for c in plane.mixer.channels.values() if auth.visible(ctx.me, c.id)])
