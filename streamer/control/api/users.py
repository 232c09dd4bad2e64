"""Users and their roles (admin only). An admin may grant, change and remove only within the
zones they administer, and may not lock themselves out."""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from streamer.control import auth
from streamer.control.models import Grant, User, UserName
from streamer.control.schemas import Body, Patch, left_out

from .core import API, Conflict, Ctx, NotFound


class UserIn(Body):
    name: UserName
    password: str = Field(min_length=10, max_length=256)
    full_name: str = Field("", max_length=200)
    grants: list[Grant] = Field(default_factory=list, max_length=1000)


class UserPatch(Patch):
    password: str = left_out(min_length=10, max_length=256)
    full_name: str = left_out(max_length=200)
    grants: list[Grant] = left_out(max_length=1000)
    disabled: bool = left_out()


class UserList(BaseModel):
    users: list[User]


def _zones(grants: list[Grant]) -> list[str]:
    return sorted({g.zone for g in grants})


async def _user(ctx: Ctx) -> User:
    name = ctx.path("name")
    user = await ctx.services.state.users.get(name) if auth.USER_NAME.match(name) else None
    if user is None:
        raise NotFound(f"user {name[:64]!r}", "name")
    return user


@API.route("GET", "/api/v1/users", summary="Users with a grant inside your admin zones",
           tag="users", response=UserList)
async def list_users(ctx: Ctx) -> UserList:
    ctx.require(auth.ADMIN, [], "list users")
    users = await ctx.services.state.users.all()
    mine = [u for u in users if any(auth.allowed(ctx.me, auth.ADMIN, g.zone) for g in u.grants)
            or not u.grants]
    return UserList(users=sorted(mine, key=lambda u: u.name))


@API.route("POST", "/api/v1/users", summary="Create a user", tag="users", body=UserIn,
           response=User, status=201)
async def create_user(ctx: Ctx) -> User:
    body: UserIn = ctx.body
    ctx.require(auth.ADMIN, _zones(body.grants), "grant roles")
    user = User(name=body.name, full_name=body.full_name, grants=body.grants,
                created=time.time())
    if not await ctx.services.state.create_user(
            user, await ctx.services.hasher.hash(body.password)):
        raise Conflict(f"user {body.name!r} exists", "name")
    await ctx.audit("create_user", user.name, _zones(user.grants),
                    grants=[g.model_dump(mode="json") for g in user.grants])
    return user


@API.route("GET", "/api/v1/users/{name}", summary="One user", tag="users", response=User)
async def get_user(ctx: Ctx) -> User:
    user = await _user(ctx)
    if user.name != ctx.me.name:
        ctx.require(auth.ADMIN, _zones(user.grants), "see this user")
    return user


@API.route("PATCH", "/api/v1/users/{name}", summary="Change a user's grants, password or state",
           tag="users", body=UserPatch, response=User)
async def patch_user(ctx: Ctx) -> User:
    body: UserPatch = ctx.body
    user = await _user(ctx)
    self_service = user.name == ctx.me.name and body.grants is None and body.disabled is None
    if not self_service:  # anyone may change their own password and name
        ctx.require(auth.ADMIN, _zones(user.grants + (body.grants or [])), "change this user")
    if user.name == ctx.me.name and (body.disabled or (
            body.grants is not None and not any(g.role == "admin" for g in body.grants)
            and any(g.role == "admin" for g in user.grants))):
        raise Conflict("you may not disable yourself or drop your own admin role", "grants")
    state = ctx.services.state
    for attr in ("full_name", "grants", "disabled"):
        if getattr(body, attr) is not None:
            setattr(user, attr, getattr(body, attr))
    await state.users.put(user.name, user)
    if body.password is not None:
        await state.set_password_hash(
            user.name, await ctx.services.hasher.hash(body.password))
    await ctx.audit("patch_user", user.name, _zones(user.grants),
                    fields=sorted(body.model_dump(exclude_none=True, exclude={"password"}))
                    + (["password"] if body.password else []))
    return user


@API.route("DELETE", "/api/v1/users/{name}", summary="Remove a user", tag="users",
           response=User)
async def delete_user(ctx: Ctx) -> User:
    user = await _user(ctx)
    ctx.require(auth.ADMIN, _zones(user.grants), "remove this user")
    if user.name == ctx.me.name:
        raise Conflict("you may not remove yourself", "name")
    await ctx.services.state.users.delete(user.name)
    await ctx.audit("delete_user", user.name, _zones(user.grants))
    return user
