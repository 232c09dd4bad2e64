"""Every CAP example in docs/examples, sent to a real streamer with ``loa up``'s speakers
registered as ``loa up`` registers them, does what docs/cap.md's step table says, on any day:
the dates are moved to today as ``loa ctl cap --today`` moves them. The OASIS CAP 1.2
specification's own examples are refused as outside the province, changing nothing.

The step table is read from docs/cap.md itself, so the documentation cannot drift from what
the streamer does. The streamer's clock for quiet hours is pinned (10:00, or 00:00 for the
night case); expiry is judged against the real clock, which is why the dates are moved."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from clients.capdates import move_to_today
from clients.ctl import run
from devstack.provision import provision
from devstack.spawn import SAMPLE_SPEAKERS
from streamer.control.cap import parse_cap
from tests.conftest import NIGHT
from tests.harness.api import call

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
CAP_MD = ROOT / "docs" / "cap.md"
OASIS = Path(__file__).resolve().parent / "data" / "oasis"
STEP_TABLE = "| step | send | answer | level | zones | matched no zone, or the refusal |"


@dataclass
class Step:
    file: str
    test_zone: str | None  # marked as a test zone (loa ctl zone set … --test on) first
    status: int
    action: str | None
    level: str | None
    zones: list[str]
    reported: list[str]  # unmatched areas, then unknown geocodes
    field: str | None  # of a refusal
    error: str | None


def documented_steps() -> list[Step]:
    """The rows of docs/cap.md's table "The examples against `loa up`"."""
    lines = CAP_MD.read_text(encoding="utf-8").splitlines()
    steps = []
    for line in lines[lines.index(STEP_TABLE) + 2:]:
        if not line.startswith("|"):
            break
        _, send, answer, level, zones, last = (c.strip() for c in line.strip("|").split("|"))
        sent = re.findall(r"`([^`]+)`", send)
        command = next((s.split() for s in sent if s.startswith("loa ctl zone set")), None)
        assert command is None or command[5:] == ["--test", "on"], line
        status, *action = answer.split()
        refusal = re.fullmatch(r"`([^`]+)`: (.+)", last)
        steps.append(Step(
            file=sent[0], test_zone=command[4] if command else None, status=int(status),
            action=action[0] if action else None, level=level or None,
            zones=re.findall(r"`([^`]+)`", zones),
            reported=[] if refusal else re.findall(r"`([^`]+)`", last),
            field=refusal.group(1) if refusal else None,
            error=refusal.group(2) if refusal else None))
    return steps


def today(name: str) -> bytes:
    """An example with its dates moved to today, as ``loa ctl cap --today`` sends it."""
    document, _ = move_to_today((EXAMPLES / name).read_bytes(), datetime.now(UTC))
    return document


async def cap(streamer, data: bytes):
    return await call(streamer, "POST", "/api/v1/cap", data=data,
                      headers={**streamer.admin, "Content-Type": "application/cap+xml"})


async def count_broadcasts(streamer) -> int:
    return len((await call(streamer, "GET", "/api/v1/broadcasts"))[1]["broadcasts"])


@pytest.fixture
async def demo(streamer, tmp_path):
    """The streamer with ``loa up``'s relay and speakers registered by ``loa up``'s own code
    (``devstack/provision.py``): the speakers at their positions."""
    await provision(streamer.http_url, tmp_path / "var" / "admin-credentials.json",
                    tmp_path / "secrets", ["relay-1"], SAMPLE_SPEAKERS)
    status, got = await call(streamer, "GET", "/api/v1/speakers")
    assert status == 200
    assert {s["id"]: (s["zone"], s["lat"], s["lon"]) for s in got["speakers"]} == {
        s.id: (s.zone, s.lat, s.lon) for s in SAMPLE_SPEAKERS}
    return streamer


async def test_a_later_loa_up_puts_its_speakers_back_at_their_positions(demo, tmp_path):
    """A speaker registered by an earlier run (before speakers had positions, or moved since)
    is placed again, and gets a new broker password as before."""
    sid = SAMPLE_SPEAKERS[0].id
    status, _ = await call(demo, "PATCH", f"/api/v1/speakers/{sid}",
                           json={"lat": None, "lon": None, "zone": "brvt.con-dao.cum-2"})
    assert status == 200
    first = (tmp_path / "secrets" / f"{sid}.mqtt").read_text()
    secrets = await provision(demo.http_url, tmp_path / "var" / "admin-credentials.json",
                              tmp_path / "secrets", ["relay-1"], SAMPLE_SPEAKERS)
    assert secrets[sid].read_text() != first
    status, s = await call(demo, "GET", f"/api/v1/speakers/{sid}")
    assert status == 200
    assert (s["zone"], s["lat"], s["lon"]) == SAMPLE_SPEAKERS[0][1:]


