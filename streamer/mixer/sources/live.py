"""Live audio: a buffer that one writer fills in real time and mixer items read from.

Live inputs (the browser studio, RTP ingest, a pulled radio stream) produce audio on their own
clock, not the mixer's. A :class:`LiveBuffer` holds the last few seconds that the input wrote;
each broadcast that airs the input gets its own :class:`LiveReader` (a mixer ``Source``) that
reads a fixed ``latency`` behind the newest sample. The reader re-anchors instead of drifting:
if the writer falls behind (an underrun: network jitter, a slower sound card) the reader plays
what it has and then silence, and anchors again ``latency`` behind the writer when audio
returns; if the writer runs ahead by more than ``latency + slack`` (a burst after a stall, a
faster clock) it skips forward. So a live voice is never more than ``latency + slack`` late
and never replays audio it already played.

Live sources are endless and say so with ``keeps_time_from``: the program advances their
cursors every frame even while they are preempted (``program.py``), so live audio resumes at
"now" after an emergency, not where it paused. Writers may be on another thread (PyAV
decoding a pulled stream): ``write`` and ``read`` take a lock, held only for a copy.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from .base import RATE_HZ

DEFAULT_CAPACITY_S = 10.0
DEFAULT_LATENCY_S = 0.06
DEFAULT_SLACK_S = 0.1


class LiveBuffer:
    """A ring of the newest ``capacity_s`` seconds an input wrote (48 kHz mono float32)."""

    def __init__(self, capacity_s: float = DEFAULT_CAPACITY_S) -> None:
        self.capacity = int(capacity_s * RATE_HZ)
        self._ring = np.zeros(self.capacity, dtype=np.float32)
        self._lock = threading.Lock()
        #: samples written since the buffer was made (the absolute position of the next one)
        self.written = 0
        #: monotonic time of the last write (0: never)
        self.last_write = 0.0
        self.closed = False
        self._sumsq = 0.0
        self._level_n = 0

    def write(self, pcm: np.ndarray) -> None:
        """Append samples (any float dtype, [-1, 1]); the oldest fall out of the ring."""
        x = np.asarray(pcm, dtype=np.float32).ravel()
        total = x.size
        if total > self.capacity:
            x = x[-self.capacity :]
        sumsq = float(np.dot(x, x))  # outside the lock: a reader on the loop never waits on it
        with self._lock:
            i = (self.written + total - x.size) % self.capacity
            k = min(x.size, self.capacity - i)
            self._ring[i : i + k] = x[:k]
            self._ring[: x.size - k] = x[k:]
            self.written += total
            self.last_write = time.monotonic()
            self._sumsq += sumsq
            self._level_n += x.size

    def close(self) -> None:
        """The input ended: readers play out what is buffered, then silence."""
        self.closed = True

    def take_level_dbfs(self) -> float:
        """RMS of what was written since the last call, in dBFS (-120 for silence)."""
        with self._lock:
            sumsq, n = self._sumsq, self._level_n
            self._sumsq, self._level_n = 0.0, 0
        if n == 0 or sumsq <= 0:
            return -120.0
        return max(10 * math.log10(sumsq / n), -120.0)

    def copy(self, start: int, n: int, out: np.ndarray) -> int:
        """Copy samples ``[start, start + n)`` into ``out[:n]``; returns how far (from
        ``start``) the buffer reached. Positions before the oldest sample kept (or before the
        first ever written) are left as they are in ``out``."""
        with self._lock:
            end = min(start + n, self.written)
            lo = max(start, self.written - self.capacity, 0)
            j = lo - start
            while lo < end:
                i = lo % self.capacity
                k = min(end - lo, self.capacity - i)
                out[j : j + k] = self._ring[i : i + k]
                lo, j = lo + k, j + k
        return max(0, end - start)

    def reader(self, latency_s: float = DEFAULT_LATENCY_S,
               slack_s: float = DEFAULT_SLACK_S) -> LiveReader:
        return LiveReader(self, latency_s, slack_s)


class LiveReader:
    """One broadcast's view of a :class:`LiveBuffer`: a ``Source`` of endless length."""

    length: int | None = None
    #: live from its first sample: preempted or waiting, its cursor keeps time (rule 8)
    keeps_time_from: int | None = 0

    def __init__(self, buffer: LiveBuffer, latency_s: float, slack_s: float) -> None:
        self.buffer = buffer
        self.latency = int(latency_s * RATE_HZ)
        self.slack = int(slack_s * RATE_HZ)
        #: buffer position = mixer cursor + offset; None until the first read anchors it
        self.offset: int | None = None
        self._last: tuple[int, int, np.ndarray] | None = None
        self._starved = False
        self.underruns = 0
        self.skips = 0

    def read(self, pos: int, n: int) -> np.ndarray:
        # Several programs may read the same item in one frame at the same cursor: answer
        # them alike, and re-anchor only once per position.
        last = self._last
        if last is not None and last[0] == pos and last[1] == n:
            return last[2]
        buf = self.buffer
        written = buf.written
        if self.offset is None or self._starved:
            anchor = written - self.latency - pos
            # after an underrun, start again `latency` behind the writer, never replaying
            self.offset = anchor if self.offset is None else max(anchor, self.offset)
            self._starved = False
        start = pos + self.offset
        lag = written - start  # samples buffered ahead of this read
        if lag > self.latency + self.slack + n:  # writer ran ahead: skip to `latency` behind
            self.offset += lag - self.latency - n
            start = pos + self.offset
            self.skips += 1
        out = np.zeros(n, dtype=np.float32)
        got = buf.copy(start, n, out) if start < written else 0
        if got < n and not buf.closed:
            # Underrun: play what there was, then silence; anchor again behind the writer
            # when it is back, so the next audio starts `latency` late instead of stuttering
            # sample by sample.
            self._starved = True
            self.underruns += 1
        self._last = (pos, n, out)
        return out
