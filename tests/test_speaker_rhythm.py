"""The speaker's rhythm (``clients/speaker/rhythm.py``): the beat runs on its timer and at a
datagram's nudge, jobs ride on the beat, and nothing a job raises stops it. Periods here are
long (seconds) so that no assertion depends on how fast the machine is."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from clients.speaker.rhythm import Rhythm
from tests.harness.wait import until


@contextlib.asynccontextmanager
async def running(r: Rhythm) -> AsyncIterator[None]:
    task = asyncio.create_task(r.run())
    await until(lambda: r.beats >= 1, 5, "the first beat")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_nudge_beats_at_once_and_a_second_one_within_half_a_period_does_not() -> None:
    played: list[str] = []
    r = Rhythm(lambda _: played.append("beat"), lambda: 60.0)
    async with running(r):
        assert played == ["beat"]  # the timer's first beat, at start
        r.nudge()  # the first nudge after a timer beat always beats
        r.nudge()  # a LOAS right behind its packet: no second beat
        assert played == ["beat", "beat"]
        assert (r.beats, r.nudged_beats) == (2, 1)


async def test_the_timer_beats_when_no_datagram_comes() -> None:
    r = Rhythm(lambda _: None, lambda: 0.01)
    async with running(r):
        await until(lambda: r.beats >= 5, 5, "five beats of the timer alone")
        assert r.nudged_beats == 0


async def test_jobs_ride_on_the_beat_when_due_and_never_wake_the_loop() -> None:
    runs = {"fast": 0, "slow": 0}
    r = Rhythm(lambda _: None, lambda: 60.0)
    r.every("fast", 0.0, lambda: runs.__setitem__("fast", runs["fast"] + 1))
    r.every("slow", 3600.0, lambda: runs.__setitem__("slow", runs["slow"] + 1))
    async with running(r):
        assert runs == {"fast": 1, "slow": 1}  # both at the first beat
        r.nudge()
        r.nudge()  # no beat: no job
        assert runs == {"fast": 2, "slow": 1}  # the slow one is not due for an hour
        assert r.beats == 2


async def test_a_failing_job_is_logged_and_the_beat_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    played = []

    def broken() -> None:
        raise RuntimeError("a bug in a job")

    r = Rhythm(lambda _: played.append(1), lambda: 0.01)
    r.every("broken", 0.0, broken)
    with caplog.at_level(logging.ERROR, logger="loa.speaker"):
        async with running(r):
            await until(lambda: len(played) >= 5, 5, "beats after the job failed")
    failures = [rec for rec in caplog.records if "broken job failed" in rec.getMessage()]
    assert len(failures) == 1  # once a minute at most


async def test_the_beat_is_told_whether_a_nudge_runs_it() -> None:
    seen: list[bool] = []
    r = Rhythm(seen.append, lambda: 60.0)
    async with running(r):
        r.nudge()
    assert seen == [False, True]


async def test_a_nudge_before_run_or_after_it_stopped_is_ignored() -> None:
    played: list[int] = []
    r = Rhythm(lambda _: played.append(1), lambda: 60.0)
    r.nudge()
    async with running(r):
        pass
    r.nudge()
    assert played == [1]


async def test_offbeat_work_runs_once_after_the_beat() -> None:
    done: list[str] = []
    r = Rhythm(lambda _: None, lambda: 0.02)
    async with running(r):
        r.offbeat(lambda: done.append("time"), "time")
        assert done == []  # not within the beat that asked for it
        await until(lambda: done == ["time"], 5, "the offbeat job")
        beats = r.beats
        await until(lambda: r.beats >= beats + 3, 5, "three more beats")
        assert done == ["time"]  # once


async def test_align_puts_the_timer_beats_whole_periods_after_the_anchor() -> None:
    """A playing speaker's beats follow the newest LOAS (``main.py``): on a 60 s period, an
    anchor 100 s ago puts the next beat 120 s after it, the first grid point at least a
    quarter of a period from now."""
    anchors: list[tuple[float, float]] = []  # (anchor, now)

    def beat(_: bool) -> None:
        if not anchors:
            now = asyncio.get_running_loop().time()
            anchors.append((now - 100.0, now))
            r.align(now - 100.0)

    r = Rhythm(beat, lambda: 60.0)
    async with running(r):
        (anchor, now), = anchors
        assert r.next_at == pytest.approx(anchor + 120.0, abs=1e-6)
        r.nudge()  # a beat off the grid (a datagram's nudge) leaves the grid where it was
        assert r.next_at == pytest.approx(anchor + 120.0, abs=1e-6)


async def test_within_brings_the_next_beat_forward_once() -> None:
    """A missing frame the playout waits for (``Playout.wake_at``): one extra beat."""
    r: Rhythm

    def beat(_: bool) -> None:
        if r.beats == 1:
            r.within(0.01)

    r = Rhythm(beat, lambda: 60.0)
    async with running(r):
        await until(lambda: r.beats >= 2, 5, "the early beat")  # not in 60 s
        assert r.reach() == 75.0  # a beat writes a period and a quarter ahead
