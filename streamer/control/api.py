"""HTTP API ``/api/v1`` (aiohttp): thin handlers over :class:`Broadcasts` and the zone tree.

Each handler parses and validates its input (``schemas.py``), calls one method, and renders
JSON. Bad input gets a 4xx JSON body ``{"error": …, "field": …}``, a log line and a metric,
and changes nothing. Auth slots in as middleware with the control-plane issue.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from streamer.mixer.sources import ClipError

from .broadcasts import Broadcasts
from .schemas import BadRequest, parse_broadcast

log = logging.getLogger(__name__)
MAX_JSON_BYTES = 256 * 1024
MAX_CLIP_BYTES = 64 * 1024 * 1024

BROADCASTS_KEY: web.AppKey[Broadcasts] = web.AppKey("broadcasts", Broadcasts)
BAD_KEY: web.AppKey[Counter] = web.AppKey("bad_requests", Counter)


def error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


def _bad(request: web.Request, e: BadRequest, status: int = 400) -> web.Response:
    request.app[BAD_KEY].labels(field=e.field).inc()
    log.warning("%s %s: bad request: %s", request.method, request.path, e)
    return error(status, e.message, e.field)


async def _json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise BadRequest("body", f"larger than {MAX_JSON_BYTES} bytes")
    raw = await request.content.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise BadRequest("body", f"larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest("body", f"not valid JSON: {e}") from None


async def create_broadcast(request: web.Request) -> web.Response:
    b = request.app[BROADCASTS_KEY]
    try:
        req = parse_broadcast(await _json_body(request), lambda z: z in b.zones.zones)
        rec = await b.create(req)
    except BadRequest as e:
        return _bad(request, e)
    return web.json_response(b.as_json(rec), status=201)


async def list_broadcasts(request: web.Request) -> web.Response:
    b = request.app[BROADCASTS_KEY]
    return web.json_response({"broadcasts": [b.as_json(r) for r in b.records.values()]})


def _broadcast_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 12:
        raise BadRequest("id", "must be a broadcast id (a whole number)")
    return int(raw)


async def _one_broadcast(request: web.Request, stop: bool) -> web.Response:
    b = request.app[BROADCASTS_KEY]
    try:
        bid = _broadcast_id(request)
    except BadRequest as e:
        return _bad(request, e)
    rec = b.stop(bid) if stop else b.records.get(bid)
    if rec is None:
        return error(404, f"no broadcast {bid}", "id")
    return web.json_response(b.as_json(rec))


async def get_broadcast(request: web.Request) -> web.Response:
    return await _one_broadcast(request, stop=False)


async def stop_broadcast(request: web.Request) -> web.Response:
    return await _one_broadcast(request, stop=True)


async def upload_clip(request: web.Request) -> web.Response:
    """Raw audio body (any format PyAV decodes); refused before reading if too large."""
    b = request.app[BROADCASTS_KEY]
    try:
        if request.content_length is not None and request.content_length > MAX_CLIP_BYTES:
            raise BadRequest("body", f"larger than {MAX_CLIP_BYTES} bytes")
        data = await request.content.read(MAX_CLIP_BYTES + 1)
        if len(data) > MAX_CLIP_BYTES:
            raise BadRequest("body", f"larger than {MAX_CLIP_BYTES} bytes")
        if not data:
            raise BadRequest("body", "empty upload")
        try:
            cid, clip = await asyncio.to_thread(b.clips.add, data)
        except ClipError as e:
            raise BadRequest("body", f"not playable audio: {e}") from None
    except BadRequest as e:
        return _bad(request, e, 413 if "larger" in e.message else 400)
    return web.json_response({"id": cid, "seconds": (clip.length or 0) / 48_000}, status=201)


async def zones(request: web.Request) -> web.Response:
    b = request.app[BROADCASTS_KEY]
    tree = b.zones
    return web.json_response({"zones": [tree.as_dict(r) for r in tree.roots]})


async def channels(request: web.Request) -> web.Response:
    b = request.app[BROADCASTS_KEY]
    mixer = b.mixer
    return web.json_response({"channels": [
        {"id": c.id, "ssrc": c.ssrc, "name": b.zones.zones[c.id].name,
         "on_air": c.program.current or 0}
        for c in mixer.channels.values()]})


def add_api_routes(app: web.Application, broadcasts: Broadcasts,
                   registry: CollectorRegistry) -> None:
    app[BROADCASTS_KEY] = broadcasts
    app[BAD_KEY] = Counter("loa_api_bad_requests_total", "Refused API requests by field",
                           ["field"], registry=registry)
    app.router.add_post("/api/v1/broadcasts", create_broadcast)
    app.router.add_get("/api/v1/broadcasts", list_broadcasts)
    app.router.add_get("/api/v1/broadcasts/{id}", get_broadcast)
    app.router.add_delete("/api/v1/broadcasts/{id}", stop_broadcast)
    app.router.add_post("/api/v1/clips", upload_clip)
    app.router.add_get("/api/v1/zones", zones)
    app.router.add_get("/api/v1/channels", channels)
