"""wire/timesync.py: the offset and drift of an upstream's clock from exchanges over a
simulated link, its refusals, and the slew playout reads."""

from __future__ import annotations

import random

import pytest

from wire.timesync import NS, ClockFilter, Exchange, Slew, Timeline

MS = 1_000_000


class Link:
    """True time t (ns) is our clock; the upstream's reads ``offset + (1 + drift) * t``.
    Each leg takes ``base`` plus an exponential queueing delay of mean ``jitter`` (ns)."""

    def __init__(self, offset_ms: float, drift_ppm: float, base_ms: float, jitter_ms: float,
                 seed: int = 1) -> None:
        self.offset = offset_ms * MS
        self.drift = drift_ppm * 1e-6
        self.base = base_ms * MS
        self.jitter = jitter_ms * MS
        self.rng = random.Random(seed)

    def upstream(self, t: float) -> int:
        return round(t + self.offset + self.drift * t)

    def true_offset(self, t: float) -> float:
        return self.offset + self.drift * t

    def leg(self) -> float:
        return self.base + (self.rng.expovariate(1 / self.jitter) if self.jitter else 0)

    def exchange(self, t: int) -> Exchange:
        arrive = t + self.leg()
        leave = arrive + 0.1 * MS
        return Exchange(t1=t, t2=self.upstream(arrive), t3=self.upstream(leave),
                        t4=round(leave + self.leg()))


def run(flt: ClockFilter, link: Link, seconds: int, every_s: float = 1.0) -> list[float]:
    """Exchanges every ``every_s`` for ``seconds``; the estimate's error (ms) just before
    each exchange, from the second on (index i: i + 1 exchanges taken)."""
    errors = []
    for i in range(int(seconds / every_s)):
        t = round(i * every_s * NS)
        est = flt.offset_at(t)
        if est is not None:
            errors.append(abs(est - link.true_offset(t)) / MS)
        flt.add(link.exchange(t))
    return errors


def test_on_a_quiet_link_the_offset_is_exact_within_tens_of_microseconds() -> None:
    """Loopback or a LAN: within 10 s of start, and from then on, under 50 µs."""
    link = Link(offset_ms=400, drift_ppm=80, base_ms=0.05, jitter_ms=0.02)
    errors = run(ClockFilter(), link, 300)
    assert max(errors[:10]) < 1.0  # before the drift is fitted, the median is near enough
    assert max(errors[10:]) < 0.05, max(errors[10:])


@pytest.mark.parametrize("offset_ms, drift_ppm", [(400, 80), (-300, -60)])
@pytest.mark.parametrize("seed", range(4))
def test_on_a_4g_like_link_offset_and_drift_are_tracked_within_a_millisecond(
        offset_ms: float, drift_ppm: float, seed: int) -> None:
    """25 ms each way plus exponential queueing of 3 ms mean per leg, one exchange a
    second: after the first minute the error stays under 1 ms for five minutes, and the
    drift is found within a few ppm."""
    link = Link(offset_ms, drift_ppm, base_ms=25, jitter_ms=3, seed=seed)
    flt = ClockFilter()
    errors = run(flt, link, 300)
    assert max(errors[60:]) < 1.0, max(errors[60:])
    assert abs(flt.drift_ppm() - drift_ppm) < 5, flt.drift_ppm()


