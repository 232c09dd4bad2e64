"""The streamer's timeline as seen from a receiver's own clock, sans-IO.

A receiver (speaker, relay) asks its upstream for the time now and then: it notes its own
clock when the request leaves (``t1``) and when the answer arrives (``t4``); the answer
carries the upstream's clock when the request arrived (``t2``) and when the answer left
(``t3``). As in NTP (RFC 5905, section 8), one exchange gives

- the round trip ``(t4 - t1) - (t3 - t2)``, and
- the offset of the upstream's clock from ours, ``((t2 - t1) + (t3 - t4)) / 2``, which is
  exact when both legs took as long, and wrong by half the difference otherwise.

:class:`ClockFilter` keeps the last exchanges and trusts those with the shortest round trips
in each part of its window (queueing on a 4G link only ever adds delay, so the fastest
exchanges are the least skewed), and fits a line through them: offset and drift, so that
between exchanges, and with a crystal 80 ppm off, the estimate does not lag. Snapcast's
``client/time_provider.cpp`` takes the median of its last 200 offsets instead; a median
lags a drifting clock by half its window (80 ppm over 100 s is 4 ms), which is why a line
is fitted here.

:class:`Slew` is what playout reads: it follows the filter's estimate at most ``max_ppm`` per
second, so the timeline a speaker plays on never jumps by more than a sample while it plays;
only the first estimate, or one too far away to slew to in reasonable time, is a step.

Times are integers in nanoseconds (the receiver's clock for ``t1``/``t4``, the upstream's
for ``t2``/``t3``); nothing here reads a clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

NS = 1_000_000_000


@dataclass(frozen=True)
class Exchange:
    """One request and its answer."""

    t1: int  # request sent, our clock
    t2: int  # request received, upstream clock
    t3: int  # answer sent, upstream clock
    t4: int  # answer received, our clock

    @property
    def rtt(self) -> int:
        return (self.t4 - self.t1) - (self.t3 - self.t2)

    @property
    def offset(self) -> float:
        """Upstream clock minus ours, ns, at our clock's ``mid``."""
        return ((self.t2 - self.t1) + (self.t3 - self.t4)) / 2

    @property
    def mid(self) -> int:
        return (self.t1 + self.t4) // 2


