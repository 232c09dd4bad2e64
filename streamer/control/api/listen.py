"""Listen-in: who may hear a channel over HTTP (``GET /listen/{channel}.ogg``).

A channel in a zone an admin made public (``public_listen``, on the zone or an ancestor) is
open to anyone. Any other needs a signed-in user who can see the zone, or a **listen token**:
``POST /api/v1/listen`` gives one to such a user (and to anyone for a public channel), signed
with the streamer's key (``wire/token.py``, identity ``listen:<user>``, that one channel, valid
six hours), to put in the URL (``?token=``) of a player that cannot send headers — VLC, ffmpeg,
an ``<audio>`` element — on the streamer or on any relay, which checks it offline with the
key it pins. A stream that started goes on after its token expires: only a new connection
needs a valid one.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from fanout.http import ListenCheck, listen_tokens
from streamer.control import auth
from wire.auth import Keyring
from wire.token import LISTEN_PREFIX, issue, to_url

from .core import API, ApiError, Ctx, NotFound, authenticate

LIFETIME_S = 6 * 3600.0


class ListenIn(BaseModel):
    channel: str = Field(min_length=1, max_length=128, description="a channel (leaf zone) id")


class ListenOut(BaseModel):
    channel: str
    token: str = Field(description="base64url; goes in the URL as ?token=")
    expires: int = Field(description="Unix seconds; a stream already started goes on")
    path: str = Field(description="/listen/{channel}.ogg?token=… on the streamer or any relay")


@API.route("POST", "/api/v1/listen", summary="A listen-in token for one channel (signed in, "
           "or anyone for a public channel)", tag="zones", body=ListenIn, response=ListenOut,
           auth=False)
async def listen_token(ctx: Ctx) -> ListenOut:
    plane = ctx.services
    channel = ctx.body.channel
    if channel not in plane.mixer.channels:
        raise NotFound(f"channel {channel[:64]!r}", "channel")
    who = "public"
    if not plane.listen_public(channel):
        ctx.user = await authenticate(ctx.request, plane)
        if ctx.user is None:
            raise ApiError(401, "sign in (POST /api/v1/login), or ask an admin to make the "
                           "zone public_listen", "Authorization", {"WWW-Authenticate": "Bearer"})
        ctx.require(auth.VIEW, [channel], "listen in")
        who = ctx.me.name
    if plane.signing_key is None:
        raise ApiError(503, "this streamer signs no listen tokens", "channel")
    now = time.time()
    data = issue(plane.signing_key(), LISTEN_PREFIX + who, [channel], now, LIFETIME_S)
    return ListenOut(channel=channel, token=to_url(data), expires=int(now + LIFETIME_S),
                     path=f"/listen/{channel}.ogg?token={to_url(data)}")


def streamer_may_listen(plane: Any, keys: Keyring) -> ListenCheck:
    """The streamer's rule: a public channel, a signed-in user who can see it, or a listen
    token signed by one of ``keys``."""
    tokens = listen_tokens(keys)

    async def may_listen(request: web.Request, channel: str) -> str | None:
        if plane.listen_public(channel):
            return None
        user = await authenticate(request, plane)
        if user is not None and auth.allowed(user, auth.VIEW, channel):
            return None
        return await tokens(request, channel)

    return may_listen

