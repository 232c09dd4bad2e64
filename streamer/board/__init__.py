"""The kiosk page of an e-board (``docs/api.md``, "boards"): ``/board/{zone}?token=…`` in the
browser of an LED or LCD screen shows what the zone's boards show, in large Vietnamese type,
and follows every change over SSE (``/board/{zone}/events``), reconnecting by itself. An
emergency fills the screen in red.

The token in the link is the board's (``POST /api/v1/boards`` gives the link): signed by the
streamer for ``board:<id>`` and its zone, refused once the board is removed or given new
credentials. Static files only, under the same Content-Security-Policy as the console (no
inline script or style, nothing from elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from wire import token
from wire.auth import Keyring

STATIC = Path(__file__).with_name("static").resolve()
FILES = {"board.js": "text/javascript; charset=utf-8", "board.css": "text/css; charset=utf-8"}
HEARTBEAT_S = 15.0  # an SSE comment this often: proxies and the page see the link alive
PREFIX = "board:"


def add_board_routes(app: web.Application, plane: Any, keys: Keyring) -> None:
    async def allowed(request: web.Request, link_zone: str) -> tuple[web.Response | None, str]:
        """``(None, zone)`` if the request carries a board token for ``link_zone``, the zone
        of the page's link; else a 401/404 answer. ``zone`` is the zone now: a zone edit
        that renamed or merged the link's keeps the board on its wall working."""
        zone = plane.tree.resolve(link_zone)
        if zone is None:
            return web.json_response({"error": f"no zone {link_zone!r}", "field": "zone"},
                                     status=404), link_zone
        data = token.from_url(request.query.get("token", ""))
        try:
            identity = token.parse(data).identity
        except Exception:
            identity = ""
        verdict: object = token.BAD
        if identity.startswith(PREFIX):
            verdict = token.check(keys, data, identity, link_zone, time.time())
        if not isinstance(verdict, str):
            board = await plane.state.boards.get(identity[len(PREFIX):])
            if board is not None and verdict.issued >= int(board.created) \
                    and board.zone == zone:
                return None, zone
            verdict = token.FORBIDDEN
        return web.json_response({"error": f"a board's page link is needed ({verdict})",
                                  "field": "token"}, status=401), zone

    async def page(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={
            "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache"})

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in FILES:
            raise web.HTTPNotFound()
        return web.FileResponse(STATIC / name, headers={"Content-Type": FILES[name],
                                                        "Cache-Control": "no-cache"})

    async def state(request: web.Request) -> web.StreamResponse:
        refused, zone = await allowed(request, request.match_info["zone"])
        if refused is not None:
            return refused
        return web.json_response(plane.board.state(zone).model_dump(mode="json"))

    async def events(request: web.Request) -> web.StreamResponse:
        refused, zone = await allowed(request, request.match_info["zone"])
        if refused is not None:
            return refused
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        feed = plane.board
        q = feed.watch(zone)
        try:
            await _send(resp, feed.state(zone).model_dump_json())
            while True:
                try:
                    state = await asyncio.wait_for(q.get(), HEARTBEAT_S)
                except TimeoutError:
                    await resp.write(b": alive\n\n")
                    continue
                if state is None:  # the zone was edited away: the page reconnects
                    break
                await _send(resp, state.model_dump_json())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            feed.unwatch(zone, q)
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp

    app.router.add_get("/board/static/{name}", static)
    app.router.add_get("/board/{zone}", page)
    app.router.add_get("/board/{zone}/state", state)
    app.router.add_get("/board/{zone}/events", events)


async def _send(resp: web.StreamResponse, data: str) -> None:
    await resp.write(f"event: board\ndata: {data}\n\n".encode())
