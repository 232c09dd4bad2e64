"""The one interface every audio source has: samples addressed by position.

A source is 48 kHz mono float32 in [-1, 1], read by absolute sample position, so that one
broadcast can be paused in one channel and keep playing in another (each program keeps its own
cursor) and so that a preempted item resumes exactly where it paused. ``read`` never blocks and
never allocates more than the frame it returns.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

RATE_HZ = 48_000


class Source(Protocol):
    #: total samples, or None for an endless source (a live input, a pulled stream)
    length: int | None
    # A live source also has ``keeps_time_from``: the cursor from which its position follows
    # the clock even while it is not playing (``program.py``, rule 8); others have none.

    def read(self, pos: int, n: int) -> np.ndarray:
        """``n`` float32 samples starting at ``pos``; zeros past the end."""
        ...


class From:
    """``source`` from sample ``start`` on: a broadcast going on where it was (a standby
    streamer taking over, ``streamer/control/broadcasts.py``)."""

    def __init__(self, source: Source, start: int) -> None:
        self.source = source
        self.start = start
        self.length = None if source.length is None else max(0, source.length - start)

    def read(self, pos: int, n: int) -> np.ndarray:
        return self.source.read(pos + self.start, n)
