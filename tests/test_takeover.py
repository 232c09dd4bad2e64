"""What a standby streamer puts back on the air when it takes over (``Broadcasts.recover`` with
``takeover``; ``docs/operations.md``, "A standby streamer"), on the in-process streamer and its
real Redis: the records are what the dead active streamer left in Redis."""

from __future__ import annotations

import time

from streamer.control.models import BroadcastRecord, BroadcastState, EmergencyPlan
from streamer.control.schedules import Schedule
from streamer.mixer.sources.base import From
from tests.harness.zones import OP

TONE = {"kind": "tone", "hz": 1000, "seconds": 10.0}


async def put(streamer, bid: int, started_ago: float, source=TONE, **kw) -> BroadcastRecord:
    now = time.time()
    rec = BroadcastRecord(id=bid, zones=[OP], priority=kw.pop("priority", "normal"),
                          source=source, created=now - started_ago - 1,
                          started=now - started_ago, airings=1, **kw)
    await streamer.state.put_broadcast(rec)
    return rec


async def state_of(streamer, bid: int) -> BroadcastState:
    rec = await streamer.state.broadcasts.get(bid)
    assert rec is not None
    return rec.state


async def test_what_was_on_air_goes_on_where_it_was_and_what_was_over_is_not_aired(
        streamer) -> None:
    b = streamer.broadcasts
    await put(streamer, 9001, 3.0)  # 3 s into 10 s: goes on from 3 s
    await put(streamer, 9002, 30.0)  # over by the clock: not aired again
    await put(streamer, 9003, 2.0, source={"kind": "live", "input": "studio-x"})
    await streamer.state.schedules.put("w1", Schedule(
        id="w1", zones=[OP], source={"kind": "tone", "hz": 500, "seconds": 600},
        at="2026-01-01T06:00:00", duration_s=5, approved=True))
    await put(streamer, 9004, 6.0, source={"kind": "tone", "hz": 500, "seconds": 600.0},
              schedule="w1")  # its 5 s window is over
    await put(streamer, 9005, 4.0, source={"kind": "relay", "url": "http://127.0.0.1:9/x.mp3"})
    interrupted = await b.recover(takeover=True)
    assert interrupted == 3
    item = streamer.mixer.items[9001]
    assert isinstance(item.source, From) and abs(item.source.start - 3.0 * 48_000) < 0.5 * 48_000
    assert item.source.length == 10 * 48_000 - item.source.start
    assert await state_of(streamer, 9001) == BroadcastState.QUEUED
    for bid in (9002, 9003, 9004):
        assert await state_of(streamer, bid) == BroadcastState.INTERRUPTED, bid
        assert bid not in streamer.mixer.items
    # a pulled stream is pulled again, from where the stream is (this one's upstream is
    # down: it waits off the air for it, as any relayed broadcast does)
    assert 9005 in b.live and 9005 in b.feeds and not isinstance(b.items[9005].source, From)
    assert await state_of(streamer, 9005) == BroadcastState.QUEUED


async def test_an_emergency_on_air_airs_again_and_one_between_airings_keeps_its_cadence(
        streamer) -> None:
    b = streamer.broadcasts
    plan = EmergencyPlan(chime=True, repeat_s=60)
    # 2 s into a 1 s tone after its 1.6 s chime: still on air, so it airs again from its start
    on_air = await put(streamer, 9101, 2.0, source={"kind": "tone", "hz": 700, "seconds": 1.0},
                       priority="emergency", emergency=plan, next_airing=time.time() + 58)
    # 10 s after its start: between airings
    waiting = await put(streamer, 9102, 10.0, source={"kind": "tone", "hz": 700, "seconds": 1.0},
                        priority="emergency", emergency=plan)
    waiting.next_airing = waiting.started + 60
    await streamer.state.put_broadcast(waiting)
    await b.recover(takeover=True)
    assert 9101 in streamer.mixer.items and b.live[9101].airings == on_air.airings + 1
    assert 9102 not in streamer.mixer.items  # nothing aired at the takeover
    rec = b.live[9102]
    assert rec.airings == 1 and rec.next_airing == waiting.next_airing
    assert 9102 in b._timers  # the next airing is booked at its time


async def test_a_restart_is_not_a_takeover(streamer) -> None:
    await put(streamer, 9201, 3.0)
    assert await streamer.broadcasts.recover() == 1
    assert await state_of(streamer, 9201) == BroadcastState.INTERRUPTED
