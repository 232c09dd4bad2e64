"""What the fleet reports, kept (``streamer/control/presence.py``) while Redis is away: a
restarting Redis (``loa up`` restarts it) costs a warning line per message, never a traceback,
and the online count still follows the fleet."""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry

from streamer.control.models import Presence
from streamer.control.presence import FleetRecorder
from streamer.control.state import State
from wire.messages import Played, SpeakerTelemetry, Status


async def test_reports_while_redis_is_down_are_logged_in_a_line_and_counted(
        redis_server, caplog):
    state = State(redis_server.url)
    registry = CollectorRegistry()
    recorder = FleetRecorder(state, registry)
    recorder.place("spk-1", "brvt.con-dao.cum-1")
    redis_server.kill()
    now = time.time()
    caplog.set_level(logging.WARNING, "loa.presence")
    await recorder.presence("speaker", "spk-1", Status(state="online", ts=now))
    await recorder.telemetry("speaker", "spk-1", SpeakerTelemetry(
        ts=now, buffer_ms=300, loss_ratio=0, level_dbfs=-20, volume=100, muted=False,
        uptime_s=1))
    await recorder.played("spk-1", Played(broadcast=1, start=now - 1, end=now, level_dbfs=-20))
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "presence of spk-1 not stored", "telemetry of spk-1 not stored",
        "proof of play of spk-1 not stored"]
    assert all(r.exc_info is None for r in caplog.records)
    assert registry.get_sample_value("loa_speakers_online",
                                     {"zone": "brvt.con-dao.cum-1"}) == 1
    await state.close()


async def test_a_device_not_heard_from_reads_unknown_until_it_is_heard_again(redis_server):
    """The broker frozen, or our link to it down: what a device last said is no longer known
    to be true. ``view`` is what the API shows; the clock is a fake one."""
    state = State(redis_server.url)
    now = [1000.0]
    recorder = FleetRecorder(state, CollectorRegistry(), stale_after_s=35, clock=lambda: now[0])
    online = Presence(state="online", ts=1.0, detail={"kind": "speaker"})
    assert recorder.view("spk-1", online).state == "online"  # heard of at start: the store's
    now[0] += 36
    assert recorder.view("spk-1", online).state == "unknown"  # never heard since the start
    await recorder.telemetry("speaker", "spk-1", SpeakerTelemetry(
        ts=time.time(), buffer_ms=300, loss_ratio=0, level_dbfs=-20, volume=100, muted=False,
        uptime_s=1))
    assert recorder.view("spk-1", online) == online
    now[0] += 35
    assert recorder.view("spk-1", online).state == "online"  # the bound itself is still fresh
    now[0] += 5
    stale = recorder.view("spk-1", online)
    assert (stale.state, stale.detail) == ("unknown", {"kind": "speaker", "silent_s": 40.0})
    offline = Presence(state="offline", ts=2.0)
    assert recorder.view("spk-1", offline) == offline  # a last will stays what it says
    assert recorder.view("spk-1", None) == Presence()  # never reported: unknown
    await recorder.presence("speaker", "spk-1", Status(state="online", ts=time.time()))
    assert recorder.view("spk-1", online).state == "online"
    await state.close()
