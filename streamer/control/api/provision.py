"""Bulk import of speakers and relays: one CSV or JSON file, checked whole, written whole, its
credentials answered once (``streamer/control/provision.py``; ``docs/api.md``, "Bulk
import")."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from streamer.control import auth, broker, provision
from streamer.control.models import Board, Relay, Speaker

from .core import API, ApiError, Ctx, read_limited
from .speakers import Credentials

_KIND = {Speaker: "speaker", Relay: "relay", Board: "board"}
MAX_BODY = 16 * 1024 * 1024  # 100,000 rows of ~150 bytes
_FILE = {"text/csv": {"schema": {"type": "string"}},
         "application/json": {"schema": {"type": "object", "properties": {
             "devices": {"type": "array", "items": {"type": "object"}}}}}}


class ImportQuery(BaseModel):
    dry_run: bool = Field(False, description="check the file, write nothing")


class DeviceCredentials(Credentials):
    kind: str


class ImportOut(BaseModel):
    speakers: int
    relays: int
    boards: int = 0
    dry_run: bool
    credentials: list[DeviceCredentials] = Field(
        default_factory=list, description="every device's MQTT login, shown once")
    stream_keys: list[str] = Field(default_factory=list)


@API.route("POST", "/api/v1/devices/import", summary="Register many speakers and relays from "
           "a CSV or JSON file: all or nothing; their MQTT passwords are returned once",
           tag="speakers", query=ImportQuery, upload=_FILE, response=ImportOut, status=201,
           produces={"text/csv": {"schema": {"type": "string"}}},
           errors=(400, 401, 403, 409, 413, 415, 503))
async def import_devices(ctx: Ctx) -> ImportOut | web.Response:
    q: ImportQuery = ctx.query
    plane = ctx.services
    content_type = ctx.request.content_type
    if content_type not in ("text/csv", "application/json"):
        raise ApiError(415, "send the file as text/csv or application/json", "Content-Type")
    body = await read_limited(ctx.request, MAX_BODY, "file")
    try:
        rows = provision.read(body, content_type)
    except provision.BadFile as e:
        raise ApiError(400, str(e), "file") from None
    tree = plane.tree
    checked = provision.check(
        rows, is_leaf=lambda z: z in tree.zones and tree.zones[z].is_leaf,
        is_zone=lambda z: z in plane.zones, registered=await plane.state.device_ids(),
        now=time.time())
    # every zone the file names, all or nothing (a zoneless relay needs an admin anywhere)
    ctx.require(auth.ADMIN, checked.zones, "register devices")
    if checked.errors:
        n = len(checked.errors)
        raise ApiError(400, f"{n} bad row{'s' if n > 1 else ''}: nothing was imported", "rows",
                       extra={"rows": [vars(e) for e in checked.errors[:provision.MAX_ERRORS]],
                              "bad_rows": n})
    if not checked.speakers and not checked.relays and not checked.boards:
        raise ApiError(400, "the file has no devices", "file")
    out = ImportOut(speakers=len(checked.speakers), relays=len(checked.relays),
                    boards=len(checked.boards), dry_run=q.dry_run,
                    stream_keys=plane.stream_keys())
    if q.dry_run:
        return out
    devices = [*checked.speakers, *checked.relays, *checked.boards]
    # hashing 5,000 passwords takes a fraction of a second, off the event loop
    passwords = {d.id: broker.new_password() for d in devices}
    secrets = await asyncio.to_thread(
        lambda: {i: broker.hash_password(p) for i, p in passwords.items()})
    await plane.state.add_devices(checked.speakers, checked.relays, secrets, checked.boards)
    await plane.devices.sync_broker()  # once for the whole file
    for s in checked.speakers:
        plane.recorder.place(s.id, s.zone)
    if plane.tokens is not None:
        for d in [*checked.speakers, *checked.relays]:  # a board subscribes to no stream
            plane.tokens.soon(d)
    await ctx.audit("import_devices", f"{len(devices)} devices", checked.zones,
                    speakers=[s.id for s in checked.speakers],
                    relays=[r.id for r in checked.relays],
                    boards=[b.id for b in checked.boards])
    out.credentials = [DeviceCredentials(kind=_KIND[type(d)],
                                         user=d.id, password=passwords[d.id])
                       for d in devices]
    if "text/csv" in ctx.request.headers.get("Accept", ""):
        return web.Response(text=_csv(out.credentials), content_type="text/csv", status=201,
                            headers={"Cache-Control": "no-store"})
    return out


def _csv(rows: list[Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["kind", "user", "password"])
    for r in rows:
        w.writerow([r.kind, r.user, r.password])
    return buf.getvalue()
