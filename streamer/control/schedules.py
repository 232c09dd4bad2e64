"""Schedules: when a bulletin or a relayed programme airs, as data, and the rules that check it.

A schedule is an RFC 5545 recurrence rule (or a one-off ``at``) in the wall-clock time of a
time zone, so "06:00 every weekday" stays 06:00 across a DST change. This module validates
schedules, expands their occurrences and checks them against each zone's quiet hours
(``docs/schedules.md``). Sans-IO: it never reads a clock and never touches a socket — every
function is told the instant it reasons about; firing occurrences is ``scheduler.py``'s job.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Annotated, Literal, NamedTuple, NoReturn

from dateutil import tz as dateutil_tz
from dateutil.rrule import rrule, rrulestr
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from wire.priority import PriorityName

from .schemas import BadRequest, ClipSource, ToneSource, TtsSource, Zones

DEFAULT_TZ = "Asia/Ho_Chi_Minh"
SCHEDULE_ID_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_RULE_CHARS = 500
MAX_WINDOW_S = 24 * 3600.0
#: occurrences closer than this are refused: a schedule is not a metronome
MIN_SPACING_S = 60.0
QUIET_CONFLICTS_LIMIT = 100
#: how many first occurrences (within how long) the spacing check looks at
_SPACING_SAMPLE = 1000
_SPACING_HORIZON = timedelta(days=800)
_DAY = timedelta(days=1)
#: RFC 5545 section 3.3.10; dateutil's extensions (BYEASTER, ...) are not accepted
_RULE_PARTS = frozenset({"FREQ", "UNTIL", "COUNT", "INTERVAL", "BYSECOND", "BYMINUTE", "BYHOUR",
                         "BYDAY", "BYMONTHDAY", "BYYEARDAY", "BYWEEKNO", "BYMONTH", "BYSETPOS",
                         "WKST"})
_FREQS = ("YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY", "SECONDLY")
_DATE_PARTS = ("BYMONTH", "BYMONTHDAY", "BYYEARDAY", "BYWEEKNO", "BYDAY", "WKST")
#: rules whose period has a fixed length in wall-clock time can be fast-forwarded
_FIXED_PERIOD = {"DAILY": timedelta(days=1), "HOURLY": timedelta(hours=1),
                 "MINUTELY": timedelta(minutes=1)}


#: a local wall-clock date-time of the schedule's ``tz``, without a UTC offset: not the
#: "date-time" format of JSON Schema (RFC 3339 requires an offset); an offset is refused
LocalDateTime = Annotated[datetime, WithJsonSchema({
    "type": "string", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}"
                                 r"(\.[0-9]+)?)?$"})]


class RelaySource(BaseModel):
    """A pulled stream (Icecast, HTTP, HLS) relayed for the length of a window."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["relay"]
    url: str = Field(max_length=2000, description="http:// or https:// URL of the stream")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/?#]+[^\s]*$", v):
            raise PydanticCustomError("url", "must be an http:// or https:// URL of the stream")
        return v


ScheduleSource = Annotated[ToneSource | TtsSource | ClipSource | RelaySource,
                           Field(discriminator="kind")]


