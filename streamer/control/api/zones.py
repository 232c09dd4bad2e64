"""The zone tree with its settings (quiet hours, approval, test zones), and channels; and
runtime zone edits (add, rename, move, merge: ``control/zonedit.py``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from streamer.control import auth
from streamer.control.models import QUIET_RE, VOICE_RE, ZONE_CODE_RE, Zone, ZoneId, valid_zone_id
from streamer.control.schedules import QuietHours
from streamer.control.schemas import BadRequest, Patch, left_out
from streamer.control.zonedit import EditRefused, EditResult

from .core import API, ApiError, Ctx, NotFound

ZoneKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]


class ZoneNode(Zone):
    quiet_hours_in_force: str = Field(description="own or inherited; '' = none")
    voice_in_force: str = Field("", description="the voice TTS broadcasts here are read in, "
                                "own or inherited; '' = the streamer's default")
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
                    voice_in_force=plane.voice_for([zid]) or "",
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
    # open consoles load the tree again: what this zone and those below it inherit changed
    plane.events.publish("zones", {"action": "patch_zone", "zone": zid, "changes": changes},
                         [zid])
    return _node(ctx, zid)


@API.route("GET", "/api/v1/channels", summary="Leaf channels you can see, with what is on air",
           tag="zones", response=ChannelList)
async def list_channels(ctx: Ctx) -> ChannelList:
    plane = ctx.services
    return ChannelList(channels=[
        Channel(id=c.id, name=plane.zones[c.id].name, ssrc=c.ssrc,
                on_air=c.program.current or 0)
        for c in plane.mixer.channels.values()
        if c.id in plane.zones and auth.visible(ctx.me, c.id)])  # not one a zone edit retires


# -- runtime edits ----------------------------------------------------------------------------

class ZoneAdd(BaseModel):
    parent: ZoneId = Field(description="the zone it goes under; a channel (leaf) parent stops "
                           "being one: its speakers move into the new zone")
    key: ZoneKey = Field(description="its id's last part: the new zone is parent.key")
    name: str = Field(min_length=1, max_length=200)
    code: Annotated[str, StringConstraints(pattern=ZONE_CODE_RE)] | None = Field(
        None, description="administrative unit code (mã đơn vị hành chính), for CAP geocodes")


class ZoneMove(BaseModel):
    parent: ZoneId | None = Field(None, description="the zone it goes under (default: where "
                                  "it is: a rename)")
    key: ZoneKey | None = Field(None, description="its new id's last part (default: as now)")
    name: str | None = Field(None, min_length=1, max_length=200,
                             description="its new name, in the same edit (default: as now)")


class ZoneMerge(BaseModel):
    into: ZoneId = Field(description="the zone that takes it in and stays")
    keys: dict[ZoneKey, ZoneKey] = Field(
        default_factory=dict, max_length=1000,
        description="new keys for its zones whose keys the other already has: "
                    '{"ap-1": "ap-1-kim-long"}')


class ZoneEditOut(BaseModel):
    action: str
    mapping: dict[str, str] = Field(description="old zone id → new zone id, for every zone "
                                    "whose id changed (history under an old id resolves to "
                                    "the new one)")
    channels_added: list[str]
    channels_removed: list[str]
    rewritten: dict[str, int] = Field(description="stored records changed, by kind")
    rev: int = Field(description="the zone tree's revision now")


async def _edited(ctx: Ctx, edit: Any) -> ZoneEditOut:
    try:
        result: EditResult = await edit
    except EditRefused as e:
        raise ApiError(e.status, e.message, e.field) from None
    await ctx.audit(result.action, str(result.detail.get("zone", "")),
                    sorted({*result.mapping.values(), *result.channels_added}
                           | {str(result.detail.get("zone", ""))} - {""}),
                    **result.detail, mapping=result.mapping,
                    channels_added=result.channels_added,
                    channels_removed=result.channels_removed, rewritten=result.rewritten,
                    rev=result.rev)
    return ZoneEditOut(action=result.action, mapping=result.mapping,
                       channels_added=result.channels_added,
                       channels_removed=result.channels_removed, rewritten=result.rewritten,
                       rev=result.rev)


def _existing(ctx: Ctx, zid: str, field: str) -> str:
    if zid not in ctx.services.zones or not auth.visible(ctx.me, zid):
        raise BadRequest(field, f"no zone {zid[:64]!r}")
    return zid


@API.route("POST", "/api/v1/zones", summary="Add a zone (admin of its parent)", tag="zones",
           body=ZoneAdd, response=ZoneEditOut, status=201)
async def add_zone(ctx: Ctx) -> ZoneEditOut:
    b: ZoneAdd = ctx.body
    parent = _existing(ctx, b.parent, "parent")
    ctx.require(auth.ADMIN, [parent], "add zones")
    return await _edited(ctx, ctx.services.editor.add(parent, b.key, b.name, b.code,
                                                      ctx.me.name))


@API.route("POST", "/api/v1/zones/{id}/move", summary="Rename or move a zone with everything "
           "in it (admin of it and of where it goes)", tag="zones", body=ZoneMove,
           response=ZoneEditOut)
async def move_zone(ctx: Ctx) -> ZoneEditOut:
    zid = _zone_id(ctx)
    b: ZoneMove = ctx.body
    here = ctx.services.tree.zones[zid]
    parent = _existing(ctx, b.parent, "parent") if b.parent else here.parent
    if parent is None:
        raise BadRequest("id", f"{zid} is a top-level zone: it cannot be moved")
    ctx.require(auth.ADMIN, [zid, parent], "move zones")
    key = b.key or zid.rsplit(".", 1)[-1]
    return await _edited(ctx, ctx.services.editor.move(zid, parent, key, ctx.me.name, b.name))


@API.route("POST", "/api/v1/zones/{id}/merge", summary="Merge a zone into another: its zones, "
           "devices, schedules, grants and history go to the other (admin of both)",
           tag="zones", body=ZoneMerge, response=ZoneEditOut)
async def merge_zone(ctx: Ctx) -> ZoneEditOut:
    zid = _zone_id(ctx)
    b: ZoneMerge = ctx.body
    into = _existing(ctx, b.into, "into")
    ctx.require(auth.ADMIN, [zid, into], "merge zones")
    return await _edited(ctx, ctx.services.editor.merge(zid, into, dict(b.keys), ctx.me.name))
