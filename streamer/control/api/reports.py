"""Reports over HTTP: ``/api/v1/reports/broadcast-minutes`` and ``…/availability``, JSON or CSV,
and the report upward (``…/upward``) with its manual push.

The handlers read the query, pick the zones the caller may see, fetch broadcast records or
the presence log, and answer; the arithmetic is ``streamer/control/reports.py``. A caller
sees only zones they hold a role on; nothing here writes state but the push's audit entry.
"""

from __future__ import annotations

import re
import time
from datetime import date, timedelta
from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from streamer.control import auth
from streamer.control.models import ZoneId, covers
from streamer.control.reports import (
    LOOKBACK_S,
    AvailabilityRow,
    Days,
    MinutesRow,
    availability,
    broadcast_minutes,
    to_csv,
)
from streamer.control.schedules import DEFAULT_TZ as LOCAL_TZ
from streamer.control.schemas import BadRequest
from streamer.control.upward import (
    UPWARD,
    ReportPeriod,
    UpwardReport,
    build_report,
    province_of,
    report_id,
)

from .core import API, Conflict, Ctx

MAX_DAYS = 366
_DAY_RE = re.compile(r"^2[0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")
_CSV = {"text/csv": {"schema": {"type": "string"}}}


def _day(v: Any) -> Any:
    if isinstance(v, str):
        if not _DAY_RE.match(v):
            raise ValueError("must be a date YYYY-MM-DD (years 2000-2999)")
        try:
            return date.fromisoformat(v)
        except ValueError:
            raise ValueError("is not a calendar date") from None
    return v


Day = Annotated[date, BeforeValidator(_day), WithJsonSchema(
    {"type": "string", "format": "date", "pattern": _DAY_RE.pattern})]


def day_span(to: date | None, info: ValidationInfo, max_days: int, what: str) -> date | None:
    """``to`` checked against the ``from`` already validated: not before it, and less than
    ``max_days`` after it (a query model's ``field_validator("to")``)."""
    first = info.data.get("from_")
    if to is None or first is None:
        return to
    if to < first:
        raise ValueError("must not be before 'from'")
    if (to - first).days >= max_days:
        raise ValueError(f"{what} spans at most {max_days} days")
    return to


class ReportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_: Day = Field(alias="from", description="first local day (Asia/Ho_Chi_Minh)")
    to: Day | None = Field(None, description="last local day, included; default: from")
    zone: ZoneId | None = Field(None, description="default: the zones of your grants")
    group: Literal["leaf", "zone"] = Field(
        "leaf", description="leaf: one row per leaf zone; zone: the requested zone rolled up")
    format: Literal["json", "csv"] = "json"

    @field_validator("to")
    @classmethod
    def _span(cls, to: date | None, info: ValidationInfo) -> date | None:
        return day_span(to, info, MAX_DAYS, "a report")

    @property
    def days(self) -> list[date]:
        last = self.to or self.from_
        return [self.from_ + timedelta(days=i) for i in range((last - self.from_).days + 1)]


class MinutesReport(BaseModel):
    first_day: date
    last_day: date
    zones: list[str]
    group: str
    rows: list[MinutesRow]


class AvailabilityReport(BaseModel):
    first_day: date
    last_day: date
    zones: list[str]
    group: str
    rows: list[AvailabilityRow]


def _scope(ctx: Ctx, q: ReportQuery) -> list[str]:
    """The zones the report covers: the requested one (VIEW on all of it), else the caller's
    grant zones without those inside another."""
    tree = ctx.services.tree
    if q.zone is not None:
        if q.zone not in tree.zones:
            raise BadRequest("zone", f"unknown zone {q.zone!r}")
        ctx.require(auth.VIEW, [q.zone], "see reports")
        return [q.zone]
    mine = {g.zone for g in ctx.me.grants if g.zone in tree.zones}
    return sorted(z for z in mine if not any(o != z and covers(o, z) for o in mine))


Report = TypeVar("Report", MinutesReport, AvailabilityReport)


