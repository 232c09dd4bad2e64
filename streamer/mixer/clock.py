"""The mixer's frame clock: frame k is due at ``start + k * ptime`` on the monotonic clock.

Deadlines are computed from the frame index, never by adding up sleeps, so the clock does not
drift however late a wake-up is. A late frame is still produced (the stream must stay
continuous); a stall longer than ``max_catch_up_frames`` is skipped over rather than replayed
in a burst.

A frame is due at its deadline, but its tick may begin earlier: :class:`Lead` says how much
earlier, so that producing it (waking up, rendering and encoding every programme) ends before
the deadline rather than after it (``docs/playout.md``, "The production lead"). Sans-IO: the
caller passes ``now`` and the times it measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FrameClock:
    ptime_ms: int
    start_mono: float
    start_wall: float
    #: a frame handed to the socket later than this after its deadline counts as missed
    miss_tolerance_s: float = 0.010
    max_catch_up_frames: int = 25
    frame: int = 0
    skipped: int = 0

    def __post_init__(self) -> None:
        if self.ptime_ms not in (20, 40, 60):
            raise ValueError("ptime_ms must be 20, 40 or 60")

    @property
    def ptime_s(self) -> float:
        return self.ptime_ms / 1000.0

    @property
    def frame_samples(self) -> int:
        return 48 * self.ptime_ms

    def deadline(self, k: int | None = None) -> float:
        """Monotonic time at which frame ``k`` (default: the next one) is due."""
        return self.start_mono + (self.frame if k is None else k) * self.ptime_s

    def capture_wall(self, k: int) -> float:
        """Wall-clock (Unix) time of the first sample of frame ``k``."""
        return self.start_wall + k * self.ptime_s

    def timeline_ns(self, now_mono: float) -> int:
        """The streamer's time at ``now_mono``, ns: the timeline capture times are on (the
        wall clock at start, run on since by the monotonic clock, as the frames are), which a
        subscriber's TIME asks for (``wire/timesync.py``)."""
        return round((self.start_wall + (now_mono - self.start_mono)) * 1e9)

    def due(self, now_mono: float, lead_s: float = 0.0) -> list[int]:
        """Frames to produce now, in order: those due within ``lead_s`` from ``now_mono``;
        advances the clock past them."""
        horizon = now_mono + lead_s
        if horizon < self.deadline():
            return []
        last_due = int((horizon - self.start_mono) / self.ptime_s)
        behind = last_due - self.frame + 1
        if behind > self.max_catch_up_frames:
            self.skipped += behind - 1
            self.frame = last_due
        frames = list(range(self.frame, last_due + 1))
        self.frame = last_due + 1
        return frames

    def late(self, k: int, handed_mono: float) -> bool:
        """Whether frame ``k``, handed to the socket at ``handed_mono``, missed its deadline."""
        return handed_mono - self.deadline(k) > self.miss_tolerance_s


@dataclass
class Lead:
    """How long before its deadline a frame's tick begins.

    The frame loop reports, for every frame, its *span*: from the moment its tick was meant to
    begin (deadline − lead) to the moment its last packet was handed to the socket, which
    counts a late wake-up, the control side holding the GIL, rendering and every encode. The
    lead is the longest span seen lately, with ``headroom`` and ``pad_s`` on top, between
    ``min_s`` and ``max_s``: it rises at once when a span outgrows it and falls back only
    when two windows of ``window`` frames in a row have needed less. So a quiet host starts
    its ticks a couple of milliseconds early and a host at the 06:00 peak up to a frame early,
    and in both every frame leaves before its deadline.

    The price is latency, ``lead`` at the most (``max_s``, one frame by default): a frame is
    made ``lead`` before the time stamped on it, which is when the speakers play it (plus
    their playout delay). A live voice is taken from its buffer that much earlier, and a
    command lands on a frame stamped that much later: an emergency's first packet leaves at
    the first tick after its command, as before, and sounds up to ``lead`` later.
    """

    max_s: float
    min_s: float = 0.002
    headroom: float = 1.25
    pad_s: float = 0.001
    window: int = 50
    value: float = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_s <= self.max_s:
            raise ValueError("need 0 <= min_s <= max_s")
        self.value = self.min_s
        self._longest = 0.0  # in this window
        self._before = 0.0  # in the window before
        self._n = 0

    def record(self, span_s: float) -> None:
        self._longest = max(self._longest, span_s)
        self.value = max(self.value, self._wanted(span_s))
        self._n += 1
        if self._n >= self.window:
            self.value = self._wanted(max(self._longest, self._before))
            self._before, self._longest, self._n = self._longest, 0.0, 0

    def _wanted(self, span_s: float) -> float:
        return min(self.max_s, max(self.min_s, span_s * self.headroom + self.pad_s))
