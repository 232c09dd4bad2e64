"""Speakers: provisioning (with their broker credentials, shown once), presence and telemetry,
and commands over MQTT with acknowledgements, one speaker or a whole zone. Relays are
``relays.py``; both answer a registration with :class:`Provisioned`."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from streamer.control import auth
from streamer.control.models import DeviceId, Presence, Relay, Speaker, ZoneId
from streamer.control.moves import follow, speaker_config
from streamer.control.schemas import BadRequest, Body, Patch, left_out

from .core import API, ApiError, Conflict, Ctx, NotFound


class SpeakerIn(Body):
    id: DeviceId
    zone: ZoneId = Field(description="the leaf zone (channel) it plays")
    name: str = Field("", max_length=200)
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    relays: list[str] = Field(default_factory=list, max_length=16,
                              description='ordered upstreams, "host:port"')


class SpeakerPatch(Patch):
    zone: ZoneId = left_out(description="the leaf zone (channel) it plays")
    name: str = left_out(max_length=200)
    lat: float | None = Field(None, ge=-90, le=90, description="null: position unknown")
    lon: float | None = Field(None, ge=-180, le=180)
    relays: list[str] = left_out(max_length=16, description='ordered upstreams, "host:port"')


class Credentials(BaseModel):
    user: str
    password: str = Field(description="shown once; stored only as a hash")


class SpeakerOut(Speaker):
    presence: Presence
    telemetry: dict[str, Any] | None = None


class Provisioned(BaseModel):
    speaker: Speaker | None = None
    relay: Relay | None = None
    mqtt: Credentials
    stream_keys: list[str] = Field(default_factory=list, description="the streamer's public "
                                   "keys: the device pins them (stream_keys) and plays nothing "
                                   "else's media")


class SpeakerList(BaseModel):
    speakers: list[SpeakerOut]


class SpeakerQuery(BaseModel):
    zone: ZoneId | None = None


class CommandIn(Body):
    cmd: str = Field(pattern=r"^[a-z_]{1,32}$", description="set_volume, mute, unmute, "
                     "reconnect, set_upstream, test_tone, refresh_token")
    args: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(5.0, gt=0, le=10, description="how long to wait for acks")


class AckOut(BaseModel):
    speaker: str
    id: str
    acked: bool = Field(True, description="false: no ack within timeout_s (offline?)")
    ok: bool
    error: str | None = None
    state: dict[str, Any] = Field(default_factory=dict)


class ZoneCommandOut(BaseModel):
    correlation: str
    acks: list[AckOut]


def _relays(value: list[str]) -> list[str]:
    from common.config import ConfigError, parse_hostport

    for r in value:
        try:
            parse_hostport(r, "relays")
        except ConfigError as e:
            raise BadRequest("relays", str(e)) from None
    return value


def _leaf(ctx: Ctx, zone: str) -> str:
    tree = ctx.services.tree
    if zone not in tree.zones or not tree.zones[zone].is_leaf:
        raise BadRequest("zone", f"{zone!r} is not a leaf zone (channel)")
    return zone


async def _speaker(ctx: Ctx) -> Speaker:
    sid = ctx.path("id")[:64]
    s = await ctx.services.state.speakers.get(sid)
    if s is None or not auth.allowed(ctx.me, auth.VIEW, s.zone):
        raise NotFound(f"speaker {sid!r}")
    return s


def _fleet(ctx: Ctx) -> Any:
    if ctx.services.fleet is None:
        raise ApiError(503, "no MQTT broker configured (mqtt_url)", None)
    return ctx.services.fleet


@API.route("GET", "/api/v1/speakers", summary="Speakers you can see, with presence and "
           "telemetry", tag="speakers", query=SpeakerQuery, response=SpeakerList)
async def list_speakers(ctx: Ctx) -> SpeakerList:
    q: SpeakerQuery = ctx.query
    state = ctx.services.state
    speakers = sorted((s for s in await state.speakers.all()
                       if auth.allowed(ctx.me, auth.VIEW, s.zone)
                       and (q.zone is None or s.zone == q.zone or s.zone.startswith(q.zone + "."))),
                      key=lambda s: s.id)
    ids = [s.id for s in speakers]
    presence = await state.presence.many(ids)
    telemetry = await state.telemetry(ids)
    view = ctx.services.recorder.view
    return SpeakerList(speakers=[
        SpeakerOut(**s.model_dump(), presence=view(s.id, p), telemetry=t)
        for s, p, t in zip(speakers, presence, telemetry, strict=True)])


@API.route("POST", "/api/v1/speakers", summary="Register a speaker; returns its MQTT password "
           "once", tag="speakers", body=SpeakerIn, response=Provisioned, status=201)
async def create_speaker(ctx: Ctx) -> Provisioned:
    b: SpeakerIn = ctx.body
    ctx.require(auth.ADMIN, [_leaf(ctx, b.zone)], "register speakers")
    plane = ctx.services
    if await plane.state.speakers.get(b.id) or await plane.state.relays.get(b.id):
        raise Conflict(f"device {b.id!r} exists (POST …/credentials issues a new password)",
                       "id")
    speaker = Speaker(**b.model_dump(exclude={"relays"}), relays=_relays(b.relays),
                      created=time.time())
    await plane.state.speakers.put(speaker.id, speaker)
    password = await plane.devices.set_password(speaker.id)
    await plane.devices.sync_broker()
    if plane.tokens is not None:
        plane.tokens.soon(speaker)
    plane.recorder.place(speaker.id, speaker.zone)
    await ctx.audit("create_speaker", speaker.id, [speaker.zone])
    return Provisioned(speaker=speaker, mqtt=Credentials(user=speaker.id, password=password),
                       stream_keys=plane.stream_keys())


@API.route("GET", "/api/v1/speakers/{id}", summary="One speaker", tag="speakers",
           response=SpeakerOut)
async def get_speaker(ctx: Ctx) -> SpeakerOut:
    s = await _speaker(ctx)
    state = ctx.services.state
    presence = ctx.services.recorder.view(s.id, await state.presence.get(s.id))
    return SpeakerOut(**s.model_dump(), presence=presence,
                      telemetry=(await state.telemetry([s.id]))[0])


@API.route("PATCH", "/api/v1/speakers/{id}", summary="Move, rename or re-home a speaker",
           tag="speakers", body=SpeakerPatch, response=Speaker)
async def patch_speaker(ctx: Ctx) -> Speaker:
    b: SpeakerPatch = ctx.body
    s = await _speaker(ctx)
    zones = [s.zone] + ([_leaf(ctx, b.zone)] if b.zone else [])
    ctx.require(auth.ADMIN, zones, "change speakers")
    changes = b.model_dump(exclude_unset=True)
    if "relays" in changes:
        _relays(changes["relays"] or [])
    s = s.model_copy(update=changes)
    plane = ctx.services
    await plane.state.speakers.put(s.id, s)
    if b.zone:
        plane.recorder.place(s.id, s.zone)
        # its ACL, its token for its new zone's channel, and the config that moves it
        await follow(plane, [s])
    elif b.relays and plane.fleet is not None:
        await plane.fleet.push_config(s.id, speaker_config(s))
    await ctx.audit("patch_speaker", s.id, zones, **changes)
    return s


@API.route("DELETE", "/api/v1/speakers/{id}", summary="Remove a speaker and its login",
           tag="speakers", response=Speaker)
async def delete_speaker(ctx: Ctx) -> Speaker:
    s = await _speaker(ctx)
    ctx.require(auth.ADMIN, [s.zone], "remove speakers")
    await ctx.services.devices.delete("speaker", s.id)
    ctx.services.recorder.forget(s.id)
    await ctx.audit("delete_speaker", s.id, [s.zone])
    return s


@API.route("POST", "/api/v1/speakers/{id}/credentials", summary="Issue a new MQTT password "
           "(the old one stops working)", tag="speakers", response=Credentials, status=201)
async def speaker_credentials(ctx: Ctx) -> Credentials:
    s = await _speaker(ctx)
    ctx.require(auth.ADMIN, [s.zone], "issue speaker credentials")
    password = await ctx.services.devices.set_password(s.id)
    await ctx.services.devices.sync_broker()
    await ctx.audit("speaker_credentials", s.id, [s.zone])
    return Credentials(user=s.id, password=password)


@API.route("POST", "/api/v1/speakers/{id}/commands", summary="Command one speaker and wait for "
           "its ack", tag="speakers", body=CommandIn, response=AckOut)
async def command_speaker(ctx: Ctx) -> AckOut:
    b: CommandIn = ctx.body
    s = await _speaker(ctx)
    ctx.require(auth.OPERATE, [s.zone], "command speakers")
    fleet = _fleet(ctx)
    await ctx.audit("command_speaker", s.id, [s.zone], cmd=b.cmd, args=b.args)
    try:
        ack = await fleet.command("speaker", s.id, b.cmd, b.args, timeout_s=b.timeout_s)
    except TimeoutError as e:  # an offline speaker is news for the operator, not an error
        return AckOut(speaker=s.id, id="", acked=False, ok=False, error=str(e))
    return AckOut(speaker=s.id, **ack.model_dump())


@API.route("POST", "/api/v1/zones/{id}/commands", summary="Command every speaker in a zone; "
           "collects acks for timeout_s", tag="speakers", body=CommandIn,
           response=ZoneCommandOut)
async def command_zone(ctx: Ctx) -> ZoneCommandOut:
    b: CommandIn = ctx.body
    zone = ctx.path("id")[:400]
    if zone not in ctx.services.zones or not auth.visible(ctx.me, zone):
        raise NotFound(f"zone {zone[:64]!r}")
    ctx.require(auth.OPERATE, [zone], "command speakers")
    fleet = _fleet(ctx)
    await ctx.audit("command_zone", zone, [zone], cmd=b.cmd, args=b.args)
    result = await fleet.zone_command(zone, b.cmd, b.args, timeout_s=b.timeout_s)
    return ZoneCommandOut(correlation=result.id, acks=[
        AckOut(speaker=sid, **a.model_dump()) for sid, a in sorted(result.acks.items())])