def test_a_median_alone_lags_a_drifting_clock_which_is_why_a_line_is_fitted() -> None:
    """The same link with the drift fit turned off (Snapcast's median): the error grows to
    half the window's drift, well past a millisecond; the fitted line stays within one."""
    link = Link(400, 80, base_ms=25, jitter_ms=3, seed=1)
    lagging = run(ClockFilter(min_span_s=1e9), link, 300)  # never spans enough: offset only
    link.rng = random.Random(1)
    tracking = run(ClockFilter(), link, 300)
    assert sorted(lagging[60:])[len(lagging[60:]) // 2] > 2.0
    assert max(tracking[60:]) < 1.0


def test_quick_first_exchanges_do_not_pin_the_line_to_the_first_seconds() -> None:
    """As a device asks: five a second at first, then one a second, on a link whose round
    trips are all alike. Trusting "the shortest" over the whole window would keep the first
    seconds' points and lose the drift: 40 s on, the estimate must still be exact."""
    link = Link(400, 80, base_ms=0.03, jitter_ms=0.001, seed=2)
    flt = ClockFilter()
    times = [i * 0.2 for i in range(16)] + [3.2 + i for i in range(1, 38)]  # 40 s in
    for n, t in enumerate(times):
        link.base = (0.03 if n < 16 else 0.05) * MS  # an idle box answers a little faster
        flt.add(link.exchange(round(t * NS)))
    now = round(times[-1] * NS) + NS // 2
    est = flt.offset_at(now)
    assert est is not None and abs(est - link.true_offset(now)) < 0.05 * MS, (
        (est - link.true_offset(now)) / MS)


def test_asymmetric_legs_bias_the_offset_by_half_their_difference() -> None:
    """The one error no time protocol can see (RFC 5905): 10 ms out, 2 ms back."""
    up = Link(0, 0, base_ms=0, jitter_ms=0)
    flt = ClockFilter()
    for i in range(10):
        t = i * NS
        flt.add(Exchange(t1=t, t2=up.upstream(t + 10 * MS), t3=up.upstream(t + 10 * MS),
                         t4=t + 12 * MS))
    assert flt.offset_at(10 * NS) == pytest.approx(4 * MS)


def test_impossible_exchanges_are_refused_and_counted() -> None:
    flt = ClockFilter(max_rtt_s=2)
    bad = [Exchange(t1=10, t2=5, t3=4, t4=20),  # answered before asked
           Exchange(t1=10, t2=0, t3=0, t4=5),  # came back before it left
           Exchange(t1=0, t2=0, t3=0, t4=3 * NS),  # a three-second round trip
           Exchange(t1=0, t2=0, t3=2 * MS, t4=1 * MS)]  # the upstream took longer than all
    assert [flt.add(e) for e in bad] == [False] * 4
    assert (flt.rejected, flt.samples, flt.offset_at(0)) == (4, 0, None)
    assert flt.add(Exchange(t1=0, t2=5 * MS, t3=5 * MS, t4=2 * MS))
    assert flt.offset_at(0) == pytest.approx(4 * MS)


def test_the_slew_steps_once_then_moves_at_most_its_rate() -> None:
    slew = Slew(max_ppm=500, step_ms=50)
    assert slew.update(400 * MS, 0) == 400 * MS and slew.steps == 1  # the first estimate
    # 10 ms away: slewed at 500 µs per second, so 20 s to get there, never a jump
    seen = [slew.update(410 * MS, s * NS) for s in range(1, 25)]
    steps = [b - a for a, b in zip([400 * MS, *seen], seen, strict=False)]
    assert max(steps) <= 0.5 * MS + 1 and seen[-1] == 410 * MS and slew.steps == 1
    assert seen[9] == pytest.approx(405 * MS)
    # a clock stepped under us: 2 s away is taken at once
    assert slew.update(-1_600 * MS, 30 * NS) == -1_600 * MS and slew.steps == 2


def test_the_timeline_maps_our_clock_to_the_upstreams_and_back() -> None:
    link = Link(-300, -60, base_ms=0.05, jitter_ms=0.01)
    line = Timeline()
    assert line.upstream(0) is None and line.local(0, 0) is None
    for i in range(20):
        line.add(link.exchange(i * NS))
    now = 20 * NS
    up = line.upstream(now)
    assert up is not None and abs(up - link.upstream(now)) < 0.05 * MS
    back = line.local(up, now)
    assert back is not None and abs(back - now) <= 1


def test_a_device_asks_five_times_a_second_at_first_then_every_few_seconds() -> None:
    from device.streamer_time import FAST_EXCHANGES, SETTLE_EXCHANGES, StreamerTime

    clock = iter(range(10**6))
    st = StreamerTime(lambda: next(clock), every_s=5.0)
    asked = [t for t in (i * 0.1 for i in range(1000)) if st.due(t) is not None]
    gaps = [round(b - a, 6) for a, b in zip(asked, asked[1:], strict=False)]
    assert gaps[:FAST_EXCHANGES - 1] == [0.2] * (FAST_EXCHANGES - 1)
    assert gaps[FAST_EXCHANGES - 1:SETTLE_EXCHANGES - 1] == [1.0] * (
        SETTLE_EXCHANGES - FAST_EXCHANGES)
    assert set(gaps[SETTLE_EXCHANGES - 1:]) == {5.0} and len(gaps) > SETTLE_EXCHANGES


def test_a_test_clock_runs_off_and_fast_from_the_free_running_crystal() -> None:
    """``--clock-offset-ms 400 --clock-drift-ppm 1000``: 400 ms ahead of the wall time at
    start, and 1 ms a second faster than the crystal since."""
    import time as _time

    from clients.speaker.clock import LocalClock
    from device.streamer_time import FreeClock, raw_ns

    free, skewed = FreeClock(), LocalClock(400, 1000)
    assert abs(free.now_ns() - _time.time_ns()) < 5 * MS  # the wall time, at start
    # Each reading is bracketed by two raw reads: the clock read the crystal somewhere between
    # them, so a preemption beside a read widens the bounds instead of failing the test.
    a0, s0, b0 = raw_ns(), skewed.now_ns(), raw_ns()
    w0 = _time.time_ns()
    assert abs((s0 - w0) - 400 * MS) < 5 * MS
    _time.sleep(0.2)
    a1, s1, b1 = raw_ns(), skewed.now_ns(), raw_ns()
    slowest, fastest = (s1 - s0) / (b1 - a0), (s1 - s0) / (a1 - b0)
    assert slowest - 1e-5 < 1.001 < fastest + 1e-5, (slowest, fastest)
    assert fastest - slowest < 5e-4, "the brackets were too wide to tell 1000 ppm"