class Schedule(BaseModel):
    """One schedule, as stored in Redis and sent to the API. Times are local wall-clock times
    of ``tz``, without a UTC offset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, StringConstraints(pattern=SCHEDULE_ID_RE)]
    zones: Zones
    priority: PriorityName = "normal"
    source: ScheduleSource
    rrule: str | None = Field(
        None, max_length=MAX_RULE_CHARS,
        description="RFC 5545 RRULE, e.g. FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=6;BYMINUTE=0")
    dtstart: LocalDateTime | None = Field(
        None, description="local date-time the rule counts from (with rrule only)")
    at: LocalDateTime | None = Field(None, description="local date-time of a one-off")
    duration_s: float | None = Field(
        None, gt=0, le=MAX_WINDOW_S, allow_inf_nan=False,
        description="a window: what airs is cut this many seconds after each start")
    tz: str = Field(DEFAULT_TZ, max_length=64, description="IANA time zone of dtstart and at")
    enabled: bool = True
    approved: bool = False
    override_quiet_hours: bool = Field(
        False, description="air in quiet hours too (set by an admin; audited)")
    label: str = Field("", max_length=200)
    created_by: str = Field("", max_length=64)

    @field_validator("dtstart", "at")
    @classmethod
    def _whole_seconds(cls, v: datetime | None) -> datetime | None:
        return None if v is None else v.replace(microsecond=0)

    @model_validator(mode="after")
    def _check(self) -> Schedule:
        if not self.tz or _zone(self.tz) is None:
            _fail("tz", f"unknown time zone {self.tz!r}; use an IANA name such as {DEFAULT_TZ}")
        for name in ("dtstart", "at"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is not None:
                _fail(name, "give the local wall-clock time without a UTC offset, e.g. "
                            "2025-06-02T06:00:00; the tz field says where")
        if self.rrule is None and self.at is None:
            _fail("rrule", "give either rrule (a recurring schedule) or at (a one-off)")
        if self.rrule is not None and self.at is not None:
            _fail("at", "give either rrule (a recurring schedule) or at (a one-off), not both")
        if self.rrule is not None:
            if self.dtstart is None:
                _fail("dtstart", "required with rrule: the local date-time the rule counts from")
            try:
                _compile(self.rrule, self.dtstart, self.tz)
            except _RuleError as e:
                _fail("rrule", str(e))
        elif self.dtstart is not None:
            _fail("dtstart", "only with rrule; a one-off gives its time in at")
        if self.source.kind == "relay" and self.duration_s is None:
            _fail("duration_s", "required for a relay source: how long the window lasts")
        return self

    @property
    def zone_info(self) -> tzinfo:
        zi = _zone(self.tz)
        assert zi is not None  # validated
        return zi

    @property
    def active(self) -> bool:
        """Whether the scheduler fires it: enabled and approved."""
        return self.enabled and self.approved

    @property
    def is_emergency(self) -> bool:
        return self.priority == "emergency"

    def start_time(self) -> datetime:
        """The aware instant of ``at`` or ``dtstart``."""
        local = self.at if self.at is not None else self.dtstart
        assert local is not None
        return _localize(local, self.zone_info)


def _fail(field: str, message: str) -> NoReturn:
    """Raise a ValidationError located at ``field`` (a model validator's own errors have no
    location, and the API names the field from it)."""
    raise ValidationError.from_exception_data("Schedule", [InitErrorDetails(
        type=PydanticCustomError("schedule", "{message}", {"message": message}),
        loc=(field,), input=None)])


# ---------------------------------------------------------------------------- rules


class _RuleError(ValueError):
    pass


class _Rule(NamedTuple):
    rule: rrule
    parts: dict[str, str]
    dtstart: datetime  # naive local


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> tzinfo | None:
    if not name or name.startswith((":", "/", ".")) or ".." in name:
        return None  # gettz("") is the machine's zone; paths are not zone names
    return dateutil_tz.gettz(name)


def _localize(naive: datetime, zone: tzinfo) -> datetime:
    """Wall-clock time in ``zone`` as an aware UTC datetime. A time that does not exist (the
    hour skipped when DST starts) moves forward by the gap, as RFC 5545 says; an ambiguous one
    (the hour repeated when DST ends) is its first instance."""
    return dateutil_tz.resolve_imaginary(naive.replace(tzinfo=zone)).astimezone(UTC)


@functools.lru_cache(maxsize=4096)
def _compile(text: str, dtstart: datetime, tz_name: str) -> _Rule:
    body = text.strip()
    if body.upper().startswith("RRULE:"):
        body = body[len("RRULE:"):]
    if not body or "\n" in body or "\r" in body:
        raise _RuleError("give one RRULE value such as FREQ=DAILY;BYHOUR=6;BYMINUTE=0")
    parts: dict[str, str] = {}
    for p in body.split(";"):
        name, eq, value = p.partition("=")
        name, value = name.strip().upper(), value.strip().upper()
        if not eq or not name or not value:
            raise _RuleError(f"not a valid RFC 5545 rule: {p!r} is not NAME=VALUE")
        if name not in _RULE_PARTS:
            raise _RuleError(f"not a valid RFC 5545 rule: unknown part {name}")
        if name in parts:
            raise _RuleError(f"not a valid RFC 5545 rule: {name} given twice")
        parts[name] = value
    freq = parts.get("FREQ")
    if freq is None:
        raise _RuleError("not a valid RFC 5545 rule: FREQ is required")
    if freq not in _FREQS:
        raise _RuleError(f"not a valid RFC 5545 rule: FREQ must be one of {', '.join(_FREQS)}")
    if freq == "SECONDLY":
        raise _RuleError("fires more often than once a minute (FREQ=SECONDLY); the shortest "
                         "spacing between occurrences is one minute")
    if "COUNT" in parts and "UNTIL" in parts:
        raise _RuleError("not a valid RFC 5545 rule: give COUNT or UNTIL, not both")
    zone = _zone(tz_name)
    assert zone is not None
    if parts.get("UNTIL", "").endswith("Z"):
        # RFC 5545 wants UNTIL in UTC when DTSTART has a time zone; the rule runs on local
        # wall-clock time, so UNTIL becomes the local time of that instant.
        try:
            until = datetime.strptime(parts["UNTIL"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise _RuleError("not a valid RFC 5545 rule: UNTIL must look like "
                             "20251231T170000Z or 20251231T235959") from None
        parts["UNTIL"] = until.astimezone(zone).strftime("%Y%m%dT%H%M%S")
    try:
        rule = rrulestr(";".join(f"{k}={v}" for k, v in parts.items()), dtstart=dtstart)
    except Exception as e:  # dateutil raises ValueError, TypeError, IndexError, ... on garbage
        raise _RuleError(f"not a valid RFC 5545 rule: {e}") from None
    assert isinstance(rule, rrule)
    compiled = _Rule(rule, parts, dtstart)
    _check_fires(compiled, zone)
    return compiled


def _check_fires(r: _Rule, zone: tzinfo) -> None:
    """Refuse rules that never fire or fire more often than once a minute."""
    if not _dates_possible(r):
        raise _RuleError("never fires: no date matches its BYMONTH/BYMONTHDAY/BYYEARDAY/"
                         "BYWEEKNO/BYDAY parts (like 30 February)")
    start = next(iter(r.rule), None)
    if start is None:
        raise _RuleError("never fires: check COUNT, UNTIL and dtstart")
    # The first occurrences show any crowding (it repeats every period); sorted, because
    # around a DST change wall-clock order and UTC order can differ.
    horizon = start + _SPACING_HORIZON
    first = sorted({_localize(n, zone) for n in itertools.islice(
        itertools.takewhile(lambda n: n <= horizon, r.rule), _SPACING_SAMPLE)})
    for prev, t in itertools.pairwise(first):
        if (t - prev).total_seconds() < MIN_SPACING_S:
            raise _RuleError(
                f"fires more often than once a minute ({prev.astimezone(zone):%Y-%m-%d %H:%M:%S}"
                f" and {t.astimezone(zone):%H:%M:%S}); the shortest spacing is one minute")


def _dates_possible(r: _Rule) -> bool:
    """Whether any date at all matches the rule's date parts.

    dateutil searches up to the year 9999 for a match, one period at a time: for a daily or
    finer rule on "30 February" that is seconds of CPU. The same date parts under
    FREQ=YEARLY, tried over the last thousand years dateutil knows, answer in milliseconds,
    and the Gregorian calendar repeats every 400 years."""
    freq, parts = r.parts["FREQ"], r.parts
    aux = {k: parts[k] for k in _DATE_PARTS if k in parts}
    if not any(k in aux for k in ("BYMONTHDAY", "BYYEARDAY", "BYWEEKNO", "BYDAY")):
        # the date defaults dateutil takes from dtstart for these frequencies
        if freq == "YEARLY":
            aux.setdefault("BYMONTH", str(r.dtstart.month))
            aux["BYMONTHDAY"] = str(r.dtstart.day)
        elif freq == "MONTHLY":
            aux["BYMONTHDAY"] = str(r.dtstart.day)
    if "BYDAY" in aux and freq not in ("YEARLY", "MONTHLY"):
        # ordinals (+1MO) only mean something in yearly and monthly rules
        aux["BYDAY"] = ",".join(re.sub(r"^[+-]?\d+", "", d) for d in aux["BYDAY"].split(","))
    elif "BYDAY" in aux and freq == "MONTHLY" and "BYMONTH" not in aux:
        aux["BYMONTH"] = ",".join(str(m) for m in range(1, 13))  # "1MO" of each month
    if not any(k in aux for k in ("BYMONTH", "BYMONTHDAY", "BYYEARDAY", "BYWEEKNO", "BYDAY")):
        return True
    text = ";".join(["FREQ=YEARLY", *(f"{k}={v}" for k, v in aux.items())])
    probe = rrulestr(text, dtstart=datetime(9000, 1, 1))
    return next(iter(probe), None) is not None


def _fast_forward(r: _Rule, lo: datetime) -> rrule:
    """The rule, restarted a whole number of intervals after dtstart and a day before ``lo``,
    which gives the same occurrences from ``lo`` on: dateutil iterates from dtstart, and a
    minutely rule started a year ago is half a million steps from today. Only for periods of
    fixed wall-clock length (the new start keeps dtstart's phase and its time of day, which
    dateutil's defaults are taken from) and without COUNT (which counts from dtstart)."""
    period = _FIXED_PERIOD.get(r.parts["FREQ"])
    if period is None or "COUNT" in r.parts:
        return r.rule
    step = period * int(r.parts.get("INTERVAL", "1"))
    n = (lo - _DAY - r.dtstart) // step
    if n <= 0:
        return r.rule
    return r.rule.replace(dtstart=r.dtstart + n * step)


# ---------------------------------------------------------------------------- occurrences


def iter_occurrences(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    """Occurrences at or after ``after`` (aware), in order, as aware datetimes in the
    schedule's time zone; endless for a rule without COUNT or UNTIL."""
    zone = schedule.zone_info
    after = after.astimezone(UTC)
    if schedule.at is not None:
        t = _localize(schedule.at, zone)
        if t >= after:
            yield t.astimezone(zone)
        return
    assert schedule.rrule is not None and schedule.dtstart is not None
    r = _compile(schedule.rrule, schedule.dtstart, schedule.tz)
    lo = after.astimezone(zone).replace(tzinfo=None) - _DAY
    # Wall-clock order is not always UTC order: a time skipped by DST moves forward by up to
    # the gap (< 1 day). Hold occurrences until a later one is a day past them.
    held: list[datetime] = []
    last: datetime | None = None
    for naive in _fast_forward(r, lo).xafter(lo, inc=True):
        t = _localize(naive, zone)
        heapq.heappush(held, t)
        while held and held[0] < t - _DAY:
            ready = heapq.heappop(held)
            if ready >= after and ready != last:
                last = ready
                yield ready.astimezone(zone)
    while held:
        ready = heapq.heappop(held)
        if ready >= after and ready != last:
            last = ready
            yield ready.astimezone(zone)


def occurrences(schedule: Schedule, after: datetime, before: datetime) -> list[datetime]:
    """Occurrences ``t`` with ``after <= t < before``, in order."""
    out = []
    for t in iter_occurrences(schedule, after):
        if t >= before:
            break
        out.append(t)
    return out


def next_occurrence(schedule: Schedule, after: datetime) -> datetime | None:
    """The first occurrence strictly after ``after``; None when the schedule has ended."""
    for t in iter_occurrences(schedule, after):
        if t > after:
            return t
    return None


# ---------------------------------------------------------------------------- quiet hours


class QuietHours(BaseModel):
    """A zone's quiet hours: local ``start`` to ``end``, crossing midnight when end < start."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    start: time = time(22, 0)
    end: time = time(5, 0)
    tz: str = DEFAULT_TZ

    @model_validator(mode="after")
    def _check(self) -> QuietHours:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            _fail("start", "local times without a UTC offset")
        if self.start == self.end:
            _fail("end", "must differ from start (no quiet hours: none at all)")
        if _zone(self.tz) is None:
            _fail("tz", f"unknown time zone {self.tz!r}")
        return self

    @classmethod
    def parse(cls, spec: str, tz: str = DEFAULT_TZ) -> QuietHours | None:
        """From a zone setting "HH:MM-HH:MM"; "" means none."""
        if not spec:
            return None
        m = re.fullmatch(r"(\d\d):(\d\d)-(\d\d):(\d\d)", spec.strip())
        if m is None:
            raise BadRequest("quiet_hours", "must be HH:MM-HH:MM, e.g. 22:00-05:00")
        a, b, c, d = (int(g) for g in m.groups())
        try:
            return cls(start=time(a, b), end=time(c, d), tz=tz)
        except (ValueError, ValidationError):
            raise BadRequest("quiet_hours", "must be HH:MM-HH:MM with two different "
                                            "times of day, e.g. 22:00-05:00") from None

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def contains(self, when: datetime) -> bool:
        t = when.astimezone(_zone(self.tz)).time()
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def first_quiet(self, start: datetime, end: datetime) -> datetime | None:
        """The first instant of ``[start, end)`` inside quiet hours (``start`` itself when
        ``end <= start``), or None."""
        if self.contains(start):
            return start
        zone = _zone(self.tz)
        assert zone is not None
        day: date = start.astimezone(zone).date()
        while True:
            begins = _localize(datetime.combine(day, self.start), zone)
            if begins >= end:
                return None
            if begins > start:
                return begins
            day += _DAY


DEFAULT_QUIET_HOURS = QuietHours()

QuietHoursFor = Callable[[str], "QuietHours | None"]


def in_quiet_hours(quiet: QuietHours | None, when: datetime) -> bool:
    """Whether ``when`` falls in ``quiet`` (None: the zone has no quiet hours)."""
    return quiet is not None and quiet.contains(when)


class QuietConflict(NamedTuple):
    zone: str
    occurrence: datetime
    quiet: QuietHours


def blocked_by_quiet_hours(schedule: Schedule) -> bool:
    """Whether quiet hours apply at all: not to emergencies, not when an admin overrode."""
    return not (schedule.is_emergency or schedule.override_quiet_hours)


def quiet_conflicts(
    schedule: Schedule,
    quiet_hours_for_zone: QuietHoursFor,
    horizon_days: int = 366,
    *,
    after: datetime | None = None,
    zones: Iterable[str] | None = None,
    limit: int = QUIET_CONFLICTS_LIMIT,
) -> list[QuietConflict]:
    """Occurrences within ``horizon_days`` of ``after`` (default: the schedule's start) that
    start in, or for a window run into, the quiet hours of a zone. ``zones`` are the zones to
    check (default the schedule's targets; pass their leaves when settings differ below a
    target). Empty for an emergency or an admin override; at most ``limit`` conflicts."""
    if not blocked_by_quiet_hours(schedule):
        return []
    by_quiet: dict[QuietHours, list[str]] = {}
    for z in dict.fromkeys(schedule.zones if zones is None else zones):
        q = quiet_hours_for_zone(z)
        if q is not None:
            by_quiet.setdefault(q, []).append(z)
    if not by_quiet:
        return []
    start = schedule.start_time() if after is None else after
    end = start + timedelta(days=horizon_days)
    window = timedelta(seconds=schedule.duration_s or 0.0)
    out: list[QuietConflict] = []
    for occ in iter_occurrences(schedule, start - window):
        if occ >= end or len(out) >= limit:
            break
        for q, zs in by_quiet.items():
            if q.first_quiet(occ, occ + window) is not None:
                out.extend(QuietConflict(z, occ, q) for z in zs)
    return out[:limit]


def check_quiet_hours(
    schedule: Schedule,
    quiet_hours_for_zone: QuietHoursFor,
    horizon_days: int = 366,
    *,
    after: datetime | None = None,
    zones: Iterable[str] | None = None,
) -> None:
    """Refuse (:class:`BadRequest`) a schedule that would air in a zone's quiet hours."""
    found = quiet_conflicts(schedule, quiet_hours_for_zone, horizon_days, after=after,
                            zones=zones)
    if not found:
        return
    first = found[0]
    zone = schedule.zone_info
    occ = first.occurrence.astimezone(zone)
    if schedule.duration_s:
        what = (f"the window {occ:%Y-%m-%d %H:%M}-"
                f"{occ + timedelta(seconds=schedule.duration_s):%H:%M} ({schedule.tz})")
        starts_quiet = first.quiet.contains(occ)
    else:
        what, starts_quiet = f"the occurrence at {occ:%Y-%m-%d %H:%M} ({schedule.tz})", True
    field = ("at" if schedule.at is not None else "rrule") if starts_quiet else "duration_s"
    more = len({c.occurrence for c in found}) - 1
    at_least = "at least " if len(found) >= QUIET_CONFLICTS_LIMIT else ""
    raise BadRequest(field, (
        f"{what} falls in the quiet hours of {first.zone} ({first.quiet}, {first.quiet.tz})"
        + (f", and {at_least}{more} more occurrence{'s' if more > 1 else ''}" if more else "")
        + "; only emergency broadcasts air then, unless an admin sets override_quiet_hours"))


def quiet_reason(
    schedule: Schedule, occurrence: datetime, zones: Iterable[str],
    quiet_hours_for_zone: QuietHoursFor,
) -> str | None:
    """Why one occurrence may not air now (quiet hours in some of ``zones``), or None."""
    if not blocked_by_quiet_hours(schedule):
        return None
    end = occurrence + timedelta(seconds=schedule.duration_s or 0.0)
    hit: list[str] = []
    seen: dict[QuietHours | None, bool] = {}
    for z in zones:
        q = quiet_hours_for_zone(z)
        if q not in seen:
            seen[q] = q is not None and q.first_quiet(occurrence, end) is not None
        if seen[q]:
            hit.append(f"{z} ({q})")
    if not hit:
        return None
    return "quiet hours in " + ", ".join(hit[:5]) + (f" and {len(hit) - 5} more zones"
                                                    if len(hit) > 5 else "")


__all__ = [
    "DEFAULT_QUIET_HOURS",
    "DEFAULT_TZ",
    "QuietConflict",
    "QuietHours",
    "RelaySource",
    "Schedule",
    "blocked_by_quiet_hours",
    "check_quiet_hours",
    "in_quiet_hours",
    "iter_occurrences",
    "next_occurrence",
    "occurrences",
    "quiet_conflicts",
    "quiet_reason",
]
