"""Schedules (RFC 5545 RRULE or one-off, optional window) and their approval.

Every change is validated by the :class:`~streamer.control.schedules.Schedule` model (in a
worker thread: proving that an odd rule ever fires can take a second of CPU), checked against
the quiet hours of every target channel over the coming year, stored, and handed to the
running scheduler, which keeps airing the last good set if Redis goes away. Two read-only
operations serve the console's calendar: the occurrences of the visible schedules in a range
of local days, and a dry run of a schedule not saved yet (its next occurrences, or the very
refusal saving it would get). Rules are expanded here, by dateutil, never by the browser.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from streamer.control import auth
from streamer.control.schedules import (
    DEFAULT_TZ,
    LocalDateTime,
    Schedule,
    ScheduleSource,
    check_quiet_hours,
    iter_occurrences,
    next_occurrence,
)
from streamer.control.schemas import BadRequest, Body, Patch, Zones, left_out
from wire.priority import PriorityName

from .broadcasts import _check_zones
from .core import API, ApiError, Ctx, NotFound
from .reports import Day, day_span

#: the longest range of days one occurrences query covers (a month view and its edges)
MAX_RANGE_DAYS = 42
#: occurrences in one answer at most (a rule may fire every minute: 60 480 in a week)
MAX_OCCURRENCES = 5000
#: how many next occurrences a dry run shows
PREVIEW_COUNT = 5


class ScheduleIn(Body):
    zones: Zones
    priority: PriorityName = "normal"
    source: ScheduleSource
    rrule: str | None = Field(None, max_length=2000, description="RFC 5545 RRULE")
    dtstart: LocalDateTime | None = Field(None, description="local date-time the rule counts "
                                          "from")
    at: LocalDateTime | None = Field(None, description="local date-time of a one-off")
    duration_s: float | None = Field(None, description="a window: cut after this long")
    tz: str = Field("Asia/Ho_Chi_Minh", max_length=64)
    enabled: bool = True
    override_quiet_hours: bool = False
    label: str = Field("", max_length=200)


class SchedulePatch(Patch):
    zones: Zones = left_out()
    priority: PriorityName = left_out()
    source: ScheduleSource = left_out()
    rrule: str | None = Field(None, max_length=2000)
    dtstart: LocalDateTime | None = None
    at: LocalDateTime | None = None
    duration_s: float | None = Field(None, description="null: no window")
    tz: str = left_out(max_length=64)
    enabled: bool = left_out()
    override_quiet_hours: bool = left_out()
    label: str = left_out(max_length=200)


class ScheduleOut(Schedule):
    next: datetime | None = Field(None, description="next occurrence (aware, local)")
    last_fired: datetime | None = None


class ScheduleList(BaseModel):
    schedules: list[ScheduleOut]


class OccurrenceQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_: Day | None = Field(None, alias="from", description="first local day (Asia/"
                              "Ho_Chi_Minh); default: the Monday of the streamer's week, or "
                              "6 days before to")
    to: Day | None = Field(None, description="last local day, included; default: 6 days "
                           "after from")

    @field_validator("to")
    @classmethod
    def _span(cls, to: date | None, info: ValidationInfo) -> date | None:
        return day_span(to, info, MAX_RANGE_DAYS, "a range")


class Occurrence(BaseModel):
    schedule: str = Field(description="the schedule's id")
    start: datetime = Field(description="aware, in the schedule's time zone")
    end: datetime | None = Field(None, description="a window's end; null for an item that "
                                 "plays to its own end")


class OccurrenceList(BaseModel):
    first_day: date
    last_day: date
    now: datetime = Field(description="the streamer's clock, local (the week it calls "
                          "\"this week\")")
    tz: str = DEFAULT_TZ
    occurrences: list[Occurrence] = Field(description="sorted by start, then schedule")
    truncated: bool = Field(description=f"more than {MAX_OCCURRENCES} occurrences: the "
                            "first ones only")


class SchedulePreview(BaseModel):
    next: list[datetime] = Field(description=f"the first {PREVIEW_COUNT} occurrences after "
                                 "now, aware, in the schedule's time zone")
    approved: bool = Field(description="false: saved, it would wait for an approver")


def _out(ctx: Ctx, s: Schedule, last: float | None) -> ScheduleOut:
    after = datetime.fromtimestamp(ctx.services.now(), UTC)
    nxt = next_occurrence(s, after) if s.active else None
    return ScheduleOut(**s.model_dump(), next=nxt,
                       last_fired=None if last is None else datetime.fromtimestamp(last, UTC))


async def _schedule(ctx: Ctx) -> Schedule:
    sid = ctx.path("id")[:64]
    s = await ctx.services.state.schedules.get(sid) if sid.isascii() else None
    if s is None or not any(auth.visible(ctx.me, z) for z in s.zones):
        raise NotFound(f"schedule {sid!r}")
    return s


async def _admit(ctx: Ctx, fields: dict[str, Any]) -> Schedule:
    """Validate, authorise and check quiet hours; the one path for create and change."""
    plane = ctx.services
    zones = _check_zones(ctx, list(fields["zones"]))
    emergency = fields.get("priority") == "emergency"
    ctx.require(auth.EMERGENCY if emergency else auth.OPERATE, zones, "schedule broadcasts")
    if fields.get("override_quiet_hours"):
        ctx.require(auth.ADMIN, zones, "override quiet hours")
    fields["approved"] = emergency or not plane.requires_approval(zones)
    s = await asyncio.to_thread(Schedule.model_validate, fields)
    leaves = plane.broadcasts.channels_of(zones)
    try:
        await asyncio.to_thread(check_quiet_hours, s, plane.quiet_for,
                                after=datetime.fromtimestamp(plane.now(), UTC), zones=leaves)
    except BadRequest as e:  # the schedule is fine; the clock and the zones say no
        raise ApiError(409, e.message, e.field) from None
    if next_occurrence(s, datetime.fromtimestamp(plane.now(), UTC)) is None:
        raise BadRequest("at" if s.at else "rrule", "never occurs after now")
    return s


async def _store(ctx: Ctx, s: Schedule) -> None:
    await ctx.services.state.schedules.put(s.id, s)
    if ctx.services.scheduler is not None:
        ctx.services.scheduler.upsert(s)


@API.route("POST", "/api/v1/schedules", summary="Schedule a bulletin or a window",
           tag="schedules", body=ScheduleIn, response=ScheduleOut, status=201)
async def create_schedule(ctx: Ctx) -> ScheduleOut:
    b: ScheduleIn = ctx.body
    fields = b.model_dump(exclude_none=True)
    fields.update(id=await ctx.services.state.next_schedule_id(), created_by=ctx.me.name)
    s = await _admit(ctx, fields)
    await _store(ctx, s)
    await ctx.audit("create_schedule", s.id, list(s.zones), rrule=s.rrule,
                    at=s.at.isoformat() if s.at else None, priority=s.priority,
                    override_quiet_hours=s.override_quiet_hours, approved=s.approved)
    return _out(ctx, s, None)


@API.route("GET", "/api/v1/schedules", summary="Schedules in zones you can see",
           tag="schedules", response=ScheduleList)
async def list_schedules(ctx: Ctx) -> ScheduleList:
    state = ctx.services.state
    last = await state.last_fired()
    mine = [s for s in await state.schedules.all() if any(auth.visible(ctx.me, z)
                                                             for z in s.zones)]
    return ScheduleList(schedules=[_out(ctx, s, last.get(s.id))
                                   for s in sorted(mine, key=lambda s: s.id)])


def _window(ctx: Ctx, q: OccurrenceQuery) -> tuple[date, date, datetime]:
    """The query's first and last local day (defaults: the streamer's week, Monday to
    Sunday) and the streamer's now, local."""
    zone = ZoneInfo(DEFAULT_TZ)
    now = datetime.fromtimestamp(ctx.services.now(), UTC).astimezone(zone)
    first, last = q.from_, q.to
    if first is None and last is None:
        first = now.date() - timedelta(days=now.weekday())
    if first is None:
        assert last is not None
        first = last - timedelta(days=6)
    if last is None:
        last = first + timedelta(days=6)
    return first, last, now


