"""Reports upward: the period report sent to the central source system, and its webhook push.

The report (``loa.report/1``, ``docs/reports-upward.md``) is built from what the control plane
keeps (broadcast records, proof of play, the presence log, the speaker registry) by
``build_report``; its id is a hash of the province, the period and the schema, so a period
re-sent after a retry or a crash carries the same id and the receiver can drop the second
copy. ``Upward`` pushes each finished period once it is over (daily by default: yesterday's
local day, shortly after local midnight), signed with HMAC-SHA256, retried with a bounded,
jittered exponential backoff, and remembers in Redis what was delivered, so a restart neither
re-sends a delivered period nor forgets one missed while it was down (up to ``CATCH_UP_DAYS``
back). It runs as its own task on the active streamer and never on playout's path: nothing
here touches the mixer, and an unreachable receiver only costs a sleeping task.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from dateutil import tz
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from .models import AuditEntry, BroadcastRecord, covers
from .reports import LOOKBACK_S, Days, availability
from .schedules import DEFAULT_TZ as LOCAL_TZ

log = logging.getLogger("loa.upward")

SCHEMA: Literal["loa.report/1"] = "loa.report/1"
#: periods older than this are not caught up after downtime (nor pushed at all)
CATCH_UP_DAYS = 7
#: a finished period is pushed this long after the local midnight that ends it (presence
#: and late proof of play settle first)
PUSH_DELAY_S = 300.0
Period = Literal["daily", "weekly"]


# -- the document ---------------------------------------------------------------------------

class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True,
                              json_schema_serialization_defaults_required=True)


class ReportPeriod(_Doc):
    from_: date = Field(serialization_alias="from",
                        validation_alias=AliasChoices("from", "from_"),
                        description="first local day, included")
    to: date = Field(description="last local day, included")
    tz: str = Field(description="the time zone the days are cut in (IANA name)")


class Reach(_Doc):
    expected: int = Field(description="speakers registered in the broadcast's leaf zones")
    confirmed: int = Field(description="those of them that reported playing it (proof of play)")
    ratio: float = Field(description="confirmed / expected, 0..1 (0 when none is expected)")


class Station(_Doc):
    zone: str = Field(description="leaf zone id (one speaker cluster, e.g. a hamlet)")
    name: str = Field(description="its name in the zone tree")
    commune: str | None = Field(description="id of the zone it belongs to (its parent)")
    speakers: int = Field(description="speakers registered in it when the report was made")
    availability: float | None = Field(
        description="mean fraction of the period its speakers were online, 0..1 (null: "
                    "nothing of the period observed yet)")


class BroadcastEntry(_Doc):
    id: int
    zones: list[str]
    priority: str = Field(description="emergency, priority, normal or background")
    kind: str = Field(description="its source: tone, tts, clip, relay or live")
    label: str
    started: datetime = Field(description="when it first went on air, local time with offset")
    ended: datetime | None = Field(description="when it ended; null while still on air")
    airtime_s: float = Field(description="seconds on air inside the period (an emergency "
                             "aired again on its cadence: from its first airing to its end)")
    reach: Reach


class EmergencyEntry(_Doc):
    id: int
    zones: list[str]
    label: str
    started: datetime
    ended: datetime | None
    time_to_air_s: float | None = Field(
        description="from the request's arrival (a scheduled one: its occurrence) to its "
                    "first frame on the air; null if not known (recorded before time to air "
                    "was stored)")
    airings: int = Field(description="how many times it aired (a cadence repeats it)")
    reach: Reach


class BoardEntry(_Doc):
    id: str = Field(description="b-<broadcast> for a broadcast's item, p-… for a posted one")
    zones: list[str]
    level: str = Field(description="normal, priority or emergency")
    title: str
    shown_from: datetime = Field(description="when it went up on the boards, local time")
    shown_until: datetime | None = Field(description="when it came down (taken down or "
                                         "expired); null while it still shows")
    broadcast: int | None = Field(description="the broadcast it came with, if any")


class UpwardReport(_Doc):
    """One period's report to the central source system (``docs/reports-upward.md``)."""

    schema_: Literal["loa.report/1"] = Field(
        SCHEMA, serialization_alias="schema", validation_alias=AliasChoices("schema", "schema_"),
        description="names this document's shape and version; a change that is not backward "
                    "compatible makes a new one (loa.report/2)")
    id: str = Field(description="sha256 hex of province, period and schema: the same for "
                    "every copy of one period's report (deduplicate on it)")
    province: str = Field(description="root zone id of this system")
    period: ReportPeriod
    generated: datetime = Field(description="when this copy was made")
    stations: list[Station]
    broadcasts: list[BroadcastEntry] = Field(description="every broadcast on air during the "
                                             "period, emergencies included")
    emergencies: list[EmergencyEntry]
    board_items: list[BoardEntry] = Field(
        default_factory=list, description="every item the e-boards showed during the period")


