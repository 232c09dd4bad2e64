"""Report arithmetic: broadcast airtime and speaker availability per zone per local day.

Both are computed from what the control plane already keeps — broadcast records
(``started``..``ended``) and the presence log — cut into local days (Asia/Ho_Chi_Minh). A row
is either one leaf zone (channel) or one requested zone with its leaves rolled up
(``group``); the rules are in ``docs/api.md`` ("Reports"). Plain functions of their inputs:
no HTTP, no I/O, nothing here reads or writes state (``api/reports.py`` fetches and answers).
"""

from __future__ import annotations

import bisect
import csv
import io
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from dateutil import tz
from pydantic import BaseModel, Field

from streamer.control.models import BroadcastRecord, Speaker, covers
from streamer.control.schedules import DEFAULT_TZ as LOCAL_TZ
from wire.priority import PRIORITIES

#: broadcast records are indexed by creation time; one that started (after approval) or kept
#: airing longer than this after it was created is missed by windows that begin later
LOOKBACK_S = 7 * 86400


class MinutesRow(BaseModel):
    day: date
    zone: str
    priority: str
    minutes: float = Field(description="minutes during which a broadcast of this priority "
                           "was addressed to the zone (overlaps counted once)")
    channel_minutes: float = Field(description="the leaf zones' minutes added up")
    broadcasts: int = Field(description="distinct broadcasts that aired in it that day")


class AvailabilityRow(BaseModel):
    day: date
    zone: str
    speakers: int
    availability: float = Field(description="mean over the speakers of the fraction of the "
                                "observed day each was online, 0..1")
    observed_hours: float = Field(description="24, or less for today (up to now)")


def to_csv(rows: Sequence[BaseModel], row_model: type[BaseModel]) -> str:
    """``rows`` as CSV: a header line of the row's field names, then one line per row."""
    buf = io.StringIO()
    names = list(row_model.model_fields)
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(names)
    for row in rows:
        data = row.model_dump(mode="json")
        w.writerow([data[n] for n in names])
    return buf.getvalue()


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
