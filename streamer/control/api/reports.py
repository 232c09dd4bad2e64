"""Reports: broadcast airtime and speaker availability per zone per local day, JSON or CSV.

Both are computed on request from what the control plane already keeps — broadcast records
(``started``..``ended``) and the presence log — cut into local days (Asia/Ho_Chi_Minh). A row
is either one leaf zone (channel) or one requested zone with its leaves rolled up
(``group``); the rules are in ``docs/api.md`` ("Reports"). A caller sees only zones they hold
a role on; nothing here writes state.
"""

from __future__ import annotations

import bisect
import csv
import io
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from dateutil import tz
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
from streamer.control.models import BroadcastRecord, Speaker, ZoneId, covers
from streamer.control.schedules import DEFAULT_TZ as LOCAL_TZ
from streamer.control.schemas import BadRequest
from wire.priority import PRIORITIES

from .core import API, Ctx

MAX_DAYS = 366
#: broadcast records are indexed by creation time; one that started (after approval) or kept
#: airing longer than this after it was created is missed by windows that begin later
LOOKBACK_S = 7 * 86400
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
        first = info.data.get("from_")
        if to is None or first is None:
            return to
        if to < first:
            raise ValueError("must not be before 'from'")
        if (to - first).days >= MAX_DAYS:
            raise ValueError(f"a report spans at most {MAX_DAYS} days")
        return to

    @property
    def days(self) -> list[date]:
        last = self.to or self.from_
        return [self.from_ + timedelta(days=i) for i in range((last - self.from_).days + 1)]


class MinutesRow(BaseModel):
    day: date
    zone: str
    priority: str
    minutes: float = Field(description="minutes during which a broadcast of this priority "
                           "was addressed to the zone (overlaps counted once)")
    channel_minutes: float = Field(description="the leaf zones' minutes added up")
    broadcasts: int = Field(description="distinct broadcasts that aired in it that day")


class MinutesReport(BaseModel):
    first_day: date
    last_day: date
    zones: list[str]
    group: str
    rows: list[MinutesRow]


class AvailabilityRow(BaseModel):
    day: date
    zone: str
    speakers: int
    availability: float = Field(description="mean over the speakers of the fraction of the "
                                "observed day each was online, 0..1")
    observed_hours: float = Field(description="24, or less for today (up to now)")


class AvailabilityReport(BaseModel):
    first_day: date
    last_day: date
    zones: list[str]
    group: str
    rows: list[AvailabilityRow]


# -- time: local days and intervals -----------------------------------------------------------

Interval = tuple[float, float]


class Days:
    """The report's local days as [start, end) epoch seconds, and what falls in each."""

    def __init__(self, days: list[date]) -> None:
        zone = tz.gettz(LOCAL_TZ)
        self.days = days
        self.starts = [datetime.combine(d, time(), zone).timestamp() for d in days]
        self.starts.append(datetime.combine(days[-1] + timedelta(days=1), time(),
                                            zone).timestamp())

    @property
    def t0(self) -> float:
        return self.starts[0]

    @property
    def t1(self) -> float:
        return self.starts[-1]

    def split(self, a: float, b: float) -> Iterable[tuple[int, Interval]]:
        """(day index, part of [a, b) inside that day) for every day [a, b) touches."""
        i = max(bisect.bisect_right(self.starts, a) - 1, 0)
        while i < len(self.days) and self.starts[i] < b:
            lo, hi = max(a, self.starts[i]), min(b, self.starts[i + 1])
            if hi > lo:
                yield i, (lo, hi)
            i += 1


