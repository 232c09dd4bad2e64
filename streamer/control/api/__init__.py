"""HTTP API ``/api/v1``: one module per resource, each a handful of thin handlers declared on
:data:`~streamer.control.api.core.API`; ``openapi.json`` is generated from the same
declarations."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CollectorRegistry

from . import (  # noqa: F401 (each module declares its routes on API)
    approvals,
    audit,
    boards,
    broadcasts,
    cap,
    clips,
    events,
    inbound,
    inputs,
    lexicon,
    listen,
    provision,
    relays,
    reports,
    schedules,
    session,
    speakers,
    studio,
    users,
    zones,
)
from .core import API
from .openapi import build

#: the OpenAPI document, the same for every streamer of the process: built at its first request
_document: dict[str, object] | None = None


async def _openapi(request: web.Request) -> web.Response:
    global _document
    if _document is None:
        # On first use and off the control loop, not at every start: it is a quarter of a
        # second of pydantic schema generation that a standby taking over need not pay.
        _document = await asyncio.to_thread(build, API.operations)
    return web.json_response(_document)


def add_api_routes(app: web.Application, plane: object, registry: CollectorRegistry) -> None:
    API.install(app, plane, registry)
    app.router.add_get("/api/v1/openapi.json", _openapi)