def _expand(schedules: list[Schedule], lo: datetime, hi: datetime,
            limit: int) -> tuple[list[Occurrence], bool]:
    """Occurrences starting in ``[lo, hi)``, and windows begun before ``lo`` that run into
    it; at most ``limit`` (and whether some were left out)."""
    out: list[Occurrence] = []
    more = False
    for s in schedules:
        window = timedelta(seconds=s.duration_s or 0.0)
        found = itertools.takewhile(lambda t: t < hi, iter_occurrences(s, lo - window))
        for t in itertools.islice(found, limit + 1):
            if window and t + window <= lo:
                continue
            out.append(Occurrence(schedule=s.id, start=t, end=t + window if window else None))
    out.sort(key=lambda o: (o.start, o.schedule))
    if len(out) > limit:
        out, more = out[:limit], True
    return out, more


@API.route("GET", "/api/v1/schedules/occurrences", summary="When the schedules you can see "
           "occur in a range of local days (rules expanded by the streamer)", tag="schedules",
           query=OccurrenceQuery, response=OccurrenceList, errors=(400, 401, 503))
async def list_occurrences(ctx: Ctx) -> OccurrenceList:
    q: OccurrenceQuery = ctx.query
    first, last, now = _window(ctx, q)
    zone = ZoneInfo(DEFAULT_TZ)
    lo = datetime.combine(first, time(), zone)
    hi = datetime.combine(last + timedelta(days=1), time(), zone)
    mine = sorted((s for s in await ctx.services.state.schedules.all()
                   if any(auth.visible(ctx.me, z) for z in s.zones)), key=lambda s: s.id)
    found, more = await asyncio.to_thread(_expand, mine, lo, hi, MAX_OCCURRENCES)
    return OccurrenceList(first_day=first, last_day=last, now=now, occurrences=found,
                          truncated=more)