def schema_document() -> dict[str, Any]:
    """The JSON Schema of the report, as ``docs/report-upward.schema.json`` holds it."""
    schema = UpwardReport.model_json_schema(mode="serialization")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://loa.example/schemas/report-upward.schema.json",
            **schema, "title": "Loa report upward (loa.report/1)"}


def report_id(province: str, first: date, last: date) -> str:
    return hashlib.sha256(f"{province}|{first.isoformat()}|{last.isoformat()}|{SCHEMA}"
                          .encode()).hexdigest()


def _local(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz.gettz(LOCAL_TZ))


def local_day(ts: float) -> date:
    return _local(ts).date()


def province_of(plane: Any) -> str:
    return "+".join(sorted(plane.tree.roots))


async def _reach(plane: Any, rec: BroadcastRecord, registered: dict[str, int]) -> Reach:
    chans = set(plane.broadcasts.channels_of(rec.zones))
    expected = sum(registered.get(c, 0) for c in chans)
    played = await plane.state.played_by(rec.id)
    zone_of = plane.recorder.zone_of
    confirmed = sum(zone_of.get(s) in chans for s in played)
    return Reach(expected=expected, confirmed=confirmed,
                 ratio=round(confirmed / expected, 4) if expected else 0.0)


def _time_to_air(plane: Any, rec: BroadcastRecord) -> float | None:
    aired = rec.aired_at
    item = plane.broadcasts.items.get(rec.id)
    if aired is None and item is not None:  # on the air now: the mixer knows
        aired = item.aired_at
    if aired is None or rec.requested_at is None:
        return None
    return round(max(0.0, aired - rec.requested_at), 3)


async def build_report(plane: Any, first: date, last: date, now: float) -> UpwardReport:
    """The report of local days ``first``..``last`` as known at ``now``."""
    province = province_of(plane)
    days = Days([first + timedelta(days=i) for i in range((last - first).days + 1)])
    t0, t1 = days.t0, days.t1
    tree = plane.tree
    scope = list(tree.roots)

    speakers = await plane.state.speakers.all()
    registered: dict[str, int] = {}
    for s in speakers:
        registered[s.zone] = registered.get(s.zone, 0) + 1
    end = min(t1, now)
    initial: dict[str, str] = {}
    plog: list[tuple[float, str, str]] = []
    if speakers and end > t0:
        initial = await plane.state.presence_before(t0, [s.id for s in speakers])
        plog = await plane.state.presence_log(t0, end)
    weighted: dict[str, list[float]] = {}  # zone -> [online speaker-hours, speaker-hours]
    for row in availability(speakers, initial, plog, days, scope, "leaf", now):
        w = weighted.setdefault(row.zone, [0.0, 0.0])
        w[0] += row.availability * row.speakers * row.observed_hours
        w[1] += row.speakers * row.observed_hours
    stations = []
    for zone in sorted(set(registered) | set(weighted)):
        z = tree.zones.get(zone)
        share = weighted.get(zone)
        stations.append(Station(
            zone=zone, name=z.name if z is not None else zone,
            commune=z.parent if z is not None else None,
            speakers=registered.get(zone, 0),
            availability=round(share[0] / share[1], 6) if share and share[1] else None))

    recs = {r.id: r for r in await plane.state.broadcasts_between(t0 - LOOKBACK_S, t1)}
    recs.update({r.id: r for r in plane.broadcasts.live.values()})
    broadcasts, emergencies = [], []
    for rec in sorted(recs.values(), key=lambda r: (r.started or 0, r.id)):
        if rec.started is None:
            continue  # never aired (pending, rejected)
        # ``started`` is its latest airing's start (an emergency's cadence airs it again);
        # ``aired_at``, its first frame, is earlier then: it counts from its first airing
        begun = rec.started if rec.aired_at is None else min(rec.started, rec.aired_at)
        stop = rec.ended if rec.ended is not None else now
        if not (t0 <= begun < t1 or begun < t0 < stop):
            continue  # not on the air during the period
        airtime = min(stop, t1) - max(begun, t0)
        if not any(covers(r, z) for r in scope for z in rec.zones):
            continue
        reach = await _reach(plane, rec, registered)
        ended = _local(rec.ended) if rec.ended is not None else None
        broadcasts.append(BroadcastEntry(
            id=rec.id, zones=list(rec.zones), priority=rec.priority,
            kind=str(rec.source.get("kind", "")), label=rec.label,
            started=_local(begun), ended=ended, airtime_s=round(max(airtime, 0.0), 3),
            reach=reach))
        if rec.priority == "emergency":
            emergencies.append(EmergencyEntry(
                id=rec.id, zones=list(rec.zones), label=rec.label, started=_local(begun),
                ended=ended, time_to_air_s=_time_to_air(plane, rec), airings=rec.airings,
                reach=reach))
    shown = [(i, None) for i in plane.board.items.values()] + await plane.state.board_log()
    board_items = [
        BoardEntry(id=i.id, zones=list(i.zones), level=i.level, title=i.title,
                   shown_from=_local(i.start), broadcast=i.broadcast,
                   shown_until=None if until is None else _local(until))
        for i, until in sorted(shown, key=lambda x: (x[0].start, x[0].id))
        if i.start < t1 and (until if until is not None else now) > t0
        and any(covers(r, z) for r in scope for z in i.zones)]
    return UpwardReport(
        schema_=SCHEMA, id=report_id(province, first, last), province=province,
        period=ReportPeriod(from_=first, to=last, tz=LOCAL_TZ), generated=_local(now),
        stations=stations, broadcasts=broadcasts, emergencies=emergencies,
        board_items=board_items)


