"""Runtime zone edits (issue 17, "provisioning at scale"): the tree's edits themselves, and a
real streamer on a real Redis merging two communes, renaming one and adding a zone, with their
schedules, devices, grants and history following."""

from __future__ import annotations

import base64
import time
from datetime import date, datetime, timedelta

import pytest
from dateutil import tz

from streamer.control.broker import STREAMER_USER
from streamer.control.cap import parse_cap, resolve_areas
from streamer.control.models import BroadcastRecord, BroadcastState, Zone
from streamer.control.reports import Days, broadcast_minutes
from streamer.zones import ZoneError, ZoneTree
from tests.harness.api import audit, call, make_user
from tests.harness.audio import peak_hz, tone_wav
from tests.harness.keys import token_args
from tests.harness.senders import Sender, register, send
from tests.harness.speaker import mqtt_speakers, retained_status, tone_on
from tests.harness.streamer import with_fleet
from tests.harness.tap import Tap
from tests.harness.wait import until

VN = tz.gettz("Asia/Ho_Chi_Minh")
# two communes of the sample tree: Thắng Tam (kp-1..kp-3) merges into Long Sơn (ap-1, ap-2)
A = "brvt.vung-tau.thang-tam"
B = "brvt.vung-tau.long-son"
# a commune whose hamlets share keys with Hòa Long's (ap-bac …): see the key clash test
HOA_LONG = "brvt.ba-ria.hoa-long"
CAP = """<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>T-1</identifier><sender>canhbao@brvt.gov.vn</sender>
  <sent>2024-11-24T05:30:00+07:00</sent><status>Actual</status><msgType>Alert</msgType>
  <scope>Public</scope>
  <info><category>Met</category><event>Bão</event><urgency>Immediate</urgency>
    <severity>Severe</severity><certainty>Likely</certainty>
    <area><areaDesc>Phường Thắng Tam</areaDesc>AREA</area></info>
</alert>"""


# -- the tree's edits ---------------------------------------------------------------------------

def test_merge_moves_the_children_and_leaves_aliases_for_history():
    tree = ZoneTree.load()
    merged, mapping = tree.merged(A, B)
    assert mapping[A] == B and mapping[f"{A}.kp-1"] == f"{B}.kp-1"
    assert merged.zones[B].children == [f"{B}.ap-1", f"{B}.ap-2", f"{B}.kp-1", f"{B}.kp-2",
                                        f"{B}.kp-3"]
    assert A not in merged.zones and f"{A}.kp-1" not in merged.zones
    assert merged.resolve(A) == B and merged.resolve(f"{A}.kp-2") == f"{B}.kp-2"
    # an old broadcast's zones still have leaves: Thắng Tam's own, not all of Long Sơn's
    assert merged.leaves(A) == [f"{B}.kp-1", f"{B}.kp-2", f"{B}.kp-3"]
    assert merged.leaves(f"{A}.kp-1") == [f"{B}.kp-1"]
    assert len(merged.leaves()) == len(tree.leaves())
    assert tree.zones[A].children  # the tree edited is left alone
    again, rev = ZoneTree.from_json(merged.to_json(7))
    assert rev == 7 and again.aliases == merged.aliases and again.parts == merged.parts
    assert again.zones[B].children == merged.zones[B].children
    assert again.zones[B].location == merged.zones[B].location


