"""Sign-in: password → bearer token (argon2 check, digest stored with an expiry), sign-out,
and who am I.

A password check costs tens of milliseconds of CPU on purpose, so sign-in is where a flood
costs most: the check runs on a thread of its own (``streamer/control/hashing.py``), a few at
once with a bounded queue behind them (``Plane.hashing``; past that: 503, try again), and the
throttle (``streamer/control/throttle.py``) refuses a flooding address or user name before
any hashing (429 with Retry-After, audited once per burst).
"""

from __future__ import annotations

import math
import time
from typing import Any

from pydantic import BaseModel, Field

from streamer.control import auth
from streamer.control.models import AuditEntry, User
from streamer.control.schemas import Body
from streamer.control.throttle import Gate

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
           body=LoginIn, response=TokenOut, auth=False, errors=(400, 401, 429, 503))
async def login(ctx: Ctx) -> TokenOut:
    body: LoginIn = ctx.body
    plane = ctx.services
    state, throttle = plane.state, plane.logins
    address = ctx.request.remote or "-"
    refusal = throttle.check(address, body.user, time.time())
    if refusal is not None:
        plane.login_refusals.labels(refusal.by).inc()
        if refusal.first:
            await state.audit(AuditEntry(
                ts=time.time(), user=body.user[:64], action="login", outcome="throttled",
                detail={"by": refusal.by, "address": address, "failures": refusal.failures,
                        "retry_after_s": round(refusal.retry_after_s)}))
        raise ApiError(429, f"too many failed sign-ins from this {refusal.by}; try again "
                       "later", "password",
                       headers={"Retry-After": str(math.ceil(refusal.retry_after_s))})
    user = await state.users.get(body.user) if auth.USER_NAME.match(body.user) else None
    ok = await _verify(plane, await state.password_hash(body.user) if user else None,
                       body.password)
    if not ok or user is None or user.disabled:
        throttle.failed(address, body.user, time.time())
        await state.audit(AuditEntry(ts=time.time(), user=body.user[:64], action="login",
                                     outcome="denied", detail={"address": address}))
        raise ApiError(401, "wrong user name or password", "password")
    throttle.succeeded(body.user)
    token, digest = auth.new_token()
    await state.put_token(digest, user.name, auth.TOKEN_TTL_S)
    ctx.user = user
    await ctx.audit("login")
    return TokenOut(token=token, expires=time.time() + auth.TOKEN_TTL_S, user=user)


async def _verify(plane: Any, argon2_hash: str | None, password: str) -> bool:
    gate: Gate = plane.hashing
    if gate.full:
        plane.login_refusals.labels("busy").inc()
        raise ApiError(503, "too many sign-ins at once; try again", "password",
                       headers={"Retry-After": "1"})
    async with gate.slot():
        return bool(await plane.hasher.verify(argon2_hash, password))


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