# -- signing --------------------------------------------------------------------------------

def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``X-Loa-Signature``: ``sha256=`` and the hex HMAC-SHA256 of ``timestamp.body``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, header: str) -> bool:
    """The receiver's check (the recipe in ``docs/operations.md``), in constant time."""
    return hmac.compare_digest(signature(secret, timestamp, body), header)


# -- periods --------------------------------------------------------------------------------

def period_of(day: date, period: Period) -> tuple[date, date]:
    """The period (first and last local day) that contains ``day``: the day itself, or its
    ISO week (Monday..Sunday)."""
    if period == "daily":
        return day, day
    first = day - timedelta(days=day.weekday())
    return first, first + timedelta(days=6)


def due_periods(now: float, period: Period, since: date,
                delay_s: float = PUSH_DELAY_S) -> list[tuple[date, date]]:
    """Periods that are over (their ending local midnight + ``delay_s`` passed), began on or
    after ``since`` and ended within ``CATCH_UP_DAYS`` of ``now``, oldest first."""
    today = local_day(now - delay_s)  # before the delay, yesterday is not "over" yet
    oldest = local_day(now) - timedelta(days=CATCH_UP_DAYS)
    out: set[tuple[date, date]] = set()
    for back in range(1, CATCH_UP_DAYS + 8):
        first, last = period_of(today - timedelta(days=back), period)
        if oldest <= last < today and first >= since:
            out.add((first, last))
    return sorted(out)


# -- the push -------------------------------------------------------------------------------

