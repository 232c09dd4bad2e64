"""The mixer's frame clock: frame k is due at ``start + k * ptime`` on the monotonic clock.

Deadlines are computed from the frame index, never by adding up sleeps, so the clock does not
drift however late a wake-up is. A late frame is still produced (the stream must stay
continuous) and counted as a deadline miss; a stall longer than ``max_catch_up_frames`` is
skipped over rather than replayed in a burst. Sans-IO: the caller passes ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FrameClock:
    ptime_ms: int
    start_mono: float
    start_wall: float
    #: a frame produced later than this after its deadline counts as missed
    miss_tolerance_s: float = 0.010
    max_catch_up_frames: int = 25
    frame: int = 0
    misses: int = 0
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

    def due(self, now_mono: float) -> list[int]:
        """Frames to produce now, in order; advances the clock past them."""
        if now_mono < self.deadline():
            return []
        last_due = int((now_mono - self.start_mono) / self.ptime_s)
        behind = last_due - self.frame + 1
        if behind > self.max_catch_up_frames:
            self.skipped += behind - 1
            self.misses += 1
            self.frame = last_due
        frames = list(range(self.frame, last_due + 1))
        for k in frames:
            if now_mono - self.deadline(k) > self.miss_tolerance_s:
                self.misses += 1
        self.frame = last_due + 1
        return frames