def test_the_step_table_covers_every_example():
    steps = documented_steps()
    assert [s.file for s in steps][:1] == ["typhoon-warning.xml"] and len(steps) >= 8
    assert {s.file for s in steps} == {p.name for p in EXAMPLES.glob("*.xml")}


async def test_every_example_does_what_docs_cap_md_says(demo):
    streamer = demo
    running: dict[str, int] = {}  # reference of an aired alert → its broadcast, still on
    for step in documented_steps():
        if step.test_zone:
            status, _ = await call(streamer, "PATCH", f"/api/v1/zones/{step.test_zone}",
                                   json={"test": True})
            assert status == 200
        document = today(step.file)
        before = await count_broadcasts(streamer)
        status, out = await cap(streamer, document)
        assert status == step.status, (step, out)
        if status != 201:
            assert (out["field"], out["error"]) == (step.field, step.error), step
            assert await count_broadcasts(streamer) == before
            continue
        assert (out["action"], out["level"], out["zones"]) == (
            step.action, step.level, step.zones), (step, out)
        assert out["unmatched_areas"] + out["unknown_geocodes"] == step.reported, step
        # an Update or Cancel stops what the alerts it names still air, and nothing else
        stopped = [running.pop(r.key) for r in parse_cap(document).references
                   if r.key in running]
        assert out["stopped"] == stopped, step
        assert not any(b in streamer.mixer.items for b in stopped)
        if out["broadcast"] is not None:
            b = out["broadcast"]
            running[out["reference"]] = b["id"]
            assert b["priority"] == step.level
            leaves = sorted(leaf for z in step.zones for leaf in streamer.zones.leaves(z))
            assert streamer.mixer.channels_of(b["id"]) == leaves, step
    assert await streamer.plane.state.cap.count() == len(
        [s for s in documented_steps() if s.status == 201])


@pytest.mark.parametrize("name", sorted(p.name for p in OASIS.glob("*.xml")))
async def test_oasis_examples_are_refused_as_outside_the_province(demo, name):
    streamer = demo
    areas = [a.desc for a in parse_cap((OASIS / name).read_bytes()).info.areas]
    moved, _ = move_to_today((OASIS / name).read_bytes(), datetime.now(UTC))
    for document in ((OASIS / name).read_bytes(), moved):  # as written, and not expired
        status, body = await cap(streamer, document)
        assert (status, body["field"]) == (409, "info.area"), body
        assert body["error"] == f"no zone lies in the alert's area ({'; '.join(areas)})"
    assert await count_broadcasts(streamer) == 0 and not streamer.mixer.items
    assert await streamer.plane.state.cap.count() == 0


async def test_without_today_the_examples_are_refused_as_expired(demo):
    expiring = [s.file for s in documented_steps()
                if parse_cap((EXAMPLES / s.file).read_bytes()).info.expires is not None]
    assert sorted(expiring) == sorted({"typhoon-warning.xml", "typhoon-update.xml",
                                       "flood-warning.xml", "sea-wind-geocode.xml",
                                       "depression-advisory.xml"})
    for name in expiring:
        status, body = await cap(demo, (EXAMPLES / name).read_bytes())
        expires = parse_cap((EXAMPLES / name).read_bytes()).info.expires
        assert (status, body) == (409, {"error": f"the alert expired at {expires.isoformat()}",
                                        "field": "info.expires"})
    assert await count_broadcasts(demo) == 0


async def test_at_night_priority_examples_wait_for_day_and_emergencies_air(demo):
    demo.plane.now = lambda: NIGHT  # 00:00 in Asia/Ho_Chi_Minh, inside 22:00-05:00
    status, body = await cap(demo, today("sea-wind-geocode.xml"))
    assert (status, body["field"]) == (409, "zones")
    assert body["error"].startswith("quiet hours in brvt.con-dao.cum-1, ")
    assert body["error"].endswith("(22:00-05:00); only emergency airs now, or an admin sets "
                                  "override_quiet_hours")
    status, body = await cap(demo, today("flood-warning.xml"))
    assert (status, body["action"], body["level"]) == (201, "aired", "emergency")


