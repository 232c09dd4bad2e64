"""The streamer's timeline as a device (speaker, relay) knows it, through its own clock.

Capture times are on the streamer's clock; a device's clock is whatever NTP made of it. A
device asks its upstream for the time (TIME/TIMEREPLY, ``docs/protocol.md``), often at first
and then every few seconds, and ``wire/timesync.py`` turns the answers into the offset and
drift of the streamer's clock from its own. A relay answers its own subscribers' TIMEs from this
estimate, so time flows down a chain of relays like the media does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from wire.timesync import Exchange, Timeline

NS = 1_000_000_000
#: TIME every 200 ms for the first 16 exchanges (a first estimate), every second for the
#: next 24 (the drift, fitted over half a minute), then every ``every_s``: a relay every
#: second (it has few subscriptions and answers for the chain below it), a speaker every 5 s,
#: so that 5,000 speakers in step cost their relay 1,000 answers a second, not 5,000; with the
#: drift fitted, a sample every 5 s keeps a crystal 80 ppm off within a few µs
FAST_EXCHANGES = 16
FAST_S = 0.2
SETTLE_EXCHANGES = 40
SETTLE_S = 1.0
RELAY_EVERY_S = 1.0
SPEAKER_EVERY_S = 5.0


_RAW = getattr(time, "CLOCK_MONOTONIC_RAW", None)


def raw_ns() -> int:
    """The machine's crystal, ns, as it ticks: CLOCK_MONOTONIC_RAW, which NTP neither steps nor
    slews (on Linux; elsewhere the monotonic clock)."""
    return time.clock_gettime_ns(_RAW) if _RAW is not None else time.monotonic_ns()


class FreeClock:
    """The clock a device plays by: the wall time at its start, run on by the raw crystal.
    The clock sync fits an offset and a drift, which a free-running crystal has; a clock NTP
    steps or slews now and then would hand it a moving target."""

    def __init__(self) -> None:
        self._raw0 = raw_ns()
        self._wall0 = time.time_ns()

    def now_ns(self) -> int:
        return self._wall0 + (raw_ns() - self._raw0)


class StreamerTime:
    """The streamer's timeline as this device knows it: when to ask, what the answers say."""

    def __init__(self, clock_ns: Callable[[], int], timeline: Timeline | None = None,
                 every_s: float = SPEAKER_EVERY_S) -> None:
        self.clock_ns = clock_ns
        self.every_s = every_s
        self.timeline = timeline or Timeline()
        self.asked = 0
        self._last = float("-inf")

    def is_due(self, now: float) -> bool:
        """Whether :meth:`due` would ask now (``now``: any monotonic seconds); changes nothing."""
        gap = (FAST_S if self.asked < FAST_EXCHANGES
               else SETTLE_S if self.asked < SETTLE_EXCHANGES else self.every_s)
        return now - self._last >= gap - 1e-3

    def due(self, now: float) -> int | None:
        """Called every tick (``now``: any monotonic seconds): a t1 to ask with now, or None
        (every 200 ms at first, then every second, then every ``every_s``)."""
        if not self.is_due(now):
            return None
        self._last = now
        self.asked += 1
        return self.clock_ns()

    def answered(self, t1: int, t2: int, t3: int, age_ns: int = 0) -> None:
        """A TIMEREPLY to our ``t1``; it arrived ``age_ns`` ago (a speaker reads its socket
        at its own pace: the kernel's receive time says when, ``clients/speaker/net.py``)."""
        self.timeline.add(Exchange(t1, t2, t3, self.clock_ns() - age_ns))

    def shift_s(self, local_ns: int | None = None) -> float:
        """Streamer time minus ours, seconds (0 until the first answer: NTP is all we have),
        at our clock's ``local_ns`` (now if None)."""
        off = self.timeline.offset(self.clock_ns() if local_ns is None else local_ns)
        return 0.0 if off is None else off / NS

    def now(self) -> float:
        """The streamer's time now, s, as well as we know it (our clock until answered)."""
        local = self.clock_ns()
        off = self.timeline.offset(local)
        return (local + (off or 0.0)) / NS

    def now_ns(self) -> int | None:
        """The streamer's time now, ns; None before the first answer (what a relay tells
        its subscribers: better no answer than a wrong one)."""
        local = self.clock_ns()
        return self.timeline.upstream(local)
