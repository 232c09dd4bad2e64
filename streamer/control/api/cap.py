"""CAP 1.2 alerts in (``docs/cap.md``): a warning centre's feed becomes an emergency or priority
broadcast spoken in Vietnamese.

The order is chosen so that a refused alert changes nothing: parse and check, map the areas,
check the caller's roles, synthesise the speech, and only then stop what an Update or Cancel
replaces and air the new one. Test and Exercise alerts reach only zones marked for tests (a
province drill must not wake a commune that is not in it); System and Draft alerts, Acks and
Errors are recorded and never aired. The same alert sent twice is answered, not aired twice.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from streamer.control import auth, cap
from streamer.control.auth import Forbidden
from streamer.control.models import BroadcastState, CapRecord
from streamer.control.schemas import BadRequest, BroadcastIn, BroadcastOut, EmergencyIn, TtsSource
from wire.ids import ancestors

from .broadcasts import air
from .core import API, ApiError, Conflict, Ctx

_XML = {"schema": {"type": "string", "description": "a CAP 1.2 <alert> document"}}
_CAP_CONTENT = {"application/cap+xml": _XML, "application/xml": _XML, "text/xml": _XML}
TEST_STATUSES = frozenset({"Test", "Exercise"})
AIRED_TYPES = frozenset({"Alert", "Update"})

log = logging.getLogger("loa.api")


class CapOut(BaseModel):
    reference: str = Field(description="sender,identifier,sent of this alert")
    action: Literal["aired", "replaced", "cancelled", "recorded", "duplicate"]
    level: str | None = None
    zones: list[str] = Field(default_factory=list)
    unmatched_areas: list[str] = Field(default_factory=list)
    unknown_geocodes: list[str] = Field(default_factory=list)
    retired_geocodes: dict[str, list[str]] = Field(
        default_factory=dict, description="each geocode naming a zone merged or renamed away "
        "(an id or an administrative code from before a runtime zone edit), with the zones "
        "it reached instead: what that zone was made of")
    stopped: list[int] = Field(default_factory=list)
    broadcast: BroadcastOut | None = None


async def _read(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > cap.MAX_CAP_BYTES:
        raise ApiError(413, f"CAP document larger than {cap.MAX_CAP_BYTES} bytes", "alert")
    raw = await request.content.read(cap.MAX_CAP_BYTES + 1)
    if len(raw) > cap.MAX_CAP_BYTES:
        raise ApiError(413, f"CAP document larger than {cap.MAX_CAP_BYTES} bytes", "alert")
    return raw


def _test_leaves(ctx: Ctx, zones: set[str]) -> list[str]:
    """The leaf zones under ``zones`` that are marked for tests (or below a zone that is)."""
    known = ctx.services.zones
    return sorted(leaf for z in zones for leaf in ctx.services.tree.leaves(z)
                  if any(known[a].test for a in ancestors(leaf) if a in known))


async def _stop_referenced(ctx: Ctx, alert: cap.Alert) -> list[int]:
    plane = ctx.services
    stopped = []
    for ref in alert.references:
        rec = await plane.state.cap.get(ref.key)
        b = None if rec is None or rec.broadcast is None else await plane.broadcasts.get(
            rec.broadcast)
        if b is None or b.state not in (BroadcastState.QUEUED, BroadcastState.PENDING_APPROVAL):
            continue
        ctx.require(auth.EMERGENCY if b.priority == "emergency" else auth.OPERATE, b.zones,
                    f"stop broadcast {b.id} of CAP alert {ref.identifier}")
        await plane.broadcasts.stop(b)
        stopped.append(b.id)
    return stopped


@API.route("POST", "/api/v1/cap", summary="Receive a CAP 1.2 alert: aired as emergency or "
           "priority, spoken in Vietnamese; Update replaces, Cancel stops", tag="emergency",
           upload=_CAP_CONTENT, response=CapOut, status=201)
async def receive_cap(ctx: Ctx) -> CapOut:
    plane = ctx.services
    if not any(g.role in auth.OPERATE | auth.EMERGENCY for g in ctx.me.grants):
        raise Forbidden("CAP alerts need the operator or emergency role")
    try:
        alert = cap.parse_cap(await _read(ctx.request))
    except cap.CapError as e:
        raise BadRequest(e.field, e.message) from None
    ref = alert.reference.key
    out = CapOut(reference=ref, action="recorded")
    if await plane.state.cap.get(ref) is not None:
        out.action = "duplicate"
        return out
    record = CapRecord(ref=ref, msg_type=alert.msg_type, status=alert.status,
                       received=time.time(), user=ctx.me.name)
    aired = alert.msg_type in AIRED_TYPES and alert.status in TEST_STATUSES | {"Actual"}
    if aired:
        out.level = level = cap.classify(alert)
        match = cap.resolve_areas(alert, plane.zones, await plane.state.speakers.all(),
                                  plane.tree)
        out.unmatched_areas, out.unknown_geocodes = match.unmatched_areas, match.unknown_geocodes
        out.retired_geocodes = match.retired_geocodes
        if match.retired_geocodes:
            log.warning("CAP %s names zones from before a zone edit: %s", ref,
                        match.retired_geocodes)
        zones = sorted(match.zones)
        if alert.status in TEST_STATUSES:
            zones = _test_leaves(ctx, match.zones)
            if not zones:
                raise Conflict(f"a {alert.status} alert airs only in zones marked for tests, "
                               "and none is in its area", "status")
        if not zones:
            raise Conflict("no zone lies in the alert's area (" + "; ".join(
                match.unmatched_areas[:5]) + ")", "info.area")
        expires = cap.expires(alert)
        if expires is not None and expires.timestamp() <= time.time():
            raise Conflict(f"the alert expired at {expires.isoformat()}", "info.expires")
        ctx.require(auth.EMERGENCY if level == "emergency" else auth.OPERATE, zones,
                    f"air a CAP {level} alert")
        text = cap.speech_text(alert)
        built = await plane.broadcasts.build(TtsSource(kind="tts", text=text), zones)
        out.stopped = await _stop_referenced(ctx, alert)
        label = f"CAP {alert.identifier}: {alert.info.headline if alert.info else ''}"[:200]
        body: EmergencyIn | BroadcastIn
        if level == "emergency":
            left = None if expires is None else int(expires.timestamp() - time.time())
            body = EmergencyIn(zones=zones, source=TtsSource(kind="tts", text=text), label=label,
                               expires_s=None if left is None else max(60, left))
        else:
            body = BroadcastIn(zones=zones, priority=level, source=TtsSource(kind="tts",
                               text=text), label=label)
        out.broadcast = await air(ctx, zones, level, body, built=built, cap=ref)
        out.zones, record.zones, record.broadcast = zones, zones, out.broadcast.id
        out.action = "replaced" if out.stopped else "aired"
    elif alert.msg_type == "Cancel":
        out.stopped = await _stop_referenced(ctx, alert)
        out.action = "cancelled"
    await plane.state.cap.put(ref, record)
    await ctx.audit("cap", ref, out.zones, msg_type=alert.msg_type, status=alert.status,
                    result=out.action, stopped=out.stopped)
    return out