async def test_loa_ctl_cap_today_and_zone_set_test(demo, tmp_path, monkeypatch, capsys):
    """The CLI end to end: ``zone set --test on`` marks a test zone, ``cap --today`` airs."""
    monkeypatch.setenv("LOA_CTL_TOKEN_FILE", str(tmp_path / "token.json"))
    monkeypatch.delenv("LOA_URL", raising=False)
    monkeypatch.delenv("LOA_TOKEN", raising=False)
    password = tmp_path / "admin.password"
    creds = json.loads((tmp_path / "var" / "admin-credentials.json").read_text())
    password.write_text(creds["password"] + "\n")

    async def ctl(*argv: str) -> str:
        code = await asyncio.to_thread(run, ["--url", demo.http_url, *argv])
        out = capsys.readouterr()
        assert code == 0, out.err
        return out.out

    await ctl("login", "--user", "admin", "--password-file", str(password))
    out = await ctl("zone", "set", "brvt.vung-tau.thang-tam.kp-1", "--test", "on")
    assert re.search(r"brvt\.vung-tau\.thang-tam\.kp-1\s.*\byes$", out, re.M), out
    example = str(EXAMPLES / "test-alert.xml")
    out = await ctl("cap", "--today", example)
    days = (datetime.now(UTC).astimezone(parse_cap(today("test-alert.xml")).sent.tzinfo).date()
            - parse_cap((EXAMPLES / "test-alert.xml").read_bytes()).sent.date()).days
    assert f"{example}: dates moved +{days} days (--today)" in out
    assert "aired as emergency in brvt.vung-tau.thang-tam.kp-1" in out
    code = await asyncio.to_thread(run, ["--url", demo.http_url, "cap", str(tmp_path / "no.xml")])
    assert code == 1 and "cannot read" in capsys.readouterr().err


# -- moving dates to today (clients/capdates.py), on a pinned clock -------------------------

#: 02:30 on 1 March 2025 in Vietnam, still 28 February in UTC: "today" is the alert's own date
PINNED = datetime(2025, 2, 28, 19, 30, tzinfo=UTC)


def test_dates_move_by_whole_days_so_that_the_earliest_is_today_in_its_own_offset():
    original = (EXAMPLES / "typhoon-warning.xml").read_bytes()
    moved, days = move_to_today(original, PINNED)
    alert = parse_cap(moved)
    assert days == 97
    assert alert.sent.isoformat() == "2025-03-01T05:30:00+07:00"
    assert alert.info.onset.isoformat() == "2025-03-01T12:00:00+07:00"
    assert alert.info.expires.isoformat() == "2025-03-02T18:00:00+07:00"
    assert [i.expires for i in alert.infos] == [alert.info.expires] * 2
    # nothing but the dates changed
    dates = re.compile(rb"\d{4}-\d{2}-\d{2}T")
    assert dates.sub(b"DATE", moved) == dates.sub(b"DATE", original) and len(moved) == len(original)


def test_a_series_moved_the_same_day_still_names_what_it_updates():
    warning, update, cancel = (parse_cap(move_to_today((EXAMPLES / f"typhoon-{n}.xml")
                                                       .read_bytes(), PINNED)[0])
                               for n in ("warning", "update", "cancel"))
    assert [r.key for r in update.references] == [warning.reference.key]
    assert [r.key for r in cancel.references] == [warning.reference.key, update.reference.key]
    # the cancel was sent the day after the warning, and still is
    assert cancel.sent.isoformat() == "2025-03-02T08:00:00+07:00"


def test_prefixes_utc_offsets_and_bad_dates():
    doc = (b'<cap:alert xmlns:cap="urn:oasis:names:tc:emergency:cap:1.2">'
           b"<cap:sent>2024-11-23T22:30:00-00:00</cap:sent><cap:references>a,b,"
           b"2024-11-20T10:00:00+07:00 c,d,2024-02-30T10:00:00+07:00</cap:references>"
           b"<cap:info><cap:expires> 2024-11-24T01:00:00-00:00 </cap:expires></cap:info>"
           b"</cap:alert>")
    moved, days = move_to_today(doc, PINNED)
    # the earliest is the reference of 20 November (+07:00): it moves to 1 March
    assert days == 101
    assert moved == (doc.replace(b"2024-11-23T22", b"2025-03-04T22")
                     .replace(b"2024-11-20T10", b"2025-03-01T10")
                     .replace(b"2024-11-24T01", b"2025-03-05T01"))
    assert b"2024-02-30" in moved  # not a date: left for the streamer to refuse
    assert move_to_today(b"<alert/>", PINNED) == (b"<alert/>", 0)
    with pytest.raises(ValueError, match="9999-12-31 moved by [+]97 days is past the year 9999"):
        move_to_today(b"<sent>2024-11-24T05:30:00+07:00</sent>"
                      b"<expires>9999-12-31T23:59:59-23:59</expires>", PINNED)
