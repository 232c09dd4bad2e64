"""Playout first: with redis-server killed, an emergency officer who signed in before still
airs an emergency, cancels it and stops everything in a commune; speaker processes of the
zone play the tone (checked by its FFT peak), the one next door does not; when Redis comes back
the broadcast records and audit entries written behind the journal are all there."""

from __future__ import annotations

import asyncio
import contextlib
import io
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from tests.harness.api import call
from tests.harness.audio import peak_hz
from tests.harness.speaker import SpeakerProcess, start_speaker
from tests.harness.wait import until

RATE = 48_000
KIM_LONG = "brvt.chau-duc.kim-long"
INSIDE = ["brvt.chau-duc.kim-long.ap-tay", "brvt.chau-duc.kim-long.ap-dong"]
OUTSIDE = "brvt.chau-duc.nghia-thanh.ap-1"


async def sign_in(streamer: Any, name: str, role: str) -> dict[str, str]:
    status, u = await call(streamer, "POST", "/api/v1/users", streamer.admin, json={
        "name": name, "password": "correct horse battery",
        "grants": [{"role": role, "zone": KIM_LONG}]})
    assert status == 201, u
    status, t = await call(streamer, "POST", "/api/v1/login", {},
                           json={"user": name, "password": "correct horse battery"})
    assert status == 200, t
    return {"Authorization": f"Bearer {t['token']}"}


@contextlib.asynccontextmanager
async def speakers(tmp_path: Path, upstream: str,
                   channels: list[str]) -> AsyncIterator[list[SpeakerProcess]]:
    """A ``loa speaker`` process subscribed to the streamer itself per channel (named after
    it), recording to a WAV."""
    out: list[SpeakerProcess] = []
    try:
        for ch in channels:
            out.append(await start_speaker(
                tmp_path, ch, "--channel", ch, "--upstream", upstream, "--bind", "127.0.0.1:0",
                "--var-dir", str(tmp_path / ch)))
        for sp in out:
            await until(sp.subscribed, 10, f"{sp.channel} subscribed")
        yield out
    finally:
        for sp in out:
            await sp.close()


async def ready(streamer: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"{streamer.http_url}/readyz") as r:
        return r.status, await r.json()


