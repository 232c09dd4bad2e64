"""A broker outage is seen and healed (issue 14, item 2), against a real mosquitto frozen with
SIGSTOP for 20 s (a wedged host: its sockets stay open, so no TCP error tells anyone), a real
speaker process on it, and the in-process streamer with its fleet link:

- ``/readyz`` says ``mqtt: false`` within seconds (the fleet's probe), and ``true`` again
  within 10 s of the broker's return;
- the speaker reads ``unknown``, not ``online``, once it has not been heard from for
  ``stale_after_s``, and ``online`` again within 10 s of the broker's return;
- an emergency declared meanwhile is accepted at once, and its retained state, which the broker
  could not take, reaches the fleet after the return;
- the speaker plays on, every 100 ms of it, through the whole outage;
- and with the broker stopped for 10 s and started again, the streamer and the speaker are
  back within 10 s.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiomqtt
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamer.control.broker import STREAMER_USER
from streamer.control.fleet import PROBE_EVERY_S, PROBE_TIMEOUT_S, Fleet
from tests.harness.api import call
from tests.harness.audio import peak_hz, rms_dbfs
from tests.harness.broker import start_broker
from tests.harness.speaker import mqtt_speakers
from tests.harness.upstream import TONE_DBFS, ToneUpstream, serving
from tests.harness.wait import until
from tests.harness.zones import KP1
from wire.messages import EmergencyState, parse, zone_emergency_topic

pytestmark = pytest.mark.realtime  # audio against the wall clock: see conftest.py

#: The speaker's MQTT keepalive here (30 s by default). Its client gives a silent broker up
#: after twice this, as the freeze ends, and Mosquitto, on its return, drops a client silent
#: for 1.5 times this: the freeze is the minute with the default keepalive, scaled by a third.
KEEPALIVE_S = 10
FROZEN_S = 2.0 * KEEPALIVE_S
STALE_S = 5.0  # the streamer's presence_stale_s here (35 s by default)
BACK_WITHIN_S = 10.0  # the bound on presence after the broker returns
#: long enough for every retry to back off to its longest: a device's waits before its
#: longest (8 s) sum to at most 0.5 + 1 + 2 + 4 = 7.5 s, the streamer's (4 s) to 3.5 s
DOWN_S = 10.0


@pytest.fixture
async def tone() -> AsyncIterator[ToneUpstream]:
    async with serving(ToneUpstream) as up:
        yield up


async def ready(streamer: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"{streamer.http_url}/readyz") as r:
        return dict((await r.json())["checks"])


async def presence(streamer: Any, speaker_id: str) -> dict[str, Any]:
    status, body = await call(streamer, "GET", f"/api/v1/speakers/{speaker_id}")
    assert status == 200, body
    return dict(body["presence"])


async def within(probe: Any, timeout_s: float, what: str) -> float:
    """Seconds until the async ``probe`` is true (polled every 0.1 s); fails after
    ``timeout_s``."""
    started = time.monotonic()
    while not await probe():
        assert time.monotonic() - started < timeout_s, f"{what}: not within {timeout_s:g} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_a_frozen_broker_is_seen_healed_and_never_heard(
        streamer: Any, mosquitto: Any, tone: ToneUpstream, tmp_path: Any) -> None:
    pw = start_broker(mosquitto, {"spk-a": KP1})
    status, body = await call(streamer, "POST", "/api/v1/speakers",
                              json={"id": "spk-a", "zone": KP1})
    assert status == 201, body
    registry = CollectorRegistry()
    fleet = Fleet(mosquitto.url, STREAMER_USER, pw[STREAMER_USER], streamer.plane.recorder,
                  registry)
    streamer.plane.fleet = fleet
    streamer.plane.recorder.stale_after_s = STALE_S
    await fleet.start()
    try:
        async with mqtt_speakers(tmp_path, mosquitto, pw, tone.addr, ("spk-a", KP1),
                                 extra=("--mqtt-keepalive-s", str(KEEPALIVE_S))) as (a,):
            await within(lambda: _online(streamer, "spk-a"), 15, "online at first")
            assert (await ready(streamer))["mqtt"] is True
            await until(a.subscribed, 10)
            await until(lambda: bool(a.plays()) or any(
                e["event"] == "play_start" for e in a.events()), 10, "playing")
            await asyncio.sleep(1.0)

            assert mosquitto.proc is not None
            mosquitto.proc.send_signal(signal.SIGSTOP)
            frozen_at = time.time()
            try:
                seen = await within(lambda: _not_ready(streamer), 10, "readyz mqtt false")
                assert seen <= PROBE_EVERY_S + PROBE_TIMEOUT_S + 1.5, seen
                # an emergency meanwhile is taken at once; the broker cannot take its state
                t = time.monotonic()
                status, e = await call(streamer, "POST", "/api/v1/emergency", json={
                    "zones": [KP1], "source": {"kind": "tone", "seconds": 300},
                    "chime": False, "repeat_s": 3600})
                assert status == 201, e
                assert time.monotonic() - t < 2.0
                await within(lambda: _state(streamer, "spk-a", "unknown"), STALE_S + 5,
                             "unknown once stale")
                p = await presence(streamer, "spk-a")
                assert p["detail"]["silent_s"] >= STALE_S, p
                await asyncio.sleep(max(0.0, frozen_at + FROZEN_S - time.time()))
            finally:
                mosquitto.proc.send_signal(signal.SIGCONT)
            back_at = time.time()
            ready_s = await within(lambda: _ready(streamer), BACK_WITHIN_S, "readyz back")
            online_s = await within(lambda: _online(streamer, "spk-a"), BACK_WITHIN_S,
                                    "online again")
            # the emergency's state, published again once the broker answered
            state = await asyncio.wait_for(_retained(mosquitto, pw["spk-a"], KP1), 10)
            assert (state.id, state.active) == (e["id"], True), state
            assert _metric(registry, "loa_mqtt_broker_stalls_total") >= 1
            assert _metric(registry, "loa_mqtt_republished_total") >= 1
            assert _metric(registry, "loa_mqtt_unsent_retained") == 0

            # the speaker played through it all, every 100 ms of it
            x = await a.wait_window(frozen_at, back_at + 1.0)
            levels = [rms_dbfs(c) for c in np.array_split(x, len(x) // 4800)]
            assert min(levels) > TONE_DBFS - 3, min(levels)
            assert abs(peak_hz(x) - 1000) < 5
            print(f"\nbroker frozen {back_at - frozen_at:.1f} s: seen in {seen:.1f} s; "
                  f"after the return, ready in {ready_s:.1f} s, online in {online_s:.1f} s")
            await call(streamer, "DELETE", f"/api/v1/emergency/{e['id']}")

            # Down rather than frozen: every client's retries back off to their longest
            # (8 s for a device, reached within 7.5 s), and each must still be back
            # within 10 s of the broker; the speaker says so itself, newer than the restart.
            await asyncio.to_thread(mosquitto.stop)
            await within(lambda: _not_ready(streamer), 5, "readyz mqtt false, broker down")
            await asyncio.sleep(DOWN_S)
            restarted = time.time()
            await asyncio.to_thread(mosquitto.start)
            ready_s = await within(lambda: _ready(streamer), BACK_WITHIN_S, "readyz back")
            online_s = await within(lambda: _online_since(streamer, "spk-a", restarted),
                                    BACK_WITHIN_S, "the speaker's own online again")
            print(f"broker down {DOWN_S:.0f} s: after its restart, ready in {ready_s:.1f} s, "
                  f"the speaker online in {online_s:.1f} s")
    finally:
        await fleet.close()


async def _state(streamer: Any, speaker_id: str, state: str) -> bool:
    return (await presence(streamer, speaker_id))["state"] == state


async def _online(streamer: Any, speaker_id: str) -> bool:
    return await _state(streamer, speaker_id, "online")


async def _online_since(streamer: Any, speaker_id: str, since: float) -> bool:
    p = await presence(streamer, speaker_id)
    return bool(p["state"] == "online" and p["ts"] >= since)


async def _ready(streamer: Any) -> bool:
    return (await ready(streamer)).get("mqtt") is True


async def _not_ready(streamer: Any) -> bool:
    return (await ready(streamer)).get("mqtt") is False


async def _retained(broker: Any, password: str, zone: str) -> EmergencyState:
    async with aiomqtt.Client(broker.host, broker.port, username="spk-a",
                              password=password) as c:
        await c.subscribe(zone_emergency_topic(zone), qos=1)
        async for m in c.messages:
            assert m.retain
            return parse(EmergencyState, m.payload)
    raise AssertionError("no retained emergency state")


def _metric(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name)
    assert value is not None, name
    return value
