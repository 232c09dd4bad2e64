"""Serves the browser studio page (``static/``): plain files, same origin as the API it calls,
so the page needs no CORS and its bearer token never leaves the streamer's origin. The page has
no inline script, style or event handler, and loads nothing from elsewhere: its
Content-Security-Policy (``common/httpsec.py``) forbids all of those, so keep it that way."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).with_name("static")


async def _page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "studio.html", headers={"Cache-Control": "no-cache"})


def add_studio_routes(app: web.Application) -> None:
    app.router.add_get("/studio", _page)
    app.router.add_static("/studio/", STATIC, append_version=False)
