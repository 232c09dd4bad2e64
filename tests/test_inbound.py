"""Bulletins from above (``POST /api/v1/inbound/bulletins``, ``streamer/control/inbound.py``):
a registered sender signs its requests; an emergency airs at once (a real ``loa speaker`` hears
it), a priority bulletin airs by itself when no operator decides in time, a normal one waits for
its commune's operator; every step is audited and the sender reads a receipt. Refusals name the
header or field."""

from __future__ import annotations

import base64
import json
import time

import aiohttp
import pytest

from tests.harness.api import audit, call, make_user
from tests.harness.audio import peak_hz, tone_wav
from tests.harness.senders import PATH, Sender, receipt, register, send
from tests.harness.speaker import speaker_process
from tests.harness.wait import until
from tests.harness.zones import KP1, OP, OTHER


async def test_an_emergency_from_above_airs_at_once_and_only_once(streamer, tmp_path) -> None:
    central = Sender("central")
    await register(streamer, central)
    audio = base64.b64encode(tone_wav(880, 4.0)).decode()
    async with speaker_process(tmp_path, "spk", "--channel", KP1,
                               "--upstream", streamer.media_addr) as spk:
        await until(spk.subscribed, 10, "the speaker subscribed")
        sent = time.time()
        bulletin = {"ref": "BAO-2026-07", "level": "emergency", "zones": [OP],
                    "title": "Bão số 7", "audio": audio, "chime": False,
                    "valid_until": time.time() + 3600}
        status, got = await send(streamer, central, bulletin)
        assert status == 201 and got["state"] == "aired" and got["broadcast"], got
        bid = got["broadcast"]
        assert streamer.broadcasts.live[bid].priority == "emergency"
        await until(lambda: spk.plays(bid), 15, "the speaker played the bulletin")
        play, = spk.plays(bid)
        assert play["start"] - sent < 2.0
        heard = await spk.wait_window(play["start"] + 0.5, play["start"] + 2.5)
        assert abs(peak_hz(heard) - 880) < 10
    # the same request again (a retry) is the same bulletin: nothing airs twice
    status, again = await send(streamer, central, bulletin)
    assert status == 200 and again["id"] == got["id"] and again["broadcast"] == bid
    assert [r.id for r in await streamer.state.recent_broadcasts()] == [bid]
    status, other = await send(streamer, central, {**bulletin, "title": "Bão số 8"})
    assert status == 409 and other["field"] == "ref"  # another bulletin under the same ref
    status, r = await receipt(streamer, central, "BAO-2026-07")
    assert status == 200 and r["state"] == "aired" and r["broadcast"] == bid, r
    assert r["reach"] is not None and r["reach"]["expected"] == 0  # no registered speaker
    entries = await audit(streamer, action="inbound_received")
    assert entries and entries[0]["user"] == "sender:central"


async def test_a_normal_bulletin_waits_for_the_communes_operator(streamer) -> None:
    central = Sender("central")
    await register(streamer, central)
    bulletin = {"ref": "TB-1", "level": "normal", "zones": [OP],
                "title": "Lịch tiêm chủng", "text": "Lịch tiêm chủng tuần này."}
    status, got = await send(streamer, central, bulletin)
    assert status == 201 and got["state"] == "pending" and got["broadcast"] is None, got
    assert not streamer.broadcasts.live
    status, same = await send(streamer, central, bulletin)  # a retry by the sender
    assert status == 200 and same["id"] == got["id"]
    operator = await make_user(streamer, "op-tt", ("operator", OP))
    status, queue = await call(streamer, "GET", "/api/v1/inbound?state=pending",
                               headers=operator)
    assert status == 200 and [b["id"] for b in queue["bulletins"]] == [got["id"]]
    outsider = await make_user(streamer, "op-kl", ("operator", OTHER))
    status, _ = await call(streamer, "POST", f"/api/v1/inbound/{got['id']}",
                           headers=outsider, json={"decision": "air"})
    assert status == 404
    status, done = await call(streamer, "POST", f"/api/v1/inbound/{got['id']}",
                              headers=operator, json={"decision": "air"})
    assert status == 200 and done["state"] == "aired" and done["decided_by"] == "op-tt", done
    assert done["broadcast"] in streamer.broadcasts.live
    status, _ = await call(streamer, "POST", f"/api/v1/inbound/{got['id']}",
                           headers=operator, json={"decision": "reject"})
    assert status == 409
    aired = await audit(streamer, action="inbound_aired")
    assert aired and aired[0]["user"] == "op-tt" and aired[0]["detail"]["auto"] is False


