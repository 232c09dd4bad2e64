"""The speaker's one source of wake-ups: the playout's beat, and the periodic jobs riding on it.

On a small board the cost of a Python speaker is mostly waking up: paced as a stream comes, a
packet costs five times what it costs back to back, because each wake-up finds the code and
data out of the caches (``docs/BENCHMARKS.md``, "A lighter speaker"). So the speaker wakes for
nothing but this rhythm and, when it has nothing to play, its socket, and the rhythm wakes as
little as it can:

- **the beat** runs the playout (``Playout.tick``) from a timer callback (one loop turn, no
  task, no future). While the speaker plays, it comes every few packet times (``beat_s``:
  60 ms at 20 ms packets), reads everything queued on the socket (``net.py``) and writes
  that far ahead (:meth:`Rhythm.reach`): one wake-up per three packets instead of one per
  packet. Its timer beats stay on a grid that follows the newest ``LOAS`` by half a packet
  time (:meth:`Rhythm.align`), so a batch's signature is read as soon as it has come; a frame
  the playout waits for gets a beat of its own a packet time before it plays
  (:meth:`Rhythm.within`, ``Playout.wake_at``);
- while the speaker **listens** (nothing to play: a quiet channel; or an answer to a request
  on its way), **a datagram nudges the beat**: it runs right after the socket was read. A
  second nudge within half a period does not beat again;
- **jobs** (``every``: the handshake tick, the emergency replay decisions) run from the
  beat when their period is due, on a grid that does not drift; they never wake the loop
  on their own (a job's period is at most a beat late, never early).

A job may also put work **offbeat** (:meth:`Rhythm.offbeat`), half a period after the
beat: the clock sync asks the time then when the beat followed a datagram's nudge (``main.py``).

The beat never stops: when no packet comes the timer runs it every period, or every
``TICK_S`` (100 ms) while the channel is quiet and nothing is left to play (``main.py``: a
quiet speaker wakes 10 times a second, not 50; the next broadcast's first packet nudges it).
Nothing here may stop the playout: a job that raises is logged (once a minute at most) and
the beat goes on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("loa.speaker")

LOG_EVERY_S = 60.0
#: A playing speaker reads its socket only at the beat, every few packets (``beat_s``). What
#: bounds the beat: a frame is written a beat before its play time (``Playout.tick``'s
#: ``ahead_s``: the sink must not starve until the next beat), so a packet must have arrived
#: a beat before its play time; with the beat at most a quarter of the playout delay, three
#: quarters are left to the network (225 ms of the default 300). The signature that proves a
#: batch comes last, 220 ms after the batch's first packet (``wire/auth.py``, ``BATCH_MS``),
#: so the beat follows the newest LOAS by half a packet time (``align``): it reads each LOAS
#: right after it came, and the batch's first frame has as much time as before (delay -
#: 220 ms - half a packet for the network, 70 ms at 300 ms).
MAX_BEAT_S = 0.06
MIN_STEP = 0.25  # of a period: a beat on the grid comes at least this long after another


def beat_s(ptime_s: float, delay_s: float) -> float:
    """The playing beat: a whole number of packet times, at most ``MAX_BEAT_S`` and a quarter
    of the playout delay, at least one packet time (3 packets at 20 ms and 300 ms)."""
    packets = min(MAX_BEAT_S, delay_s / 4) / ptime_s + 1e-9
    return ptime_s * max(1, int(packets))


@dataclass
class _Job:
    name: str
    period_s: float
    run: Callable[[], object]
    due: float = 0.0
    logged: float = float("-inf")


class Rhythm:
    """Runs ``beat`` every ``period()`` seconds (or sooner, on :meth:`nudge`), and the jobs
    added with :meth:`every` when they are due; :meth:`run` until cancelled. ``beat(nudged)``
    is told whether a nudge runs it (the socket was just read)."""

    def __init__(self, beat: Callable[[bool], object], period: Callable[[], float]) -> None:
        self._beat = _Job("playout", 0.0, lambda: beat(self._nudged))
        self._period = period
        self._jobs: list[_Job] = []
        self._offbeat: dict[str, _Job] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._next = 0.0  # loop time of the next timer beat
        self._anchor: float | None = None  # the timer beats follow it (align)
        self._within: float | None = None  # the next timer beat at most this late (loop time)
        self._last = float("-inf")  # loop time of the last beat
        self._nudged = False  # the last beat came from a nudge
        self.beats = 0
        self.nudged_beats = 0

    def every(self, name: str, period_s: float, job: Callable[[], object]) -> None:
        """Run ``job`` from the beat every ``period_s`` (the first time at the first beat)."""
        self._jobs.append(_Job(name, period_s, job))

    def offbeat(self, job: Callable[[], object], name: str = "offbeat") -> None:
        """Run ``job`` half a packet time from now, once (one wake-up of its own)."""
        if self._loop is not None:
            held = self._offbeat.setdefault(name, _Job(name, 0.0, job))  # its log's pace
            held.run = job
            self._loop.call_later(self._period() / 2, _call, held)

    def align(self, at: float | None) -> None:
        """Put the timer beats a whole number of periods after ``at`` (loop time, i.e.
        monotonic), the next at least a quarter of a period from now (so at most
        :meth:`reach` away): called from the beat. None: a period after the last beat."""
        self._anchor = at

    def within(self, delay_s: float) -> None:
        """Beat again within ``delay_s`` at the latest (an extra beat, off the grid): called
        from the beat."""
        if self._loop is not None:
            self._within = self._loop.time() + max(0.0, delay_s)

    @property
    def next_at(self) -> float:
        """Loop time of the next timer beat."""
        return self._next

    def reach(self) -> float:
        """How far ahead the beat must write: the time to the next beat at most (a period,
        and a quarter when the grid moved: ``align``)."""
        return self._period() * (1 + MIN_STEP)

    async def run(self) -> None:
        """Beat until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._next = self._loop.time()
        self._on_timer()
        try:
            await self._loop.create_future()  # never set: the timer does the work
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._loop = None

    def nudge(self) -> None:
        """A datagram was handled: beat now unless a nudge already did within half a
        packet time."""
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        if self._nudged and now - self._last < self._period() / 2:
            return
        self._nudged = True
        self.nudged_beats += 1
        self._next = now
        self._run(now)

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._nudged = False
        self._run(self._loop.time())

    def _run(self, now: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._last = now
        self.beats += 1
        _call(self._beat)
        for job in self._jobs:
            if now >= job.due:
                job.due += job.period_s  # on its grid, which does not drift
                if job.due <= now:  # the first run, or after a stall: a grid from now
                    job.due = now + job.period_s
                _call(job)
        period = self._period()
        if (at := self._anchor) is not None:
            self._next = at + period * max(0, math.ceil((now + MIN_STEP * period - at) / period))
        else:
            self._next += period
        if (within := self._within) is not None:
            self._within = None
            if within < self._next:
                self._next = within
        if self._next < self._loop.time():  # the loop stalled: resume from now, no burst
            self._next = self._loop.time()
        self._timer = self._loop.call_at(self._next, self._on_timer)


def _call(job: _Job) -> None:
    try:
        job.run()
    except Exception:
        now = time.monotonic()
        if now - job.logged >= LOG_EVERY_S:
            job.logged = now
            log.exception("the %s job failed (the speaker goes on)", job.name)
