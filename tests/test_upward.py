"""Reports upward against real processes: an in-process streamer on a real redis-server pushes
its period report to a webhook receiver the test starts (``tests/harness/central.py``), which
checks the HMAC signature, refuses the first delivery with 503 and takes the retry. The
report's content is checked against a tone broadcast and an emergency the test airs; the
schedule runs on an injected clock, relative to now (never a literal date)."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from email.utils import format_datetime
from pathlib import Path

import pytest

from common.config import ConfigError
from streamer.control.models import Presence
from streamer.control.schedules import DEFAULT_TZ
from streamer.control.upward import (
    CATCH_UP_DAYS,
    Upward,
    due_periods,
    local_day,
    report_id,
    retry_after,
    schema_document,
    signature,
    verify,
)
from tests.conftest import DAYTIME
from tests.harness.api import call, make_user
from tests.harness.central import Central
from tests.harness.streamer import in_process
from tests.harness.wait import until
from tests.harness.zones import KP1, KP2, OP

SECRET = b"a-shared-secret-of-the-province-and-the-centre"
UPWARD = "/api/v1/reports/upward"
ROOT = Path(__file__).resolve().parent.parent


def midnight_after(day: date) -> float:
    from dateutil import tz

    return datetime.combine(day + timedelta(days=1), dtime(), tz.gettz(DEFAULT_TZ)).timestamp()


@pytest.fixture
async def central():
    c = await Central(SECRET).start()
    yield c
    await c.stop()


@pytest.fixture
async def make_streamer(tmp_path, redis_url):
    """``await make_streamer(url, secret)``: an in-process streamer whose reports go to ``url``,
    signed with ``secret`` (written to a file as an operator would); retries after 50 ms."""
    started = []

    async def make(url: str, secret: bytes = SECRET):
        secret_file = tmp_path / "report-webhook.key"
        secret_file.write_bytes(secret + b"\n")
        s = await in_process(tmp_path, redis_url, DAYTIME, report_webhook_url=url,
                             report_webhook_secret_file=str(secret_file))
        started.append(s)
        s.upward.retry_base_s = 0.05
        return s

    yield make
    for s in started:
        await s.close()


async def air_and_confirm(s) -> tuple[dict, dict]:
    """Two speakers in KP1 (one online since before today, one never), a 1 s tone to the
    commune OP and a 1 s emergency to KP1, both aired to their end; proof of play as the fleet
    records it: speaker a played the tone, both played the emergency. Returns the records."""
    for sid in ("spk-a", "spk-b"):
        status, body = await call(s, "POST", "/api/v1/speakers", json={"id": sid, "zone": KP1})
        assert status == 201, body
    await s.state.set_presence("spk-a", Presence(state="online", ts=time.time() - 3 * 86400))
    status, tone = await call(s, "POST", "/api/v1/broadcasts", json={
        "zones": [OP], "priority": "normal", "label": "Thông báo",
        "source": {"kind": "tone", "hz": 600, "seconds": 1}})
    assert status == 201, tone
    status, emergency = await call(s, "POST", "/api/v1/emergency", json={
        "zones": [KP1], "label": "Bão số 9", "source": {"kind": "tone", "hz": 440, "seconds": 1}})
    assert status == 201, emergency
    for bid in (tone["id"], emergency["id"]):
        await until(lambda b=bid: b not in s.broadcasts.live, 15, f"broadcast {bid} to end")
    await s.state.record_played(tone["id"], "spk-a", {"start": time.time()})
    for sid in ("spk-a", "spk-b"):
        await s.state.record_played(emergency["id"], sid, {"start": time.time()})
    recs = []
    for bid in (tone["id"], emergency["id"]):
        rec = await s.state.broadcasts.get(bid)
        assert rec is not None and rec.ended is not None
        recs.append(rec.model_dump())
    return recs[0], recs[1]


def check_content(report: dict, tone: dict, emergency: dict, first: date, last: date) -> None:
    assert report["schema"] == "loa.report/1" and report["province"] == "brvt"
    assert report["id"] == report_id("brvt", first, last)
    assert report["period"] == {"from": first.isoformat(), "to": last.isoformat(),
                                "tz": "Asia/Ho_Chi_Minh"}
    # the emergency went up on its zone's boards and came down when it was over
    item, = report["board_items"]
    assert (item["id"], item["level"], item["title"], item["broadcast"]) == (
        f"b-{emergency['id']}", "emergency", "Bão số 9", emergency["id"])
    assert item["shown_until"] is not None
    by_id = {b["id"]: b for b in report["broadcasts"]}
    t = by_id[tone["id"]]
    assert (t["zones"], t["priority"], t["kind"], t["label"]) == (
        [OP], "normal", "tone", "Thông báo")
    assert t["airtime_s"] == round(tone["ended"] - tone["started"], 3)
    assert 0.9 < t["airtime_s"] < 30  # a 1 s tone, not a day
    assert datetime.fromisoformat(t["started"]).timestamp() == pytest.approx(tone["started"],
                                                                             abs=1e-3)
    assert t["reach"] == {"expected": 2, "confirmed": 1, "ratio": 0.5}
    e = by_id[emergency["id"]]
    assert e["priority"] == "emergency" and e["reach"] == {"expected": 2, "confirmed": 2,
                                                           "ratio": 1.0}
    [em] = report["emergencies"]
    assert (em["id"], em["zones"], em["label"], em["airings"]) == (
        emergency["id"], [KP1], "Bão số 9", 1)
    assert emergency["aired_at"] is not None and emergency["requested_at"] is not None
    assert em["time_to_air_s"] == round(emergency["aired_at"] - emergency["requested_at"], 3)
    assert 0 <= em["time_to_air_s"] < 60
    assert em["reach"] == e["reach"]
    [kp1] = [st for st in report["stations"] if st["zone"] == KP1]
    # spk-a online all the observed time, spk-b never: half the cluster was available
    assert kp1 == {"zone": KP1, "name": kp1["name"], "commune": OP, "speakers": 2,
                   "availability": 0.5}
    assert KP2 not in {st["zone"] for st in report["stations"]}  # no speaker there


def sample(s, name: str, **labels: str) -> float:
    return s.registry.get_sample_value(name, labels) or 0.0


async def test_a_manual_push_is_signed_refused_once_retried_with_one_id_and_remembered(
        make_streamer, central):
    s = await make_streamer(central.url)
    first = local_day(time.time())
    tone, emergency = await air_and_confirm(s)
    last = local_day(time.time())  # the same day unless the test ran across local midnight
    status, got = await call(s, "POST", f"{UPWARD}/push",
                             params={"from": first.isoformat(), "to": last.isoformat()})
    assert status == 202, got
    rid = got["id"]
    assert rid == report_id("brvt", first, last) and got["status"] == "pushing"
    await until(lambda: len(central.of(rid)) == 2, 10, "the retry after the 503")
    refused, taken = central.of(rid)
    assert (refused.status, taken.status) == (503, 200)
    # the backoff alone would retry in 0.05 s: the receiver's Retry-After (1 s) wins
    assert taken.at - refused.at >= central.retry_after_s - 0.05
    assert refused.verified and taken.verified
    assert verify(SECRET, taken.timestamp, taken.body, taken.signature)
    assert refused.report["id"] == taken.report["id"] == rid  # the same report, re-sent
    assert abs(int(taken.timestamp) - time.time()) < 300
    check_content(taken.report, tone, emergency, first, last)
    await until(lambda: sample(s, "loa_report_push_total", outcome="delivered") == 1, 5,
                "the delivery counted")
    assert sample(s, "loa_report_push_total", outcome="retry") == 1
    assert sample(s, "loa_report_push_last_success_timestamp_seconds") > 0
    delivered = await s.state.upward_delivered()
    assert delivered[rid]["from"] == first.isoformat()
    entries, _ = await s.state.audit_page()
    actions = {(a.action, a.target) for a in entries}
    assert ("push_upward_report", rid) in actions and ("report_delivered", rid) in actions
    # the same document over GET, for a pull instead of a push
    status, pulled = await call(s, "GET", UPWARD, params={"from": first.isoformat(),
                                                         "to": last.isoformat()})
    assert status == 200, pulled
    check_content(pulled, tone, emergency, first, last)


async def test_the_schedule_pushes_the_day_after_then_never_again_and_catches_up_bounded(
        make_streamer, central):
    s = await make_streamer(central.url)
    today = local_day(time.time())
    tone, emergency = await air_and_confirm(s)
    if local_day(time.time()) != today:
        pytest.skip("ran across local midnight: the broadcasts fell into two days")
    # ten minutes past the local midnight that ends today: yesterday (= today) is due
    s.upward.clock = lambda: midnight_after(today) + 600
    assert await s.upward.catch_up() == [rid := report_id("brvt", today, today)]
    refused, taken = central.of(rid)
    assert (refused.status, taken.status) == (503, 200)
    check_content(taken.report, tone, emergency, today, today)
    # delivered: not pushed again, by this pusher or by one after a restart (same Redis)
    assert await s.upward.catch_up() == []
    again = Upward(s.plane, central.url, SECRET, "daily", clock=s.upward.clock)
    again.retry_base_s = 0.05
    assert await again.catch_up() == []
    assert len(central.pushes) == 2
    # three days down: the days missed are pushed on the first check, oldest first
    again.clock = lambda: midnight_after(today + timedelta(days=3)) + 600
    missed = [today + timedelta(days=n) for n in (1, 2, 3)]
    assert await again.catch_up() == [report_id("brvt", d, d) for d in missed]
    # a month down: only the last CATCH_UP_DAYS days
    again.clock = lambda: midnight_after(today + timedelta(days=40)) + 600
    pushed = await again.catch_up()
    assert pushed == [report_id("brvt", d, d) for d in (
        today + timedelta(days=41 - n) for n in range(CATCH_UP_DAYS, 0, -1))]
    await again.close()


async def test_a_wrong_secret_is_rejected_counted_logged_and_not_remembered(
        make_streamer, caplog):
    central = await Central(b"the-centre-expects-another-secret").start()
    try:
        s = await make_streamer(central.url)
        day = local_day(time.time()) - timedelta(days=1)
        with caplog.at_level(logging.ERROR, logger="loa.upward"):
            assert await s.upward.deliver(day, day) is False
        [push] = central.pushes  # 401 is final: not retried
        assert not push.verified and push.status == 401
        assert sample(s, "loa_report_push_total", outcome="rejected") == 1
        assert sample(s, "loa_report_push_total", outcome="delivered") == 0
        assert await s.state.upward_delivered() == {}
        assert any("rejected (HTTP 401)" in r.getMessage() for r in caplog.records)
        # three days owed: the first refusal ends the check, the others wait behind it
        today = local_day(time.time())
        await s.state.set_upward_since(today - timedelta(days=2))
        s.upward.clock = lambda: midnight_after(today) + 600
        assert await s.upward.catch_up() == []
        assert len(central.pushes) == 2
        assert central.pushes[-1].report_id == report_id("brvt", today - timedelta(days=2),
                                                         today - timedelta(days=2))
    finally:
        await central.stop()


async def test_the_push_needs_an_admin_and_a_configured_webhook(streamer):
    day = local_day(time.time()).isoformat()
    status, body = await call(streamer, "POST", f"{UPWARD}/push", params={"from": day})
    assert status == 409 and body["field"] == "report_webhook_url"
    status, body = await call(streamer, "GET", UPWARD, params={"from": day, "to": "2000-01-01"})
    assert status == 400 and body["field"] == "to"
    # a commune's operator sees neither the province's report nor may push it
    op = await make_user(streamer, "op-upward", ("operator", OP))
    for method, path in (("GET", UPWARD), ("POST", f"{UPWARD}/push")):
        status, body = await call(streamer, method, path, headers=op, params={"from": day})
        assert status == 403, (method, body)


def test_retry_after_in_seconds_or_as_a_date():
    now = 1_800_000_000.0
    assert retry_after("120", now) == 120
    assert retry_after(format_datetime(datetime.fromtimestamp(now + 30, UTC), usegmt=True),
                       now) == pytest.approx(30)
    assert retry_after(format_datetime(datetime.fromtimestamp(now - 30, UTC), usegmt=True),
                       now) == 0
    assert retry_after("soon", now) is None and retry_after(None, now) is None


def test_periods_signature_and_config():
    now = midnight_after(local_day(time.time())) + 600  # 00:10 local, whatever today is
    today = local_day(now)
    yesterday = today - timedelta(days=1)
    assert due_periods(now, "daily", yesterday) == [(yesterday, yesterday)]
    assert due_periods(now - 600 + 60, "daily", yesterday) == []  # before the delay: not yet
    monday = today - timedelta(days=today.weekday())
    weeks = due_periods(now, "weekly", monday - timedelta(days=14))
    assert weeks[-1] == (monday - timedelta(days=7), monday - timedelta(days=1))
    assert all((b - a).days == 6 and a.weekday() == 0 for a, b in weeks)
    # the recipe's test vector: HMAC-SHA256("key", "1700000000.{}")
    assert signature(b"key", "1700000000", b"{}") == (
        "sha256=" + __import__("hmac").new(b"key", b"1700000000.{}", "sha256").hexdigest())
    assert not verify(b"key", "1700000001", b"{}", signature(b"key", "1700000000", b"{}"))
    from streamer.app import StreamerConfig

    with pytest.raises(ConfigError, match="report_webhook_secret_file"):
        StreamerConfig(redis_url="redis://x", report_webhook_url="https://central.example/r")
    with pytest.raises(ConfigError, match="report_period"):
        StreamerConfig(redis_url="redis://x", report_period="hourly")


def test_the_schema_in_docs_is_the_one_the_code_makes():
    on_disk = json.loads((ROOT / "docs" / "report-upward.schema.json").read_text())
    assert on_disk == schema_document()


async def test_a_repeated_emergency_counts_from_its_first_airing_and_a_scheduled_one_has_a_time_to_air(  # noqa: E501
        make_streamer, central):
    """Records as the streamer keeps them: an emergency aired three times on its cadence
    (``started`` is its latest airing, ``aired_at`` its first frame), and a scheduled
    emergency whose first frame went out 40 ms after its occurrence."""
    from streamer.control.models import BroadcastRecord, BroadcastState, EmergencyPlan
    from streamer.control.upward import build_report

    s = await make_streamer(central.url)
    now = time.time()
    repeated = BroadcastRecord(
        id=9001, zones=[KP1], priority="emergency", source={"kind": "tone"}, label="Lũ",
        created=now - 400, state=BroadcastState.DONE, started=now - 100, ended=now - 30,
        airings=3, requested_at=now - 400.2, aired_at=now - 400,
        emergency=EmergencyPlan(repeat_s=150))
    scheduled = BroadcastRecord(
        id=9002, zones=[KP2], priority="emergency", source={"kind": "tone"}, label="Diễn tập",
        created=now - 60, state=BroadcastState.DONE, started=now - 50, ended=now - 40,
        airings=1, requested_at=now - 50, aired_at=now - 49.96, schedule="s-1",
        emergency=EmergencyPlan())
    for rec in (repeated, scheduled):
        await s.state.put_broadcast(rec)
    report = await build_report(s.plane, local_day(now - 400), local_day(now), now)
    by_id = {e["id"]: e for e in report.model_dump(mode="json")["emergencies"]}
    r = by_id[9001]
    assert datetime.fromisoformat(r["started"]).timestamp() == pytest.approx(now - 400)
    assert r["airings"] == 3 and r["time_to_air_s"] == pytest.approx(0.2, abs=1e-3)
    b = {e["id"]: e for e in report.model_dump(mode="json")["broadcasts"]}[9001]
    assert b["airtime_s"] == pytest.approx(370, abs=0.01)  # first airing to its end
    assert by_id[9002]["time_to_air_s"] == pytest.approx(0.04, abs=1e-3)
