"""HTTP API ``/api/v1``: one module per resource, each a handful of thin handlers declared on
:data:`~streamer.control.api.core.API`; ``openapi.json`` is generated from the same
declarations."""

from __future__ import annotations

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

OPENAPI_KEY: web.AppKey[dict[str, object]] = web.AppKey("openapi", dict)


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_KEY])


def add_api_routes(app: web.Application, plane: object, registry: CollectorRegistry) -> None:
    API.install(app, plane, registry)
    app[OPENAPI_KEY] = build(API.operations)
    app.router.add_get("/api/v1/openapi.json", _openapi)
