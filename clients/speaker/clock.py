"""The speaker's own clock, and the streamer's timeline read through it.

A box on a pole has whatever clock NTP gives it over a jittery 4G link. The speaker plays on
the *streamer's* timeline instead: it asks its upstream for the time (TIME/TIMEREPLY,
``docs/protocol.md``) and ``wire/timesync.py`` turns the answers into the offset and drift
of the streamer's clock from this one. Capture times are on the streamer's timeline; the
playout places a frame at ``capture + delay - offset`` on this clock
(``device/streamer_time.py``).

:class:`LocalClock` is that clock: the machine's crystal, free-running from the wall time at
start (NTP neither steps nor slews it), or, for tests and demos, one that is ``offset_ms`` off
and runs ``drift_ppm`` fast or slow (``--clock-offset-ms``, ``--clock-drift-ppm``), as a
badly disciplined box would. Everything the playout does — when it wakes, how many samples it
writes, the WAV's start time, the play log — runs on it; what the speaker reports upstream
(proof of play) is turned into the streamer's time.
"""

from __future__ import annotations

import time

from device.streamer_time import FreeClock, raw_ns

NS = 1_000_000_000


class LocalClock(FreeClock):
    """The speaker's free-running clock (``device/streamer_time.py``), for tests and demos
    ``offset_ms`` off and running ``drift_ppm`` fast (negative: slow)."""

    def __init__(self, offset_ms: float = 0.0, drift_ppm: float = 0.0) -> None:
        super().__init__()
        self.offset_ns = round(offset_ms * 1e6)
        self.rate = drift_ppm * 1e-6

    def now_ns(self) -> int:
        elapsed = raw_ns() - self._raw0
        return self._wall0 + self.offset_ns + elapsed + round(elapsed * self.rate)

    def now(self) -> float:
        return self.now_ns() / NS

    def wall(self, local: float) -> float:
        """The system's wall time when this clock read ``local`` (a test maps what the
        speaker recorded onto one timeline with it)."""
        return time.time() - (self.now() - local) / (1 + self.rate)