def union_s(intervals: Iterable[Interval]) -> float:
    """Seconds covered by ``intervals``, overlaps counted once."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def online_intervals(initial: str | None, transitions: list[tuple[float, str]], t0: float,
                     t1: float) -> list[Interval]:
    """When a device was online in [t0, t1), from its state at t0 and its transitions."""
    out: list[Interval] = []
    since = t0 if initial == "online" else None
    for ts, state in transitions:
        if state == "online" and since is None:
            since = ts
        elif state != "online" and since is not None:
            out.append((since, ts))
            since = None
    if since is not None and since < t1:
        out.append((since, t1))
    return out


# -- scope ------------------------------------------------------------------------------------

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
    buf = io.StringIO()
    names = list(row_model.model_fields)
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(names)
    for row in report.rows:
        data = row.model_dump(mode="json")
        w.writerow([data[n] for n in names])
    name = f"{kind}-{q.from_.isoformat()}-{(q.to or q.from_).isoformat()}.csv"
    return web.Response(text=buf.getvalue(), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


# -- broadcast minutes ------------------------------------------------------------------------

def _aired(rec: BroadcastRecord, now: float) -> Interval | None:
    """When ``rec`` was on air: started..ended (now while it still is); None if it never
    started (pending approval, rejected, stopped while pending)."""
    if rec.started is None:
        return None
    end = rec.ended if rec.ended is not None else now
    return (rec.started, end) if end > rec.started else None


@dataclass
class _Airtime:
    spans: list[Interval] = field(default_factory=list)
    ids: set[int] = field(default_factory=set)
    channel_s: float = 0.0


def broadcast_minutes(recs: Iterable[BroadcastRecord], days: Days, scope: list[str],
                      leaves_of: Callable[[str], list[str]], group: str,
                      now: float) -> list[MinutesRow]:
    """Rows for every (day, zone, priority) with airtime; ``group`` "leaf" or "zone"."""
    zone_of = {leaf: z for z in scope for leaf in leaves_of(z)}
    per_leaf: dict[tuple[int, str, str], _Airtime] = defaultdict(_Airtime)
    for rec in recs:
        aired = _aired(rec, now)
        if aired is None:
            continue
        leaves = {leaf for z in rec.zones for leaf in leaves_of(z) if leaf in zone_of}
        for i, part in days.split(*aired):
            for leaf in leaves:
                a = per_leaf[i, leaf, rec.priority]
                a.spans.append(part)
                a.ids.add(rec.id)
    rows: dict[tuple[int, str, str], _Airtime] = defaultdict(_Airtime)
    for (i, leaf, prio), a in per_leaf.items():
        r = rows[i, leaf if group == "leaf" else zone_of[leaf], prio]
        r.spans.extend(a.spans)
        r.ids |= a.ids
        r.channel_s += union_s(a.spans)
    order = {p: n for n, p in enumerate(PRIORITIES)}
    return [MinutesRow(day=days.days[i], zone=zone, priority=prio,
                       minutes=round(union_s(r.spans) / 60, 2),
                       channel_minutes=round(r.channel_s / 60, 2), broadcasts=len(r.ids))
            for (i, zone, prio), r in sorted(rows.items(), key=lambda kv: (
                kv[0][0], kv[0][1], order.get(kv[0][2], len(order)), kv[0][2]))]


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


# -- speaker availability ---------------------------------------------------------------------

def availability(speakers: list[Speaker], initial: dict[str, str],
                 log: list[tuple[float, str, str]], days: Days, scope: list[str], group: str,
                 now: float) -> list[AvailabilityRow]:
    """Rows for every (day, zone) with speakers, over the part of each day up to ``now``.

    ``initial``: each speaker's state at the start of the first day; ``log``: the
    transitions (ts, device, state) inside the window, oldest first. Only "online" counts as
    available. A speaker registered after a day ended is not counted in that day.
    """
    end = min(days.t1, now)
    moves: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for ts, device, state in log:
        moves[device].append((ts, state))
    observed = {i: (days.starts[i], min(days.starts[i + 1], now))
                for i in range(len(days.days)) if min(days.starts[i + 1], now) > days.starts[i]}
    shares: dict[tuple[int, str], list[float]] = defaultdict(list)
    for s in speakers:
        home = next((z for z in scope if covers(z, s.zone)), None)
        if home is None:
            continue
        online = [0.0] * len(days.days)
        for a, b in online_intervals(initial.get(s.id), moves[s.id], days.t0, end):
            for i, (lo, hi) in days.split(a, b):
                online[i] += hi - lo
        for i, (d0, d1) in observed.items():
            if s.created < days.starts[i + 1]:
                shares[i, s.zone if group == "leaf" else home].append(online[i] / (d1 - d0))
    return [AvailabilityRow(day=days.days[i], zone=zone, speakers=len(f),
                            availability=round(sum(f) / len(f), 6),
                            observed_hours=round((observed[i][1] - observed[i][0]) / 3600, 4))
            for (i, zone), f in sorted(shares.items())]


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
