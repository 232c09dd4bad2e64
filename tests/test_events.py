"""The event stream ``GET /api/v1/events`` (``streamer/control/events.py``) against a real
streamer, Redis and Mosquitto, read as a browser's ``fetch()`` would: hello and the on-air
snapshot, on-air changes with their broadcast, scoping to the user's zones, approvals,
emergencies, presence, reach and alerts from a device over MQTT, a slow client dropped while
the others and playout go on, and the stream's end when its token does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import aiomqtt
import pytest
from prometheus_client import CollectorRegistry

from streamer.control import auth
from streamer.control.broker import STREAMER_USER, Account, hash_password, new_password
from streamer.control.fleet import Fleet
from streamer.control.reach import RATE_HZ
from tests.harness.api import call, make_user
from tests.harness.wait import until
from tests.harness.zones import AP_TAY, KP1, KP2, OP, OTHER
from wire.messages import Played, Status, encode

WAIT_S = 20  # generous: every wait below ends as soon as what it waits for arrives


@dataclass
class Event:
    name: str
    id: int
    data: Any


@dataclass
class Stream:
    """An open event stream, read in the background as it arrives."""

    response: aiohttp.ClientResponse
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    ended: bool = False

    async def read(self) -> None:
        buf = b""
        try:
            async for chunk in self.response.content.iter_any():
                buf += chunk
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    self._parse(block.decode())
        except aiohttp.ClientError:
            pass
        self.ended = True

    def _parse(self, block: str) -> None:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            key, _, value = line.partition(": ")
            assert key in ("event", "id", "data") and key not in fields, block
            fields[key] = value
        if fields:
            self.events.append(Event(fields["event"], int(fields["id"]),
                                     json.loads(fields["data"])))

    def named(self, name: str, since: int = 0) -> list[Any]:
        return [e.data for e in self.events[since:] if e.name == name]

    async def wait(self, name: str, /, what: str = "", since: int = 0, **match: Any) -> Any:
        """The first ``name`` event from the ``since``-th on whose data has ``match``'s
        values, once it has arrived."""
        def found() -> Any:
            return next((d for d in self.named(name, since)
                         if all(d.get(k) == v for k, v in match.items())), None)

        await until(found, WAIT_S, what or f"{name} {match}")
        return found()


@contextlib.asynccontextmanager
async def stream(streamer: Any, headers: dict[str, str]) -> AsyncIterator[Stream]:
    async with aiohttp.ClientSession() as s, s.get(f"{streamer.http_url}/api/v1/events",
                                                    headers=headers) as r:
        assert r.status == 200, await r.text()
        st = Stream(r)
        reader = asyncio.create_task(st.read())
        try:
            await st.wait("hello")
            yield st
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def metric(streamer: Any, name: str, **labels: str) -> float:
    return streamer.registry.get_sample_value(name, labels) or 0.0


async def air(streamer: Any, zones: list[str], seconds: float = 60, **kw: Any) -> dict[str, Any]:
    status, b = await call(streamer, "POST", "/api/v1/broadcasts", json={
        "zones": zones, "source": {"kind": "tone", "seconds": seconds}, **kw})
    assert status == 201, b
    return dict(b)


async def test_hello_and_onair_snapshot_then_every_change_with_its_broadcast(streamer):
    leaves = streamer.zones.leaves()
    async with stream(streamer, streamer.admin) as st:
        assert st.response.headers["Content-Type"].startswith("text/event-stream")
        assert st.response.headers["Cache-Control"] == "no-store"
        assert st.response.headers["X-Accel-Buffering"] == "no"
        await until(lambda: len(st.named("onair")) == len(leaves), WAIT_S, "the snapshot")
        hello = st.events[0]
        assert hello.name == "hello" and hello.data["user"] == "admin"
        assert hello.data["role"] == "admin" and hello.data["grants"] == [
            {"role": "admin", "zone": r} for r in streamer.zones.roots]
        assert set(hello.data["zones"]) == set(streamer.zones.zones)
        assert {d["zone"] for d in st.named("onair")} == set(leaves)
        assert all(d["broadcast"] is None for d in st.named("onair"))

        n = len(st.events)
        b = await air(streamer, [OP], label="bản tin sáng")
        on = await st.wait("onair", zone=KP1, since=n, what="KP1 on air")
        assert on["broadcast"]["id"] == b["id"]
        assert {k: on["broadcast"][k] for k in ("label", "priority", "kind", "emergency")} == {
            "label": "bản tin sáng", "priority": "normal", "kind": "tone", "emergency": False}
        assert abs(on["broadcast"]["started"] - time.time()) < 60
        await until(lambda: {d["zone"] for d in st.named("onair")[len(leaves):]} == set(
            streamer.zones.leaves(OP)), WAIT_S, "every channel of the commune")
        status, _ = await call(streamer, "DELETE", f"/api/v1/broadcasts/{b['id']}")
        assert status == 200
        await until(lambda: [d for d in st.named("onair")[len(leaves):]
                             if d["zone"] == KP1 and d["broadcast"] is None], WAIT_S, "KP1 off")

        # a short one ends by itself: the mixer tells the control loop, which tells the stream
        short = await air(streamer, [KP2], seconds=0.5)
        await until(lambda: [d for d in st.named("onair") if d["zone"] == KP2
                             and (d["broadcast"] or {}).get("id") == short["id"]], WAIT_S,
                    "KP2 on air")
        n = len(st.events)
        await until(lambda: [e for e in st.events[n:] if e.name == "onair"
                             and e.data["zone"] == KP2 and e.data["broadcast"] is None],
                    WAIT_S, "KP2 off by itself")
    ids = [e.id for e in st.events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_preemption_shows_the_emergency_then_what_it_interrupted(streamer):
    async with stream(streamer, streamer.admin) as st:
        n = len(st.events)
        b = await air(streamer, [KP1])
        await st.wait("onair", zone=KP1, since=n, what="the bulletin")
        status, e = await call(streamer, "POST", "/api/v1/emergency", json={
            "zones": [OP], "source": {"kind": "tone", "seconds": 60}, "label": "bão số 9"})
        assert status == 201, e
        on = await st.wait("emergency", id=e["id"], state="on")
        assert on["zones"] == [OP] and on["label"] == "bão số 9"
        await until(lambda: [d for d in st.named("onair") if d["zone"] == KP1
                             and (d["broadcast"] or {}).get("emergency")], WAIT_S, "preempted")

        # a client that connects now is told of the emergency in its snapshot
        async with stream(streamer, streamer.admin) as late:
            await late.wait("emergency", id=e["id"], state="on")
            kp1 = await late.wait("onair", zone=KP1)
            assert kp1["broadcast"]["id"] == e["id"]

        n = len(st.events)
        status, _ = await call(streamer, "DELETE", f"/api/v1/emergency/{e['id']}")
        assert status == 200
        await st.wait("emergency", id=e["id"], state="off")
        await until(lambda: [x for x in st.events[n:] if x.name == "onair"
                             and x.data["zone"] == KP1
                             and (x.data["broadcast"] or {}).get("id") == b["id"]],
                    WAIT_S, "the bulletin back on KP1")


async def test_an_operator_gets_only_events_of_zones_they_can_see(streamer):
    op = await make_user(streamer, "op-thang-tam", ("operator", OP))
    async with stream(streamer, op) as st:
        mine = set(streamer.zones.leaves(OP))
        await until(lambda: len(st.named("onair")) == len(mine), WAIT_S, "the snapshot")
        hello = st.named("hello")[0]
        assert hello["role"] == "operator" and OTHER not in hello["zones"]
        assert OP in hello["zones"] and "brvt" in hello["zones"]  # the path to the grant
        assert {d["zone"] for d in st.named("onair")} == mine

        # the next commune's bulletin, emergency and approval: none of it reaches this stream
        other = await air(streamer, [OTHER])
        status, e = await call(streamer, "POST", "/api/v1/emergency", json={
            "zones": [AP_TAY], "source": {"kind": "tone", "seconds": 60}})
        assert status == 201
        await call(streamer, "PATCH", f"/api/v1/zones/{OTHER}", json={"requires_approval": True})
        pending = await air(streamer, [OTHER])
        assert pending["state"] == "pending_approval"
        # then one in its own commune: once that arrives, everything before it has
        n = len(st.events)
        b = await air(streamer, [KP1])
        await st.wait("onair", zone=KP1, since=n)
        # and one over the whole province, which covers its commune too
        status, wide = await call(streamer, "POST", "/api/v1/emergency", json={
            "zones": ["brvt"], "source": {"kind": "tone", "seconds": 60}})
        assert status == 201
        got = await st.wait("emergency", id=wide["id"], state="on")
        assert got["zones"] == ["brvt"]
        seen = {d["zone"] for d in st.named("onair")}
        assert seen == mine, seen - mine
        assert {d["id"] for d in st.named("emergency")} == {wide["id"]}
        assert st.named("approval") == []
        ids = {(d["broadcast"] or {}).get("id") for d in st.named("onair")}
        assert other["id"] not in ids and e["id"] not in ids and b["id"] in ids


async def test_approvals_waiting_approved_and_rejected(streamer):
    await call(streamer, "PATCH", f"/api/v1/zones/{OP}", json={"requires_approval": True})
    async with stream(streamer, streamer.admin) as st:
        a = await air(streamer, [KP1], label="chờ duyệt")
        assert a["state"] == "pending_approval"
        waiting = await st.wait("approval", id=a["id"], state="waiting")
        assert waiting["zones"] == [KP1] and waiting["label"] == "chờ duyệt"
        n = len(st.events)
        status, _ = await call(streamer, "POST", f"/api/v1/approvals/broadcasts/{a['id']}",
                               json={"decision": "approve"})
        assert status == 200
        await st.wait("approval", id=a["id"], state="approved")
        on = await st.wait("onair", zone=KP1, since=n, what="the approved bulletin on air")
        assert on["broadcast"] is not None
        assert on["broadcast"]["id"] == a["id"]
        r = await air(streamer, [KP2])
        await st.wait("approval", id=r["id"], state="waiting")
        status, _ = await call(streamer, "POST", f"/api/v1/approvals/broadcasts/{r['id']}",
                               json={"decision": "reject"})
        assert status == 200
        await st.wait("approval", id=r["id"], state="rejected")
        w = await air(streamer, [KP2])
        await call(streamer, "DELETE", f"/api/v1/broadcasts/{w['id']}")
        await st.wait("approval", id=w["id"], state="expired")


async def test_no_token_or_a_bad_one_is_401(streamer):
    for headers in ({}, {"Authorization": "Bearer " + "x" * 43}):
        status, body = await call(streamer, "GET", "/api/v1/events", headers=headers)
        assert status == 401 and body["field"] == "Authorization"
    status, doc = await call(streamer, "GET", "/api/v1/openapi.json", headers={})
    op = doc["paths"]["/api/v1/events"]["get"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    assert op["security"] == [{"bearer": []}]


async def test_the_stream_ends_when_its_token_expires_or_is_revoked(streamer):
    streamer.plane.events.ping_s = 3600  # no ping, no check of the token: only its expiry
    token, digest = auth.new_token()
    await streamer.state.put_token(digest, "admin", 3)
    async with stream(streamer, {"Authorization": f"Bearer {token}"}) as st:
        await until(lambda: st.ended, WAIT_S, "the end of the stream")
    assert st.comments[-1] == "signed out"
    assert metric(streamer, "loa_api_event_clients_dropped_total", reason="signed_out") == 1

    streamer.plane.events.ping_s = 0.2
    headers = await make_user(streamer, "viewer-1", ("viewer", OP))
    async with stream(streamer, headers) as st:
        await until(lambda: "ping" in st.comments, WAIT_S, "a ping")
        status, _ = await call(streamer, "POST", "/api/v1/logout", headers=headers)
        assert status == 200
        await until(lambda: st.ended, WAIT_S, "the end of the revoked stream")
    assert metric(streamer, "loa_api_event_clients_dropped_total", reason="signed_out") == 2
    await until(lambda: metric(streamer, "loa_api_event_clients") == 0, WAIT_S, "no client")


async def test_a_client_that_never_reads_is_dropped_and_holds_back_no_one(streamer):
    hub = streamer.plane.events
    roots = list(streamer.zones.roots)
    async with aiohttp.ClientSession() as s, s.get(f"{streamer.http_url}/api/v1/events",
                                                    headers=streamer.admin) as stuck:
        assert stuck.status == 200  # and never read from here on
        async with stream(streamer, streamer.admin) as st:
            await until(lambda: metric(streamer, "loa_api_event_clients") == 2, WAIT_S,
                        "two clients")
            start = len(st.events)
            sent, batch = 0, 32
            big = "x" * 16_000
            b = None
            while metric(streamer, "loa_api_event_clients_dropped_total", reason="slow") == 0:
                assert sent < 4000, "the client that never reads was never dropped"
                for _ in range(batch):
                    hub.publish("alert", {"name": "load", "state": "firing", "zones": roots,
                                          "summary": big, "n": sent}, roots)
                    sent += 1
                await until(lambda n=sent: len(load(st)) == n, WAIT_S, "the batch")
                if b is None:  # the stuck client is behind by now: playout is not
                    b = await air(streamer, [KP1])
                    await until(lambda bid=b["id"]: streamer.mixer.on_air(bid), WAIT_S,
                                "on air")
            assert [d["n"] for d in load(st)] == list(range(sent))
            assert metric(streamer, "loa_api_event_clients") == 1
            assert b is not None and [d for d in st.named("onair")
                                      if (d["broadcast"] or {}).get("id") == b["id"]]
            ids = [e.id for e in st.events[start:]]
            assert ids == sorted(ids)
            with pytest.raises(aiohttp.ClientError):  # its connection was cut
                await asyncio.wait_for(stuck.content.read(), WAIT_S)


def load(st: Stream) -> list[Any]:
    return [d for d in st.named("alert") if d["name"] == "load"]


@contextlib.asynccontextmanager
async def fleet(streamer: Any, mosquitto: Any, devices: dict[str, tuple[str, str]]
                ) -> AsyncIterator[dict[str, str]]:
    """Mosquitto with the streamer's account and ``devices`` (id → kind, leaf zone), and the
    streamer's Fleet on it; yields each device's password."""
    passwords = {u: new_password() for u in (STREAMER_USER, *devices)}
    mosquitto.set_accounts([Account(STREAMER_USER, hash_password(passwords[STREAMER_USER]),
                                    "service")] + [
        Account(d, hash_password(passwords[d]), kind, *([zone] if kind == "speaker" else []))
        for d, (kind, zone) in devices.items()])
    mosquitto.start()
    f = Fleet(mosquitto.url, STREAMER_USER, passwords[STREAMER_USER], streamer.plane.recorder,
              CollectorRegistry())
    await f.start()
    streamer.plane.fleet = f
    try:
        yield passwords
    finally:
        await f.close()


async def test_presence_reach_and_alerts_from_a_device_over_mqtt(streamer, mosquitto):
    async with fleet(streamer, mosquitto, {"sp-1": ("speaker", KP1),
                                           "relay-1": ("relay", OP)}) as pw, \
            stream(streamer, streamer.admin) as st:
        status, _ = await call(streamer, "POST", "/api/v1/speakers",
                               json={"id": "sp-1", "zone": KP1})
        assert status == 201
        fired = await st.wait("alert", name="zone_offline", state="firing", subject=KP1)
        assert fired["zones"] == [KP1]
        status, _ = await call(streamer, "POST", "/api/v1/relays",
                               json={"id": "relay-1", "zone": OP})
        assert status == 201
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, username="sp-1",
                                  password=pw["sp-1"]) as dev:
            await dev.publish("loa/v1/speakers/sp-1/status",
                              encode(Status(state="online", ts=time.time())), qos=1,
                              retain=True)
            await st.wait("presence", speaker="sp-1", zone=KP1, online=True)
            await st.wait("alert", name="zone_offline", state="resolved", subject=KP1)

            b = await air(streamer, [OP])
            now = time.time()
            await dev.publish("loa/v1/speakers/sp-1/played", encode(Played(
                broadcast=b["id"], start=now - 1, end=now, level_dbfs=-20)), qos=1)
            reach = await st.wait("reach", broadcast=b["id"])
            assert (reach["confirmed"], reach["zones"]) == (1, [OP])
            assert reach["expected"] == 1  # the one speaker registered under OP

            await dev.publish("loa/v1/speakers/sp-1/status",
                              encode(Status(state="offline", ts=time.time())), qos=1,
                              retain=True)
            await st.wait("presence", speaker="sp-1", online=False)
            await st.wait("alert", name="zone_offline", state="firing", subject=KP1,
                          what="zone_offline firing again")
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, username="relay-1",
                                  password=pw["relay-1"]) as relay:
            await relay.publish("loa/v1/relays/relay-1/status",
                                encode(Status(state="offline", ts=time.time())), qos=1,
                                retain=True)
            down = await st.wait("alert", name="relay_offline", state="firing")
            assert down["zones"] == [OP] and "relay-1" in down["summary"]
            status, listed = await call(streamer, "GET", "/api/v1/relays")
            assert [(r["id"], r["presence"]["state"]) for r in listed["relays"]] == [
                ("relay-1", "offline")]

        # a client that connects now is told of the alerts firing, and only in its zones
        other = await make_user(streamer, "op-kim-long", ("operator", OTHER))
        async with stream(streamer, streamer.admin) as late, stream(streamer, other) as theirs:
            await late.wait("alert", name="relay_offline", state="firing")
            await late.wait("alert", name="zone_offline", subject=KP1)
            await until(lambda: len(theirs.named("onair")) == len(
                streamer.zones.leaves(OTHER)), WAIT_S, "their snapshot")
            assert theirs.named("presence") == []
            assert [a for a in theirs.named("alert") if a["name"] in (
                "zone_offline", "relay_offline")] == []


async def test_reach_fills_to_every_speaker_that_confirmed(streamer):
    """Many confirmations at once make few events, and the last one counts them all. The
    events of one broadcast leave at least 1/RATE_HZ apart, so however slow the machine, n of
    them take at least (n - 1)/RATE_HZ from the first confirmation to the last arrival."""
    speakers = [(f"sp-{i}", KP1 if i % 2 else KP2) for i in range(8)]
    for sid, zone in speakers:
        status, _ = await call(streamer, "POST", "/api/v1/speakers",
                               json={"id": sid, "zone": zone})
        assert status == 201
    async with stream(streamer, streamer.admin) as st:
        b = await air(streamer, [OP])
        now, t0 = time.time(), time.monotonic()
        await asyncio.gather(*(streamer.plane.recorder.played(sid, Played(
            broadcast=b["id"], start=now - 1, end=now, level_dbfs=-20))
            for sid, _ in speakers))
        await st.wait("reach", broadcast=b["id"], confirmed=len(speakers))
        elapsed_s = time.monotonic() - t0
        counts = [d["confirmed"] for d in st.named("reach")]
        assert counts == sorted(counts)
        assert (len(counts) - 1) / RATE_HZ <= elapsed_s, (counts, elapsed_s)
        assert {d["expected"] for d in st.named("reach")} == {len(speakers)}
        status, reach = await call(streamer, "GET", f"/api/v1/broadcasts/{b['id']}/reach")
        assert status == 200 and len(reach["confirmed"]) == counts[-1]


async def test_with_redis_down_the_stream_goes_on_and_says_so(streamer, redis_server):
    """An emergency officer's stream stays open while Redis is away (the token is checked
    against the cache), carries the emergency, and the state_degraded alert fires and
    resolves when Redis is back."""
    streamer.plane.events.ping_s = 0.5  # the token is checked again at every ping
    officer = await make_user(streamer, "officer", ("emergency", OP))
    async with stream(streamer, officer) as st:
        redis_server.kill()
        status, e = await call(streamer, "POST", "/api/v1/emergency", officer, json={
            "zones": [KP1], "source": {"kind": "tone", "seconds": 60}, "chime": False})
        assert status == 201, e
        await st.wait("emergency", id=e["id"], state="on")
        on = await st.wait("onair", zone=KP1, since=1 + len(streamer.zones.leaves(OP)))
        assert on["broadcast"]["id"] == e["id"]
        fired = await st.wait("alert", name="state_degraded", state="firing")
        assert fired["zones"] == list(streamer.zones.roots)
        n = st.comments.count("ping")
        await until(lambda: st.comments.count("ping") > n, WAIT_S, "a ping with Redis down")
        assert not st.ended
        redis_server.start()
        await st.wait("alert", name="state_degraded", state="resolved")
        status, _ = await call(streamer, "DELETE", f"/api/v1/emergency/{e['id']}", officer)
        assert status == 200
        await st.wait("emergency", id=e["id"], state="off")


async def test_a_schedule_that_fires_is_on_air_from_its_occurrence(streamer):
    """The scheduler books the occurrence in the mixer ahead of time; the channel is on air
    (``onair``) once it has started, with the occurrence as its start."""
    streamer.plane.now = time.time  # this test fires for real, a few seconds from now
    await call(streamer, "PATCH", f"/api/v1/zones/{OP}", json={"quiet_hours": ""})
    vn = ZoneInfo("Asia/Ho_Chi_Minh")
    at = (datetime.now(vn) + timedelta(seconds=3)).replace(microsecond=0, tzinfo=None)
    async with stream(streamer, streamer.admin) as st:
        n = len(st.events)
        status, s = await call(streamer, "POST", "/api/v1/schedules", json={
            "zones": [OP], "source": {"kind": "tone", "seconds": 1}, "at": at.isoformat(),
            "label": "hẹn giờ"})
        assert status == 201, s
        on = await st.wait("onair", zone=KP1, since=n, what="the occurrence on air")
        assert on["broadcast"]["label"] == "hẹn giờ"
        assert on["broadcast"]["started"] == at.replace(tzinfo=vn).timestamp()
        assert time.time() >= on["broadcast"]["started"]
        await until(lambda: [d for d in st.named("onair", n) if d["zone"] == KP1
                             and d["broadcast"] is None], WAIT_S, "its end")


async def test_a_province_wide_change_is_one_write_not_one_per_channel(streamer):
    """Every channel of the province changes at once: the client gets an event for each, in
    one slot of its queue, and is not taken for a slow one."""
    streamer.plane.events.limit = 4  # fewer slots than the province has channels
    leaves = streamer.zones.leaves()
    assert len(leaves) > 4
    async with stream(streamer, streamer.admin) as st:
        n = len(st.events)
        status, e = await call(streamer, "POST", "/api/v1/emergency", json={
            "zones": list(streamer.zones.roots), "source": {"kind": "tone", "seconds": 60}})
        assert status == 201, e
        await until(lambda: {d["zone"] for d in st.named("onair", n)} == set(leaves), WAIT_S,
                    "every channel on air")
        assert all(d["broadcast"]["id"] == e["id"] for d in st.named("onair", n))
        assert metric(streamer, "loa_api_event_clients_dropped_total", reason="slow") == 0
        assert not st.ended
