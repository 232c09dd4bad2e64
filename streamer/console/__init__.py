"""The operator console (``docs/console.md``): static files in ``static/`` served at ``/`` (the
page) and ``/console/…`` (its modules, style and translations). No build step: what is in
``static/`` is what the browser runs. The page calls ``/api/v1`` on the same origin with the
user's bearer token, so every rule of the API holds in the browser too.

It must never serve anything outside ``static/``, nor a file type it does not name in
``CONTENT_TYPES`` (a browser loads ES modules only with a JavaScript type, and
``X-Content-Type-Options: nosniff`` forbids guessing). The page carries the same
Content-Security-Policy as the studio (``common/httpsec.py``): no inline script or style,
nothing from elsewhere; keep it that way.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).with_name("static").resolve()

#: the only file types served, with the type a browser needs (RFC 9239 for modules)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".svg": "image/svg+xml",
}

#: revalidate every time (a 304 costs one round trip on a LAN): the files carry no version in
#: their names, and an operator must never run yesterday's script against today's API
CACHE = "no-cache"


def _file(name: str) -> web.FileResponse:
    path = (STATIC / name).resolve()
    ctype = CONTENT_TYPES.get(path.suffix)
    if ctype is None or not path.is_relative_to(STATIC) or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Content-Type": ctype, "Cache-Control": CACHE})


async def _page(request: web.Request) -> web.FileResponse:
    return _file("index.html")


async def _asset(request: web.Request) -> web.FileResponse:
    return _file(request.match_info["path"])


def add_console_routes(app: web.Application) -> None:
    app.router.add_get("/", _page)
    app.router.add_get("/console/{path:.+}", _asset)
