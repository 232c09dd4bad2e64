"""The production lead: a frame's tick begins early enough for the frame to leave on time."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from streamer.mixer.clock import FrameClock, Lead
from streamer.playout import FrameLoop


def test_due_looks_ahead_by_the_lead():
    c = FrameClock(20, start_mono=100.0, start_wall=0.0)
    assert c.due(99.985, 0.010) == []  # frame 0 is 15 ms away, the lead is 10
    assert c.due(99.990, 0.010) == [0]
    assert c.due(100.000, 0.010) == []  # frame 1 is due at 100.02: not within 10 ms yet
    assert c.due(100.011, 0.010) == [1]
    assert not c.late(1, 100.02) and not c.late(1, 100.0299) and c.late(1, 100.0301)


def test_lead_rises_at_once_and_falls_back_after_two_quiet_windows():
    lead = Lead(max_s=0.020, min_s=0.002, headroom=1.25, pad_s=0.001, window=10)
    assert lead.value == 0.002
    lead.record(0.0004)
    assert lead.value == 0.002  # a quick tick needs no more than the floor
    lead.record(0.008)  # a slow frame: the next tick begins 11 ms early
    assert lead.value == pytest.approx(0.011)
    lead.record(0.030)  # slower than a frame: capped at one frame
    assert lead.value == 0.020
    for _ in range(10 - 3):
        lead.record(0.001)
    assert lead.value == 0.020  # first window closed, the slow tick was in it
    for _ in range(10):
        lead.record(0.001)
    assert lead.value == 0.020  # second window: the window before still had the slow tick
    for _ in range(10):
        lead.record(0.001)
    assert lead.value == pytest.approx(0.00225)  # two quiet windows: back near the floor
    with pytest.raises(ValueError):
        Lead(max_s=0.001, min_s=0.002)


class SlowMixer:
    """Takes ``tick_s`` of wall time per frame, as a busy mixer would, and notes when each
    frame's tick began against its deadline."""

    def __init__(self, clock: FrameClock, tick_s: float) -> None:
        self.clock = clock
        self.tick_s = tick_s
        self.began: dict[int, float] = {}

    def tick(self, k: int) -> None:
        self.began[k] = time.monotonic() - self.clock.deadline(k)
        time.sleep(self.tick_s)  # sleeping, not spinning: the test needs no spare core


async def _run(tick_s: float, frames: int) -> tuple[SlowMixer, FrameLoop]:
    loop = asyncio.get_running_loop()
    assert abs(loop.time() - time.monotonic()) < 0.001  # the loop's clock is the monotonic one
    clock = FrameClock(20, start_mono=loop.time() + 0.05, start_wall=time.time())
    mixer = SlowMixer(clock, tick_s)
    frame_loop = FrameLoop(clock, mixer, CollectorRegistry())  # type: ignore[arg-type]
    task = asyncio.create_task(frame_loop.run())
    while len(mixer.began) < frames:
        await asyncio.sleep(0.05)
    task.cancel()
    return mixer, frame_loop


async def test_a_slow_tick_begins_before_its_deadline():
    # 14 ms a frame: without a lead every frame would leave 14 ms late, a deadline miss
    mixer, frame_loop = await _run(0.014, 100)
    settled = sorted(mixer.began[k] for k in range(50, 100))
    assert settled[len(settled) // 2] < -0.012  # the median tick began 12+ ms early
    assert frame_loop.lead.value > 0.014
    assert frame_loop.lead.value <= 0.020


async def test_a_quick_tick_keeps_a_short_lead():
    mixer, frame_loop = await _run(0.0005, 60)
    settled = sorted(mixer.began[k] for k in range(30, 60))
    assert settled[len(settled) // 2] > -0.010  # no frame of lead wasted on a quick mixer
    assert frame_loop.lead.value < 0.010
