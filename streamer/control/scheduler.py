"""The scheduler: fires each schedule's occurrences into the mixer on the frame that matches
their wall-clock time.

It keeps its own copy of the schedules, so playout goes on with the last good schedule when
Redis or the API are down. A lead time ahead of an occurrence (30 s by default) it asks the
caller to ``prepare`` the item (TTS, clip decoding, a relay's connection), then books it in the
mixer for the frame whose first sample is the occurrence; the mixer, not this loop's wake-up,
makes the start exact. Each occurrence airs at most once: ``last_fired`` (the caller persists
it) says where to resume after a restart, and an occurrence missed by more than the grace
period is reported, never aired late. Quiet hours are checked again at fire time. The clock
(``now``, ``sleep``) is injected; this module never reads the system clock itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streamer.mixer.clock import FrameClock
from streamer.mixer.mixer import Mixer
from streamer.mixer.program import Item

from .schedules import QuietHoursFor, Schedule, iter_occurrences, next_occurrence, quiet_reason

log = logging.getLogger("loa.scheduler")

Prepare = Callable[[Schedule, datetime], Awaitable[Item]]
OnFired = Callable[[Schedule, datetime, Item], None]
OnSkipped = Callable[[Schedule, datetime, str], None]
OnCancelled = Callable[[Schedule, datetime, "Item | None"], None]


def frame_for(clock: FrameClock, wall: float) -> int:
    """The first frame whose first sample is at or after Unix time ``wall``: a schedule
    never starts early, and at most one frame late."""
    # the tolerance absorbs float rounding of (wall - start_wall) at Unix-time magnitudes
    return math.ceil((wall - clock.start_wall) / clock.ptime_s - 1e-3)


@dataclass(eq=False)
class _Firing:
    """One occurrence on its way to the air: being prepared, then booked in the mixer."""

    schedule: Schedule
    occurrence: datetime
    task: asyncio.Task[None] | None = None
    item: Item | None = None  # set once booked in the mixer


def _airing(s: Schedule) -> tuple[object, ...]:
    """What decides what airs when; an edit that keeps it keeps a prepared occurrence."""
    return (s.active, s.model_dump(exclude={"label", "created_by", "enabled", "approved"}))


class Scheduler:
    def __init__(
        self,
        mixer: Mixer,
        prepare: Prepare,
        channels_for: Callable[[Sequence[str]], list[str]],
        quiet_hours_for_zone: QuietHoursFor,
        *,
        now: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        lead_s: float = 30.0,
        grace_s: float = 60.0,
        max_sleep_s: float = 60.0,
        on_fired: OnFired | None = None,
        on_skipped: OnSkipped | None = None,
        on_cancelled: OnCancelled | None = None,
    ) -> None:
        self.mixer = mixer
        self.prepare = prepare
        self.channels_for = channels_for
        self.quiet_hours_for_zone = quiet_hours_for_zone
        self.now = now or self._frame_clock_now
        self.sleep = sleep
        self.lead_s = lead_s
        self.grace_s = grace_s
        self.max_sleep_s = max_sleep_s
        self.on_fired = on_fired or (lambda s, occ, item: None)
        self.on_skipped = on_skipped or (lambda s, occ, reason: None)
        self.on_cancelled = on_cancelled or (lambda s, occ, item: None)
        self.schedules: dict[str, Schedule] = {}
        #: schedule id -> the last occurrence that aired or was skipped: persist it
        self.last_fired: dict[str, datetime] = {}
        self._next: dict[str, datetime | None] = {}  # next occurrence not yet taken up
        #: schedule id -> from when its occurrences are taken up if it never fired (``load``)
        self._taken_up_from: dict[str, float] = {}
        self._firings: dict[str, list[_Firing]] = {}
        self._wake = asyncio.Event()

    def _frame_clock_now(self) -> float:
        """Wall time as the frame clock counts it, so that "now" and frame start times agree
        even if the system clock is stepped while the streamer runs."""
        clock = self.mixer.clock
        return clock.start_wall + (asyncio.get_running_loop().time() - clock.start_mono)

    # ------------------------------------------------------------------ schedules

    def load(self, schedules: Iterable[Schedule],
             last_fired: Mapping[str, datetime] | None = None,
             taken_up_from: float | None = None) -> None:
        """Replace the whole set (at start-up, or after re-reading the store). A schedule
        that never fired takes up its occurrences from now on, or from ``taken_up_from``
        (wall time) if given: a standby streamer taking over gives the moment the last active
        streamer may have stopped, so that an occurrence due while nobody held the lease
        airs, late by the takeover, instead of being lost (``lease.py``)."""
        if last_fired:
            for sid, t in last_fired.items():
                self._mark(sid, t)
        new = {s.id: s for s in schedules}
        if taken_up_from is not None:
            self._taken_up_from = dict.fromkeys(new, taken_up_from)
        for sid in list(self.schedules):
            if sid not in new:
                self.remove(sid)
        for s in new.values():
            self.upsert(s)

    def upsert(self, schedule: Schedule) -> None:
        old = self.schedules.get(schedule.id)
        self.schedules[schedule.id] = schedule
        if old is not None and _airing(old) == _airing(schedule):
            for f in self._firings.get(schedule.id, []):
                f.schedule = schedule
            return
        self._cancel(schedule.id)
        self._wake.set()

    def remove(self, schedule_id: str) -> bool:
        if schedule_id not in self.schedules:
            return False
        self._cancel(schedule_id)
        del self.schedules[schedule_id]
        self.last_fired.pop(schedule_id, None)
        return True

    def next_fire(self, schedule_id: str) -> datetime | None:
        """The next occurrence not yet taken up (None: none, inactive, or not planned yet)."""
        return self._next.get(schedule_id)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                delay = await self.step()
            except Exception:  # one bad schedule must not stop every other one
                log.exception("scheduler step failed")
                delay = 1.0
            await self._wait(delay)

    async def close(self) -> None:
        tasks = [f.task for fs in self._firings.values() for f in fs
                 if f.task is not None and not f.task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _wait(self, delay: float) -> None:
        if self._wake.is_set():
            return
        sleeper = asyncio.ensure_future(self.sleep(delay))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def step(self) -> float:
        """Take up everything due at ``now()``; returns the seconds until the next thing."""
        now = self.now()
        wake = now + self.max_sleep_s
        taken = 0
        for sid, s in list(self.schedules.items()):
            if not s.active:
                continue
            if sid not in self._next:
                self._next[sid] = self._resume(s, now)
            firings = self._firings.setdefault(sid, [])
            for f in list(firings):  # booked ones whose time has come are on air
                if f.item is None:
                    continue
                t = f.occurrence.timestamp()
                if t <= now:
                    firings.remove(f)
                    self._fired(f)
                else:
                    wake = min(wake, t)
            while self.schedules.get(sid) is s and (occ := self._next.get(sid)) is not None:
                t = occ.timestamp()
                if t - self.lead_s > now:
                    wake = min(wake, t - self.lead_s)
                    break
                self._next[sid] = next_occurrence(s, occ)
                taken += 1
                if taken % 100 == 0:  # days of a minutely rule missed: let frames through
                    await asyncio.sleep(0)
                if now - t > self.grace_s:  # the streamer was down, or stalled
                    self._skip(s, occ, f"missed by {now - t:.0f} s, more than the "
                                       f"{self.grace_s:g} s grace: not aired late")
                    continue
                channels = self.channels_for(s.zones)
                reason = quiet_reason(s, occ, channels, self.quiet_hours_for_zone)
                if reason is not None:
                    self._skip(s, occ, reason)
                    continue
                f = _Firing(s, occ)
                firings.append(f)
                f.task = asyncio.create_task(self._prepare(f, channels))
        return max(0.0, wake - now)

    def _resume(self, s: Schedule, now: float) -> datetime | None:
        """The first occurrence to take up: the one after ``last_fired`` (``step`` reports it
        and those after it as missed while they are more than the grace ago), or, for a
        schedule that never fired, the first from now on."""
        last = self.last_fired.get(s.id)
        since = min(now, self._taken_up_from.pop(s.id, now))
        if last is None:
            return next(iter_occurrences(s, datetime.fromtimestamp(since, UTC)), None)
        return next_occurrence(s, last)

    async def _prepare(self, f: _Firing, channels: list[str]) -> None:
        s, occ = f.schedule, f.occurrence
        firings = self._firings.get(s.id, [])
        try:
            item = await self.prepare(s, occ)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("schedule %s: preparing %s failed", s.id, occ)
            self._drop(firings, f)
            self._skip(s, occ, f"could not prepare: {e}")
            return
        t = occ.timestamp()
        late_s = self.now() - t
        reason = None
        clock = self.mixer.clock
        at = frame_for(clock, t)
        end = None if s.duration_s is None else frame_for(clock, t + s.duration_s)
        if late_s > self.grace_s:
            reason = f"prepared {late_s:.0f} s late, more than the {self.grace_s:g} s grace"
        elif end is not None and end <= self.mixer.next_frame:
            reason = "its window was over when it was ready"
        elif not channels:
            reason = "its zones have no channels"
        if reason is None:
            try:
                self.mixer.start(item, channels, at_frame=at, end_frame=end)
            except (KeyError, ValueError) as e:
                reason = f"the mixer refused it: {e}"
        if reason is not None:
            self._drop(firings, f)
            self._skip(s, occ, reason)
            return
        f.item = item
        if at < self.mixer.next_frame:
            log.warning("schedule %s: %s started %.2f s late", s.id, occ, late_s)
        self._wake.set()

    # ------------------------------------------------------------------ outcomes

    def _cancel(self, sid: str) -> None:
        """Withdraw what is being prepared or booked for a schedule that changed."""
        self._next.pop(sid, None)
        for f in self._firings.pop(sid, []):
            if f.item is not None and self.mixer.booked(f.item.id) is None:
                self._fired(f)  # it has started already: it stays on air
                continue
            if f.item is not None:
                self.mixer.stop(f.item.id)
            elif f.task is not None:
                f.task.cancel()
            log.info("schedule %s: %s withdrawn", sid, f.occurrence)
            self._call(self.on_cancelled, f.schedule, f.occurrence, f.item)

    @staticmethod
    def _drop(firings: list[_Firing], f: _Firing) -> None:
        if f in firings:
            firings.remove(f)

    def _mark(self, sid: str, occ: datetime) -> None:
        last = self.last_fired.get(sid)
        if last is None or occ > last:
            self.last_fired[sid] = occ

    def _fired(self, f: _Firing) -> None:
        assert f.item is not None
        self._mark(f.schedule.id, f.occurrence)
        log.info("schedule %s: %s on air as item %d", f.schedule.id, f.occurrence, f.item.id)
        self._call(self.on_fired, f.schedule, f.occurrence, f.item)

    def _skip(self, s: Schedule, occ: datetime, reason: str) -> None:
        self._mark(s.id, occ)
        log.warning("schedule %s: %s skipped: %s", s.id, occ, reason)
        self._call(self.on_skipped, s, occ, reason)

    @staticmethod
    def _call(callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception:  # the caller's bookkeeping must not stop the schedule
            log.exception("scheduler callback %r failed", callback)


__all__ = ["Prepare", "Scheduler", "frame_for"]