def test_a_merged_communes_history_counts_its_own_channels_through_later_edits():
    """Thắng Tam, renamed first, then merged into Long Sơn, which is then renamed and merged
    into Hòa Long: a broadcast to either old id of Thắng Tam still covers only its three
    hamlets, wherever they are now, and the broadcast-minutes report counts just those."""
    tree = ZoneTree.load()
    renamed, _ = tree.moved(A, "brvt.vung-tau", "thang-tam-moi")
    merged, _ = renamed.merged("brvt.vung-tau.thang-tam-moi", B)
    b2 = "brvt.vung-tau.long-son-2"
    again, _ = merged.moved(B, "brvt.vung-tau", "long-son-2")
    keys = {k: f"{k}-ls" for k in ("ap-1", "ap-2", "kp-1", "kp-2", "kp-3")
            if f"{HOA_LONG}.{k}" in tree.zones}
    last, _ = again.merged(b2, HOA_LONG, keys)
    own = [f"{HOA_LONG}.{keys.get(k, k)}" for k in ("kp-1", "kp-2", "kp-3")]
    assert last.leaves(A) == own and last.leaves("brvt.vung-tau.thang-tam-moi") == own
    assert last.resolve(A) == HOA_LONG
    assert len(last.leaves(B)) == 5  # Long Sơn as it was at the last merge: its hamlets too
    stored, _ = ZoneTree.from_json(last.to_json(1))
    assert stored.leaves(A) == own

    days = Days([date(2026, 11, 20)])
    t0 = days.t0 + 3600
    rec = BroadcastRecord(id=1, zones=[A], priority="normal", source={"kind": "tone"},
                          created=t0, created_by="admin", state=BroadcastState.DONE,
                          started=t0, ended=t0 + 600)
    (row,) = broadcast_minutes([rec], days, [HOA_LONG], last.leaves, "zone", t0 + 600)
    assert (row.zone, row.minutes, row.channel_minutes) == (HOA_LONG, 10.0, 30.0)


def test_a_merged_communes_code_and_id_in_a_cap_alert_reach_its_hamlets():
    """A warning system that still sends Thắng Tam's code (26506) or zone id after the merger
    reaches Thắng Tam's three hamlets, now Long Sơn's, and says it did so; Long Sơn keeps its
    own code, and a code given to a zone again is that zone's."""
    tree = ZoneTree.load()
    merged, _ = tree.merged(A, B)
    own = [f"{B}.kp-1", f"{B}.kp-2", f"{B}.kp-3"]
    assert tree.zones[A].code == "26506" and merged.by_old_code("26506") == own
    assert merged.formerly(A) == own and merged.formerly(f"{A}.kp-2") == [f"{B}.kp-2"]
    assert merged.by_old_code(tree.zones[B].code or "") is None and merged.formerly(B) is None
    assert ZoneTree.from_json(merged.to_json(1))[0].by_old_code("26506") == own

    area = ('<geocode><valueName>MaDVHC</valueName><value>26506</value></geocode>'
            f'<geocode><valueName>loa:zone</valueName><value>{A}.kp-2</value></geocode>')
    alert = parse_cap(CAP.replace("AREA", area).encode())
    match = resolve_areas(alert, records(merged), [], merged)
    assert match.zones == set(own) and match.unknown_geocodes == []
    assert match.retired_geocodes == {"MaDVHC=26506": own, f"loa:zone={A}.kp-2": [f"{B}.kp-2"]}
    assert resolve_areas(alert, records(merged), []).zones == set()  # what it did before

    again = merged.added(B, "kp-moi", "Khu phố Mới", code="26506")
    assert again.by_old_code("26506") is None
    assert resolve_areas(alert, records(again), [], again).zones == {f"{B}.kp-moi",
                                                                      f"{B}.kp-2"}


def records(tree: ZoneTree) -> dict[str, Zone]:
    """The tree's zones as the control plane's records (what ``resolve_areas`` reads)."""
    return {z.id: Zone(id=z.id, name=z.name, parent=z.parent, code=z.code)
            for z in tree.zones.values()}


def test_a_key_clash_is_refused_naming_it_until_a_new_key_is_given():
    tree = ZoneTree.load()
    other = next(z for z in tree.zones.values() if z.id != HOA_LONG and z.children
                 and {c.rsplit(".", 1)[1] for c in z.children}
                 & {c.rsplit(".", 1)[1] for c in tree.zones[HOA_LONG].children})
    clash = sorted({c.rsplit(".", 1)[1] for c in other.children}
                   & {c.rsplit(".", 1)[1] for c in tree.zones[HOA_LONG].children})[0]
    with pytest.raises(ZoneError, match=f"keys.{clash}: {HOA_LONG} already has zones "
                       f"named '{clash}'"):
        tree.merged(other.id, HOA_LONG)
    merged, mapping = tree.merged(other.id, HOA_LONG, {clash: f"{clash}-2"})
    assert mapping[f"{other.id}.{clash}"] == f"{HOA_LONG}.{clash}-2"


