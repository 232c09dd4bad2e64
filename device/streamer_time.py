"""The streamer's timeline as a device (speaker, relay) knows it, through its own clock.

Capture times are on the streamer's clock; a device's clock is whatever NTP made of it. A
device asks its upstream for the time (TIME/TIMEREPLY, ``docs/protocol.md``), often at first
and then once a second, and ``wire/timesync.py`` turns the answers into the offset and drift
of the streamer's clock from its own. A relay answers its own subscribers' TIMEs from this
estimate, so time flows down a chain of relays like the media does.
"""

from __future__ import annotations

from collections.abc import Callable

from wire.timesync import Exchange, Timeline

NS = 1_000_000_000
#: TIME every tick (200 ms) for the first exchanges, then every ``SLOW_EVERY`` ticks (1 s)
FAST_EXCHANGES = 16
SLOW_EVERY = 5


class StreamerTime:
    """The streamer's timeline as this device knows it: when to ask, what the answers say."""

    def __init__(self, clock_ns: Callable[[], int], timeline: Timeline | None = None) -> None:
        self.clock_ns = clock_ns
        self.timeline = timeline or Timeline()
        self.asked = 0
        self._ticks = 0

    def due(self) -> int | None:
        """Called every tick: a t1 to ask with now, or None (fast at first, then once a
        second)."""
        self._ticks += 1
        if self.asked >= FAST_EXCHANGES and self._ticks % SLOW_EVERY:
            return None
        self.asked += 1
        return self.clock_ns()

    def answered(self, t1: int, t2: int, t3: int) -> None:
        self.timeline.add(Exchange(t1, t2, t3, self.clock_ns()))

    def shift_s(self) -> float:
        """Streamer time minus ours, seconds (0 until the first answer: NTP is all we have)."""
        off = self.timeline.offset(self.clock_ns())
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
