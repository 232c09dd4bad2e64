"""A standby streamer (``docs/operations.md``, "A standby streamer"), against real processes:
two ``loa streamer`` processes on one redis-server that a real Redis Sentinel manages (they
connect through the Sentinel, ``redis+sentinel://``), a relay listing both, and a speaker
behind the relay. The active streamer is SIGKILLed mid-broadcast; the standby takes the lease
and the air, and the speaker's hole in a steady tone (the longest stretch under half its
level, ``tests/harness/audio.py``) must stay under 3 s. What was on air goes on from where it
was (one broadcast, not two); an emergency with a cadence keeps it (no extra airing); a
schedule due during the takeover airs once, late by the takeover; an approval asked of the
dead streamer is decided on the new one. Figures: ``docs/operations.md``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast
from zoneinfo import ZoneInfo

import aiohttp
import numpy as np
import pytest

from devstack.services import RedisSentinel
from tests.harness.audio import longest_gap_s, peak_hz, rms_dbfs, tone_wav
from tests.harness.loaup import port_outside_ephemeral_range
from tests.harness.relay import RelayProcess, relay_process
from tests.harness.speaker import SpeakerProcess, speaker_process
from tests.harness.streamer import StreamerProcess, streamer_process
from tests.harness.wait import until
from tests.harness.zones import KP1, OP

pytestmark = pytest.mark.realtime  # audio against the wall clock: see conftest.py

TAKEOVER_BOUND_S = 3.0
LEASE_MS = 1500
VN = ZoneInfo("Asia/Ho_Chi_Minh")


@dataclass
class Pair:
    active: StreamerProcess
    standby: StreamerProcess
    relay: RelayProcess
    speaker: SpeakerProcess
    admin: dict[str, str]


@pytest.fixture
def sentinel(tmp_path, redis_server):
    sentinel = RedisSentinel(tmp_path / "sentinel", redis_server)
    sentinel.start()
    yield sentinel
    sentinel.stop()


@contextlib.asynccontextmanager
async def pair(tmp_path: Path, url: str) -> AsyncIterator[Pair]:
    """Streamer A (active, started first), streamer B (standby), a relay listing A then B,
    and a speaker on ``KP1`` behind it; quiet hours lifted (the test runs at any hour).
    B, the relay and the speaker start side by side, on media ports chosen beforehand (a
    relay or speaker up before its upstream tries again until it answers)."""
    ha = ("--ha-lease-ms", str(LEASE_MS))
    async with streamer_process(tmp_path, "a", url, *ha, "--ha-id", "a") as a, \
            contextlib.AsyncExitStack() as stack:
        assert a.info["role"] == "active"
        admin = await a.sign_in(tmp_path / "admin.json")
        status, _ = await a.call("PATCH", "/api/v1/zones/brvt", admin, json={"quiet_hours": ""})
        assert status == 200
        b_port = relay_port = port_outside_ephemeral_range()
        while relay_port == b_port:
            relay_port = port_outside_ephemeral_range()
        b_media, relay_media = f"127.0.0.1:{b_port}", f"127.0.0.1:{relay_port}"
        started = await asyncio.gather(
            stack.enter_async_context(streamer_process(
                tmp_path, "b", url, *ha, "--ha-id", "b",
                "--media-port", str(b_port))),
            stack.enter_async_context(relay_process(
                tmp_path, "relay", "--media", relay_media, "--upstream", a.media_addr,
                "--upstream", b_media)),
            stack.enter_async_context(speaker_process(
                tmp_path, "spk", "--channel", KP1, "--upstream", relay_media)),
            return_exceptions=True)
        for s in started:
            if isinstance(s, BaseException):
                raise s
        b, relay, spk = cast(tuple[StreamerProcess, RelayProcess, SpeakerProcess], started)
        assert (b.media_addr, relay.media_addr) == (b_media, relay_media)
        assert b.info["role"] == "standby"
        status, body = await b.get("/readyz")
        assert status == 503 and body["lease_holder"] == "a", body
        status, body = await b.get("/api/v1/broadcasts", admin)
        assert status == 503 and body["error"] == "standby" and "(a)" in body["message"]
        await until(spk.subscribed, 10, "the speaker subscribed")
        yield Pair(a, b, relay, spk, admin)


async def kill(streamer: StreamerProcess) -> float:
    killed = time.time()
    streamer.proc.kill()
    await streamer.proc.wait()
    return killed


async def took_over(p: Pair, killed: float) -> float:
    """Wait for B to say it is active; the seconds from the kill."""
    await until(lambda: _is_active(p.standby), 10, "the standby took over")
    return time.time() - killed


async def _is_active(s: StreamerProcess) -> bool:
    return await s.role() == "active"


def on_tone(x: np.ndarray, hz: float, level: float) -> bool:
    return abs(peak_hz(x) - hz) < 10 and rms_dbfs(x) > level


async def test_the_standby_takes_over_mid_broadcast_and_it_goes_on_where_it_was(
        tmp_path, sentinel) -> None:
    # long enough that a second play of it, started at the takeover, would still be on air
    # 3 s after the first one's end (the last window below)
    seconds = 12
    async with pair(tmp_path, sentinel.url()) as p:
        status, b = await p.active.call("POST", "/api/v1/broadcasts", p.admin, json={
            "zones": [OP], "priority": "normal",
            "source": {"kind": "tone", "hz": 1000, "seconds": seconds}})
        assert status == 201, b
        await until(lambda: _playing(p.speaker, 1000), 10, "the speaker plays the tone")
        await asyncio.sleep(1.5)  # a second of it before the kill, besides the half checked
        killed = await kill(p.active)
        takeover_s = await took_over(p, killed)
        await asyncio.sleep(max(0.0, killed + 4.5 - time.time()))
        played = await p.speaker.wait_window(killed - 1.0, killed + 4.5)
        level = rms_dbfs(played[:48_000])
        assert on_tone(played[:48_000], 1000, -40), "the tone was not playing before the kill"
        assert on_tone(played[-48_000:], 1000, level - 3), "the tone is not back"
        hole = longest_gap_s(played, 10 ** ((level - 6) / 20))
        # one broadcast, going on where it was: on the new active streamer, still on air
        # with its first start, and it ends when it would have (not a second play of it)
        status, rec = await p.standby.get(f"/api/v1/broadcasts/{b['id']}", p.admin)
        assert status == 200 and rec["state"] == "on_air", rec
        ends = rec["started"] + seconds
        await until(lambda: _over(p.standby, p.admin, b["id"]), ends - time.time() + 10,
                    "the broadcast ended on the new active streamer")
        tail = await p.speaker.wait_window(ends - 2.0, ends + 3.0)
        assert on_tone(tail[:48_000], 1000, level - 3), "it ended early"
        assert not on_tone(tail[-48_000:], 1000, level - 20), "it played on past its end"
        print(f"\nstandby: took over {takeover_s:.2f} s after the kill; the speaker heard "
              f"{hole:.2f} s of silence")
    assert hole <= TAKEOVER_BOUND_S, f"{hole:.2f} s of silence"


def _playing(spk: SpeakerProcess, hz: float) -> bool:
    x = spk.samples()
    return len(x) > 48_000 and on_tone(x[-24_000:], hz, -40)


async def _over(s: StreamerProcess, admin: dict[str, str], bid: int) -> bool:
    status, rec = await s.get(f"/api/v1/broadcasts/{bid}", admin)
    return status == 200 and rec["state"] == "done"


async def test_cadence_schedules_and_approvals_go_on_without_repeat_or_skip(
        tmp_path, sentinel) -> None:
    async with pair(tmp_path, sentinel.url()) as p:
        a, b, admin = p.active, p.standby, p.admin
        # an emergency with a cadence, its first airing over before the kill
        status, em = await a.call("POST", "/api/v1/emergency", admin, json={
            "zones": [OP], "source": {"kind": "tone", "hz": 700, "seconds": 1},
            "chime": False, "repeat_s": 60})
        assert status == 201, em
        # a broadcast waiting for an approver
        status, _ = await a.call("PATCH", f"/api/v1/zones/{OP}", admin,
                                 json={"requires_approval": True})
        assert status == 200
        status, pending = await a.call("POST", "/api/v1/broadcasts", admin, json={
            "zones": [OP], "source": {"kind": "tone", "hz": 500, "seconds": 1}})
        assert status == 201 and pending["state"] == "pending_approval", pending
        status, _ = await a.call("PATCH", f"/api/v1/zones/{OP}", admin,
                                 json={"requires_approval": False})
        # a schedule due just after the kill: while nobody holds the lease
        at = datetime.now(VN) + timedelta(seconds=6)
        status, sched = await a.call("POST", "/api/v1/schedules", admin, json={
            "zones": [OP], "source": {"kind": "tone", "hz": 1500, "seconds": 2},
            "at": at.strftime("%Y-%m-%dT%H:%M:%S")})
        assert status == 201, sched
        due = at.replace(microsecond=0).timestamp()
        # a clip uploaded to A: the standby copies it while it waits
        form = aiohttp.FormData()
        form.add_field("file", tone_wav(440, 2.0), filename="chuong.wav")
        status, clip = await a.call("POST", "/api/v1/clips", admin, data=form)
        assert status == 201, clip
        mirrored = b.var / "clips" / clip["id"]
        await until(mirrored.is_file, 15, "the standby copied the clip")
        await until(lambda: _airings(a, admin, em["id"], 1), 10, "the emergency aired")
        await asyncio.sleep(max(0.0, due - 0.3 - time.time()))
        killed = await kill(a)
        takeover_s = await took_over(p, killed)
        # the cadence goes on: no airing at the takeover, the next one where it was
        status, rec = await b.get(f"/api/v1/broadcasts/{em['id']}", admin)
        assert status == 200, rec
        assert rec["airings"] == 1 and rec["next_airing"] == pytest.approx(
            rec["started"] + 60, abs=0.01), rec
        # the schedule due during the takeover airs once, on the new active streamer
        await until(lambda: _scheduled(b, admin, sched["id"]), 15, "the schedule aired")
        fired = await _scheduled(b, admin, sched["id"])
        assert len(fired) == 1, fired
        await until(lambda: p.speaker.plays(fired[0]["id"]), 10, "the speaker played it")
        play, = p.speaker.plays(fired[0]["id"])
        heard = await p.speaker.wait_window(play["start"] + 0.5, play["start"] + 1.5)
        assert on_tone(heard, 1500, -40), "the speaker did not play the schedule"
        print(f"\nstandby: took over {takeover_s:.2f} s after the kill; the schedule due "
              f"{due - killed:.2f} s after it was heard {play['start'] - due:.2f} s late")
        # the approval asked of the dead streamer is decided on the new one, and airs
        status, done = await b.call("POST", f"/api/v1/approvals/broadcasts/{pending['id']}",
                                    admin, json={"decision": "approve"})
        assert status == 200 and done["state"] in ("on_air", "waiting"), done
        # the clip plays from the new active streamer's copy
        status, aired = await b.call("POST", "/api/v1/broadcasts", admin, json={
            "zones": [OP], "priority": "priority", "source": {"kind": "clip", "clip": clip["id"]}})
        assert status == 201, aired
        await until(lambda: p.speaker.plays(aired["id"]), 10, "the speaker played the clip")
        play, = p.speaker.plays(aired["id"])
        assert on_tone(await p.speaker.wait_window(play["start"] + 0.5, play["start"] + 1.5),
                       440, -40), "the clip is not what the speaker played"
        # and the emergency is stopped there
        status, stopped = await b.call("DELETE", f"/api/v1/emergency/{em['id']}", admin)
        assert status == 200 and stopped["state"] == "stopped", stopped
        played = p.speaker.plays()
        assert sum(1 for e in played if e.get("broadcast") == em["id"]) == 1, played


async def _airings(s: StreamerProcess, admin: dict[str, str], bid: int, n: int) -> bool:
    status, rec = await s.get(f"/api/v1/broadcasts/{bid}", admin)
    return status == 200 and rec["airings"] >= n and rec["state"] == "waiting"


async def _scheduled(s: StreamerProcess, admin: dict[str, str], sid: str) -> list[dict]:
    status, body = await s.get("/api/v1/broadcasts?limit=50", admin)
    assert status == 200, body
    return [r for r in body["broadcasts"] if r.get("schedule") == sid]


async def test_a_streamer_that_lost_its_lease_steps_down_and_a_clean_stop_hands_over_at_once(
        tmp_path, sentinel, redis_server) -> None:
    import redis.asyncio as aioredis

    async with pair(tmp_path, sentinel.url()) as p:
        # a clean stop of the active streamer: the standby takes over at its next try
        stopped = time.time()
        p.active.proc.terminate()
        assert await p.active.proc.wait() == 0
        handed_over_s = await took_over(p, stopped)
        # another holder takes the lease (a network split healed): B steps down, exit 75
        r = aioredis.from_url(redis_server.url, decode_responses=True)
        try:
            await r.set("loa:lease:streamer", "elsewhere", px=60_000)
        finally:
            await r.aclose()
        assert await asyncio.wait_for(p.standby.proc.wait(), 10) == 75
        assert "stepping down" in p.standby.log.read_text()
    print(f"\nstandby: a clean stop handed over in {handed_over_s:.2f} s")