def test_edits_that_make_no_sense_are_refused():
    tree = ZoneTree.load()
    leaf = f"{A}.kp-1"
    with pytest.raises(ZoneError, match="both be channels"):
        tree.merged(leaf, B)  # a channel into a commune: that is a move
    with pytest.raises(ZoneError, match="inside"):
        tree.moved(A, f"{A}.kp-1", "x")
    with pytest.raises(ZoneError, match="top-level"):
        tree.moved("brvt", A, "x")
    with pytest.raises(ZoneError, match="exists"):
        tree.moved(leaf, B, "ap-1")
    with pytest.raises(ZoneError, match="key"):
        tree.added(B, "Ấp Mới", "Ấp Mới")


def test_a_retired_id_is_not_reused_but_a_rename_can_be_undone():
    tree = ZoneTree.load()
    renamed, mapping = tree.moved(A, "brvt.vung-tau", "thang-tam-moi")
    assert renamed.resolve(A) == "brvt.vung-tau.thang-tam-moi"
    with pytest.raises(ZoneError, match="history"):
        renamed.added("brvt.vung-tau", "thang-tam", "Phường mới")
    back, _ = renamed.moved("brvt.vung-tau.thang-tam-moi", "brvt.vung-tau", "thang-tam")
    assert A in back.zones and A not in back.aliases
    assert back.resolve("brvt.vung-tau.thang-tam-moi") == A


# -- a streamer editing its zones -----------------------------------------------------------------

async def _schedule(streamer, zones, at, hz=700):
    status, s = await call(streamer, "POST", "/api/v1/schedules", json={
        "zones": zones, "source": {"kind": "tone", "hz": hz, "seconds": 1},
        "at": at.isoformat(), "label": f"{zones[0]} {hz}"})
    assert status == 201, s
    return s


