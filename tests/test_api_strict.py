"""Strict request bodies, and listings that survive any accepted write and any bad record.

Bodies are parsed strictly (no ``"yes"`` for ``true``, no ``0`` for ``false``, ``null`` only
where the schema says so). After every write in a list of representative ones, nasty but
accepted ones included, every listing endpoint of the OpenAPI document must answer 200 with a
body valid against its documented schema. A record that no longer parses, written straight
into Redis, is moved to quarantine at start (or skipped by a later listing), never a 400.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from zoneinfo import ZoneInfo

import aiohttp
import jsonschema_rs
import pytest
import redis.asyncio as aioredis

from tests.conftest import DAYTIME
from tests.harness.api import call

VN = ZoneInfo("Asia/Ho_Chi_Minh")
OP = "brvt.vung-tau.thang-tam"
LEAF = OP + ".kp-1"
LEAF2 = "brvt.vung-tau.long-son.ap-2"
TONE = {"kind": "tone", "hz": 600, "seconds": 30}
#: the local day the streamer fixture's clock is pinned to, and 06:00 of it
TODAY = datetime.fromtimestamp(DAYTIME, VN).replace(tzinfo=None)
DAWN = TODAY.replace(hour=6, minute=0, second=0).isoformat()
#: values for the required query parameters of listing endpoints
QUERY = {"from": TODAY.date().isoformat()}
#: a speaker record the way the old PATCH stored it: zone null
NULL_ZONE_SPEAKER = json.dumps({"id": "loa-bad", "zone": None, "name": "", "lat": None,
                                "lon": None, "relays": [], "created": 0.0})


class Document:
    """The served OpenAPI document: response schemas by (method, path template, status)."""

    def __init__(self, doc):
        self.doc = doc
        self._validators = {}

    def check(self, method, template, status, body):
        key = (method, template, status)
        if key not in self._validators:
            op = self.doc["paths"][template][method.lower()]
            assert str(status) in op["responses"], f"{method} {template}: {status} undocumented"
            schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
            self._validators[key] = jsonschema_rs.Draft202012Validator(
                {**schema, "components": self.doc["components"]}, validate_formats=True)
        errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}"
                  for e in self._validators[key].iter_errors(body)]
        assert not errors, f"{method} {template} {status}: {errors[:5]}"

    def template_of(self, path):
        for template in self.doc["paths"]:
            if re.fullmatch(re.sub(r"\\{\w+\\}", "[^/]+", re.escape(template)), path):
                return template
        raise AssertionError(f"{path} is not in the document")

    def listings(self):
        """GET operations without path parameters that answer JSON: every listing, reports
        and /me (not the event stream, which never ends)."""
        return sorted(p for p, ops in self.doc["paths"].items() if "get" in ops and "{" not in p
                      and "application/json" in ops["get"]["responses"]["200"].get("content",
                                                                                   {}))

    def item_paths(self):
        """GET operations on one listed item: ``/speakers/{id}``, ``/broadcasts/{id}/reach``."""
        return sorted(p for p, ops in self.doc["paths"].items()
                      if "get" in ops and p.count("{") == 1)


async def sweep(streamer, doc, after):
    """Every listing, and every item it lists, answers 200 with a schema-valid body."""
    listed = {}
    for path in doc.listings():
        op = doc.doc["paths"][path]["get"]
        required = [p["name"] for p in op.get("parameters", []) if p["required"]]
        assert set(required) <= set(QUERY), f"{path}: give QUERY a value for {required}"
        status, body = await call(streamer, "GET", path,
                                  params={k: QUERY[k] for k in required})
        assert status == 200, (after, path, body)
        doc.check("GET", path, 200, body)
        listed[path] = body
    for template in doc.item_paths():
        listing, _, _ = template.partition("/{")
        body = listed.get(listing)
        if not isinstance(body, dict):
            continue
        items = next((v for v in body.values() if isinstance(v, list)), [])
        for item in items[:20]:
            rid = str(item.get("id", item.get("name")))
            path = template[:template.index("{")] + rid + template[template.index("}") + 1:]
            status, got = await call(streamer, "GET", path)
            assert status == 200, (after, path, got)
            doc.check("GET", template, 200, got)


#: (method, path, body, expected status, field named by a 400); ``{schedule}`` is the id the
#: schedule POST returned. Refused writes are swept too: a 400 must change nothing.
WRITES = [
    ("POST", "/api/v1/speakers", {"id": "s" + "x" * 63, "zone": LEAF, "lat": -90, "lon": 180,
                                  "name": "Loa cổng chợ Khu phố 1 🎺" * 7, "relays": []}, 201,
     None),
    ("POST", "/api/v1/speakers", {"id": "loa-1", "zone": LEAF, "lat": None, "lon": None,
                                  "relays": ["relay.example:5004"]}, 201, None),
    ("PATCH", "/api/v1/speakers/loa-1", {"zone": None}, 400, "zone"),
    ("PATCH", "/api/v1/speakers/loa-1", {"name": None}, 400, "name"),
    ("PATCH", "/api/v1/speakers/loa-1", {"relays": None}, 400, "relays"),
    ("PATCH", "/api/v1/speakers/loa-1", {"lat": "10.5"}, 400, "lat"),
    ("PATCH", "/api/v1/speakers/loa-1", {"zone": LEAF2, "name": "", "lat": 10, "lon": 107.25},
     200, None),
    ("PATCH", "/api/v1/speakers/loa-1", {"lat": None, "lon": None}, 200, None),
    ("PATCH", "/api/v1/speakers/loa-1", {}, 200, None),
    ("POST", "/api/v1/relays", {"id": "relay-1", "zone": None, "media": "", "http": ""}, 201,
     None),
    ("PATCH", f"/api/v1/zones/{OP}", {"test": "yes"}, 400, "test"),
    ("PATCH", f"/api/v1/zones/{OP}", {"requires_approval": 0}, 400, "requires_approval"),
    ("PATCH", f"/api/v1/zones/{OP}", {"quiet_hours": None}, 400, "quiet_hours"),
    ("PATCH", f"/api/v1/zones/{OP}", {"name": None}, 400, "name"),
    ("PATCH", f"/api/v1/zones/{OP}", {"name": "Phường Thắng Tam ✓", "quiet_hours": "",
                                      "requires_approval": False, "test": True}, 200, None),
    ("PATCH", f"/api/v1/zones/{OP}", {"inherit_quiet_hours": True}, 200, None),
    ("POST", "/api/v1/users", {"name": "op-sweep", "password": "mật khẩu đủ dài",
                               "full_name": "Nguyễn Thị Ánh Tuyết",
                               "grants": [{"role": "operator", "zone": OP}]}, 201, None),
    ("PATCH", "/api/v1/users/op-sweep", {"disabled": None}, 400, "disabled"),
    ("PATCH", "/api/v1/users/op-sweep", {"grants": None}, 400, "grants"),
    ("PATCH", "/api/v1/users/op-sweep", {"disabled": "false"}, 400, "disabled"),
    ("PATCH", "/api/v1/users/op-sweep", {"full_name": "", "grants": [], "disabled": True}, 200,
     None),
    ("POST", "/api/v1/broadcasts", {"zones": [OP], "source": {**TONE, "hz": "600"}}, 400,
     "source.hz"),
    ("POST", "/api/v1/broadcasts", {"zones": [OP], "source": TONE,
                                    "override_quiet_hours": "false"}, 400,
     "override_quiet_hours"),
    ("POST", "/api/v1/broadcasts", {"zones": [OP], "source": TONE, "label": None}, 400, "label"),
    ("POST", "/api/v1/broadcasts", {"zones": [OP], "label": "ạ" * 200,
                                    "source": {"kind": "tone", "hz": 25, "seconds": 0.02}},
     201, None),
    ("POST", "/api/v1/broadcasts", {"zones": [LEAF], "priority": "background",
                                    "source": {"kind": "tone", "hz": 20000, "seconds": 5}},
     201, None),
    ("POST", "/api/v1/emergency", {"zones": [LEAF], "source": TONE, "expires_s": 3600.5}, 400,
     "expires_s"),
    ("POST", "/api/v1/emergency", {"zones": [LEAF], "source": TONE, "chime": 1}, 400, "chime"),
    ("POST", "/api/v1/emergency", {"zones": [LEAF], "source": TONE, "volume": True}, 400,
     "volume"),
    ("POST", "/api/v1/emergency", {"zones": [LEAF], "source": TONE, "expires_s": None,
                                   "repeat_s": None, "chime": False, "volume": 0}, 201, None),
    ("POST", "/api/v1/stop", {"zones": ["brvt"], "priority": 1}, 400, "priority"),
    ("POST", "/api/v1/stop", {"zones": ["brvt"], "priority": None}, 200, None),
    ("POST", "/api/v1/schedules", {"zones": [OP], "rrule": "FREQ=DAILY;BYHOUR=6;BYMINUTE=0",
                                   "dtstart": DAWN, "duration_s": None, "label": "Bản tin 🌅",
                                   "source": {"kind": "tts", "text": "Thông báo lúc 6 giờ"}},
     201, None),
    ("PATCH", "/api/v1/schedules/{schedule}", {"zones": None}, 400, "zones"),
    ("PATCH", "/api/v1/schedules/{schedule}", {"enabled": None}, 400, "enabled"),
    ("PATCH", "/api/v1/schedules/{schedule}", {"enabled": "no"}, 400, "enabled"),
    ("PATCH", "/api/v1/schedules/{schedule}", {"source": None}, 400, "source"),
    ("PATCH", "/api/v1/schedules/{schedule}", {"duration_s": 600, "label": ""}, 200, None),
    ("PATCH", "/api/v1/schedules/{schedule}", {"duration_s": None, "enabled": False}, 200,
     None),
    ("POST", "/api/v1/inputs", {"id": "dai-huyen", "name": "Đài huyện", "zones": [LEAF]}, 201,
     None),
    ("POST", "/api/v1/speakers", b'{"id": "loa-nan", "zone": "' + LEAF.encode()
     + b'", "lat": NaN}', 400, "body"),
    ("DELETE", "/api/v1/speakers/loa-1", None, 200, None),
    ("DELETE", "/api/v1/relays/relay-1", None, 200, None),
]


async def test_every_listing_stays_200_and_schema_valid_after_every_write(streamer):
    status, raw_doc = await call(streamer, "GET", "/api/v1/openapi.json")
    assert status == 200
    doc = Document(raw_doc)
    await sweep(streamer, doc, "start")
    ids = {}
    for method, path, body, want, field in WRITES:
        url = path.format(**ids)
        status, got = await (call(streamer, method, url, data=body) if isinstance(body, bytes)
                             else call(streamer, method, url, json=body))
        assert status == want, (method, url, body, got)
        if field is not None:
            assert got["field"] == field and got["error"], (method, url, body, got)
        doc.check(method, doc.template_of(url), status, got)
        if path == "/api/v1/schedules" and status == 201:
            ids["schedule"] = got["id"]
        await sweep(streamer, doc, (method, url, body))
    status, s = await call(streamer, "GET", "/api/v1/speakers/" + "s" + "x" * 63)
    assert status == 200 and s["zone"] == LEAF and s["lat"] == -90.0


async def test_lax_values_change_nothing(streamer):
    """A refused PATCH leaves the record as it was (the 400 is not after a half write)."""
    assert (await call(streamer, "POST", "/api/v1/speakers",
                       json={"id": "loa-2", "zone": LEAF}))[0] == 201
    for body in ({"zone": None}, {"zone": LEAF2, "name": None}, {"zone": LEAF2, "lat": "1"}):
        status, err = await call(streamer, "PATCH", "/api/v1/speakers/loa-2", json=body)
        assert status == 400, err
    status, s = await call(streamer, "GET", "/api/v1/speakers/loa-2")
    assert (status, s["zone"], s["name"], s["lat"]) == (200, LEAF, "", None)
    status, z = await call(streamer, "PATCH", f"/api/v1/zones/{OP}", json={"test": 1})
    assert (status, z["field"], z["error"]) == (400, "test", "Input should be a valid boolean")
    assert (await call(streamer, "GET", f"/api/v1/zones/{OP}"))[1]["test"] is False
    async with aiohttp.ClientSession() as s, s.get(f"{streamer.http_url}/metrics") as m:
        text = await m.text()
    assert 'loa_api_bad_requests_total{field="zone"} 1.0' in text


async def test_openapi_says_null_only_where_a_patch_may_clear(streamer):
    _, doc = await call(streamer, "GET", "/api/v1/openapi.json")
    props = doc["components"]["schemas"]["SpeakerPatch"]["properties"]
    nullable = {k for k, v in props.items() if {"type": "null"} in v.get("anyOf", [])}
    assert nullable == {"lat", "lon"}
    assert props["zone"]["type"] == "string" and "default" not in props["zone"]
    sched = doc["components"]["schemas"]["SchedulePatch"]["properties"]
    assert {k for k, v in sched.items() if {"type": "null"} in v.get("anyOf", [])} == {
        "rrule", "dtstart", "at", "duration_s"}


async def _metric(streamer, name):
    async with aiohttp.ClientSession() as s, s.get(f"{streamer.http_url}/metrics") as m:
        text = await m.text()
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith(name + "{")}


async def test_records_that_no_longer_parse_are_quarantined_at_start(streamer, redis_url,
                                                                     caplog):
    from streamer.app import Streamer

    assert (await call(streamer, "POST", "/api/v1/speakers",
                       json={"id": "loa-ok", "zone": LEAF}))[0] == 201
    status, sched = await call(streamer, "POST", "/api/v1/schedules", json={
        "zones": [OP], "source": TONE, "rrule": "FREQ=DAILY;BYHOUR=9;BYMINUTE=0",
        "dtstart": DAWN})
    assert status == 201
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    stored = json.loads(await r.hget("loa:schedules", sched["id"]))
    bad_schedule = json.dumps({**stored, "id": "s-bad", "zones": None})
    await r.hset("loa:speakers", "loa-bad", NULL_ZONE_SPEAKER)
    await r.hset("loa:schedules", "s-bad", bad_schedule)
    await streamer.close()
    again = Streamer(streamer.cfg)
    await again.start()
    try:
        again.admin = streamer.admin  # tokens live in Redis
        assert await r.hget("loa:speakers", "loa-bad") is None
        kept = json.loads(await r.hget("loa:quarantine:speakers", "loa-bad"))
        assert kept["record"] == NULL_ZONE_SPEAKER and kept["reason"].startswith("zone:")
        kept = json.loads(await r.hget("loa:quarantine:schedules", "s-bad"))
        assert kept["record"] == bad_schedule and "zones" in kept["reason"]
        assert await r.hget("loa:schedules", sched["id"]) is not None  # the good one stays
        assert any("loa:speakers field 'loa-bad' does not parse" in m for m in caplog.messages)
        assert await _metric(again, "loa_state_quarantined_records_total") == {
            'loa_state_quarantined_records_total{kind="speakers"}': 1.0,
            'loa_state_quarantined_records_total{kind="schedules"}': 1.0}
        status, got = await call(again, "GET", "/api/v1/speakers")
        assert status == 200 and [s["id"] for s in got["speakers"]] == ["loa-ok"]
        status, got = await call(again, "GET", "/api/v1/schedules")
        assert status == 200 and [s["id"] for s in got["schedules"]] == [sched["id"]]
        assert sched["id"] in again.plane.scheduler.schedules
        # the id is free again: the speaker can be registered anew
        assert (await call(again, "POST", "/api/v1/speakers",
                           json={"id": "loa-bad", "zone": LEAF}))[0] == 201
    finally:
        await again.close()
        await r.aclose()


async def test_a_bad_record_appearing_later_is_skipped_by_listings(streamer, redis_url):
    assert (await call(streamer, "POST", "/api/v1/speakers",
                       json={"id": "loa-ok", "zone": LEAF}))[0] == 201
    status, b = await call(streamer, "POST", "/api/v1/broadcasts",
                           json={"zones": [LEAF], "source": TONE})
    assert status == 201
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await r.hset("loa:speakers", "loa-bad", NULL_ZONE_SPEAKER)
        await r.hset("loa:users", "ghost", "{not json")
        for path in ("/api/v1/speakers", f"/api/v1/broadcasts/{b['id']}/reach",
                     "/api/v1/users", "/api/v1/speakers"):
            status, got = await call(streamer, "GET", path)
            assert status == 200, (path, got)
        assert [s["id"] for s in got["speakers"]] == ["loa-ok"]
        assert (await call(streamer, "GET", "/api/v1/speakers/loa-bad"))[0] == 404
        assert await r.hget("loa:speakers", "loa-bad") == NULL_ZONE_SPEAKER  # moved at start
        skipped = await _metric(streamer, "loa_state_unreadable_records_total")
        assert skipped['loa_state_unreadable_records_total{kind="speakers"}'] >= 4
        assert skipped['loa_state_unreadable_records_total{kind="users"}'] >= 1
    finally:
        await r.aclose()


@pytest.mark.parametrize("raw", [b'{"zones": ["brvt"], "source": {"kind": "tone", '
                                 b'"seconds": Infinity}}', b"\xff\xfe{}"])
async def test_not_json_is_refused(streamer, raw):
    status, err = await call(streamer, "POST", "/api/v1/broadcasts", data=raw)
    assert (status, err["field"]) == (400, "body")
