"""Sign-in: password → bearer token (argon2 check, digest stored with an expiry), sign-out,
and who am I."""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from streamer.control import auth
from streamer.control.models import AuditEntry, User
from streamer.control.schemas import Body

from .core import API, ApiError, Ctx


class LoginIn(Body):
    user: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class TokenOut(BaseModel):
    token: str
    expires: float
    user: User


class Ok(BaseModel):
    ok: bool = True


@API.route("POST", "/api/v1/login", summary="Sign in; returns a bearer token", tag="session",
           body=LoginIn, response=TokenOut, auth=False, errors=(400, 401, 503))
async def login(ctx: Ctx) -> TokenOut:
    body: LoginIn = ctx.body
    state = ctx.services.state
    user = await state.users.get(body.user) if auth.USER_NAME.match(body.user) else None
    ok = auth.verify_password(await state.password_hash(body.user) if user else None,
                              body.password)
    if not ok or user is None or user.disabled:
        await state.audit(AuditEntry(ts=time.time(), user=body.user[:64], action="login",
                                     outcome="denied"))
        raise ApiError(401, "wrong user name or password", "password")
    token, digest = auth.new_token()
    await state.put_token(digest, user.name, auth.TOKEN_TTL_S)
    ctx.user = user
    await ctx.audit("login")
    return TokenOut(token=token, expires=time.time() + auth.TOKEN_TTL_S, user=user)


@API.route("POST", "/api/v1/logout", summary="Revoke the token of this request", tag="session",
           response=Ok, errors=(401, 503))
async def logout(ctx: Ctx) -> Ok:
    token = ctx.request.headers["Authorization"].split(" ", 1)[1]
    await ctx.services.state.delete_token(auth.token_digest(token))
    await ctx.audit("logout")
    return Ok()


@API.route("GET", "/api/v1/me", summary="The signed-in user and their grants", tag="session",
           response=User, errors=(401, 503))
async def me(ctx: Ctx) -> User:
    return ctx.me
