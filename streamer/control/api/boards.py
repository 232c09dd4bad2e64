"""E-boards: registration (a broker login and a kiosk page link, shown once), listing and
removal; board items operators post and take down (``streamer/control/board.py``)."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

from streamer.control import auth
from streamer.control.models import Board, DeviceId, Presence, ZoneId
from streamer.control.schemas import BadRequest, Body
from wire import token
from wire.messages import BoardItem

from .core import API, Conflict, Ctx, NotFound
from .speakers import Credentials

#: a board's page link lasts this long (a screen is set up once); a new one with new
#: credentials (``POST /boards/{id}/credentials``)
PAGE_TOKEN_S = 365 * 86_400
BOARD_PREFIX = "board:"


class BoardIn(Body):
    id: DeviceId
    zone: ZoneId
    name: str = Field("", max_length=200)
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)


class BoardOut(Board):
    presence: Presence


class BoardList(BaseModel):
    boards: list[BoardOut]


class BoardProvisioned(BaseModel):
    board: Board
    mqtt: Credentials
    page: str = Field(description="the kiosk page of its zone, with its token: open it in the "
                      "screen's browser")


class ItemIn(Body):
    zones: list[ZoneId] = Field(min_length=1, max_length=1000)
    title: str = Field("", max_length=200)
    body: str = Field("", max_length=5000)
    level: Literal["normal", "priority", "emergency"] = "normal"
    expires_s: float | None = Field(None, ge=60, le=30 * 86_400, allow_inf_nan=False,
                                    description="taken down this long from now (default: "
                                    "when someone takes it down)")


class ItemList(BaseModel):
    items: list[BoardItem]


class ItemQuery(BaseModel):
    zone: ZoneId | None = None


def page_link(plane: object, board: Board) -> str:
    key = plane.signing_key()  # type: ignore[attr-defined]
    t = token.issue(key, BOARD_PREFIX + board.id, [board.zone], time.time(), PAGE_TOKEN_S)
    return f"/board/{board.zone}?token={token.to_url(t)}"


def _zone(ctx: Ctx, zone: str) -> str:
    if zone not in ctx.services.zones:
        raise BadRequest("zone", f"unknown zone {zone!r}")
    return zone


@API.route("POST", "/api/v1/boards", summary="Register an e-board; returns its MQTT password "
           "and its kiosk page link once", tag="boards", body=BoardIn,
           response=BoardProvisioned, status=201)
async def create_board(ctx: Ctx) -> BoardProvisioned:
    b: BoardIn = ctx.body
    ctx.require(auth.ADMIN, [_zone(ctx, b.zone)], "register boards")
    plane = ctx.services
    if b.id in await plane.state.device_ids():
        raise Conflict(f"device {b.id!r} exists", "id")
    board = Board(**b.model_dump(), created=time.time())
    await plane.state.boards.put(board.id, board)
    password = await plane.devices.set_password(board.id)
    await plane.devices.sync_broker()
    await ctx.audit("create_board", board.id, [board.zone])
    return BoardProvisioned(board=board, mqtt=Credentials(user=board.id, password=password),
                            page=page_link(plane, board))


@API.route("GET", "/api/v1/boards", summary="E-boards of zones you can see, with presence",
           tag="boards", response=BoardList)
async def list_boards(ctx: Ctx) -> BoardList:
    state = ctx.services.state
    boards = sorted((b for b in await state.boards.all() if auth.visible(ctx.me, b.zone)),
                    key=lambda b: b.id)
    presence = await state.presence.many([b.id for b in boards])
    view = ctx.services.recorder.view
    return BoardList(boards=[BoardOut(**b.model_dump(), presence=view(b.id, p))
                             for b, p in zip(boards, presence, strict=True)])


async def _board(ctx: Ctx) -> Board:
    bid = ctx.path("id")[:64]
    b = await ctx.services.state.boards.get(bid)
    if b is None or not auth.visible(ctx.me, b.zone):
        raise NotFound(f"board {bid!r}")
    ctx.require(auth.ADMIN, [b.zone], "manage boards")
    return b


@API.route("POST", "/api/v1/boards/{id}/credentials", summary="A new MQTT password and page "
           "link (the old ones stop working)", tag="boards", response=BoardProvisioned,
           status=201)
async def board_credentials(ctx: Ctx) -> BoardProvisioned:
    b = await _board(ctx)
    plane = ctx.services
    password = await plane.devices.set_password(b.id)
    await plane.devices.sync_broker()
    # the page token names the board and its creation; a new one is told apart by its
    # issue time, and the old one stops with the board's new creation time
    b = b.model_copy(update={"created": time.time()})
    await plane.state.boards.put(b.id, b)
    await ctx.audit("board_credentials", b.id, [b.zone])
    return BoardProvisioned(board=b, mqtt=Credentials(user=b.id, password=password),
                            page=page_link(plane, b))


@API.route("DELETE", "/api/v1/boards/{id}", summary="Remove an e-board, its login and its "
           "page link", tag="boards", response=Board)
async def delete_board(ctx: Ctx) -> Board:
    b = await _board(ctx)
    await ctx.services.devices.delete("board", b.id)
    await ctx.audit("delete_board", b.id, [b.zone])
    return b


@API.route("POST", "/api/v1/board/items", summary="Post a text-only item on the boards of "
           "zones", tag="boards", body=ItemIn, response=BoardItem, status=201)
async def post_item(ctx: Ctx) -> BoardItem:
    b: ItemIn = ctx.body
    zones = list(dict.fromkeys(_zone(ctx, z) for z in b.zones))
    roles = auth.EMERGENCY if b.level == "emergency" else auth.OPERATE
    ctx.require(roles, zones, f"post {b.level} board items")
    if not b.title.strip() and not b.body.strip():
        raise BadRequest("title", "give a title or a body")
    now = time.time()
    feed = ctx.services.board
    item = await feed.post(BoardItem(
        id=feed.new_id(), zones=zones, title=b.title, body=b.body, level=b.level, start=now,
        expires=None if b.expires_s is None else now + b.expires_s))
    await ctx.audit("post_board_item", item.id, zones, title=b.title, level=b.level)
    return item


@API.route("GET", "/api/v1/board/items", summary="Board items showing now in zones you can "
           "see", tag="boards", query=ItemQuery, response=ItemList)
async def list_items(ctx: Ctx) -> ItemList:
    q: ItemQuery = ctx.query
    feed = ctx.services.board
    if q.zone is not None:
        if not auth.visible(ctx.me, _zone(ctx, q.zone)):
            raise NotFound(f"zone {q.zone!r}", "zone")
        return ItemList(items=feed.state(q.zone).items)
    return ItemList(items=sorted(
        (i for i in feed.items.values() if any(auth.visible(ctx.me, z) for z in i.zones)),
        key=lambda i: -i.start))


@API.route("DELETE", "/api/v1/board/items/{id}", summary="Take an item down from the boards",
           tag="boards", response=BoardItem)
async def take_down_item(ctx: Ctx) -> BoardItem:
    feed = ctx.services.board
    item = feed.items.get(ctx.path("id")[:64])
    if item is None or not any(auth.visible(ctx.me, z) for z in item.zones):
        raise NotFound(f"board item {ctx.path('id')[:64]!r}")
    roles = auth.EMERGENCY if item.level == "emergency" else auth.OPERATE
    ctx.require(roles, item.zones, "take board items down")
    await feed.take_down(item.id)
    await ctx.audit("take_down_board_item", item.id, item.zones)
    return item
