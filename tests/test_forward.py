"""Store and forward: signed plans, stored clips, and the speaker's local plays.

Unit tests drive the sans-IO parts (plan signing and checking, the clip store, the speaker's
:class:`ForwardPath` on a real :class:`Playout`) with a fake wall clock, so that nothing here
depends on the hour or on timing. The end-to-end test runs a real ``loa up`` stack
(streamer, relay, speakers, Redis, Mosquitto) and cuts one speaker off its stream.
"""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clients.speaker.playout import OpusDecoder, Playout
from clients.speaker.store import ClipStore, ForwardPath, decode_clip, entry_due
from streamer.control.forward import render
from streamer.mixer.sources import Tone
from tests.harness.audio import peak_hz
from tests.harness.sink import SparseSink
from wire.auth import Keyring, SigningKey
from wire.plan import (
    Plan,
    PlanEntry,
    PlanRefused,
    SignedPlan,
    sha256_hex,
    sign_plan,
    verify_plan,
)
from wire.priority import Priority

RATE = 48_000
T0 = 1_795_402_800.0  # the fake clock: a fixed instant, never today
ZONE = "brvt.vung-tau.p1"
KEY, OTHER = SigningKey.generate(), SigningKey.generate()


def clip_bytes(hz: float = 1000.0, seconds: float = 1.0) -> bytes:
    return render(Tone(hz, seconds), None).data


def plan(*entries: PlanEntry, made: float = T0, zone: str = ZONE) -> Plan:
    return Plan(zone=zone, made=made, valid_until=made + 25 * 3600, entries=list(entries))


def entry(at: float, clip: bytes, bid: int = 7, priority: int = Priority.NORMAL) -> PlanEntry:
    return PlanEntry(schedule="s1", at=at, clip=sha256_hex(clip), bytes=len(clip),
                     duration_s=1.0, priority=priority, broadcast=bid)


# --------------------------------------------------------------------------- plans


def test_a_signed_plan_verifies_and_forged_or_altered_ones_are_refused() -> None:
    data = clip_bytes()
    p = plan(entry(T0 + 60, data))
    keys = Keyring([KEY.public])
    assert verify_plan(keys, sign_plan(KEY, p), ZONE, T0) == p
    # signed by a key the speaker does not trust
    with pytest.raises(PlanRefused) as e:
        verify_plan(keys, sign_plan(OTHER, p), ZONE, T0)
    assert e.value.outcome == "unknown_key"
    # a body altered after signing (another clip hash), the signature kept
    signed = SignedPlan.model_validate_json(sign_plan(KEY, p))
    body = base64.b64decode(signed.body).replace(sha256_hex(data).encode(), b"0" * 64)
    forged = signed.model_copy(update={"body": base64.b64encode(body).decode()})
    with pytest.raises(PlanRefused) as e:
        verify_plan(keys, forged.model_dump_json().encode(), ZONE, T0)
    assert e.value.outcome == "bad_signature"
    # a forged key id: the other key's signature under our key's id
    other = SignedPlan.model_validate_json(sign_plan(OTHER, p))
    with pytest.raises(PlanRefused) as e:
        verify_plan(keys, other.model_copy(update={"kid": KEY.id}).model_dump_json().encode(),
                    ZONE, T0)
    assert e.value.outcome == "bad_signature"
    for payload, zone, now, outcome in [
        (b"{}", ZONE, T0, "malformed"),
        (b"not json", ZONE, T0, "malformed"),
        (sign_plan(KEY, p), "brvt.other", T0, "wrong_zone"),
        (sign_plan(KEY, p), ZONE, T0 + 26 * 3600, "expired"),
    ]:
        with pytest.raises(PlanRefused) as e:
            verify_plan(keys, payload, zone, now)
        assert e.value.outcome == outcome


# --------------------------------------------------------------------------- clips


