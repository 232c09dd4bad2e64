"""Reports against a real redis-server: broadcast minutes and speaker availability from a known
fake timeline written straight into the state store, checked exactly in JSON and CSV."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import aiohttp

from streamer.control.models import BroadcastRecord, BroadcastState, Presence, Speaker
from tests.conftest import DAYTIME
from tests.harness.api import call, make_user
from tests.harness.zones import OP, OTHER

ICT = timezone(timedelta(hours=7))  # Asia/Ho_Chi_Minh, no DST since 1975
MINUTES = "/api/v1/reports/broadcast-minutes"
AVAILABILITY = "/api/v1/reports/availability"
KP1, KP2, KP3 = (f"{OP}.kp-{i}" for i in (1, 2, 3))


def local(day: str, hh: int, mm: int = 0) -> float:
    """Epoch seconds of ``day`` ``hh:mm`` local time (2026-11-20 → "20")."""
    return datetime(2026, 11, int(day), hh, mm, tzinfo=ICT).timestamp()


async def add_broadcast(streamer, zones, priority, start, end, *, created=None,
                        state=BroadcastState.DONE) -> BroadcastRecord:
    rec = BroadcastRecord(
        id=await streamer.state.next_broadcast_id(), zones=zones, priority=priority,
        source={"kind": "tone", "hz": 600, "seconds": 30}, created=created or start or 0,
        created_by="admin", state=state, started=start, ended=end)
    await streamer.state.put_broadcast(rec)
    return rec


async def airtime_timeline(streamer) -> BroadcastRecord:
    """The broadcasts of 20–23 November; returns one that is on air (in memory only)."""
    await add_broadcast(streamer, [OP], "normal", local("20", 10), local("20", 10, 30))
    # across midnight: 10 minutes on the 20th, 20 on the 21st
    await add_broadcast(streamer, [KP1], "emergency", local("20", 23, 50), local("21", 0, 20))
    await add_broadcast(streamer, [OTHER], "normal", local("20", 9), local("20", 9, 15),
                        state=BroadcastState.STOPPED)
    # never aired: count nothing
    await add_broadcast(streamer, [OP], "normal", None, None, created=local("20", 11),
                        state=BroadcastState.PENDING_APPROVAL)
    await add_broadcast(streamer, [OP], "normal", None, local("20", 12),
                        created=local("20", 11), state=BroadcastState.REJECTED)
    # overlapping on one channel: 08:00–08:30 once, two broadcasts
    await add_broadcast(streamer, [KP3], "normal", local("21", 8), local("21", 8, 20))
    await add_broadcast(streamer, [KP3], "normal", local("21", 8, 10), local("21", 8, 30))
    # created two days before it was approved and aired
    await add_broadcast(streamer, [KP1], "priority", local("20", 12), local("20", 12, 5),
                        created=local("18", 9))
    # still on air in the store (no end yet): counted up to now (10:00 on the 23rd)
    await add_broadcast(streamer, [KP2], "normal", local("23", 9), None,
                        state=BroadcastState.QUEUED)
    # on air in this process, created long before the window
    live = BroadcastRecord(id=await streamer.state.next_broadcast_id(), zones=[KP3],
                           priority="background", source={"kind": "tone"},
                           created=local("1", 9), started=local("23", 9, 30))
    streamer.broadcasts.live[live.id] = live
    return live


def row(day, zone, priority, minutes, channel_minutes, broadcasts):
    return {"day": f"2026-11-{day}", "zone": zone, "priority": priority, "minutes": minutes,
            "channel_minutes": channel_minutes, "broadcasts": broadcasts}


async def test_broadcast_minutes_per_leaf_and_rolled_up_split_at_local_midnight(streamer):
    assert local("23", 10) == DAYTIME
    live = await airtime_timeline(streamer)
    try:
        q = {"from": "2026-11-20", "to": "2026-11-23", "zone": OP}
        status, leaf = await call(streamer, "GET", MINUTES, params=q)
        assert status == 200, leaf
        assert (leaf["first_day"], leaf["last_day"], leaf["zones"], leaf["group"]) == (
            "2026-11-20", "2026-11-23", [OP], "leaf")
        assert leaf["rows"] == [
            row("20", KP1, "emergency", 10, 10, 1), row("20", KP1, "priority", 5, 5, 1),
            row("20", KP1, "normal", 30, 30, 1), row("20", KP2, "normal", 30, 30, 1),
            row("20", KP3, "normal", 30, 30, 1),
            row("21", KP1, "emergency", 20, 20, 1), row("21", KP3, "normal", 30, 30, 2),
            row("23", KP2, "normal", 60, 60, 1), row("23", KP3, "background", 30, 30, 1)]
        status, rolled = await call(streamer, "GET", MINUTES, params={**q, "group": "zone"})
        assert status == 200 and rolled["rows"] == [
            row("20", OP, "emergency", 10, 10, 1), row("20", OP, "priority", 5, 5, 1),
            row("20", OP, "normal", 30, 90, 1),
            row("21", OP, "emergency", 20, 20, 1), row("21", OP, "normal", 30, 30, 2),
            row("23", OP, "normal", 60, 60, 1), row("23", OP, "background", 30, 30, 1)]
        # the admin's default scope is their grant (the province): the next commune counts
        status, province = await call(streamer, "GET", MINUTES,
                                      params={"from": "2026-11-20", "group": "zone"})
        assert status == 200 and province["zones"] == ["brvt"]
        assert province["rows"] == [
            row("20", "brvt", "emergency", 10, 10, 1), row("20", "brvt", "priority", 5, 5, 1),
            row("20", "brvt", "normal", 45, 135, 2)]
        # CSV: the same rows, one line each, under a header of the row fields
        status, ctype, disposition, text = await get_csv(streamer, MINUTES, q)
        assert (status, ctype) == (200, "text/csv")
        assert disposition == 'attachment; filename="broadcast-minutes-2026-11-20-2026-11-23.csv"'
        lines = list(csv.DictReader(io.StringIO(text)))
        assert list(lines[0]) == ["day", "zone", "priority", "minutes", "channel_minutes",
                                  "broadcasts"]
        assert [(d["day"], d["zone"], d["priority"], float(d["minutes"]),
                 float(d["channel_minutes"]), int(d["broadcasts"])) for d in lines] == [
            tuple(x.values()) for x in leaf["rows"]]
    finally:
        streamer.broadcasts.live.pop(live.id)


async def test_a_commune_operator_sees_only_their_commune(streamer):
    live = await airtime_timeline(streamer)
    try:
        op = await make_user(streamer, "op-reports", ("operator", OP))
        status, mine = await call(streamer, "GET", MINUTES, headers=op,
                                  params={"from": "2026-11-20", "group": "zone"})
        assert status == 200 and mine["zones"] == [OP]
        assert {(r["zone"], r["priority"], r["minutes"]) for r in mine["rows"]} == {
            (OP, "emergency", 10), (OP, "priority", 5), (OP, "normal", 30)}
        for zone in (OTHER, "brvt", OTHER + ".ap-tay"):
            for path in (MINUTES, AVAILABILITY):
                status, err = await call(streamer, "GET", path, headers=op,
                                         params={"from": "2026-11-20", "zone": zone})
                assert (status, err["field"]) == (403, "zones"), (path, zone, err)
        viewer = await make_user(streamer, "viewer-kl", ("viewer", OTHER))
        status, theirs = await call(streamer, "GET", MINUTES, headers=viewer,
                                    params={"from": "2026-11-20", "group": "zone"})
        assert status == 200 and theirs["rows"] == [row("20", OTHER, "normal", 15, 45, 1)]
        # a user with no grant sees an empty report, not someone else's
        nobody = await make_user(streamer, "nobody")
        status, empty = await call(streamer, "GET", MINUTES, headers=nobody,
                                   params={"from": "2026-11-20"})
        assert status == 200 and (empty["zones"], empty["rows"]) == ([], [])
        assert (await call(streamer, "GET", MINUTES, headers={},
                           params={"from": "2026-11-20"}))[0] == 401
    finally:
        streamer.broadcasts.live.pop(live.id)


async def presence_timeline(streamer) -> None:
    speakers = [Speaker(id="s1", zone=KP1), Speaker(id="s2", zone=KP1),
                Speaker(id="s3", zone=KP2), Speaker(id="s4", zone=OTHER + ".ap-tay"),
                Speaker(id="s5", zone=KP3, created=local("22", 12))]
    for s in speakers:
        await streamer.state.speakers.put(s.id, s)
    moves = [("s2", "online", local("19", 8)), ("s1", "offline", local("19", 12)),
             ("s4", "online", local("19", 23)),
             ("s1", "online", local("20", 6)), ("s1", "offline", local("20", 18)),  # half a day
             ("s2", "offline", local("21", 6)), ("s1", "online", local("21", 18))]
    for device, state, ts in sorted(moves, key=lambda m: m[2]):
        assert await streamer.state.set_presence(device, Presence(state=state, ts=ts))
    # a repeated state is no transition
    assert not await streamer.state.set_presence("s1", Presence(state="online",
                                                                ts=local("21", 19)))


def arow(day, zone, speakers, availability, hours=24.0):
    return {"day": f"2026-11-{day}", "zone": zone, "speakers": speakers,
            "availability": availability, "observed_hours": hours}


async def test_availability_from_presence_transitions(streamer):
    await presence_timeline(streamer)
    q = {"from": "2026-11-20", "to": "2026-11-21", "zone": OP}
    status, leaf = await call(streamer, "GET", AVAILABILITY, params=q)
    assert status == 200, leaf
    # s1 online 06:00–18:00 on the 20th (0.5); s2 online since the 19th (1.0) until 06:00 on
    # the 21st (0.25); s3 never seen (0); s5 registered on the 22nd, not counted before
    assert leaf["rows"] == [arow("20", KP1, 2, 0.75), arow("20", KP2, 1, 0.0),
                            arow("21", KP1, 2, 0.25), arow("21", KP2, 1, 0.0)]
    status, rolled = await call(streamer, "GET", AVAILABILITY, params={**q, "group": "zone"})
    assert status == 200 and rolled["rows"] == [arow("20", OP, 3, 0.5),
                                                arow("21", OP, 3, 0.166667)]
    status, province = await call(streamer, "GET", AVAILABILITY, params={
        "from": "2026-11-20", "to": "2026-11-21", "group": "zone"})
    assert status == 200 and province["rows"] == [arow("20", "brvt", 4, 0.625),
                                                  arow("21", "brvt", 4, 0.375)]
    # from the 22nd: the state before the window comes from the log read backwards; today
    # (the 23rd, now 10:00) counts up to now; tomorrow has no row yet
    status, recent = await call(streamer, "GET", AVAILABILITY, params={
        "from": "2026-11-22", "to": "2026-11-24", "zone": OP, "group": "zone"})
    assert status == 200 and recent["rows"] == [arow("22", OP, 4, 0.25),
                                                arow("23", OP, 4, 0.25, 10.0)]
    status, ctype, _, text = await get_csv(streamer, AVAILABILITY, q)
    assert (status, ctype) == (200, "text/csv")
    lines = list(csv.DictReader(io.StringIO(text)))
    assert [(d["day"], d["zone"], int(d["speakers"]), float(d["availability"]),
             float(d["observed_hours"])) for d in lines] == [
        tuple(x.values()) for x in leaf["rows"]]
    # the operator of the commune does not see the next commune's speaker
    op = await make_user(streamer, "op-avail", ("operator", OP))
    status, mine = await call(streamer, "GET", AVAILABILITY, headers=op, params={
        "from": "2026-11-20", "group": "zone"})
    assert status == 200 and mine["rows"] == [arow("20", OP, 3, 0.5)]


async def test_bad_queries_are_400_naming_the_field(streamer):
    cases = [({}, "from"), ({"from": "20-11-2026"}, "from"), ({"from": "2026-02-30"}, "from"),
             ({"from": "2026-11-20", "to": "2026-11-19"}, "to"),
             ({"from": "2026-01-01", "to": "2027-01-02"}, "to"),
             ({"from": "2026-11-20", "format": "xml"}, "format"),
             ({"from": "2026-11-20", "group": "commune"}, "group"),
             ({"from": "2026-11-20", "zone": "Not A Zone"}, "zone"),
             ({"from": "2026-11-20", "zone": "brvt.nowhere"}, "zone"),
             ({"from": "2026-11-20", "form": "2026-11-20"}, "form")]
    for path in (MINUTES, AVAILABILITY):
        for params, field in cases:
            status, err = await call(streamer, "GET", path, params=params)
            assert (status, err["field"]) == (400, field), (path, params, err)
    assert (await call(streamer, "GET", MINUTES, params={
        "from": "2026-01-01", "to": "2027-01-01"}))[0] == 200  # 366 days is the most
    assert streamer.registry.get_sample_value("loa_api_bad_requests_total",
                                              {"field": "from"}) == 6


async def test_openapi_declares_json_and_csv(streamer):
    _, doc = await call(streamer, "GET", "/api/v1/openapi.json", headers={})
    for path in (MINUTES, AVAILABILITY):
        op = doc["paths"][path]["get"]
        assert set(op["responses"]["200"]["content"]) == {"application/json", "text/csv"}
        params = {p["name"]: p for p in op["parameters"]}
        assert params["from"]["required"] and params["from"]["schema"]["format"] == "date"
        assert params["format"]["schema"]["enum"] == ["json", "csv"]


async def get_csv(streamer, path, params):
    """(status, content type, Content-Disposition, body text) of a CSV report."""
    async with aiohttp.ClientSession() as http, http.get(
            streamer.http_url + path, params={**params, "format": "csv"},
            headers=streamer.admin) as r:
        return r.status, r.content_type, r.headers.get("Content-Disposition", ""), \
            await r.text()
