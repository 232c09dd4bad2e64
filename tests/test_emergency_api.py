"""The emergency path through the API: chime, cadence, forced-volume state to the fleet, quiet
hours, and CAP 1.2 alerts (Alert, Update, Cancel, Test) from the files in docs/examples."""

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from prometheus_client import CollectorRegistry

from streamer.control.broker import STREAMER_USER, Account, hash_password, new_password
from streamer.control.fleet import Fleet
from tests.harness.api import call
from tests.harness.audio import peak_hz
from tests.harness.tap import Tap
from tests.harness.wait import until
from wire.messages import EmergencyState, parse, zone_emergency_topics

pytestmark = pytest.mark.realtime  # audio against the wall clock: see conftest.py

EXAMPLES = Path(__file__).parent.parent / "docs" / "examples"
KIM_LONG = "brvt.chau-duc.kim-long"
AP_TAY = "brvt.chau-duc.kim-long.ap-tay"


async def test_emergency_chimes_then_speaks_at_level_3_and_repeats_on_its_cadence(streamer):
    tap = Tap(streamer, AP_TAY)
    status, e = await call(streamer, "POST", "/api/v1/emergency", json={
        "zones": [KIM_LONG], "source": {"kind": "tone", "hz": 440, "seconds": 1},
        "repeat_s": 60, "label": "Bão số 9"})
    assert status == 201, e
    assert e["emergency"] == {"chime": True, "volume": 100.0, "repeat_s": 60, "expires": None}
    b = streamer.broadcasts
    await until(lambda: e["id"] not in streamer.mixer.items, 6, "first airing to end")
    assert tap.priorities(e["id"]) == {3}  # speakers force their volume from packet one
    pcm = tap.pcm(e["id"])
    assert 2.4 < len(pcm) / 48_000 < 3.0  # 1.6 s chime + 1 s of content (+ codec delay)
    assert abs(peak_hz(pcm[int(0.05 * 48_000):int(0.3 * 48_000)]) - 784) < 15  # first note
    assert abs(peak_hz(pcm[int(0.85 * 48_000):int(1.15 * 48_000)]) - 1318.5) < 15  # third
    assert abs(peak_hz(pcm[int(1.8 * 48_000):int(2.4 * 48_000)]) - 440) < 5
    _, got = await call(streamer, "GET", f"/api/v1/broadcasts/{e['id']}")
    assert got["state"] == "waiting" and got["airings"] == 1
    assert abs(got["next_airing"] - (got["started"] + 60)) < 0.01
    timer = b._timers[e["id"]]
    loop = asyncio.get_running_loop()
    assert 50 < timer.when() - loop.time() <= 60
    timer.cancel()
    b._repeat(e["id"])  # what the timer does when the hour (here: minute) has passed
    await until(lambda: streamer.mixer.on_air(e["id"]), 2, "second airing")
    _, got = await call(streamer, "GET", f"/api/v1/broadcasts/{e['id']}")
    assert got["state"] == "on_air" and got["airings"] == 2
    status, got = await call(streamer, "DELETE", f"/api/v1/emergency/{e['id']}")
    assert status == 200 and got["state"] == "stopped" and got["next_airing"] is None
    assert e["id"] not in b._timers and e["id"] not in streamer.mixer.items


async def test_emergency_ignores_quiet_hours_and_tells_the_fleet(streamer, mosquitto):
    speaker_pw = new_password()
    pw = new_password()
    mosquitto.set_accounts([Account(STREAMER_USER, hash_password(pw), "service"),
                            Account("sp-1", hash_password(speaker_pw), "speaker", AP_TAY)])
    mosquitto.start()
    fleet = Fleet(mosquitto.url, STREAMER_USER, pw, streamer.plane.recorder, CollectorRegistry())
    await fleet.start()
    streamer.plane.fleet = fleet
    night = datetime(2026, 11, 23, 23, 30, tzinfo=UTC) - timedelta(hours=7)
    streamer.plane.now = lambda: night.timestamp()
    try:
        status, body = await call(streamer, "POST", "/api/v1/broadcasts", json={
            "zones": [KIM_LONG], "source": {"kind": "tone", "seconds": 5}})
        assert status == 409 and body["field"] == "zones"
        status, e = await call(streamer, "POST", "/api/v1/emergency", json={
            "zones": [KIM_LONG], "source": {"kind": "tone", "seconds": 30}, "chime": False,
            "volume": 90, "repeat_s": 3600, "expires_s": 7200})
        assert status == 201
        seen: list[EmergencyState] = []
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, username="sp-1",
                                  password=speaker_pw) as c:
            await c.subscribe([(t, 1) for t in zone_emergency_topics(AP_TAY)])

            async def read_until_inactive() -> None:
                async for m in c.messages:
                    seen.append(parse(EmergencyState, m.payload))
                    if not seen[-1].active:
                        return

            reader = asyncio.create_task(read_until_inactive())
            await until(lambda: seen, 5, "retained emergency state")
            first = seen[0]
            assert (first.id, first.active, first.volume, first.repeat_s) == (
                e["id"], True, 90.0, 3600)
            assert abs(first.expires - (time.time() + 7200)) < 10
            assert str(m_topic := f"loa/v1/zones/{KIM_LONG}/emergency") in zone_emergency_topics(
                AP_TAY), m_topic
            await call(streamer, "DELETE", f"/api/v1/emergency/{e['id']}")
            await asyncio.wait_for(reader, 5)
        assert seen[-1].id == e["id"] and not seen[-1].active
    finally:
        await fleet.close()


