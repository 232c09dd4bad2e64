"""RTP ingest inputs: a hardware encoder or ``ffmpeg`` mapped to zones and a priority.

An input's credential is its SRTP master key (``docs/ingest.md``): generated here, shown once
(with the SDP and an ffmpeg command that use it), rotated with ``POST …/key``. Registering an
input is a standing permission to air in its zones, so it needs the role that airing would
need: operator, emergency for an emergency input, approver where broadcasts need approval.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from streamer.control import auth
from streamer.control.live import input_sdp
from streamer.control.models import LiveInput
from streamer.control.schemas import Body, InputId, Zones
from wire.priority import PriorityName

from .broadcasts import _check_zones
from .core import API, Conflict, Ctx, NotFound


class InputIn(Body):
    id: InputId
    name: str = Field("", max_length=200)
    zones: Zones
    priority: PriorityName = "normal"


class InputOut(LiveInput):
    sending: bool = False
    airing: list[int] = Field(default_factory=list)


class InputCreated(BaseModel):
    input: InputOut
    key: str = Field(description="SRTP master key (base64, 30 bytes): shown only now")
    ingest: str = Field(description='"host:port" of the ingest endpoint')
    sdp: str
    ffmpeg: str = Field(description="a command line that sends a file to this input")


class InputList(BaseModel):
    inputs: list[InputOut]


def _roles(priority: str) -> frozenset[auth.Role]:
    return auth.EMERGENCY if priority == "emergency" else auth.OPERATE


def _out(ctx: Ctx, rec: LiveInput) -> InputOut:
    plane = ctx.services
    buf = plane.inputs.buffers.get(rec.id)
    return InputOut(**rec.model_dump(), sending=buf is not None and not buf.closed,
                    airing=[r.id for r in plane.inputs.airing(rec.id)])


async def _input(ctx: Ctx) -> LiveInput:
    iid = ctx.path("id")
    rec = await ctx.services.state.inputs.get(iid)
    if rec is None or not any(auth.visible(ctx.me, z) for z in rec.zones):
        raise NotFound(f"input {iid}")
    return rec


async def _created(ctx: Ctx, rec: LiveInput) -> InputCreated:
    from wire.ingest import new_key

    key = new_key()
    addr, sdp, cmd = input_sdp(ctx.services, key)  # 503 before anything is stored
    await ctx.services.state.put_input(rec, key)
    await ctx.services.reload_inputs()
    return InputCreated(input=_out(ctx, rec), key=key, ingest=addr, sdp=sdp, ffmpeg=cmd)


@API.route("POST", "/api/v1/inputs", summary="Register an RTP ingest input (its key is shown "
           "once)", tag="inputs", body=InputIn, response=InputCreated, status=201)
async def create_input(ctx: Ctx) -> InputCreated:
    b: InputIn = ctx.body
    zones = _check_zones(ctx, b.zones)
    ctx.require(_roles(b.priority), zones, f"register a {b.priority} input")
    if b.priority != "emergency" and ctx.services.requires_approval(zones):
        ctx.require(auth.APPROVE, zones, "register an input where broadcasts need approval")
    if await ctx.services.state.inputs.get(b.id) is not None:
        raise Conflict(f"input {b.id} exists", "id")
    rec = LiveInput(id=b.id, name=b.name, zones=zones, priority=b.priority,
                    created=time.time(), created_by=ctx.me.name)
    out = await _created(ctx, rec)
    await ctx.audit("create_input", rec.id, zones, priority=rec.priority)
    return out


@API.route("GET", "/api/v1/inputs", summary="Ingest inputs in zones you can see", tag="inputs",
           response=InputList)
async def list_inputs(ctx: Ctx) -> InputList:
    recs = await ctx.services.state.inputs.all()
    return InputList(inputs=[_out(ctx, r) for r in sorted(recs, key=lambda r: r.id)
                             if any(auth.visible(ctx.me, z) for z in r.zones)])


@API.route("GET", "/api/v1/inputs/{id}", summary="One ingest input", tag="inputs",
           response=InputOut)
async def get_input(ctx: Ctx) -> InputOut:
    return _out(ctx, await _input(ctx))


@API.route("POST", "/api/v1/inputs/{id}/key", summary="Replace an input's key (the old one "
           "stops working at once)", tag="inputs", response=InputCreated)
async def rotate_key(ctx: Ctx) -> InputCreated:
    rec = await _input(ctx)
    ctx.require(_roles(rec.priority), rec.zones, "replace this input's key")
    out = await _created(ctx, rec)
    await ctx.services.inputs.close(rec.id)
    await ctx.audit("rotate_input_key", rec.id, rec.zones)
    return out


@API.route("DELETE", "/api/v1/inputs/{id}", summary="Remove an input (ends what it airs)",
           tag="inputs", response=InputOut)
async def delete_input(ctx: Ctx) -> InputOut:
    rec = await _input(ctx)
    ctx.require(_roles(rec.priority), rec.zones, "remove this input")
    out = _out(ctx, rec)
    await ctx.services.state.delete_input(rec.id)
    await ctx.services.reload_inputs()
    await ctx.services.inputs.close(rec.id)
    await ctx.audit("delete_input", rec.id, rec.zones)
    return out
