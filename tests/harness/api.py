"""Calls to an in-process streamer's HTTP API (the ``streamer`` fixture), as its first admin
unless other headers are given, and the users a test signs in with."""

from __future__ import annotations

from typing import Any

import aiohttp


async def call(streamer: Any, method: str, path: str, headers: dict[str, str] | None = None,
               **kw: Any) -> tuple[int, Any]:
    """``(status, body)``: the JSON body, or the bytes of any other. ``headers={}`` sends the
    request signed out; ``**kw`` goes to aiohttp (``json=``, ``data=``, ``params=``)."""
    async with aiohttp.ClientSession() as s, s.request(
            method, streamer.http_url + path, headers=streamer.admin if headers is None
            else headers, **kw) as r:
        body = await r.json() if r.content_type == "application/json" else await r.read()
        return r.status, body


async def make_user(streamer: Any, name: str, *grants: tuple[str, str],
                    password: str = "correct horse battery") -> dict[str, str]:
    """A user with ``(role, zone)`` grants, signed in: the Authorization headers."""
    status, u = await call(streamer, "POST", "/api/v1/users", json={
        "name": name, "password": password,
        "grants": [{"role": r, "zone": z} for r, z in grants]})
    assert status == 201, u
    status, t = await call(streamer, "POST", "/api/v1/login", headers={},
                           json={"user": name, "password": password})
    assert status == 200, t
    return {"Authorization": f"Bearer {t['token']}"}


async def audit(streamer: Any, **q: Any) -> list[dict[str, Any]]:
    status, a = await call(streamer, "GET", "/api/v1/audit", params={"limit": 1000, **q})
    assert status == 200
    return list(a["entries"])
