"""The speaker's own clock, and the streamer's timeline read through it.

A box on a pole has whatever clock NTP gives it over a jittery 4G link. The speaker plays on
the *streamer's* timeline instead: it asks its upstream for the time (TIME/TIMEREPLY,
``docs/protocol.md``) and ``wire/timesync.py`` turns the answers into the offset and drift
of the streamer's clock from this one. Capture times are on the streamer's timeline; the
playout places a frame at ``capture + delay - offset`` on this clock
(``device/streamer_time.py``).

:class:`LocalClock` is that clock: the system's wall clock, or, for tests and demos, one that
is ``offset_ms`` off and runs ``drift_ppm`` fast or slow (``--clock-offset-ms``,
``--clock-drift-ppm``), as a badly disciplined box would. Everything the playout does — when
it wakes, how many samples it writes, the WAV's start time — runs on it.
"""

from __future__ import annotations

import time

NS = 1_000_000_000


class LocalClock:
    """Wall time ``offset_ms`` off, running ``drift_ppm`` fast (negative: slow)."""

    def __init__(self, offset_ms: float = 0.0, drift_ppm: float = 0.0) -> None:
        self.offset_s = offset_ms / 1000.0
        self.rate = drift_ppm * 1e-6
        self._mono0 = time.monotonic()

    def now(self) -> float:
        if not self.offset_s and not self.rate:
            return time.time()
        return time.time() + self.offset_s + self.rate * (time.monotonic() - self._mono0)

    def now_ns(self) -> int:
        return round(self.now() * NS) if (self.offset_s or self.rate) else time.time_ns()

    def wall(self, local: float) -> float:
        """The system's wall time when this clock read ``local`` (a test maps what the
        speaker recorded onto one timeline with it)."""
        return time.time() - (self.now() - local) / (1 + self.rate)