@API.route("POST", "/api/v1/schedules/preview", summary="Check a schedule without saving it: "
           "its next occurrences, or the refusal saving it would get", tag="schedules",
           body=ScheduleIn, response=SchedulePreview)
async def preview_schedule(ctx: Ctx) -> SchedulePreview:
    b: ScheduleIn = ctx.body
    fields = b.model_dump(exclude_none=True)
    fields.update(id="preview", created_by=ctx.me.name)
    s = await _admit(ctx, fields)
    after = datetime.fromtimestamp(ctx.services.now(), UTC)
    nxt = await asyncio.to_thread(lambda: list(itertools.islice(
        (t for t in iter_occurrences(s, after) if t > after), PREVIEW_COUNT)))
    return SchedulePreview(next=nxt, approved=s.approved)


@API.route("GET", "/api/v1/schedules/{id}", summary="One schedule", tag="schedules",
           response=ScheduleOut)
async def get_schedule(ctx: Ctx) -> ScheduleOut:
    s = await _schedule(ctx)
    return _out(ctx, s, (await ctx.services.state.last_fired()).get(s.id))


@API.route("PATCH", "/api/v1/schedules/{id}", summary="Change a schedule (validated again; "
           "a change to what airs needs approval again where required)", tag="schedules",
           body=SchedulePatch, response=ScheduleOut)
async def patch_schedule(ctx: Ctx) -> ScheduleOut:
    b: SchedulePatch = ctx.body
    old = await _schedule(ctx)
    ctx.require(auth.EMERGENCY if old.priority == "emergency" else auth.OPERATE,
                list(old.zones), "change this schedule")
    fields = old.model_dump()
    changes = b.model_dump(exclude_unset=True)
    fields.update(changes)
    if changes.get("rrule"):
        fields["at"] = None
    elif changes.get("at"):
        fields.update(rrule=None, dtstart=None)
    s = await _admit(ctx, fields)
    if set(changes) <= {"enabled", "label"} and old.approved:
        s = s.model_copy(update={"approved": True})  # pausing or renaming needs no approval
    await _store(ctx, s)
    await ctx.audit("patch_schedule", s.id, list(s.zones),
                    fields=sorted(changes), approved=s.approved)
    return _out(ctx, s, (await ctx.services.state.last_fired()).get(s.id))


@API.route("DELETE", "/api/v1/schedules/{id}", summary="Remove a schedule (a booked "
           "occurrence is withdrawn)", tag="schedules", response=ScheduleOut)
async def delete_schedule(ctx: Ctx) -> ScheduleOut:
    s = await _schedule(ctx)
    ctx.require(auth.EMERGENCY if s.priority == "emergency" else auth.OPERATE, list(s.zones),
                "remove this schedule")
    await ctx.services.state.delete_schedule(s.id)
    if ctx.services.scheduler is not None:
        ctx.services.scheduler.remove(s.id)
    await ctx.audit("delete_schedule", s.id, list(s.zones))
    return _out(ctx, s, None)
