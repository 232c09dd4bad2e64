"""``GET /api/v1/events``: live updates as Server-Sent Events, scoped to the user's zones.

A declared operation like any other (bearer token, 401 without one, counted in
``loa_api_requests_total`` when the stream ends, described in the OpenAPI as
``text/event-stream``); only its answer is a stream. On connect the client gets ``hello``, then
a snapshot — ``onair`` for every channel it can see, ``emergency`` for each one in force, and
every ``alert`` firing — then every change as it happens (``streamer/control/events.py``), and
``: ping`` every 15 s. The subscription and its snapshot are taken in one step of the event
loop, so no change falls between them, and every id on the stream is above the snapshot's.
The stream ends when the token expires, and at the first ping after it is revoked or its
user is disabled or given other grants (the client reconnects and gets a new ``hello``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiohttp import web

from streamer.control import auth
from streamer.control.events import PING, EventHub, Subscriber, frame
from streamer.control.models import Role, User

from .core import API, Ctx

log = logging.getLogger("loa.api")
#: how a stream's headers tell proxies not to buffer or cache it
HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
           "X-Accel-Buffering": "no"}
_RANK = [Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.EMERGENCY, Role.ADMIN]

EVENT_STREAM = {"text/event-stream": {"schema": {
    "type": "string", "description": "SSE: `event: <name>`, `id: <n>`, `data: <one-line JSON>` "
    "per event (hello, onair, reach, presence, approval, emergency, alert; docs/api.md, "
    "Events); `: ping` every 15 s"}}}


@API.route("GET", "/api/v1/events", summary="Live updates (Server-Sent Events) in the zones "
           "you can see: on air, reach, presence, approvals, emergencies, alerts",
           tag="events", produces=EVENT_STREAM, errors=(401, 503))
async def events(ctx: Ctx) -> web.StreamResponse:
    plane, user = ctx.services, ctx.me
    hub: EventHub = plane.events
    digest = auth.token_digest(ctx.request.headers["Authorization"].split(" ", 1)[1])
    expires = plane.state.token_expires(digest) or time.time() + auth.TOKEN_TTL_S
    resp = web.StreamResponse(headers=HEADERS)
    sub = hub.subscribe(lambda z: auth.visible(user, z))
    reason = None
    try:
        snapshot = _snapshot(plane, hub, user)  # no await since subscribe: nothing missed
        await resp.prepare(ctx.request)
        transport = ctx.request.transport
        if transport is not None:
            sub.on_drop = transport.abort  # a blocked write ends at once
        await resp.write(snapshot)
        reason = await _stream(plane, hub, sub, resp, user, digest, expires)
        await resp.write_eof()
    except ConnectionError:  # the client left, or was dropped
        pass
    except Exception:  # a bug: the stream ends (the client reconnects)
        if not resp.prepared:
            raise  # the API's 500, in its error shape
        log.exception("event stream of %s failed", user.name)
    finally:
        hub.unsubscribe(sub, reason)
    return resp


async def _stream(plane: Any, hub: EventHub, sub: Subscriber, resp: web.StreamResponse,
                  user: User, digest: str, expires: float) -> str | None:
    """Write what the hub queues until the stream must end; why it ended, if the streamer
    ended it for a reason the metrics count (None: the client left, or the streamer stops)."""
    next_ping = time.monotonic() + hub.ping_s
    while True:
        if sub.queue:
            await resp.write(sub.take())
        if sub.dropped is not None:
            return None  # counted by the hub (slow) or the streamer is closing
        left_s = expires - time.time()
        if left_s <= 0:
            log.info("event stream of %s: token expired", user.name)
            await resp.write(b": signed out\n\n")
            return "signed_out"
        wait_s = min(next_ping - time.monotonic(), left_s)
        if wait_s > 0 and not sub.queue:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.wake.wait(), wait_s)
            continue
        if time.monotonic() >= next_ping:
            next_ping = time.monotonic() + hub.ping_s
            owner = await plane.state.token_owner(digest)
            if owner is None or owner.disabled or owner.grants != user.grants:
                log.info("event stream of %s: signed out, disabled or regranted", user.name)
                await resp.write(b": signed out\n\n")
                return "signed_out"
            await resp.write(PING)


def _snapshot(plane: Any, hub: EventHub, user: User) -> bytes:
    """``hello``, then what holds now in the zones ``user`` can see, as one write."""
    zones = [z for z in plane.tree.zones if auth.visible(user, z)]
    roles = {g.role for g in user.grants}
    out = [frame("hello", hub.next_id(), {
        "user": user.name, "role": max(roles, key=_RANK.index).value if roles else "",
        "grants": [g.model_dump(mode="json") for g in user.grants], "zones": zones})]
    onair = plane.broadcasts.onair
    for z in zones:
        if plane.tree.zones[z].is_leaf:
            out.append(frame("onair", hub.next_id(), {"zone": z, "broadcast": onair.now(z)}))
    sees = [*(("emergency", plane.broadcasts.emergency_event(r))
              for r in plane.broadcasts.emergencies_on()),
            *(("alert", a) for a in plane.alerts.snapshot())]
    for name, data in sees:
        visible = [z for z in data["zones"] if auth.visible(user, z)]
        if visible:
            out.append(frame(name, hub.next_id(), {**data, "zones": visible}))
    return b"".join(out)