@pytest.mark.realtime  # audio against the wall clock: see conftest.py
async def test_emergency_airs_and_stops_with_redis_down_and_is_recorded_when_it_returns(
        streamer, redis_server, tmp_path):
    officer = await sign_in(streamer, "officer", "emergency")
    operator = await sign_in(streamer, "operator", "operator")
    async with speakers(tmp_path, streamer.media_addr, [*INSIDE, OUTSIDE]) as spks:
        redis_server.kill()

        # 1. air, then cancel by id
        status, e1 = await call(streamer, "POST", "/api/v1/emergency", officer, json={
            "zones": [KIM_LONG], "source": {"kind": "tone", "hz": 880, "seconds": 30},
            "chime": False, "label": "Bão số 9"})
        assert status == 201, e1
        await asyncio.sleep(2.0)
        status, out = await call(streamer, "DELETE", f"/api/v1/emergency/{e1['id']}", officer)
        assert status == 200 and out["state"] == "stopped", out

        # 2. air, then stop everything in the commune
        status, e2 = await call(streamer, "POST", "/api/v1/emergency", officer, json={
            "zones": [KIM_LONG], "source": {"kind": "tone", "hz": 660, "seconds": 30},
            "chime": False})
        assert status == 201, e2
        assert e2["id"] != e1["id"]
        await asyncio.sleep(2.0)
        status, out = await call(streamer, "POST", "/api/v1/stop", officer,
                                 json={"zones": [KIM_LONG]})
        assert status == 200 and out["stopped"] == [e2["id"]], out

        # roles come from the cache too: an operator may not air an emergency
        status, err = await call(streamer, "POST", "/api/v1/emergency", operator, json={
            "zones": [KIM_LONG], "source": {"kind": "tone", "hz": 440, "seconds": 1}})
        assert status == 403, err
        # a token Redis never confirmed is refused
        status, _ = await call(streamer, "POST", "/api/v1/stop",
                               {"Authorization": "Bearer " + "x" * 43},
                               json={"zones": [KIM_LONG]})
        assert status == 401

        status, r = await ready(streamer)
        assert status == 503 and r["checks"]["redis"] is False
        assert r["degraded"] == ["state"] and r["pending_writes"] >= 7, r

        # what the speakers played: each tone in its zone, nothing next door
        async def played_both() -> bool:
            return all(s.plays(e1["id"]) and s.plays(e2["id"]) for s in spks[:2])
        await until(played_both, 10, "both emergencies played and ended on the speakers")
        for sp in spks[:2]:
            for e, hz in ((e1, 880), (e2, 660)):
                (p,) = sp.plays(e["id"])
                assert 1.5 < p["end"] - p["start"] < 4.0, (sp.channel, p)  # stopped, not 30 s
                x = sp.window(p["start"] + 0.1, p["end"] - 0.1)
                assert abs(peak_hz(x) - hz) < 5, (sp.channel, hz)
        assert not spks[2].plays(e1["id"]) and not spks[2].plays(e2["id"])

    redis_server.start()  # same port, same data directory

    async def caught_up() -> bool:
        status, r = await ready(streamer)
        return status == 200 and r["pending_writes"] == 0 and r["degraded"] == []
    await until(caught_up, 10, "the journal replayed")
    assert (tmp_path / "var" / "state-journal.jsonl").read_text() == ""

    for e in (e1, e2):
        status, got = await call(streamer, "GET", f"/api/v1/broadcasts/{e['id']}",
                                 streamer.admin)
        assert status == 200 and got["state"] == "stopped" and got["created_by"] == "officer"
        assert got["priority"] == "emergency" and got["ended"] > got["started"]
    raw = await streamer.state.broadcasts.get(e1["id"])  # in Redis, not only in memory
    assert raw is not None and raw.state == "stopped"
    status, a = await call(streamer, "GET", "/api/v1/audit", streamer.admin,
                           params={"limit": 50})
    assert status == 200
    seen = [(x["user"], x["action"], x["target"], x["outcome"]) for x in a["entries"]]
    assert ("officer", "broadcast", str(e1["id"]), "ok") in seen
    assert ("officer", "stop_broadcast", str(e1["id"]), "ok") in seen
    assert ("officer", "broadcast", str(e2["id"]), "ok") in seen
    assert ("officer", "stop_all", "", "ok") in seen
    assert ("operator", "create_emergency", "/api/v1/emergency", "denied") in seen
    stop_all = next(x for x in a["entries"] if x["action"] == "stop_all")
    assert stop_all["detail"]["stopped"] == [e2["id"]]
    # in the order they happened, newest first
    order = [s for s in seen if s[0] == "officer" and s[1] != "login"]
    assert order[:4] == [("officer", "stop_all", "", "ok"),
                         ("officer", "broadcast", str(e2["id"]), "ok"),
                         ("officer", "stop_broadcast", str(e1["id"]), "ok"),
                         ("officer", "broadcast", str(e1["id"]), "ok")]


def wav_bytes(hz: float, seconds: float) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes())
    return buf.getvalue()


async def test_speech_and_an_uploaded_clip_air_as_emergencies_with_redis_down(
        streamer, redis_server):
    form = aiohttp.FormData()
    form.add_field("file", wav_bytes(500, 2.0), filename="coi-bao-dong.wav")
    async with aiohttp.ClientSession() as s, s.post(f"{streamer.http_url}/api/v1/clips",
                                                    data=form, headers=streamer.admin) as r:
        assert r.status == 201, await r.text()
        clip = await r.json()
    redis_server.kill()
    status, tts = await call(streamer, "POST", "/api/v1/emergency", streamer.admin, json={
        "zones": [KIM_LONG], "source": {"kind": "tts", "text": "Bão số 9 sắp đổ bộ"},
        "chime": False})
    assert status == 201, tts
    assert tts["source"]["kind"] == "tts" and tts["source"]["seconds"] > 0.5
    status, c = await call(streamer, "POST", "/api/v1/emergency", streamer.admin, json={
        "zones": [KIM_LONG], "source": {"kind": "clip", "clip": clip["id"]}, "chime": False})
    assert status == 201, c  # the audio is on the streamer's disk: no metadata needed
    assert c["source"] == {"kind": "clip", "clip": clip["id"], "seconds": 2.0}
    assert {tts["id"], c["id"]} <= set(streamer.mixer.items)
    status, got = await call(streamer, "GET", f"/api/v1/broadcasts/{c['id']}", streamer.admin)
    assert status == 200 and got["id"] == c["id"]  # answered from memory
    status, out = await call(streamer, "POST", "/api/v1/stop", streamer.admin,
                             json={"zones": [KIM_LONG]})
    assert status == 200 and sorted(out["stopped"]) == sorted([tts["id"], c["id"]])
    status, got = await call(streamer, "GET", f"/api/v1/broadcasts/{c['id']}", streamer.admin)
    assert status == 200 and got["state"] == "stopped"  # off the air: from the journal
    status, err = await call(streamer, "GET", "/api/v1/audit", streamer.admin)
    assert status == 503  # a stored record: needs Redis