async def test_a_priority_bulletin_airs_by_itself_when_nobody_decides(streamer) -> None:
    central = Sender("central")
    await register(streamer, central)
    status, got = await send(streamer, central, {
        "ref": "UT-1", "level": "priority", "zones": [OP], "text": "Thông báo ưu tiên.",
        "decide_within_s": 1})
    assert status == 201 and got["state"] == "pending" and got["auto_air_at"], got
    await until(lambda: _state(streamer, central, "UT-1", "aired"), 10, "aired by default")
    status, r = await receipt(streamer, central, "UT-1")
    assert r["decided_by"] == "-" and streamer.broadcasts.live[r["broadcast"]].priority \
        == "priority"
    aired = await audit(streamer, action="inbound_aired")
    assert aired[0]["detail"]["auto"] is True
    # one an operator rejects in time never airs
    status, got = await send(streamer, central, {
        "ref": "UT-2", "level": "priority", "zones": [OP], "text": "Thông báo khác.",
        "decide_within_s": 2})
    status, done = await call(streamer, "POST", f"/api/v1/inbound/{got['id']}",
                              json={"decision": "reject", "note": "đã phát tay"})
    assert status == 200 and done["state"] == "rejected"
    await streamer.plane.inbox.start()  # as after a restart: nothing pending is re-armed
    assert got["id"] not in streamer.plane.inbox._timers


async def _state(streamer, sender, ref, state) -> bool:
    return (await receipt(streamer, sender, ref))[1].get("state") == state


async def test_refusals_name_the_header_or_field(streamer) -> None:
    central, stranger = Sender("central"), Sender("stranger")
    await register(streamer, central)
    ok = {"ref": "X-1", "level": "normal", "zones": [OP], "text": "Xin chào."}
    body = json.dumps(ok).encode()
    cases = [
        (await send(streamer, stranger, ok), 401, "X-Loa-Sender"),
        (await send(streamer, central, ok, key=stranger.key), 401, "X-Loa-Signature"),
        (await send(streamer, central, ok, at=time.time() - 3600), 401, "X-Loa-Timestamp"),
        (await send(streamer, central, {**ok, "zones": [OTHER]}), 403, "zones"),
        (await send(streamer, central, {**ok, "zones": ["brvt.nowhere"]}), 400, "zones"),
        (await send(streamer, central, {**ok, "level": "urgent"}), 400, "level"),
        (await send(streamer, central, {**ok, "audio": "AAAA"}), 400, None),
        (await send(streamer, central, {**ok, "valid_until": time.time() - 1}), 400,
         "valid_until"),
        (await send(streamer, central, {**ok, "text": None, "audio": "bm90IGF1ZGlv"}), 400,
         "audio"),
    ]
    for (status, answer), want, fld in cases:
        assert status == want and (fld is None or answer["field"] == fld), (want, fld, answer)
    # a body altered after signing
    h = central.headers("POST", PATH, body)
    async with aiohttp.ClientSession() as http, http.post(
            streamer.http_url + PATH, data=body.replace(b"Xin", b"Tin"), headers=h) as r:
        assert r.status == 401 and (await r.json())["field"] == "X-Loa-Signature"
    assert await streamer.state.inbound.all() == []
    denied = await audit(streamer, action="inbound_refused")
    assert denied and denied[0]["outcome"] == "denied"


@pytest.mark.parametrize("key", ["", "bm90IGEga2V5", "!!"])
async def test_a_sender_needs_a_real_public_key(streamer, key) -> None:
    status, body = await call(streamer, "POST", "/api/v1/senders", json={
        "id": "central", "zones": [OP], "public_key": key})
    assert status == 400 and body["field"] == "public_key", body