def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (RFC 9110: a number of seconds or an
    HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


class Upward:
    """The webhook pusher of one streamer (started by ``app.py`` on the active one only)."""

    def __init__(self, plane: Any, url: str, secret: bytes, period: Period = "daily",
                 registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.plane = plane
        self.url = url
        self.secret = secret
        self.period: Period = period
        self.clock = clock
        #: backoff: the n-th retry waits retry_base_s * 2**n (at most retry_max_s) times a
        #: jitter in [0.5, 1]; a delivery gives up after ``attempts`` tries
        self.retry_base_s = 2.0
        self.retry_max_s = 300.0
        self.attempts = 8
        self.timeout_s = 30.0
        #: the first check waits this long after the start, then one check per ``tick_s``
        self.first_check_s = 60.0
        self.tick_s = 60.0
        self.pushes = Counter("loa_report_push_total", "Report webhook attempts by outcome: "
                              "delivered, retry, rejected (a 4xx), failed (gave up)",
                              ["outcome"], registry=registry)
        self.last_success = Gauge("loa_report_push_last_success_timestamp_seconds",
                                  "When a report was last delivered upward (epoch s)",
                                  registry=registry)
        self._task: asyncio.Task[None] | None = None
        self._pushing: set[asyncio.Task[bool]] = set()
        self._lock = asyncio.Lock()  # one delivery at a time (the receiver sees them in order)

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._pushing) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._task = None

    async def _run(self) -> None:
        await asyncio.sleep(self.first_check_s)
        while True:
            try:
                await self.catch_up()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("report push check failed; next check in %.0f s", self.tick_s)
            await asyncio.sleep(self.tick_s)

    async def catch_up(self) -> list[str]:
        """Push every due period not delivered yet, oldest first, until one fails; the ids
        delivered."""
        now = self.clock()
        state = self.plane.state
        since = await state.upward_since()
        if since is None:  # first run: from the period before today's (not a year of backlog)
            since = period_of(local_day(now) - timedelta(days=1), self.period)[0]
            await state.set_upward_since(since)
        delivered = await state.upward_delivered()
        province = province_of(self.plane)
        out = []
        for first, last in due_periods(now, self.period, since):
            rid = report_id(province, first, last)
            if rid in delivered:
                continue
            if not await self.deliver(first, last):
                break  # the receiver is away or refusing: the rest wait for the next check
            out.append(rid)
        return out

    def deliver_soon(self, first: date, last: date) -> None:
        """``deliver`` in a task of its own (the manual trigger answers at once)."""
        task = asyncio.get_running_loop().create_task(self.deliver(first, last))
        self._pushing.add(task)
        task.add_done_callback(self._pushing.discard)

    async def deliver(self, first: date, last: date) -> bool:
        """Build and POST the report of ``first``..``last`` until it is taken, refused for
        good, or the attempts run out; True if delivered (then remembered in Redis)."""
        async with self._lock:
            report = await build_report(self.plane, first, last, self.clock())
            body = report.model_dump_json().encode()
            parts = urlsplit(self.url)  # logged and audited: the host, never a userinfo
            where = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                for attempt in range(1, self.attempts + 1):
                    ts = str(int(time.time()))
                    headers = {"Content-Type": "application/json",
                               "X-Loa-Report-Id": report.id, "X-Loa-Timestamp": ts,
                               "X-Loa-Signature": signature(self.secret, ts, body)}
                    try:
                        async with http.post(self.url, data=body, headers=headers) as r:
                            status, reason = r.status, f"HTTP {r.status}"
                            asked = retry_after(r.headers.get("Retry-After"), time.time())
                    except (aiohttp.ClientError, TimeoutError, OSError) as e:
                        status, reason, asked = 0, f"{type(e).__name__}: {e}", None
                    if 200 <= status < 300:
                        await self._delivered(report, attempt, where)
                        return True
                    last_try = attempt == self.attempts
                    if status and not _retryable(status):
                        self.pushes.labels("rejected").inc()
                        log.error("report %s (%s..%s) to %s: rejected (%s), not retried",
                                  report.id[:12], first, last, where, reason)
                        return False
                    self.pushes.labels("failed" if last_try else "retry").inc()
                    if last_try:
                        log.error("report %s (%s..%s) to %s: %s; gave up after %d attempts",
                                  report.id[:12], first, last, where, reason, attempt)
                        return False
                    wait = min(self.retry_max_s, self.retry_base_s * 2 ** (attempt - 1))
                    wait *= random.uniform(0.5, 1.0)
                    if asked is not None:  # the receiver said when (a 429 or 503): not sooner
                        wait = min(self.retry_max_s, max(wait, asked))
                    log.warning("report %s (%s..%s) to %s: %s; attempt %d, retry in %.1f s",
                                report.id[:12], first, last, where, reason, attempt, wait)
                    await asyncio.sleep(wait)
        return False

    async def _delivered(self, report: UpwardReport, attempts: int, where: str) -> None:
        now = time.time()
        self.pushes.labels("delivered").inc()
        self.last_success.set(now)
        p = report.period
        await self.plane.state.mark_upward_delivered(report.id, p.from_, p.to, now)
        log.info("report %s (%s..%s) delivered to %s (attempt %d): %d broadcasts, %d "
                 "emergencies, %d stations", report.id[:12], p.from_, p.to, where, attempts,
                 len(report.broadcasts), len(report.emergencies), len(report.stations))
        await self.plane.state.audit(AuditEntry(
            ts=now, user="-", action="report_delivered", target=report.id,
            zones=sorted(self.plane.tree.roots),
            detail={"from": p.from_.isoformat(), "to": p.to.isoformat(), "to_host": where,
                    "attempts": attempts}))


UPWARD = web.AppKey("upward", Upward)