async def test_merging_two_communes_keeps_their_schedules_and_history(streamer):
    """The acceptance test: Thắng Tam merges into Long Sơn while the streamer runs. Its
    schedules air on the merged commune's channels, its operator runs the merged commune, and
    its broadcasts and audit stay visible under the new name; a restart keeps it all."""
    plane = streamer.plane
    plane.now = time.time  # the schedule below fires for real
    plane.scheduler.lead_s = 1.0
    for z in (A, B):
        await call(streamer, "PATCH", f"/api/v1/zones/{z}", json={"quiet_hours": ""})
    operator = await make_user(streamer, "op-thang-tam", ("operator", A))
    status, old = await call(streamer, "POST", "/api/v1/broadcasts", headers=operator, json={
        "zones": [f"{A}.kp-2"], "priority": "normal",
        "source": {"kind": "tone", "hz": 500, "seconds": 0.3}})
    assert status == 201, old

    async def done():
        return (await call(streamer, "GET", f"/api/v1/broadcasts/{old['id']}"))[1][
            "state"] == "done"

    await until(done, 10, "the broadcast before the merge to end")
    status, sp = await call(streamer, "POST", "/api/v1/speakers", json={
        "id": "sp-kp1", "zone": f"{A}.kp-1"})
    assert status == 201, sp
    soon = (datetime.now(VN) + timedelta(seconds=5)).replace(microsecond=0, tzinfo=None)
    later = soon + timedelta(days=1)
    on_commune = await _schedule(streamer, [A], later)
    on_hamlet = await _schedule(streamer, [f"{A}.kp-1"], soon, hz=880)
    on_b = await _schedule(streamer, [B], later)

    status, edit = await call(streamer, "POST", f"/api/v1/zones/{A}/merge", json={"into": B})
    assert status == 200, edit
    assert edit["mapping"][A] == B and edit["mapping"][f"{A}.kp-1"] == f"{B}.kp-1"
    assert sorted(edit["channels_added"]) == [f"{B}.kp-{i}" for i in (1, 2, 3)]
    assert sorted(edit["channels_removed"]) == [f"{A}.kp-{i}" for i in (1, 2, 3)]

    # the schedules follow, and the hamlet's airs on its new channel
    got = {s["id"]: s for s in (await call(streamer, "GET", "/api/v1/schedules"))[1][
        "schedules"]}
    assert got[on_commune["id"]]["zones"] == [B]
    assert got[on_hamlet["id"]]["zones"] == [f"{B}.kp-1"]
    assert got[on_b["id"]]["zones"] == [B]
    assert plane.scheduler.next_fire(on_commune["id"]) is not None
    tap = Tap(streamer, f"{B}.kp-1")
    occ = soon.replace(tzinfo=VN).timestamp()
    await until(lambda: any(b.schedule == on_hamlet["id"]
                            for b in plane.broadcasts.live.values()), occ - time.time() + 5,
                "the hamlet's schedule to air")
    bid = next(b.id for b in plane.broadcasts.live.values() if b.schedule == on_hamlet["id"])
    await until(lambda: len(tap.pcm(bid)) >= 48_000 * 0.6, 5, "its audio on the new channel")
    assert abs(peak_hz(tap.pcm(bid)[4800:]) - 880) < 5
    assert f"{A}.kp-1" not in plane.mixer.channels

    # devices and people follow
    status, s = await call(streamer, "GET", "/api/v1/speakers/sp-kp1")
    assert s["zone"] == f"{B}.kp-1"
    status, new = await call(streamer, "POST", "/api/v1/broadcasts", headers=operator, json={
        "zones": [f"{B}.ap-1"], "priority": "normal",
        "source": {"kind": "tone", "hz": 600, "seconds": 0.2}})
    assert status == 201, new  # the commune's operator now runs the merged commune

    # history: the broadcast aired before, under its old zone, to its operator and by zone
    seen = (await call(streamer, "GET", "/api/v1/broadcasts", headers=operator))[1][
        "broadcasts"]
    assert old["id"] in [b["id"] for b in seen]
    assert (await call(streamer, "GET", f"/api/v1/broadcasts/{old['id']}",
                       headers=operator))[0] == 200
    entries = await audit(streamer, zone=B)
    assert any(e["action"] == "broadcast" and e["target"] == str(old["id"]) for e in entries)
    assert any(e["action"] == "zone_merge" and e["detail"]["mapping"][A] == B
               for e in entries)

    # a restart loads the edited tree from Redis, with everything still in place
    await until(lambda: not any(r.id in (bid, new["id"]) for r in plane.broadcasts.live.values()),
                10,
        "the broadcasts after the merge to end")
    await streamer.close()
    from streamer.app import Streamer

    again = Streamer(streamer.cfg)
    await again.start()
    try:
        again.admin = streamer.admin
        assert A not in again.plane.tree.zones and f"{B}.kp-3" in again.mixer.channels
        assert f"{A}.kp-1" not in again.mixer.channels
        assert again.plane.scheduler.schedules[on_commune["id"]].zones == [B]
        status, tree = await call(again, "GET", f"/api/v1/zones/{B}")
        assert [c["id"] for c in tree["children"]] == [
            f"{B}.ap-1", f"{B}.ap-2", f"{B}.kp-1", f"{B}.kp-2", f"{B}.kp-3"]
        status, b = await call(again, "GET", f"/api/v1/broadcasts/{old['id']}")
        assert status == 200 and b["zones"] == [f"{A}.kp-2"]  # history as it was
        today = datetime.now(VN).date()
        status, rep = await call(again, "GET", "/api/v1/reports/broadcast-minutes", params={
            "zone": B, "group": "zone", "from": (today - timedelta(days=1)).isoformat(),
            "to": today.isoformat()})
        assert status == 200, rep
        # the one before the merge (under Thắng Tam's old id), the scheduled one and the
        # operator's, all counted for the merged commune
        assert sum(r["broadcasts"] for r in rep["rows"]) == 3, rep
    finally:
        await again.close()


