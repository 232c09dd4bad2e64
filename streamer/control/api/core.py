"""The API's one mechanism: declared operations, thin handlers, and the edge that guards them.

Each operation is declared once with :meth:`Api.route` — method, path, body model, query
model, response model, status — and that declaration both installs the aiohttp route and
produces its OpenAPI entry (``openapi.py``), so the document cannot drift from the handlers.
The edge (``_run``) does what every handler would otherwise repeat: bearer authentication,
body size limits, validation into the declared model, and turning refusals into JSON errors
with a log line, a metric and (for 403) an audit entry. Handlers only decide and call.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pydantic_core
import redis.exceptions
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ValidationError

from streamer.control import auth
from streamer.control.auth import Forbidden
from streamer.control.models import AuditEntry, Role, User
from streamer.control.schemas import UNION_TAGS, BadRequest

log = logging.getLogger("loa.api")
MAX_JSON_BYTES = 256 * 1024
M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        """``extra``: more of the error body beside ``error`` and ``field`` (e.g. every bad
        row of a bulk import)."""
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.headers = headers
        self.extra = extra


class NotFound(ApiError):
    def __init__(self, what: str, field: str = "id") -> None:
        super().__init__(404, f"no {what}", field)


class Conflict(ApiError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(409, message, field)


class ErrorBody(BaseModel):
    error: str
    field: str | None = None


@dataclass
class Ctx:
    """What a handler gets: the request, the services, the caller, the validated input."""

    request: web.Request
    services: Any  # streamer.control.plane.Plane (kept untyped here to avoid an import cycle)
    user: User | None
    body: Any = None
    query: Any = None
    #: wall-clock time the request arrived (a broadcast's time to air counts from it)
    received: float = field(default_factory=time.time)

    @property
    def me(self) -> User:
        assert self.user is not None, "handler of an authenticated route"
        return self.user

    def path(self, name: str) -> str:
        return self.request.match_info[name]

    def require(self, roles: frozenset[Role], zones: list[str], what: str) -> None:
        auth.require(self.me, roles, zones, what)

    async def audit(self, action: str, target: str = "", zones: list[str] | None = None,
                    **detail: Any) -> None:
        await self.services.state.audit(AuditEntry(
            ts=time.time(), user=self.user.name if self.user else "-", action=action,
            target=target, zones=zones or [], detail=detail))


Handler = Callable[[Ctx], Awaitable[Any]]


@dataclass
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    auth: bool = True
    #: non-JSON bodies: request content type (e.g. multipart/form-data) and the response's
    upload: dict[str, Any] | None = None
    produces: dict[str, Any] | None = None
    path_types: dict[str, type] = field(default_factory=dict)
    errors: tuple[int, ...] = (400, 401, 403, 404, 409, 503)

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


class Api:
    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def route(self, method: str, path: str, *, summary: str, tag: str,
              **kw: Any) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.operations.append(Operation(method, path, fn, summary, tag, **kw))
            return fn
        return deco

    def install(self, app: web.Application, services: Any, registry: CollectorRegistry) -> None:
        metrics = ApiMetrics(registry)
        for op in self.operations:
            app.router.add_route(op.method, op.path, _endpoint(op, services, metrics))


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.bad = Counter("loa_api_bad_requests_total", "Refused API requests by field",
                           ["field"], registry=registry)
        self.denied = Counter("loa_api_denied_total", "API requests refused by auth",
                              ["status"], registry=registry)
        self.requests = Counter("loa_api_requests_total", "API requests by operation and status",
                                ["operation", "status"], registry=registry)


async def read_limited(request: web.Request, max_bytes: int, field: str) -> bytes:
    """The whole request body, or ``413`` naming ``field`` past ``max_bytes`` (checked on the
    declared length first, then as it arrives)."""
    if (request.content_length or 0) > max_bytes:
        raise ApiError(413, f"the request is over {max_bytes >> 20} MiB", field)
    body = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, f"the request is over {max_bytes >> 20} MiB", field)
    return bytes(body)


def _error(status: int, message: str, field: str | None = None,
           headers: dict[str, str] | None = None,
           extra: dict[str, Any] | None = None) -> web.Response:
    return web.json_response({**ErrorBody(error=message, field=field).model_dump(),
                              **(extra or {})}, status=status, headers=headers)


def _field_of(e: ValidationError) -> tuple[str, str]:
    """The dotted field and a readable message of pydantic's first error."""
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"]
           if not isinstance(p, int) and not str(p).startswith(("function-", "tagged-union"))]
    tag = next((i for i, p in enumerate(loc) if i and p in UNION_TAGS), None)
    if tag is not None:  # pydantic puts the union member's tag into the path: source.tone.hz
        del loc[tag]
    msg = err["msg"]
    if err["type"].startswith("union_tag"):  # a bad or missing discriminator, e.g. source.kind
        loc.append(str(err.get("ctx", {}).get("discriminator", "kind")).strip("'"))
    elif err["type"] == "missing":
        msg = "is required"
    elif err.get("input", ...) is None and err["type"].endswith("_type"):
        msg = "may not be null"
    elif err["type"] == "extra_forbidden":
        msg = "is not a known field"
    return ".".join(loc) or "body", msg