def _answer(q: ReportQuery, kind: str, report: Report,
            row_model: type[BaseModel]) -> Report | web.Response:
    """The report as JSON, or its rows as CSV (a header line of the row's field names)."""
    if q.format == "json":
        return report
    name = f"{kind}-{q.from_.isoformat()}-{(q.to or q.from_).isoformat()}.csv"
    return web.Response(text=to_csv(report.rows, row_model), content_type="text/csv",
                        charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


@API.route("GET", "/api/v1/reports/broadcast-minutes", summary="Minutes of broadcast airtime "
           "per zone, local day and priority (JSON or CSV)", tag="reports", query=ReportQuery,
           response=MinutesReport, produces=_CSV, errors=(400, 401, 403, 503))
async def broadcast_minutes_report(ctx: Ctx) -> MinutesReport | web.Response:
    q: ReportQuery = ctx.query
    plane = ctx.services
    scope = _scope(ctx, q)
    days = Days(q.days)
    now = plane.now()
    recs = {r.id: r for r in await plane.state.broadcasts_between(days.t0 - LOOKBACK_S,
                                                                  days.t1)}
    recs.update({r.id: r for r in plane.broadcasts.live.values()})  # on air, however old
    rows = broadcast_minutes(recs.values(), days, scope, plane.tree.leaves, q.group, now)
    return _answer(q, "broadcast-minutes", MinutesReport(
        first_day=days.days[0], last_day=days.days[-1], zones=scope, group=q.group,
        rows=rows), MinutesRow)


@API.route("GET", "/api/v1/reports/availability", summary="Speaker availability (fraction of "
           "each local day online) per zone (JSON or CSV)", tag="reports", query=ReportQuery,
           response=AvailabilityReport, produces=_CSV, errors=(400, 401, 403, 503))
async def availability_report(ctx: Ctx) -> AvailabilityReport | web.Response:
    q: ReportQuery = ctx.query
    plane = ctx.services
    scope = _scope(ctx, q)
    days = Days(q.days)
    now = plane.now()
    speakers = [s for s in await plane.state.speakers.all()
                if any(covers(z, s.zone) for z in scope)]
    end = min(days.t1, now)
    initial: dict[str, str] = {}
    log: list[tuple[float, str, str]] = []
    if speakers and end > days.t0:
        initial = await plane.state.presence_before(days.t0, [s.id for s in speakers])
        log = await plane.state.presence_log(days.t0, end)
    rows = availability(speakers, initial, log, days, scope, q.group, now)
    return _answer(q, "availability", AvailabilityReport(
        first_day=days.days[0], last_day=days.days[-1], zones=scope, group=q.group,
        rows=rows), AvailabilityRow)


# -- reports upward (``streamer/control/upward.py``, ``docs/reports-upward.md``) -------------

class UpwardQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_: Day = Field(alias="from", description="first local day (Asia/Ho_Chi_Minh)")
    to: Day | None = Field(None, description="last local day, included; default: from")

    @field_validator("to")
    @classmethod
    def _span(cls, to: date | None, info: ValidationInfo) -> date | None:
        return day_span(to, info, MAX_DAYS, "a report")

    @property
    def last(self) -> date:
        return self.to or self.from_


class PushOut(BaseModel):
    id: str = Field(description="the report id the receiver will see (X-Loa-Report-Id)")
    period: ReportPeriod
    status: Literal["pushing"] = Field(description="delivery goes on in the background, with "
                                       "its retries; the audit log and metrics tell its end")


@API.route("GET", "/api/v1/reports/upward", summary="The report for the central source system "
           "over local days from..to (loa.report/1, the document the webhook pushes)",
           tag="reports", query=UpwardQuery, response=UpwardReport, errors=(400, 401, 403, 503))
async def upward_report(ctx: Ctx) -> UpwardReport:
    q: UpwardQuery = ctx.query
    plane = ctx.services
    ctx.require(auth.VIEW, list(plane.tree.roots), "see the province's report")
    return await build_report(plane, q.from_, q.last, time.time())


@API.route("POST", "/api/v1/reports/upward/push", summary="Push the report of local days "
           "from..to to the configured webhook now (admins; audited)", tag="reports",
           query=UpwardQuery, response=PushOut, status=202, errors=(400, 401, 403, 409))
async def push_upward_report(ctx: Ctx) -> PushOut:
    q: UpwardQuery = ctx.query
    plane = ctx.services
    roots = list(plane.tree.roots)
    ctx.require(auth.ADMIN, roots, "push reports upward")
    upward = ctx.request.app[UPWARD]
    if not upward.enabled:
        raise Conflict("no report webhook configured (report_webhook_url)", "report_webhook_url")
    rid = report_id(province_of(plane), q.from_, q.last)
    await ctx.audit("push_upward_report", rid, roots, **{"from": q.from_.isoformat(),
                                                          "to": q.last.isoformat()})
    upward.deliver_soon(q.from_, q.last)
    return PushOut(id=rid, period=ReportPeriod(from_=q.from_, to=q.last, tz=LOCAL_TZ),
                   status="pushing")