async def test_live_source_must_be_sending(streamer):
    status, body = await call(streamer, "POST", "/api/v1/emergency", json={
        "zones": [KIM_LONG], "source": {"kind": "live", "input": "studio-nope"}})
    assert status == 400 and body["field"] == "source.input"
    status, body = await call(streamer, "POST", "/api/v1/emergency", json={
        "zones": [KIM_LONG], "source": {"kind": "tone"}, "repeat_s": 5})
    assert status == 400 and body["field"] == "repeat_s"


# -- CAP ----------------------------------------------------------------------------------

COAST = {"kp-1": ("brvt.vung-tau.thang-tam.kp-1", 10.3435, 107.0870),
         "long-hai": ("brvt.long-dien.long-hai.kp-hai-trung", 10.3890, 107.2380),
         "hoa-long": ("brvt.ba-ria.hoa-long.ap-bac", 10.5350, 107.2100)}


ON_THE_COAST = {COAST["kp-1"][0], COAST["long-hai"][0], "brvt.vung-tau.thang-tam.kp-2",
                "brvt.vung-tau.thang-tam.kp-3", "brvt.long-dien.long-hai.kp-hai-hoa",
                "brvt.dat-do.phuoc-hai.kp-hai-tan", "brvt.dat-do.phuoc-hai.kp-hai-phong"}


def example(name: str) -> bytes:
    """An example alert with its dates moved to now, so that it has not expired."""
    text = (EXAMPLES / name).read_text()
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    return text.replace("2024-11-25T18:00:00+07:00", tomorrow).encode()


async def cap(streamer, data: bytes):
    return await call(streamer, "POST", "/api/v1/cap", data=data,
                     headers={**streamer.admin, "Content-Type": "application/cap+xml"})


async def count_broadcasts(streamer) -> int:
    return len((await call(streamer, "GET", "/api/v1/broadcasts"))[1]["broadcasts"])


async def test_cap_alert_update_cancel_and_test(streamer):
    for sid, (zone, lat, lon) in COAST.items():
        status, _ = await call(streamer, "POST", "/api/v1/speakers",
                              json={"id": sid, "zone": zone, "lat": lat, "lon": lon})
        assert status == 201
    status, a = await cap(streamer, example("typhoon-warning.xml"))
    assert status == 201, a
    assert a["action"] == "aired" and a["level"] == "emergency"
    # the speakers' zones on the coast (Hòa Long's speaker is inland), and the coastal hamlets
    # with no positioned speaker, by their locations in the zone file
    assert set(a["zones"]) == ON_THE_COAST
    first = a["broadcast"]
    assert first["priority"] == "emergency" and "bão số 9" in first["source"]["text"]
    assert first["emergency"]["expires"] > time.time() + 3600
    await until(lambda: streamer.mixer.on_air(first["id"]), 2, "the warning on air")
    assert set(streamer.mixer.on_air(first["id"])) == ON_THE_COAST
    status, again = await cap(streamer, example("typhoon-warning.xml"))
    assert status == 201 and again["action"] == "duplicate" and again["broadcast"] is None

    status, u = await cap(streamer, example("typhoon-update.xml"))
    assert status == 201 and u["action"] == "replaced" and u["stopped"] == [first["id"]]
    await until(lambda: streamer.mixer.on_air(u["broadcast"]["id"]), 2, "the update on air")
    assert first["id"] not in streamer.mixer.items

    status, c = await cap(streamer, example("typhoon-cancel.xml"))
    assert status == 201 and c["action"] == "cancelled"
    assert c["stopped"] == [u["broadcast"]["id"]] and not streamer.mixer.items

    # A Test alert reaches test zones only: none yet, so nothing airs.
    n = await count_broadcasts(streamer)
    status, t = await cap(streamer, example("test-alert.xml"))
    assert status == 409 and t["field"] == "status"
    assert await count_broadcasts(streamer) == n and not streamer.mixer.items
    status, _ = await call(streamer, "PATCH", "/api/v1/zones/brvt.vung-tau.thang-tam.kp-1",
                          json={"test": True})
    assert status == 200
    status, t = await cap(streamer, example("test-alert.xml"))
    assert status == 201 and t["zones"] == ["brvt.vung-tau.thang-tam.kp-1"]
    assert streamer.mixer.channels_of(t["broadcast"]["id"]) == ["brvt.vung-tau.thang-tam.kp-1"]


@pytest.mark.parametrize("data,status,field", [
    (b"<alert>not closed", 400, "alert"),
    (b"<?xml version='1.0'?><!DOCTYPE a [<!ENTITY x 'y'>]><alert>&x;</alert>", 400, "alert"),
    (EXAMPLES.joinpath("typhoon-warning.xml").read_bytes().replace(
        b"<msgType>Alert</msgType>", b""), 400, "alert.msgType"),
    (b"<a>" + b" " * 300_000 + b"</a>", 413, "alert"),
])
async def test_bad_cap_is_refused_naming_the_field_and_changes_nothing(streamer, data, status,
                                                                       field):
    n = await count_broadcasts(streamer)
    got_status, body = await cap(streamer, data)
    assert (got_status, body["field"]) == (status, field), body
    assert await count_broadcasts(streamer) == n and not streamer.mixer.items
    assert await streamer.plane.state.cap.count() == 0


async def test_expired_cap_alert_is_not_aired(streamer):
    status, _ = await call(streamer, "POST", "/api/v1/speakers", json={
        "id": "kp-1", "zone": COAST["kp-1"][0], "lat": COAST["kp-1"][1], "lon": COAST["kp-1"][2]})
    assert status == 201
    status, body = await cap(streamer, (EXAMPLES / "typhoon-warning.xml").read_bytes())
    assert status == 409 and body["field"] == "info.expires"
    assert json.dumps(body).count("2024") == 1
