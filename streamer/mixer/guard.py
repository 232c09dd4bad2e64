"""The deadline guard: when the host cannot encode every programme in time, the lower levels
get cheaper; the emergency never does.

The mixer times every tick and reports it here; the guard says whether the next frame is
*degraded*. Rules (``docs/priorities.md``, "Over capacity"):

1. Whatever the guard says, emergency and priority programmes are rendered, encoded and handed
   to the fan-out first in every frame, at their encoder's own setting (the mixer does this).
2. When ``over_frames`` ticks in a row take longer than ``degrade_at`` of the frame time, the
   guard degrades: from the next frame, programmes whose top item is normal or background (and
   silent ones) are encoded at Opus complexity ``CHEAP_COMPLEXITY``, in-band FEC kept.
3. It recovers when, for ``recover_frames`` ticks in a row, the tick *would have* taken less
   than ``recover_at`` of the frame time with every programme at its own setting: the measured
   tick plus what the cheap encodes saved, estimated from the running averages of a full and a
   cheap encode. So a host that fits only at the cheap setting stays there rather than
   flapping between the two every few seconds.

Sans-IO: no clock is read here; the mixer passes the times, and tests pass the ones they want.
"""

from __future__ import annotations

#: Degrade when a tick takes more than this share of the frame time: 17 ms at 20 ms frames. A
#: tick begins up to one frame before its deadline (the production lead, ``clock.Lead``), so a
#: tick may take nearly a frame and its frame still leaves on time; but ticks that take a
#: whole frame leave no time for the next, and the clock falls behind. The 3 ms left, and the
#: 10 ms a frame may be late, are for a late wake-up or a neighbour's burst.
DEGRADE_AT = 0.85
#: Recover when a tick at full cost would take less than this share: 14 ms at 20 ms frames.
#: The 82-commune peak takes 10-13 ms a tick at full cost on 2 cores; a lower bar would keep
#: such a host at the cheap setting for the rest of the peak after one burst (the emergency's
#: own speech synthesis takes a core for a moment), when it fits at full cost.
RECOVER_AT = 0.7
#: 100 ms of frames at 20 ms: a stall of the host (a neighbour, a page fault) is not overload
OVER_FRAMES = 5
#: 5 s at 20 ms
RECOVER_FRAMES = 250
#: Opus complexity of a degraded programme. Measured on espeak-ng speech at 32 kb/s with FEC
#: (``docs/priorities.md``): 1 costs about a fifth of 9-10 and under half of 5.
CHEAP_COMPLEXITY = 1
_SMOOTHING = 0.05  # weight of the newest tick in the running averages


class DeadlineGuard:
    def __init__(self, frame_s: float, *, degrade_at: float = DEGRADE_AT,
                 recover_at: float = RECOVER_AT, over_frames: int = OVER_FRAMES,
                 recover_frames: int = RECOVER_FRAMES) -> None:
        if not 0.0 < recover_at < degrade_at:
            raise ValueError("need 0 < recover_at < degrade_at")
        if over_frames < 1 or recover_frames < 1:
            raise ValueError("over_frames and recover_frames must be at least 1")
        self.degrade_s = degrade_at * frame_s
        self.recover_s = recover_at * frame_s
        self.over_frames = over_frames
        self.recover_frames = recover_frames
        #: lower levels are encoded at ``CHEAP_COMPLEXITY`` in the next frame
        self.degraded = False
        #: running average of one encode at its own setting and at the cheap one (seconds)
        self.full_encode_s: float | None = None
        self.cheap_encode_s: float | None = None
        self._over = 0
        self._under = 0

    def record(self, tick_s: float, *, full_s: float = 0.0, full_n: int = 0,
               cheap_s: float = 0.0, cheap_n: int = 0, threads: int = 1) -> bool:
        """One tick took ``tick_s`` (wall time), with ``full_n`` encodes at their own setting
        taking ``full_s`` in all and ``cheap_n`` cheap ones taking ``cheap_s``, spread over
        ``threads`` threads. Returns whether the next frame is degraded."""
        if full_n:
            self.full_encode_s = _average(self.full_encode_s, full_s / full_n)
        if cheap_n:
            self.cheap_encode_s = _average(self.cheap_encode_s, cheap_s / cheap_n)
        if not self.degraded:
            self._over = self._over + 1 if tick_s > self.degrade_s else 0
            if self._over >= self.over_frames:
                self.degraded, self._over, self._under = True, 0, 0
            return self.degraded
        if self.full_encode_s is not None and self.cheap_encode_s is not None:
            saved = cheap_n * max(0.0, self.full_encode_s - self.cheap_encode_s) / threads
        else:
            saved = 0.0
        self._under = self._under + 1 if tick_s + saved < self.recover_s else 0
        if self._under >= self.recover_frames:
            self.degraded, self._under = False, 0
        return self.degraded


def _average(old: float | None, new: float) -> float:
    return new if old is None else old + _SMOOTHING * (new - old)
