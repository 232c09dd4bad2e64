"""Control-plane API against a real redis-server: sign-in, roles on zone subtrees, audit,
quiet hours, approval, restart persistence, and the OpenAPI document checked by schemathesis."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import aiohttp

from tests.conftest import DAYTIME
from tests.harness.api import audit, call, make_user
from tests.harness.audio import tone_wav
from tests.harness.zones import OP, OTHER

TONE = {"kind": "tone", "hz": 600, "seconds": 30}
VN = ZoneInfo("Asia/Ho_Chi_Minh")


async def test_login_wrong_password_missing_token_and_logout(streamer):
    status, err = await call(streamer, "POST", "/api/v1/login", headers={},
                             json={"user": "admin", "password": "nope"})
    assert (status, err["field"]) == (401, "password")
    status, err = await call(streamer, "GET", "/api/v1/zones", headers={})
    assert (status, err["field"]) == (401, "Authorization")
    status, err = await call(streamer, "GET", "/api/v1/zones",
                             headers={"Authorization": "Bearer " + "x" * 43})
    assert status == 401
    op = await make_user(streamer, "op1", ("operator", OP))
    assert (await call(streamer, "GET", "/api/v1/me", headers=op))[1]["name"] == "op1"
    assert (await call(streamer, "POST", "/api/v1/logout", headers=op))[0] == 200
    assert (await call(streamer, "GET", "/api/v1/me", headers=op))[0] == 401
    denied = [e for e in await audit(streamer, action="login") if e["outcome"] == "denied"]
    assert [e["user"] for e in denied] == ["admin"]


async def test_commune_operator_gets_403_next_door_and_it_is_audited(streamer):
    op = await make_user(streamer, "op-thang-tam", ("operator", OP))
    status, b = await call(streamer, "POST", "/api/v1/broadcasts", headers=op,
                           json={"zones": [OP], "source": TONE})
    assert status == 201 and b["channels"] == 3 and b["created_by"] == "op-thang-tam"
    status, err = await call(streamer, "POST", "/api/v1/broadcasts", headers=op,
                             json={"zones": [OP, OTHER], "source": TONE})
    assert status == 403 and OTHER in err["error"] and err["field"] == "zones"
    assert len(streamer.broadcasts.live) == 1  # nothing aired next door
    # an operator may not air an emergency, nor stop one they cannot see
    status, _ = await call(streamer, "POST", "/api/v1/emergency", headers=op,
                           json={"zones": [OP], "source": TONE})
    assert status == 403
    status, e = await call(streamer, "POST", "/api/v1/emergency",
                           json={"zones": [OTHER], "source": TONE})
    assert status == 201 and e["priority"] == "emergency"
    assert (await call(streamer, "DELETE", f"/api/v1/emergency/{e['id']}", headers=op))[0] \
        == 404
    assert (await call(streamer, "GET", f"/api/v1/broadcasts/{e['id']}", headers=op))[0] == 404
    listing = (await call(streamer, "GET", "/api/v1/broadcasts", headers=op))[1]["broadcasts"]
    assert [x["id"] for x in listing] == [b["id"]]
    # a viewer sees but cannot air
    viewer = await make_user(streamer, "viewer1", ("viewer", OP))
    assert (await call(streamer, "POST", "/api/v1/broadcasts", headers=viewer,
                       json={"zones": [OP], "source": TONE}))[0] == 403
    denied = [e for e in await audit(streamer) if e["outcome"] == "denied"]
    assert {(e["user"], e["action"]) for e in denied} == {
        ("op-thang-tam", "create_broadcast"), ("op-thang-tam", "create_emergency"),
        ("viewer1", "create_broadcast")}
    assert any(OTHER in e["zones"] for e in denied)


async def test_every_state_change_is_audited_with_user_and_time(streamer):
    t0 = time.time()
    op = await make_user(streamer, "op2", ("operator", OP))
    _, b = await call(streamer, "POST", "/api/v1/broadcasts", headers=op,
                      json={"zones": [OP], "source": TONE})
    await call(streamer, "DELETE", f"/api/v1/broadcasts/{b['id']}", headers=op)
    await call(streamer, "PATCH", f"/api/v1/zones/{OP}", json={"requires_approval": True})
    await call(streamer, "PATCH", "/api/v1/users/op2", json={"full_name": "Nguyễn Văn A"})
    entries = await audit(streamer)
    got = [(e["user"], e["action"], e["target"]) for e in reversed(entries)
           if e["outcome"] == "ok" and e["action"] not in ("login", "bootstrap_admin")]
    assert got == [("admin", "create_user", "op2"), ("op2", "broadcast", str(b["id"])),
                   ("op2", "stop_broadcast", str(b["id"])), ("admin", "patch_zone", OP),
                   ("admin", "patch_user", "op2")]
    assert all(t0 - 1 <= e["ts"] <= time.time() + 1 for e in entries if e["user"] != "-")
    # the operator sees the entries of their commune, not those of the province or next door
    await call(streamer, "PATCH", f"/api/v1/zones/{OTHER}", json={"requires_approval": True})
    mine = (await call(streamer, "GET", "/api/v1/audit", headers=op))[1]["entries"]
    assert {e["action"] for e in mine} >= {"broadcast", "patch_zone"}
    assert all(OTHER not in e["zones"] and "brvt" not in e["zones"] for e in mine)


async def test_the_audit_log_filters_by_zone_and_outcome_and_pages_back(streamer):
    op = await make_user(streamer, "op4", ("operator", OP))
    for _ in range(3):
        await call(streamer, "POST", "/api/v1/broadcasts", headers=op,
                   json={"zones": [OP], "source": TONE})
    await call(streamer, "POST", "/api/v1/broadcasts", headers=op,
               json={"zones": [OTHER], "source": TONE})  # refused: audited as denied
    await call(streamer, "PATCH", f"/api/v1/zones/{OTHER}", json={"requires_approval": True})
    status, here = await call(streamer, "GET", f"/api/v1/audit?zone={OP}")
    assert status == 200
    assert [e["action"] for e in here["entries"]] == ["broadcast"] * 3 + ["create_user"]
    assert here["next"] is None
    status, denied = await call(streamer, "GET", "/api/v1/audit?outcome=denied")
    assert [(e["user"], e["zones"]) for e in denied["entries"]] == [("op4", [OTHER])]
    # two at a time, newest first, until `next` runs out: every entry once, in order
    whole = (await call(streamer, "GET", "/api/v1/audit"))[1]["entries"]
    pages: list[dict] = []
    query = "/api/v1/audit?limit=2"
    while True:
        status, page = await call(streamer, "GET", query)
        assert status == 200 and len(page["entries"]) <= 2
        pages += page["entries"]
        if page["next"] is None:
            break
        query = f"/api/v1/audit?limit=2&before={page['next']}"
    assert [e["id"] for e in pages] == [e["id"] for e in whole] and len(whole) >= 6
    for edge in ("0-0", "00-000", "9999999999999999999-9999999999999999999"):
        status, page = await call(streamer, "GET", f"/api/v1/audit?before={edge}")
        assert status == 200 and (page["entries"] == []) == edge.startswith("0"), page
    for bad in ("zone=BRVT!", "before=newest", "before=99999999999999999999-0",
                "outcome=" + "x" * 17):
        status, err = await call(streamer, "GET", f"/api/v1/audit?{bad}")
        assert status == 400 and err["field"] == bad.split("=")[0], err


async def test_quiet_hours_refuse_then_admin_override_is_audited(streamer):
    streamer.plane.now = lambda: DAYTIME - 6 * 3600 - 45 * 60  # 03:15 local
    op = await make_user(streamer, "op3", ("operator", OP))
    status, err = await call(streamer, "POST", "/api/v1/broadcasts", headers=op,
                             json={"zones": [OP], "source": TONE})
    assert status == 409 and "quiet hours" in err["error"] and err["field"] == "zones"
    status, err = await call(streamer, "POST", "/api/v1/broadcasts", headers=op,
                             json={"zones": [OP], "source": TONE, "override_quiet_hours": True})
    assert status == 403  # only an admin may override
    assert streamer.broadcasts.live == {}
    status, b = await call(streamer, "POST", "/api/v1/broadcasts",
                           json={"zones": [OP], "source": TONE, "override_quiet_hours": True})
    assert status == 201 and b["override_quiet_hours"] is True
    status, e = await call(streamer, "POST", "/api/v1/emergency",
                           json={"zones": [OTHER], "source": TONE})
    assert status == 201  # emergency ignores quiet hours
    entry = next(e for e in await audit(streamer, action="broadcast")
                 if e["target"] == str(b["id"]))
    assert entry["user"] == "admin" and entry["detail"]["override_quiet_hours"] is True
    # a zone with no quiet hours airs at 03:15
    await call(streamer, "PATCH", f"/api/v1/zones/{OP}", json={"quiet_hours": ""})
    assert (await call(streamer, "POST", "/api/v1/broadcasts", headers=op,
                       json={"zones": [OP], "source": TONE}))[0] == 201


async def test_approval_holds_a_bulletin_until_an_approver_releases_it(streamer):
    await call(streamer, "PATCH", f"/api/v1/zones/{OP}", json={"requires_approval": True})
    op = await make_user(streamer, "op4", ("operator", OP))
    approver = await make_user(streamer, "chief", ("approver", "brvt.vung-tau"))
    status, b = await call(streamer, "POST", "/api/v1/broadcasts", headers=op,
                           json={"zones": [OP + ".kp-1"], "source": TONE})
    assert status == 201 and b["state"] == "pending_approval"
    assert streamer.mixer.items == {}
    status, e = await call(streamer, "POST", "/api/v1/emergency",
                           json={"zones": [OP], "source": TONE})
    assert status == 201 and e["approved_by"] is None  # emergency never waits for approval
    await asyncio.sleep(0.1)
    assert (await call(streamer, "GET", f"/api/v1/broadcasts/{e['id']}"))[1]["state"] == "on_air"
    status, pending = await call(streamer, "GET", "/api/v1/approvals", headers=approver)
    assert [p["id"] for p in pending["broadcasts"]] == [b["id"]]
    assert (await call(streamer, "POST", f"/api/v1/approvals/broadcasts/{b['id']}", headers=op,
                       json={"decision": "approve"}))[0] == 403
    status, done = await call(streamer, "POST", f"/api/v1/approvals/broadcasts/{b['id']}",
                              headers=approver, json={"decision": "approve"})
    assert status == 200 and done["approved_by"] == "chief" and done["state"] == "waiting"
    assert b["id"] in streamer.mixer.items  # behind the emergency
    status, err = await call(streamer, "POST", f"/api/v1/approvals/broadcasts/{b['id']}",
                             headers=approver, json={"decision": "approve"})
    assert status == 409


async def test_restart_of_streamer_and_redis_loses_nothing(streamer, redis_server, tmp_path):
    from streamer.app import Streamer

    await make_user(streamer, "op5", ("operator", OP))
    _, b = await call(streamer, "POST", "/api/v1/broadcasts",
                      json={"zones": [OP], "source": TONE})
    await call(streamer, "PATCH", f"/api/v1/zones/{OP}", json={"quiet_hours": "21:00-06:00"})
    # Tomorrow 08:00 local on the real clock: the fixture's pinned clock (DAYTIME) is earlier,
    # and the restarted streamer runs on the real one, so both see it ahead; 08:00 is outside
    # the zone's quiet hours whenever the test runs.
    at = (datetime.now(VN) + timedelta(days=1)).strftime("%Y-%m-%dT08:00:00")
    _, sched = await call(streamer, "POST", "/api/v1/schedules", json={
        "zones": [OP], "source": TONE, "at": at})
    form = aiohttp.FormData()
    form.add_field("file", tone_wav(), filename="chuong.wav")
    _, clip = await call(streamer, "POST", "/api/v1/clips", data=form)
    n_audit = len(await audit(streamer))
    await streamer.close()
    redis_server.kill()  # no clean shutdown: the AOF (fsync every second) must have it
    redis_server.start()
    again = Streamer(streamer.cfg)
    await again.start()
    try:
        again.admin = streamer.admin  # tokens live in Redis too
        status, got = await call(again, "GET", f"/api/v1/broadcasts/{b['id']}")
        assert status == 200 and got["state"] == "interrupted"
        status, z = await call(again, "GET", f"/api/v1/zones/{OP}")
        assert z["quiet_hours"] == "21:00-06:00"
        assert (await call(again, "GET", "/api/v1/users/op5"))[0] == 200
        _, got = await call(again, "GET", f"/api/v1/schedules/{sched['id']}")
        assert got["at"] == at and got["next"].startswith(at)
        assert sched["id"] in again.plane.scheduler.schedules
        _, c = await call(again, "GET", f"/api/v1/clips/{clip['id']}")
        assert c["name"] == "chuong.wav" and c["seconds"] == clip["seconds"]
        assert len(await audit(again)) >= n_audit
        assert not (tmp_path / "var" / "admin-credentials.json").read_text() == ""
    finally:
        await again.close()




async def test_openapi_document_lists_every_route(streamer):
    status, doc = await call(streamer, "GET", "/api/v1/openapi.json", headers={})
    assert status == 200 and doc["openapi"].startswith("3.1")
    routes = {(r.method, r.resource.canonical) for r in streamer.runner.app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/api/v1/")
              and r.method != "HEAD"}
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert routes - {("GET", "/api/v1/openapi.json")} == documented


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(streamer, tmp_path):
    """The schemathesis CLI generates requests for every operation from the served document
    and checks every response: no 5xx, documented status, content type and body schema."""
    token = streamer.admin["Authorization"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run",
        f"{streamer.http_url}/api/v1/openapi.json", "-H", f"Authorization: {token}",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance", "--phases", "examples,coverage,fuzzing",
        # every operation: its coverage phase (boundary and negative values of each parameter,
        # ~40 cases) and 10 fuzzed cases. 20 made the fuzzing phase 28 s instead of 15, most of
        # it schemathesis's own generation (31 s of CPU in a run, the server 16 s)
        "--max-examples", "10", "--workers", "1", "--seed", "7", "--no-color",
        # logout would revoke the token the run uses; fleet commands wait seconds for acks
        # from speakers (covered with real speakers in tests/test_e2e.py and test_mqtt.py)
        "--exclude-path", "/api/v1/logout",
        # the event stream never ends while the token is good (tests/test_events.py)
        "--exclude-path", "/api/v1/events",
        "--exclude-path-regex", "^/api/v1/(speakers|zones)/\\{id\\}/commands$",
        "--request-timeout", "30",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    first = min((i for i in (text.find(" FAILURES "), text.find(" ERRORS ")) if i >= 0),
                default=max(0, len(text) - 8000))
    assert proc.returncode == 0, text[first:][:8000]
    assert "passed" in text.lower()


async def test_readyz_follows_redis(streamer, redis_server):
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{streamer.http_url}/readyz") as r:
            assert r.status == 200 and (await r.json())["checks"] == {"media": True,
                                                                      "redis": True}
        redis_server.kill()
        async with s.get(f"{streamer.http_url}/readyz") as r:
            assert r.status == 503 and (await r.json())["checks"]["redis"] is False
        async with s.get(f"{streamer.http_url}/healthz") as r:
            assert r.status == 200  # alive: the mixer plays on without Redis
