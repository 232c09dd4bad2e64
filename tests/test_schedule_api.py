"""Schedules through the API on a real redis-server: RRULE next occurrences, quiet hours
refused (and an audited admin override), approval, and a restart that keeps the schedule and
books its next occurrence on the right frame."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from datetime import time as clock

import aiohttp
from dateutil import tz

from streamer.control.scheduler import frame_for
from tests.harness.api import audit, call, make_user
from tests.harness.week import local, monday
from tests.harness.zones import OP, OTHER

VN = tz.gettz("Asia/Ho_Chi_Minh")
TONE = {"kind": "tone", "hz": 700, "seconds": 2}
WEEKDAYS_6_17 = "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA;BYHOUR=6,17;BYMINUTE=0;BYSECOND=0"


async def test_rrule_schedule_next_occurrence_and_listing(streamer):
    # the fixture's clock: Monday 2026-11-23 10:00 local
    status, s = await call(streamer, "POST", "/api/v1/schedules", json={
        "zones": [OP], "source": TONE, "rrule": WEEKDAYS_6_17,
        "dtstart": "2026-11-01T00:00:00", "label": "Bản tin sáng chiều"})
    assert status == 201, s
    assert s["next"].startswith("2026-11-23T17:00:00") and s["approved"] is True
    assert s["created_by"] == "admin"
    _, listing = await call(streamer, "GET", "/api/v1/schedules")
    assert [x["id"] for x in listing["schedules"]] == [s["id"]]
    # Saturday 17:00 is followed by Monday 06:00 (no Sunday)
    streamer.plane.now = lambda: datetime(2026, 11, 28, 17, 30, tzinfo=VN).timestamp()
    _, got = await call(streamer, "GET", f"/api/v1/schedules/{s['id']}")
    assert got["next"].startswith("2026-11-30T06:00:00")


async def test_quiet_hours_refuse_a_0315_window_unless_an_admin_overrides(streamer):
    op = await make_user(streamer, "op-s", ("operator", OP))
    window = {"zones": [OP], "source": TONE, "at": "2026-11-24T03:15:00", "duration_s": 1800}
    status, err = await call(streamer, "POST", "/api/v1/schedules", headers=op, json=window)
    assert status == 409 and err["field"] == "at" and "quiet" in err["error"]
    status, err = await call(streamer, "POST", "/api/v1/schedules", headers=op,
                             json={**window, "override_quiet_hours": True})
    assert status == 403
    # a window that starts at 21:30 runs into the quiet hours at 22:00
    status, err = await call(streamer, "POST", "/api/v1/schedules", headers=op, json={
        **window, "at": "2026-11-24T21:30:00", "duration_s": 3600})
    assert status == 409 and err["field"] == "duration_s"
    assert (await call(streamer, "GET", "/api/v1/schedules"))[1]["schedules"] == []
    status, s = await call(streamer, "POST", "/api/v1/schedules",
                           json={**window, "override_quiet_hours": True})
    assert status == 201 and s["override_quiet_hours"] is True
    entry = next(e for e in await audit(streamer, action="create_schedule"))
    assert entry["user"] == "admin" and entry["detail"]["override_quiet_hours"] is True
    status, e = await call(streamer, "POST", "/api/v1/schedules", json={
        **window, "priority": "emergency", "zones": [OTHER]})
    assert status == 201  # emergency ignores quiet hours


async def test_bad_schedules_name_the_field(streamer):
    base = {"zones": [OP], "source": TONE}
    for body, field in [
        ({**base, "rrule": "FREQ=SECONDLY", "dtstart": "2026-11-24T06:00:00"}, "rrule"),
        ({**base, "rrule": "every day at six", "dtstart": "2026-11-24T06:00:00"}, "rrule"),
        ({**base}, "rrule"),
        ({**base, "at": "2026-11-24T06:00:00", "tz": "Mars/Olympus"}, "tz"),
        ({**base, "at": "2026-11-24T06:00:00", "duration_s": -5}, "duration_s"),
        ({**base, "at": "2020-01-01T06:00:00"}, "at"),
        ({**base, "at": "2026-11-24T06:00:00",
          "source": {"kind": "relay", "url": "ftp://vov.vn/live"}, "duration_s": 60},
         "source.url"),
        ({**base, "at": "2026-11-24T06:00:00", "zones": ["brvt.nowhere"]}, "zones"),
    ]:
        status, err = await call(streamer, "POST", "/api/v1/schedules", json=body)
        assert (status, err.get("field")) == (400, field), (body, err)
    assert (await call(streamer, "GET", "/api/v1/schedules"))[1]["schedules"] == []


async def test_schedule_in_an_approval_zone_waits_for_the_approver(streamer):
    await call(streamer, "PATCH", f"/api/v1/zones/{OP}", json={"requires_approval": True})
    op = await make_user(streamer, "op-a", ("operator", OP))
    chief = await make_user(streamer, "chief-a", ("approver", OP))
    _, s = await call(streamer, "POST", "/api/v1/schedules", headers=op, json={
        "zones": [OP], "source": TONE, "at": "2026-11-24T07:00:00"})
    assert s["approved"] is False and s["next"] is None
    _, pending = await call(streamer, "GET", "/api/v1/approvals", headers=chief)
    assert [x["id"] for x in pending["schedules"]] == [s["id"]]
    status, ok = await call(streamer, "POST", f"/api/v1/approvals/schedules/{s['id']}",
                            headers=chief, json={"decision": "approve"})
    assert status == 200 and ok["approved"] is True and ok["next"].startswith("2026-11-24T07")
    assert streamer.plane.scheduler.schedules[s["id"]].approved


async def test_restart_keeps_schedules_and_books_the_next_occurrence_on_its_frame(
        streamer, redis_server):
    from streamer.app import Streamer

    streamer.plane.now = time.time  # this test fires for real, a few seconds from now
    await call(streamer, "PATCH", f"/api/v1/zones/{OP}", json={"quiet_hours": ""})
    at = (datetime.now(VN) + timedelta(seconds=4)).replace(microsecond=0, tzinfo=None)
    status, s = await call(streamer, "POST", "/api/v1/schedules", json={
        "zones": [OP], "source": TONE, "at": at.isoformat()})
    assert status == 201, s
    await streamer.close()
    again = Streamer(streamer.cfg)
    await again.start()
    try:
        again.admin = streamer.admin
        assert again.plane.scheduler.schedules[s["id"]].at == at
        occ = at.replace(tzinfo=VN).timestamp()
        deadline = time.monotonic() + 3
        booked = None
        while booked is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            booked = next(((bid, again.mixer.booked(bid)) for bid in again.broadcasts.booked
                           if again.mixer.booked(bid) is not None), None)
        assert booked is not None, "the occurrence was not prepared and booked"
        bid, frame = booked
        assert frame == frame_for(again.clock, occ)
        while time.time() < occ + 0.5:
            await asyncio.sleep(0.1)
        status, b = await call(again, "GET", f"/api/v1/broadcasts/{bid}")
        assert status == 200 and b["schedule"] == s["id"] and b["state"] == "on_air"
        assert b["started"] == occ
        rec = await again.state.broadcasts.get(bid)  # its time to air counts from its time
        assert rec is not None and rec.requested_at == occ
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{again.http_url}/api/v1/schedules/{s['id']}",
                                headers=again.admin) as r:
                got = await r.json()
        assert got["last_fired"] is not None and got["next"] is None
    finally:
        await again.close()


async def test_a_booked_schedule_airs_while_redis_is_down(streamer, redis_server):
    """Playout keeps the last good schedule: Redis dies before the occurrence, and it airs."""
    streamer.plane.now = time.time
    await call(streamer, "PATCH", f"/api/v1/zones/{OP}", json={"quiet_hours": ""})
    at = (datetime.now(VN) + timedelta(seconds=3)).replace(microsecond=0, tzinfo=None)
    status, s = await call(streamer, "POST", "/api/v1/schedules", json={
        "zones": [OP], "source": TONE, "at": at.isoformat()})
    assert status == 201, s
    redis_server.kill()
    occ = at.replace(tzinfo=VN).timestamp()
    while time.time() < occ + 0.5:
        await asyncio.sleep(0.1)
    aired = [bid for bid, rec in streamer.broadcasts.live.items() if rec.schedule == s["id"]]
    assert len(aired) == 1 and len(streamer.mixer.on_air(aired[0])) == 3
    status, err = await call(streamer, "GET", "/api/v1/schedules")
    assert status == 503  # the API says why it cannot answer; playout goes on


# ---- the calendar's read-only operations: occurrences of a range, and a dry run

async def test_the_occurrences_of_a_week_are_expanded_by_the_streamer(streamer):
    week = monday()
    streamer.plane.now = lambda: local(week, 10)  # Monday 10:00 local
    for body in [
        {"zones": [OP], "source": TONE, "rrule": WEEKDAYS_6_17, "label": "sáng chiều",
         "dtstart": f"{week - timedelta(days=7)}T00:00:00"},
        {"zones": [OP], "source": TONE, "at": f"{week + timedelta(days=2)}T12:00:00"},
        {"zones": [OTHER], "source": {"kind": "relay", "url": "http://vov.vn/live.mp3"},
         "at": f"{week + timedelta(days=3)}T19:00:00", "duration_s": 3600},
    ]:
        status, s = await call(streamer, "POST", "/api/v1/schedules", json=body)
        assert status == 201, s
    status, got = await call(streamer, "GET", "/api/v1/schedules/occurrences")
    assert status == 200, got
    assert (got["first_day"], got["last_day"]) == (str(week), str(week + timedelta(days=6)))
    assert got["now"].startswith(f"{week}T10:00:00") and got["truncated"] is False
    starts = [(o["schedule"], datetime.fromisoformat(o["start"])) for o in got["occurrences"]]
    rule = [t for sid, t in starts if sid == "s1"]
    assert len(rule) == 12 and {t.weekday() for t in rule} == set(range(6))
    assert {(t.hour, t.minute) for t in rule} == {(6, 0), (17, 0)}
    assert [t for sid, t in starts if sid == "s2"] == [
        datetime.combine(week + timedelta(days=2), clock(12), VN)]
    relay = next(o for o in got["occurrences"] if o["schedule"] == "s3")
    assert datetime.fromisoformat(relay["end"]) - datetime.fromisoformat(relay["start"]) \
        == timedelta(hours=1)
    assert [t for _, t in starts] == sorted(t for _, t in starts)
    # the next week: the rule only; a range given by its first day alone is a week
    status, nxt = await call(streamer, "GET", "/api/v1/schedules/occurrences",
                             params={"from": str(week + timedelta(days=7))})
    assert status == 200 and len(nxt["occurrences"]) == 12
    assert {o["schedule"] for o in nxt["occurrences"]} == {"s1"}
    # a commune operator sees the occurrences of the schedules in their commune only
    op = await make_user(streamer, "op-occ", ("operator", OP))
    _, mine = await call(streamer, "GET", "/api/v1/schedules/occurrences", headers=op)
    assert {o["schedule"] for o in mine["occurrences"]} == {"s1", "s2"}


async def test_a_bad_range_of_occurrences_names_the_field(streamer):
    for params, field in [({"from": "2026-13-01"}, "from"), ({"to": "yesterday"}, "to"),
                          ({"from": "2026-11-23", "to": "2026-11-22"}, "to"),
                          ({"from": "2026-11-01", "to": "2026-12-31"}, "to"),
                          ({"week": "1"}, "week")]:
        status, err = await call(streamer, "GET", "/api/v1/schedules/occurrences",
                                 params=params)
        assert (status, err["field"]) == (400, field), (params, err)


async def test_a_dry_run_shows_the_next_occurrences_or_the_refusal_and_saves_nothing(streamer):
    week = monday()
    streamer.plane.now = lambda: local(week, 10)
    op = await make_user(streamer, "op-dry", ("operator", OP))
    body = {"zones": [OP], "source": TONE, "rrule": WEEKDAYS_6_17,
            "dtstart": f"{week}T00:00:00"}
    status, dry = await call(streamer, "POST", "/api/v1/schedules/preview", headers=op,
                             json=body)
    assert status == 200, dry
    assert [datetime.fromisoformat(t) for t in dry["next"]] == [
        datetime.combine(week + timedelta(days=d), clock(h), VN)
        for d, h in [(0, 17), (1, 6), (1, 17), (2, 6), (2, 17)]]
    assert dry["approved"] is True
    # 03:15 is in the quiet hours: the 409 that saving would get, naming the field
    status, err = await call(streamer, "POST", "/api/v1/schedules/preview", headers=op, json={
        **body, "rrule": None, "dtstart": None, "at": f"{week + timedelta(days=1)}T03:15:00"})
    assert (status, err["field"]) == (409, "at") and "quiet hours" in err["error"]
    status, err = await call(streamer, "POST", "/api/v1/schedules/preview", headers=op,
                             json={**body, "zones": [OTHER]})
    assert (status, err["field"]) == (403, "zones")
    assert (await call(streamer, "GET", "/api/v1/schedules"))[1]["schedules"] == []
    await call(streamer, "PATCH", f"/api/v1/zones/{OP}", json={"requires_approval": True})
    _, dry = await call(streamer, "POST", "/api/v1/schedules/preview", headers=op, json=body)
    assert dry["approved"] is False and len(dry["next"]) == 5
