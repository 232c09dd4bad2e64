"""Bulletins from above (``streamer/control/inbound.py``): senders registered by admins, the
signed door senders use, their receipts, and the operators' queue."""

from __future__ import annotations

import hashlib
import time
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from streamer.control import auth
from streamer.control.inbound import (
    HEADERS,
    InboundError,
    InboundIn,
    Receipt,
    public_key_ok,
    verify,
)
from streamer.control.models import DeviceId, InboundBulletin, Sender, ZoneId
from streamer.control.schemas import BadRequest, Body

from .broadcasts import reach_of
from .core import API, ApiError, Conflict, Ctx, NotFound, read_limited

MAX_BODY = 24 * 1024 * 1024  # 16 MiB of audio, base64


class SenderIn(Body):
    id: DeviceId
    name: str = Field("", max_length=200)
    zones: list[ZoneId] = Field(min_length=1, max_length=1000)
    public_key: str = Field(max_length=100, description="Ed25519 public key, base64")


class SenderList(BaseModel):
    senders: list[Sender]


class InboundList(BaseModel):
    bulletins: list[InboundBulletin]


class InboundQuery(BaseModel):
    state: Literal["pending", "aired", "rejected", "expired"] | None = None


class DecisionIn(Body):
    decision: Literal["air", "reject"]
    note: str = Field("", max_length=500)
    override_quiet_hours: bool = False


@API.route("POST", "/api/v1/senders", summary="Register a system above that may send "
           "bulletins (its Ed25519 public key and zones)", tag="inbound", body=SenderIn,
           response=Sender, status=201)
async def create_sender(ctx: Ctx) -> Sender:
    b: SenderIn = ctx.body
    for z in b.zones:
        if z not in ctx.services.zones:
            raise BadRequest("zones", f"unknown zone {z!r}")
    ctx.require(auth.ADMIN, b.zones, "register senders")
    if not public_key_ok(b.public_key):
        raise BadRequest("public_key", "not a base64 Ed25519 public key (32 bytes)")
    state = ctx.services.state
    if await state.senders.get(b.id) is not None:
        raise Conflict(f"sender {b.id!r} exists", "id")
    sender = Sender(**b.model_dump(), created=time.time(), created_by=ctx.me.name)
    await state.senders.put(sender.id, sender)
    await ctx.audit("create_sender", sender.id, sender.zones, name=sender.name)
    return sender


@API.route("GET", "/api/v1/senders", summary="Registered senders whose zones you administer",
           tag="inbound", response=SenderList)
async def list_senders(ctx: Ctx) -> SenderList:
    return SenderList(senders=sorted(
        (s for s in await ctx.services.state.senders.all()
         if all(auth.allowed(ctx.me, auth.ADMIN, z) for z in s.zones)), key=lambda s: s.id))


@API.route("DELETE", "/api/v1/senders/{id}", summary="Remove a sender: its requests are "
           "refused from now on", tag="inbound", response=Sender)
async def delete_sender(ctx: Ctx) -> Sender:
    state = ctx.services.state
    s = await state.senders.get(ctx.path("id")[:64])
    if s is None:
        raise NotFound(f"sender {ctx.path('id')[:64]!r}")
    ctx.require(auth.ADMIN, s.zones, "remove senders")
    await state.senders.delete(s.id)
    await ctx.audit("delete_sender", s.id, s.zones)
    return s


async def _signed(ctx: Ctx) -> tuple[Sender, bytes]:
    """The sender of a signed request and its body; 401 naming the header otherwise."""
    request = ctx.request
    body = await read_limited(request, MAX_BODY, "audio")
    sid = request.headers.get("X-Loa-Sender", "")[:64]
    sender = await ctx.services.state.senders.get(sid) if sid else None
    wrong = verify(sender, request.method, request.rel_url.raw_path, request.headers, body,
                   time.time())
    if wrong is not None:
        ctx.services.inbox.m.labels("-", "unauthenticated").inc()
        raise ApiError(401, f"{wrong[1]} (sign with {', '.join(HEADERS)})", wrong[0])
    assert sender is not None
    return sender, body


@API.route("POST", "/api/v1/inbound/bulletins", summary="A bulletin from a system above "
           "(signed by a registered sender): emergency airs at once, priority airs unless an "
           "operator decides first, normal waits for an operator", tag="inbound", auth=False,
           upload={"application/json": {"schema": InboundIn.model_json_schema()}},
           response=Receipt, status=201, errors=(400, 401, 403, 409, 413, 503))
async def receive_bulletin(ctx: Ctx) -> Receipt | web.Response:
    sender, body = await _signed(ctx)
    b = InboundIn.model_validate_json(body)
    inbox = ctx.services.inbox
    try:
        rec, new = await inbox.receive(sender, b, hashlib.sha256(body).hexdigest())
    except InboundError as e:
        raise ApiError(e.status, e.message, e.field) from None
    receipt = await inbox.receipt(rec, lambda br: reach_of(ctx.services, br))
    if new:
        return receipt
    return web.json_response(receipt.model_dump(mode="json"), status=200)


@API.route("GET", "/api/v1/inbound/bulletins/{ref}", summary="A sender's receipt for its "
           "bulletin: what became of it, and its reach (signed by the sender)", tag="inbound",
           auth=False, response=Receipt, errors=(401, 404, 503))
async def bulletin_receipt(ctx: Ctx) -> Receipt:
    sender, _ = await _signed(ctx)
    ref = ctx.path("ref")[:128]
    rec = await ctx.services.state.inbound_by_ref(sender.id, ref)
    if rec is None:
        raise NotFound(f"bulletin {ref!r} from {sender.id}", "ref")
    return await ctx.services.inbox.receipt(rec, lambda br: reach_of(ctx.services, br))


@API.route("GET", "/api/v1/inbound", summary="Bulletins from above for zones you can see, "
           "newest first", tag="inbound", query=InboundQuery, response=InboundList)
async def list_inbound(ctx: Ctx) -> InboundList:
    q: InboundQuery = ctx.query
    return InboundList(bulletins=sorted(
        (r for r in await ctx.services.state.inbound.all()
         if any(auth.visible(ctx.me, z) for z in r.zones)
         and (q.state is None or r.state.value == q.state)), key=lambda r: -r.received))


@API.route("POST", "/api/v1/inbound/{id}", summary="Air or reject a bulletin from above that "
           "waits for an operator", tag="inbound", body=DecisionIn, response=InboundBulletin)
async def decide_inbound(ctx: Ctx) -> InboundBulletin:
    b: DecisionIn = ctx.body
    plane = ctx.services
    rec = await plane.state.inbound.get(ctx.path("id")[:64])
    if rec is None or not any(auth.visible(ctx.me, z) for z in rec.zones):
        raise NotFound(f"bulletin {ctx.path('id')[:64]!r}")
    ctx.require(auth.OPERATE, rec.zones, f"{b.decision} bulletins from above")
    if b.override_quiet_hours:
        ctx.require(auth.ADMIN, rec.zones, "override quiet hours")
    try:
        return await plane.inbox.decide(rec, ctx.me.name, b.decision == "air", b.note,
                                        b.override_quiet_hours)
    except InboundError as e:
        raise ApiError(e.status, e.message, e.field) from None