async def test_an_emergency_from_above_naming_a_merged_commune_airs_in_its_hamlets(streamer):
    """The central system has not caught up with the merger: its emergency for Thắng Tam airs
    at once on Thắng Tam's three hamlets (now Long Sơn's), not on Long Sơn's own, and the
    receipt and the audit say which zones it stood for."""
    central = Sender("central")
    await register(streamer, central, zones=("brvt",))
    status, edit = await call(streamer, "POST", f"/api/v1/zones/{A}/merge", json={"into": B})
    assert status == 200, edit
    own = [f"{B}.kp-1", f"{B}.kp-2", f"{B}.kp-3"]
    hamlet, other = Tap(streamer, f"{B}.kp-2"), Tap(streamer, f"{B}.ap-1")
    status, got = await send(streamer, central, {
        "ref": "BAO-9", "level": "emergency", "zones": [A], "title": "Bão số 9", "chime": False,
        "audio": base64.b64encode(tone_wav(880, 2.0)).decode(),
        "valid_until": time.time() + 3600})
    assert status == 201 and got["state"] == "aired", got
    assert got["zones"] == own and got["retired"] == {A: own}, got
    bid = got["broadcast"]
    assert sorted(streamer.plane.broadcasts.live[bid].zones) == own
    await until(lambda: len(hamlet.pcm(bid)) >= 48_000, 8, "the emergency on Khu phố 2")
    assert abs(peak_hz(hamlet.pcm(bid)[4800:]) - 880) < 5
    assert len(other.pcm(bid)) == 0  # Long Sơn's own hamlets are not Thắng Tam
    (entry,) = await audit(streamer, action="inbound_received")
    assert entry["detail"]["retired"] == {A: own}


async def test_an_edit_never_takes_a_channel_from_under_a_broadcast(streamer):
    status, b = await call(streamer, "POST", "/api/v1/broadcasts", json={
        "zones": [f"{A}.kp-3"], "priority": "normal", "override_quiet_hours": True,
        "source": {"kind": "tone", "hz": 440, "seconds": 30}})
    assert status == 201, b
    status, err = await call(streamer, "POST", f"/api/v1/zones/{A}/move",
                             json={"key": "thang-tam-2"})
    assert status == 409 and f"broadcast {b['id']}" in err["error"], err
    assert A in streamer.plane.tree.zones and f"{A}.kp-3" in streamer.mixer.channels
    await call(streamer, "DELETE", f"/api/v1/broadcasts/{b['id']}")
    status, edit = await call(streamer, "POST", f"/api/v1/zones/{A}/move",
                              json={"key": "thang-tam-2", "name": "Phường Thắng Tam mới"})
    assert status == 200, edit
    assert streamer.plane.tree.resolve(A) == "brvt.vung-tau.thang-tam-2"
    status, z = await call(streamer, "GET", "/api/v1/zones/brvt.vung-tau.thang-tam-2")
    assert z["name"] == "Phường Thắng Tam mới" and z["quiet_hours_in_force"]
    channels = (await call(streamer, "GET", "/api/v1/channels"))[1]["channels"]
    assert "brvt.vung-tau.thang-tam-2.kp-3" in {c["id"] for c in channels}


async def test_bad_edits_name_the_field_and_change_nothing(streamer):
    before = streamer.plane.tree.to_json(0)
    for path, body, status, field in [
        ("/api/v1/zones", {"parent": "brvt.nowhere", "key": "x", "name": "X"}, 400, "parent"),
        ("/api/v1/zones", {"parent": B, "key": "Ấp", "name": "X"}, 400, "key"),
        ("/api/v1/zones", {"parent": B, "key": "ap-1", "name": "X"}, 409, "key"),
        (f"/api/v1/zones/{A}/merge", {"into": f"{B}.ap-1"}, 400, "into"),
        (f"/api/v1/zones/{A}/merge", {"into": "brvt.nowhere"}, 400, "into"),
        (f"/api/v1/zones/{A}/move", {"parent": f"{A}.kp-1"}, 400, "parent"),
    ]:
        got, err = await call(streamer, "POST", path, json=body)
        assert (got, err.get("field")) == (status, field), (path, body, err)
    assert streamer.plane.tree.to_json(0) == before
    viewer = await make_user(streamer, "viewer-b", ("viewer", B))
    got, _ = await call(streamer, "POST", "/api/v1/zones", headers=viewer,
                        json={"parent": B, "key": "ap-3", "name": "Ấp 3"})
    assert got == 403