def test_a_rendered_clip_decodes_on_the_speaker_to_the_same_tone() -> None:
    data = clip_bytes(700.0, 2.0)
    pcm = np.frombuffer(decode_clip(data, OpusDecoder()), dtype=np.int16) / 32768
    assert len(pcm) == pytest.approx(2.0 * RATE, abs=2 * 960)
    assert peak_hz(pcm[RATE // 2:RATE * 3 // 2]) == pytest.approx(700, abs=5)
    assert len(data) < 2.2 * 3_400  # ~24 kb/s: about 3 kB a second


def test_the_clip_store_evicts_the_oldest_first_and_drops_what_no_plan_needs(
        tmp_path: Path) -> None:
    store = ClipStore(tmp_path, max_bytes=2500)
    blobs = [bytes([i]) * 1000 for i in range(3)]
    shas = [sha256_hex(b) for b in blobs]
    assert store.put(shas[0], blobs[0]) == []
    assert store.put(shas[1], blobs[1]) == []
    import os
    os.utime(store.path(shas[0]), (T0, T0))  # the oldest, whatever the file system's clock
    os.utime(store.path(shas[1]), (T0 + 1, T0 + 1))
    assert store.put(shas[2], blobs[2]) == [shas[0]]
    assert not store.has(shas[0]) and store.read(shas[2]) == blobs[2]
    store.path(shas[1]).write_bytes(b"damaged")  # a damaged file is no clip
    assert store.read(shas[1]) is None and not store.has(shas[1])
    assert store.keep_only({shas[1]}) == [shas[2]]
    assert store.clips() == []


# --------------------------------------------------------------------------- selection


@pytest.mark.parametrize(("now", "lost", "done", "emergency", "due"), [
    (T0 + 0.3, True, False, False, True),  # at its time plus the playout delay
    (T0 + 0.2, True, False, False, False),  # early
    (T0 + 30.2, True, False, False, True),  # late within the grace
    (T0 + 30.4, True, False, False, False),  # stale
    (T0 + 0.3, False, False, False, False),  # the stream is there: it plays it
    (T0 + 0.3, True, True, False, False),  # already played
    (T0 + 0.3, True, False, True, False),  # an emergency wins
])
def test_entry_selection(now: float, lost: bool, done: bool, emergency: bool,
                         due: bool) -> None:
    e = entry(T0, clip_bytes(seconds=0.1))
    assert entry_due(e, now, 0.3, lost, done, emergency) is due


def forward_path(tmp_path: Path, emergency: list[bool] | None = None
                 ) -> tuple[ForwardPath, Playout, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    playout = Playout(SparseSink(), OpusDecoder(), T0 - 10, on_event=events.append,
                      volume_pct=100)
    flag = emergency if emergency is not None else [False]
    fp = ForwardPath(playout, ClipStore(tmp_path, 10_000_000), ZONE, Keyring([KEY.public]),
                     new_decoder=OpusDecoder, delay_s=0.3, emergency_on=lambda now: flag[0])
    return fp, playout, events


def step(fp: ForwardPath, playout: Playout, now: float, lost: bool = True) -> None:
    """One beat of the speaker's rhythm: the playout pads its output up to ``now`` (in
    frames of 20 ms), then the store decides."""
    playout.tick(now)
    fp.tick(now, lost)


def test_a_stored_clip_plays_once_at_its_time_when_the_stream_is_lost(tmp_path: Path) -> None:
    data = clip_bytes(1000.0, 0.5)
    p = plan(entry(T0 + 100, data, bid=41))
    fp, playout, events = forward_path(tmp_path)
    assert fp.on_plan(sign_plan(KEY, p), T0) == "accepted"
    assert fp.missing() == {sha256_hex(data)}
    altered = data[:-1] + bytes([data[-1] ^ 1])
    assert fp.on_clip(sha256_hex(data), altered) == "bad_hash"
    assert fp.on_clip(sha256_hex(clip_bytes(500.0)), clip_bytes(500.0)) == "unexpected"
    assert fp.on_clip(sha256_hex(data), data) == "stored" and fp.missing() == set()
    step(fp, playout, T0 + 50)  # decoded ahead, nothing plays yet
    assert not playout.local_playing and 41 in fp.ready
    step(fp, playout, T0 + 100.29)
    assert not playout.local_playing
    step(fp, playout, T0 + 100.345)  # the output is there: due, 45 ms late
    assert playout.local_playing and playout.local_broadcast_id == 41
    assert playout.local_priority == Priority.NORMAL and not playout.emergency_playing
    # what is late of it is skipped: its samples play when the stream would have played them
    assert playout.timeline.time(playout.timeline.cursor) == pytest.approx(T0 + 100.345)
    assert fp.skipped_ms == pytest.approx(45, abs=0.1)
    assert len(playout._local or ()) == pytest.approx(0.5 * RATE + 960 - 0.045 * RATE, abs=1)
    playout.tick(T0 + 102)  # plays it out
    step(fp, playout, T0 + 102.5)  # never twice
    assert fp.local_plays == 1
    plays = [e for e in events if e["event"] == "play"]
    assert [(e["broadcast"], e.get("local"), e["priority"]) for e in plays] == [
        (41, True, Priority.NORMAL)]
    # kept on disk: a restarted speaker with no network knows the plan and what it played
    fp.store.save_done(list(fp.done))
    again, _, _ = forward_path(tmp_path)
    again.load(T0 + 100.4)
    assert again.plan == p and 41 in again.done


def test_no_local_play_when_streamed_stale_or_during_an_emergency(tmp_path: Path) -> None:
    data = clip_bytes(1000.0, 0.5)
    p = plan(entry(T0 + 100, data, bid=41), entry(T0 + 200, data, bid=42),
             entry(T0 + 300, data, bid=43))
    emergency = [False]
    fp, playout, _ = forward_path(tmp_path, emergency)
    fp.on_plan(sign_plan(KEY, p), T0)
    fp.on_clip(sha256_hex(data), data)
    # 41: the stream played its broadcast
    fp.on_event({"event": "play_start", "broadcast": 41, "start": T0 + 100.3})
    step(fp, playout, T0 + 60)
    step(fp, playout, T0 + 100.4)
    assert not playout.local_playing
    # 42: the speaker was off (no tick) until past the grace: stale, never played late
    step(fp, playout, T0 + 200 + 31)
    assert not playout.local_playing and 42 not in fp.ready
    # 43: an emergency is active
    emergency[0] = True
    step(fp, playout, T0 + 250)
    step(fp, playout, T0 + 300.4)
    assert not playout.local_playing and fp.local_plays == 0
    # an older plan is a rollback; a plan of another zone is refused
    assert fp.on_plan(sign_plan(KEY, plan(made=T0 - 1)), T0) == "rollback"
    assert fp.on_plan(sign_plan(KEY, plan(zone="brvt.x")), T0) == "wrong_zone"
    assert json.loads((tmp_path / "plan.json").read_bytes())["kid"] == KEY.id


# --------------------------------------------------------------------------- end to end


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "loa-forward-test"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: audio/wav\r\n\r\n").encode() + data + (
        f"\r\n--{boundary}--\r\n").encode()
    return body, f"multipart/form-data; boundary={boundary}"


def onset_time(spk: Any, after: float) -> float:
    """Wall time of the first sample above -26 dBFS after ``after`` in the speaker's WAV."""
    x = spk.window(after, after + 2.0)
    return after + int(np.argmax(np.abs(x) > 0.05)) / RATE


@pytest.mark.realtime
def test_a_cut_off_speaker_plays_the_stored_clip_at_its_time_and_reports_it_local(
        tmp_path: Path) -> None:
    """Real streamer, relay, speakers, Redis and Mosquitto (``loa up``): a clip scheduled
    36 s ahead reaches one speaker's store; the speaker is then pointed at a dead upstream,
    plays the clip from its store at its time, and the streamer records the play as local."""
    import time
    from datetime import UTC, datetime

    from clients.ctl import call
    from streamer.control.api.clips import wav_bytes
    from tests.harness.loaup import LoaUp
    from tests.harness.wait import wait_for

    up = LoaUp(tmp_path)
    try:
        up.lift_quiet_hours()
        state = up.state()
        spk = up.speakers("brvt.con-dao")[0]
        # half a second of silence, then the tone: its onset times the play to the sample
        tone = 0.3 * np.sin(2 * np.pi * 880 * np.arange(3 * RATE) / RATE)
        tone[:RATE // 2] = 0.0
        body, ctype = multipart("tone-880.wav", wav_bytes(tone))
        clip = call(up.url, "POST", "/api/v1/clips", raw=body, content_type=ctype,
                    token=up.token)
        # the plan promises the occurrence its broadcast id within a pass or two (poll_s 2 s)
        # of the schedule, and that must come before the scheduler prepares it (30 s ahead,
        # with an id of its own if no plan has promised one yet: a local play reported under
        # the plan's id would then match no broadcast)
        occ = int(time.time()) + 36
        at = datetime.fromtimestamp(occ, UTC).replace(tzinfo=None).isoformat()
        sched = up.api("POST", "/api/v1/schedules", {
            "zones": [spk.zone], "source": {"kind": "clip", "clip": clip["id"]},
            "at": at, "tz": "UTC", "label": "store and forward"})
        assert sched["approved"], sched
        cache = up.var / "cache" / spk.id
        wait_for(lambda: list(cache.glob("clip-*.loac")), timeout=20)
        stored = next(cache.glob("clip-*.loac"))
        print(f"stored clip: {stored.stat().st_size} bytes for 3.0 s "
              f"({stored.stat().st_size / 3:.0f} B/s)")
        # cut the speaker off its stream: a dead upstream (the MQTT link stays)
        dead = call(up.url, "POST", f"/api/v1/speakers/{spk.id}/commands",
                    {"cmd": "set_upstream", "args": {"upstream": ["127.0.0.1:9"]}},
                    token=up.token)
        assert dead["ok"], dead
        assert time.time() < occ - 12, "too slow to cut the speaker off before the occurrence"
        wait_for(lambda: [e for e in spk.events() if e["event"] == "play"
                          and e.get("local")], timeout=occ - time.time() + 20)
        local = [e for e in spk.events() if e["event"] == "play" and e.get("local")][0]
        offset = local["start"] - (occ + 0.3)  # the stream would play it a delay later
        print(f"local play started {offset * 1000:+.0f} ms from its time")
        assert abs(offset) < 0.25
        assert local["end"] - local["start"] == pytest.approx(3.0, abs=0.1)
        heard = spk.window(local["start"] + 0.7, local["start"] + 2.5)
        assert peak_hz(heard) == pytest.approx(880, abs=5)
        # in step with the stream: the tone starts half a second after the play's time,
        # as on a speaker of the same zone that kept its stream
        onset = onset_time(spk, occ + 0.3)
        print(f"tone onset {1000 * (onset - occ - 0.8):+.1f} ms from where it belongs")
        assert abs(onset - (occ + 0.8)) < 0.02  # measured: +6.4 ms, the encoder lookahead
        for other in up.speakers(spk.zone):
            if other.id != spk.id:
                print(f"  streamed on {other.id}: "
                      f"{1000 * (onset_time(other, occ + 0.3) - occ - 0.8):+.1f} ms")
        # the network back: the streamer has the play, local, under its own broadcast
        back = call(up.url, "POST", f"/api/v1/speakers/{spk.id}/commands",
                    {"cmd": "set_upstream", "args": {"upstream": [
                        state["relays"][0]["media"], state["streamer_media"]]}},
                    token=up.token)
        assert back["ok"], back
        bid = local["broadcast"]
        rec = up.api("GET", f"/api/v1/broadcasts/{bid}")
        assert rec["schedule"] == sched["id"]
        reach = up.api("GET", f"/api/v1/broadcasts/{bid}/reach")
        mine = [r for r in reach["confirmed"] if r["id"] == spk.id]
        assert mine and mine[0]["local"] is True, reach
        others = [r for r in reach["confirmed"] if r["id"] != spk.id]
        assert all(not r["local"] for r in others)
    finally:
        up.kill()


def test_refusals_are_counted_in_the_speakers_metrics(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from clients.speaker.store import ForwardCollector

    data = clip_bytes(1000.0, 0.2)
    fp, _, _ = forward_path(tmp_path)
    registry = CollectorRegistry()
    registry.register(ForwardCollector(fp))
    fp.on_plan(sign_plan(OTHER, plan(entry(T0 + 100, data))), T0)
    fp.on_plan(sign_plan(KEY, plan(entry(T0 + 100, data))), T0)
    fp.on_clip(sha256_hex(data), data + b"x")
    value = registry.get_sample_value
    assert value("loa_speaker_plans_total", {"outcome": "unknown_key"}) == 1
    assert value("loa_speaker_plans_total", {"outcome": "accepted"}) == 1
    assert value("loa_speaker_clips_total", {"outcome": "bad_hash"}) == 1
    assert value("loa_speaker_store_missing_clips") == 1
    assert value("loa_speaker_plan_entries") == 1


@pytest.mark.parametrize("priority", [Priority.NORMAL, Priority.EMERGENCY])
def test_the_emergency_path_leaves_a_scheduled_local_play_alone_until_its_replay_is_due(
        tmp_path: Path, priority: int) -> None:
    from clients.speaker.emergency import CachedEmergency, EmergencyCache, EmergencyPath
    from wire.messages import EmergencyState

    data = clip_bytes(1000.0, 2.0)
    fp, playout, _ = forward_path(tmp_path)
    fp.on_plan(sign_plan(KEY, plan(entry(T0 + 100, data, bid=41, priority=priority))), T0)
    fp.on_clip(sha256_hex(data), data)
    step(fp, playout, T0 + 60)
    step(fp, playout, T0 + 100.3)
    assert playout.local_broadcast_id == 41
    pcm = np.full(RATE, 1000, dtype=np.int16)
    ep = EmergencyPath(playout, EmergencyCache(tmp_path / "em"),
                       cached=CachedEmergency(99, T0 - 500, memoryview(pcm), T0 - 500))
    ep.tick(T0 + 100.4, lost=True)  # no emergency: not its replay to stop
    assert playout.local_broadcast_id == 41
    ep.on_state(EmergencyState(id=99, active=True, repeat_s=60, started=T0 - 500), T0 + 100.5)
    step(fp, playout, T0 + 100.5)
    ep.tick(T0 + 100.6, lost=True)  # its replay is due: the emergency wins
    assert playout.local_broadcast_id == 99 and ep.replays == 1


# --------------------------------------------------------------------------- the streamer


async def test_the_streamer_plans_what_can_be_stored_signs_it_and_retains_it(
        streamer: Any, mosquitto: Any) -> None:
    """An in-process streamer (real Redis) with a real Fleet on a real Mosquitto: what goes in
    a zone's plan, what a speaker reads of it through its ACL, and what is cleared."""
    import asyncio

    from tests.conftest import DAYTIME
    from tests.harness.api import call
    from tests.harness.broker import client, fleet_on, start_broker
    from tests.harness.keys import TEST_KEY
    from tests.harness.zones import KP1, OP, OTHER
    from wire.plan import clip_topic, plan_topic

    forward = streamer.plane.forward
    await forward.close()  # passes are run by hand here
    forward.now = lambda: DAYTIME  # Monday 2026-11-23 10:00 local
    passwords = start_broker(mosquitto, {"spk-1": KP1})
    tone = {"kind": "tone", "hz": 660, "seconds": 2}
    made = {}
    for name, body in {
        "tone": {"zones": [OP], "source": tone, "at": "2026-11-23T11:00:00"},
        "daily": {"zones": [OP], "source": tone, "rrule": "FREQ=DAILY;BYHOUR=12;BYMINUTE=0;"
                  "BYSECOND=0", "dtstart": "2026-11-01T00:00:00"},
        "relay": {"zones": [OP], "source": {"kind": "relay", "url": "http://127.0.0.1:9/x"},
                  "at": "2026-11-23T13:00:00", "duration_s": 60},
        "tomorrow": {"zones": [OP], "source": tone, "at": "2026-11-24T11:00:00"},
        "elsewhere": {"zones": [OTHER], "source": {**tone, "hz": 440},
                      "at": "2026-11-23T11:00:00"},
        "disabled": {"zones": [OP], "source": tone, "at": "2026-11-23T14:00:00",
                     "enabled": False},
    }.items():
        status, made[name] = await call(streamer, "POST", "/api/v1/schedules", json=body)
        assert status == 201, made[name]
    async with fleet_on(mosquitto, passwords) as (fleet, _):
        streamer.plane.fleet = fleet
        plans = await forward.refresh()
        mine = plans[KP1]
        # the one-off and the daily one within 24 h; no relay, nothing disabled, nothing
        # past the horizon (the daily one's next day is), nothing of another zone
        assert [(e.schedule, e.at) for e in mine.entries] == [
            (made["tone"]["id"], DAYTIME + 3600), (made["daily"]["id"], DAYTIME + 7200)]
        assert mine.entries[0].clip == mine.entries[1].clip  # one source, one clip
        assert mine.entries[0].duration_s == pytest.approx(2.0)
        assert OP not in plans and OTHER not in plans  # plans are per leaf zone
        other = next(z for z in plans if z.startswith(OTHER + "."))
        # the scheduled broadcast will take the promised id
        from datetime import UTC, datetime
        occ = datetime.fromtimestamp(DAYTIME + 3600, UTC)
        assert await streamer.broadcasts.occurrence_id(made["tone"]["id"], occ) == \
            mine.entries[0].broadcast
        # what the speaker reads: its zone's plan, verified with the streamer's key, and the clip
        got: dict[str, bytes] = {}
        async with client(mosquitto, "spk-1", passwords["spk-1"]) as c:
            await c.subscribe([(plan_topic(KP1), 1), (plan_topic(other), 1),
                               (clip_topic(mine.entries[0].clip), 1)])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    async for m in c.messages:
                        got[str(m.topic)] = bytes(m.payload)  # type: ignore[arg-type]
        assert plan_topic(other) not in got  # the ACL: another zone's plan is not for it
        assert verify_plan(Keyring([TEST_KEY.public]), got[plan_topic(KP1)], KP1, DAYTIME) == mine
        data = got[clip_topic(mine.entries[0].clip)]
        assert sha256_hex(data) == mine.entries[0].clip and len(data) == mine.entries[0].bytes
        pcm = np.frombuffer(decode_clip(data, OpusDecoder()), dtype=np.int16) / 32768
        assert peak_hz(pcm[RATE // 2:RATE * 3 // 2]) == pytest.approx(660, abs=5)
        # quiet hours set since: the occurrence they block is not planned (nor aired)
        status, z = await call(streamer, "PATCH", f"/api/v1/zones/{OP}",
                               json={"quiet_hours": "10:30-11:30"})
        assert status == 200, z
        plans = await forward.refresh()
        assert [e.schedule for e in plans[KP1].entries] == [made["daily"]["id"]]
        # its schedules deleted: an empty plan, and its clip off the broker (not the other)
        for name in ("tone", "daily"):
            status, _ = await call(streamer, "DELETE", f"/api/v1/schedules/{made[name]['id']}")
            assert status == 200
        plans = await forward.refresh()
        assert plans[KP1].entries == []
        got.clear()
        async with client(mosquitto, "spk-1", passwords["spk-1"]) as c:
            await c.subscribe([(plan_topic(KP1), 1), (clip_topic(mine.entries[0].clip), 1)])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    async for m in c.messages:
                        got[str(m.topic)] = bytes(m.payload)  # type: ignore[arg-type]
        assert list(got) == [plan_topic(KP1)]
        assert plans[other].entries and plans[other].entries[0].clip != mine.entries[0].clip
        assert verify_plan(Keyring([TEST_KEY.public]), got[plan_topic(KP1)], KP1,
                           DAYTIME).entries == []
        streamer.plane.fleet = None


async def test_an_occurrence_prepared_before_any_plan_named_it_is_promised_its_id(
        streamer: Any, mosquitto: Any) -> None:
    """A schedule made less than the scheduler's lead (30 s) before its time is prepared
    before any plan named it: the plan must then promise the id the broadcast took, or a
    cut-off speaker reports its local play under an id that never airs. Also across a
    restart, which reads the promised ids from Redis."""
    from datetime import UTC, datetime

    from streamer.control.forward import Forward
    from tests.conftest import DAYTIME
    from tests.harness.api import call
    from tests.harness.broker import fleet_on, start_broker
    from tests.harness.zones import KP1, OP

    forward = streamer.plane.forward
    await forward.close()  # passes are run by hand here
    forward.now = lambda: DAYTIME
    passwords = start_broker(mosquitto, {"spk-1": KP1})
    status, made = await call(streamer, "POST", "/api/v1/schedules", json={
        "zones": [OP], "source": {"kind": "tone", "hz": 660, "seconds": 2},
        "at": "2026-11-23T10:00:20"})
    assert status == 201, made
    occ = datetime.fromtimestamp(DAYTIME + 20, UTC)
    schedule = streamer.plane.scheduler.schedules[made["id"]]
    item = await streamer.broadcasts.prepare_scheduled(schedule, occ)  # as the scheduler does
    async with fleet_on(mosquitto, passwords) as (fleet, _):
        streamer.plane.fleet = fleet
        try:
            (entry,) = (await forward.refresh())[KP1].entries
            assert entry.broadcast == item.id
            again = Forward(streamer.plane)  # a restart: the promise is read from Redis
            assert await again.occurrence_id(made["id"], occ) == item.id
        finally:
            streamer.plane.fleet = None