async def read_body(request: web.Request, model: type[M]) -> M:
    """The request's JSON body as ``model``, parsed strictly: JSON's own types only (no
    ``"yes"`` for ``true``, no ``0`` for ``false``, no ``"5"`` for ``5``; an integer is
    accepted where a number is), ``null`` only where the field's type says ``| None``, and
    no ``NaN``/``Infinity``, which are not JSON. Refused before it is read whole if too big."""
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise ApiError(413, f"body larger than {MAX_JSON_BYTES} bytes", "body")
    raw = await request.content.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise ApiError(413, f"body larger than {MAX_JSON_BYTES} bytes", "body")
    if not raw.strip():
        raise BadRequest("body", "a JSON object is required")
    try:  # pydantic's JSON parser takes NaN and Infinity; this one refuses them
        pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as e:
        raise BadRequest("body", f"not valid JSON: {e}") from None
    return model.model_validate_json(raw, strict=True)


_BEARER = re.compile(r"^Bearer ([A-Za-z0-9_-]{16,128})$")


async def authenticate(request: web.Request, services: Any) -> User | None:
    m = _BEARER.match(request.headers.get("Authorization", ""))
    if m is None:
        return None
    # answered from what Redis last confirmed while Redis is away (State.token_owner)
    user = await services.state.token_owner(auth.token_digest(m.group(1)))
    return None if user is None or user.disabled else user


def _parse_path(op: Operation, request: web.Request) -> None:
    for name, typ in op.path_types.items():
        raw = request.match_info[name]
        if typ is int and not (raw.isdigit() and len(raw) <= 12):
            raise BadRequest(name, "must be a whole number")


def _endpoint(op: Operation, services: Any, metrics: ApiMetrics) -> Callable[
        [web.Request], Awaitable[web.StreamResponse]]:
    async def endpoint(request: web.Request) -> web.StreamResponse:
        resp = await _run(op, services, metrics, request)
        metrics.requests.labels(op.operation_id, str(resp.status)).inc()
        return resp
    endpoint.__name__ = op.operation_id
    return endpoint


async def _run(op: Operation, services: Any, metrics: ApiMetrics,
               request: web.Request) -> web.StreamResponse:
    ctx = Ctx(request, services, None)
    try:
        if op.auth:
            ctx.user = await authenticate(request, services)
            if ctx.user is None:
                metrics.denied.labels("401").inc()
                return _error(401, "a valid bearer token is required (POST /api/v1/login)",
                              "Authorization", {"WWW-Authenticate": "Bearer"})
        _parse_path(op, request)
        if op.query is not None:
            ctx.query = op.query.model_validate(dict(request.query))
        if op.body is not None:
            ctx.body = await read_body(request, op.body)
        result = await op.handler(ctx)
    except ValidationError as e:
        field_name, msg = _field_of(e)
        return _refuse(request, metrics, 400, msg, field_name)
    except BadRequest as e:
        return _refuse(request, metrics, 400, e.message, e.field)
    except ApiError as e:
        return _refuse(request, metrics, e.status, e.message, e.field, e.headers, e.extra)
    except Forbidden as e:
        metrics.denied.labels("403").inc()
        log.warning("%s %s: forbidden: %s", request.method, request.path, e.message)
        await services.state.audit(AuditEntry(
            ts=time.time(), user=ctx.me.name, action=op.operation_id, target=request.path,
            zones=e.zones, outcome="denied", detail={"reason": e.message}))
        return _error(403, e.message, "zones")
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
        log.error("%s %s: state store unavailable: %s", request.method, request.path, e)
        return _error(503, "state store (Redis) unavailable; try again", None)
    except Exception:  # a bug: log it whole, answer in the API's error shape
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal error (logged)", None)
    if isinstance(result, web.StreamResponse):
        return result
    body = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
    return web.json_response(body, status=op.status)


def _refuse(request: web.Request, metrics: ApiMetrics, status: int, message: str,
            field_name: str | None, headers: dict[str, str] | None = None,
            extra: dict[str, Any] | None = None) -> web.Response:
    metrics.bad.labels(field=field_name or "-").inc()
    log.warning("%s %s: %d %s: %s", request.method, request.path, status, field_name, message)
    return _error(status, message, field_name, headers, extra)


#: every operation of the API, declared by the resource modules in this package
API = Api()
