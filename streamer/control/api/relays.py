"""Relays: registration (with their broker credentials, shown once), listing and removal."""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from streamer.control import auth
from streamer.control.models import DeviceId, Presence, Relay, ZoneId
from streamer.control.schemas import BadRequest, Body

from .core import API, Conflict, Ctx, NotFound
from .speakers import Credentials, Provisioned


class RelayIn(Body):
    id: DeviceId
    media: str = Field("", max_length=300)
    http: str = Field("", max_length=300)
    zone: ZoneId | None = None


class RelayOut(Relay):
    presence: Presence = Field(description="online or offline as the relay last told the "
                               "broker (its will when it vanished); unknown before")


class RelayList(BaseModel):
    relays: list[RelayOut]


@API.route("GET", "/api/v1/relays", summary="Registered relays, with their presence",
           tag="relays", response=RelayList)
async def list_relays(ctx: Ctx) -> RelayList:
    state = ctx.services.state
    relays = sorted(await state.relays.all(), key=lambda r: r.id)
    presence = await state.presence.many([r.id for r in relays])
    view = ctx.services.recorder.view
    return RelayList(relays=[RelayOut(**r.model_dump(), presence=view(r.id, p))
                             for r, p in zip(relays, presence, strict=True)])


@API.route("POST", "/api/v1/relays", summary="Register a relay; returns its MQTT password once",
           tag="relays", body=RelayIn, response=Provisioned, status=201)
async def create_relay(ctx: Ctx) -> Provisioned:
    b: RelayIn = ctx.body
    ctx.require(auth.ADMIN, [b.zone] if b.zone else [], "register relays")
    plane = ctx.services
    if b.zone and b.zone not in plane.zones:
        raise BadRequest("zone", f"unknown zone {b.zone!r}")
    if await plane.state.relays.get(b.id) or await plane.state.speakers.get(b.id):
        raise Conflict(f"device {b.id!r} exists", "id")
    relay = Relay(**b.model_dump(), created=time.time())
    await plane.state.relays.put(relay.id, relay)
    password = await plane.devices.set_password(relay.id)
    await plane.devices.sync_broker()
    if plane.tokens is not None:
        plane.tokens.soon(relay)
    await ctx.audit("create_relay", relay.id, [b.zone] if b.zone else [])
    return Provisioned(relay=relay, mqtt=Credentials(user=relay.id, password=password),
                       stream_keys=plane.stream_keys())


async def _relay(ctx: Ctx) -> Relay:
    rid = ctx.path("id")[:64]
    r = await ctx.services.state.relays.get(rid)
    if r is None:
        raise NotFound(f"relay {rid!r}")
    ctx.require(auth.ADMIN, [r.zone] if r.zone else [], "manage relays")
    return r


@API.route("POST", "/api/v1/relays/{id}/credentials", summary="Issue a new MQTT password",
           tag="relays", response=Credentials, status=201)
async def relay_credentials(ctx: Ctx) -> Credentials:
    r = await _relay(ctx)
    password = await ctx.services.devices.set_password(r.id)
    await ctx.services.devices.sync_broker()
    await ctx.audit("relay_credentials", r.id, [r.zone] if r.zone else [])
    return Credentials(user=r.id, password=password)


@API.route("DELETE", "/api/v1/relays/{id}", summary="Remove a relay and its login",
           tag="relays", response=Relay)
async def delete_relay(ctx: Ctx) -> Relay:
    r = await _relay(ctx)
    await ctx.services.devices.delete("relay", r.id)
    await ctx.audit("delete_relay", r.id, [r.zone] if r.zone else [])
    return r