async def test_a_new_hamlet_under_a_single_channel_commune_takes_its_speakers(streamer):
    """Adding the first zone under a channel: the commune stops being one, its speakers move
    to the new hamlet's channel, which carries audio at once."""
    leaf = next(z for z in streamer.plane.tree.leaves() if z.count(".") == 2)
    status, _ = await call(streamer, "POST", "/api/v1/speakers", json={"id": "sp-x",
                                                                        "zone": leaf})
    assert status == 201
    status, edit = await call(streamer, "POST", "/api/v1/zones", json={
        "parent": leaf, "key": "ap-1", "name": "Ấp 1"})
    assert status == 201, edit
    assert edit["channels_added"] == [f"{leaf}.ap-1"] and edit["channels_removed"] == [leaf]
    assert (await call(streamer, "GET", "/api/v1/speakers/sp-x"))[1]["zone"] == f"{leaf}.ap-1"
    tap = Tap(streamer, f"{leaf}.ap-1")
    status, b = await call(streamer, "POST", "/api/v1/broadcasts", json={
        "zones": [leaf], "priority": "normal", "override_quiet_hours": True,
        "source": {"kind": "tone", "hz": 660, "seconds": 1}})
    assert status == 201, b
    await until(lambda: len(tap.pcm(b["id"])) >= 48_000 * 0.6, 5, "audio on the new channel")
    assert abs(peak_hz(tap.pcm(b["id"])[4800:]) - 660) < 5


@pytest.mark.realtime
async def test_a_speaker_on_a_merged_communes_hamlet_follows_it(mosquitto, redis_url, tmp_path):
    """A real speaker on Thắng Tam's Khu phố 1 (Mosquitto with the streamer's ACL): after the
    merge it plays Long Sơn's Khu phố 1 channel, reports it, and obeys Long Sơn's commands."""
    streamer, pw = await with_fleet(tmp_path, redis_url, mosquitto)
    old, new = f"{A}.kp-1", f"{B}.kp-1"
    try:
        fleet = streamer.plane.fleet
        status, body = await call(streamer, "POST", "/api/v1/speakers",
                                  json={"id": "spk-kp1", "zone": old})
        assert status == 201, body
        pw["spk-kp1"] = body["mqtt"]["password"]
        token = token_args(tmp_path, "spk-kp1", [old])
        async with mqtt_speakers(tmp_path, mosquitto, pw, streamer.media_addr,
                                 ("spk-kp1", old), extra=tuple(token)) as (spk,):
            status, b = await call(streamer, "POST", "/api/v1/broadcasts", json={
                "zones": [old], "source": {"kind": "tone", "hz": 440, "seconds": 60}})
            assert status == 201, b
            await tone_on(spk, 440.0, 15)
            await call(streamer, "DELETE", f"/api/v1/broadcasts/{b['id']}")
            await until(lambda: b["id"] not in streamer.plane.broadcasts.live, 5, "its end")

            status, edit = await call(streamer, "POST", f"/api/v1/zones/{A}/merge",
                                      json={"into": B})
            assert status == 200 and edit["mapping"][old] == new, edit
            status, b = await call(streamer, "POST", "/api/v1/broadcasts", json={
                "zones": [B], "source": {"kind": "tone", "hz": 880, "seconds": 60}})
            assert status == 201, b
            await tone_on(spk, 880.0, 10)
            assert (await spk.health())["channel"] == new
            s = await retained_status(mosquitto, pw[STREAMER_USER], "spk-kp1")
            assert (s.channel, s.zone) == (new, new)
            assert "spk-kp1" in (await fleet.zone_command(B, "ping", timeout_s=1.5)).acks
    finally:
        await streamer.close()


async def test_with_redis_away_an_edit_is_refused_and_nothing_changes(streamer, redis_server):
    before = streamer.plane.tree.to_json(0)
    channels = set(streamer.mixer.channels)
    redis_server.kill()
    status, err = await call(streamer, "POST", f"/api/v1/zones/{A}/merge", json={"into": B})
    assert status == 503 and "unchanged" in err["error"], err
    assert streamer.plane.tree.to_json(0) == before and set(streamer.mixer.channels) == channels
    assert streamer.registry.get_sample_value(
        "loa_zone_edits_total", {"action": "zone_merge", "outcome": "unavailable"}) == 1