class ClockFilter:
    """Offset (and drift) of the upstream's clock from ours, from the last ``window``
    exchanges, of which the ``keep`` share with the shortest round trips is used."""

    def __init__(self, window: int = 128, keep: float = 0.25, min_span_s: float = 5.0,
                 max_rtt_s: float = 2.0) -> None:
        if not 0 < keep <= 1:
            raise ValueError("keep is a share of the window, in (0, 1]")
        self.window = window
        self.keep = keep
        self.min_span_ns = int(min_span_s * NS)  # shorter: no drift is fitted, only an offset
        self.max_rtt_ns = int(max_rtt_s * NS)
        self._samples: deque[Exchange] = deque(maxlen=window)
        self._fit: tuple[float, float, int] | None = None  # offset at t_ref, drift, t_ref
        self.taken = 0
        self.rejected = 0

    def add(self, ex: Exchange) -> bool:
        """Take one exchange; False (and counted) for one that cannot be right: a negative or
        absurd round trip, or an answer sent before its request arrived."""
        if ex.t4 < ex.t1 or ex.t3 < ex.t2 or not 0 <= ex.rtt <= self.max_rtt_ns:
            self.rejected += 1
            return False
        self._samples.append(ex)
        self._fit = None
        self.taken += 1
        return True

    @property
    def samples(self) -> int:
        return len(self._samples)

    def best(self) -> list[Exchange]:
        """The exchanges trusted: in each eighth of the window (by time), the ``keep`` share
        with the shortest round trips. Per eighth, so that the line stands on points spread
        over the window: on a quiet link every round trip is alike, and "the shortest"
        overall could all be the first few seconds' quick exchanges."""
        samples = list(self._samples)  # in the order they came
        chunks = min(8, len(samples))
        out: list[Exchange] = []
        for i in range(chunks):
            chunk = samples[i * len(samples) // chunks: (i + 1) * len(samples) // chunks]
            chunk.sort(key=lambda e: e.rtt)
            out += chunk[: max(1, round(len(chunk) * self.keep))]
        return out

    def drift_ppm(self) -> float:
        fit = self._solve()
        return 0.0 if fit is None else fit[1] * 1e6

    def offset_at(self, local_ns: int) -> float | None:
        """Upstream clock minus ours (ns) at our clock's ``local_ns``; None before any
        exchange."""
        fit = self._solve()
        if fit is None:
            return None
        offset, drift, t_ref = fit
        return offset + drift * (local_ns - t_ref)

    def _solve(self) -> tuple[float, float, int] | None:
        if self._fit is not None or not self._samples:
            return self._fit
        best = self.best()
        t_ref = max(e.mid for e in best)
        xs = [e.mid - t_ref for e in best]
        ys = [e.offset for e in best]
        n = len(best)
        span = max(xs) - min(xs)
        if n < 4 or span < self.min_span_ns:
            ys_sorted = sorted(ys)
            self._fit = (ys_sorted[n // 2] if n % 2 else (ys_sorted[n // 2 - 1]
                                                          + ys_sorted[n // 2]) / 2, 0.0, t_ref)
            return self._fit
        # least squares, offsets and times centred so the sums stay small
        mx = sum(xs) / n
        my = sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
        drift = sxy / sxx
        self._fit = (my - drift * mx, drift, t_ref)
        return self._fit


class Slew:
    """The offset playout uses: it follows ``target`` (the filter's estimate) at most
    ``max_ppm`` microseconds per second of our clock, so that what plays never jumps; a
    target more than ``step_ms`` away (the first one, a clock stepped under us) is taken at
    once, and counted."""

    def __init__(self, max_ppm: float = 500.0, step_ms: float = 50.0) -> None:
        self.rate = max_ppm * 1e-6
        self.step_ns = step_ms * 1e6
        self.offset: float | None = None
        self._at: int | None = None
        self.steps = 0

    def update(self, target: float, local_ns: int) -> float:
        """Move toward ``target`` for the time since the last update; the offset now."""
        if self.offset is None or self._at is None or abs(target - self.offset) > self.step_ns:
            self.offset = target
            self.steps += 1
        else:
            room = self.rate * max(0, local_ns - self._at)
            self.offset += max(-room, min(room, target - self.offset))
        self._at = local_ns
        return self.offset


class Timeline:
    """Our clock to the upstream's, for playout: a :class:`ClockFilter` feeding a
    :class:`Slew`. ``upstream(local_ns)`` is the upstream's time at our ``local_ns``, and
    ``local(upstream_ns)`` the inverse (when to play a sample stamped on the upstream's
    timeline); both None until the first exchange."""

    def __init__(self, flt: ClockFilter | None = None, slew: Slew | None = None,
                 settle: int = 16) -> None:
        self.filter = flt or ClockFilter()
        self.slew = slew or Slew()
        #: exchanges during which the estimate is taken as it is, not slewed to: the first
        #: answers may come while the device is busy starting, and slewing away a first
        #: estimate a few ms off would take seconds during which it plays off the beat
        self.settle = settle

    def add(self, ex: Exchange) -> bool:
        return self.filter.add(ex)

    def offset(self, local_ns: int) -> float | None:
        target = self.filter.offset_at(local_ns)
        if target is None:
            return None
        if self.filter.taken < self.settle:
            self.slew.offset = None  # step to it
        return self.slew.update(target, local_ns)

    def upstream(self, local_ns: int) -> int | None:
        off = self.offset(local_ns)
        return None if off is None else local_ns + round(off)

    def local(self, upstream_ns: int, now_local_ns: int) -> int | None:
        """Our clock's time for ``upstream_ns``, with the offset as it stands at
        ``now_local_ns`` (the offset moves by ppm: over a playout delay that is nothing)."""
        off = self.offset(now_local_ns)
        return None if off is None else upstream_ns - round(off)
