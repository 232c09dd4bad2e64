"""The speaker's side of the emergency path: forced volume in-band, the cache, offline replay.

Unit tests drive the sans-IO parts (jitter buffer, playout, :class:`EmergencyPath`) with a fake
decoder and a fake wall clock, so that cadences of minutes (``repeat_s`` >= 60 s, as the message
model requires) and expiry take no time. The end-to-end tests run real ``loa speaker``
processes against an in-test upstream (the streamer's own wire code) and a real Mosquitto;
there the replay cadence is shortened with the speaker's ``--emergency-repeat-s`` override.
Audio is judged by its level and by cross-correlation with what was streamed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from clients.speaker.emergency import (
    CachedEmergency,
    Emergencies,
    EmergencyCache,
    EmergencyPath,
    EmergencyRecorder,
    replay_due,
    stream_lost,
)
from clients.speaker.jitter import FrameKind, JitterBuffer
from clients.speaker.main import ConfigError, load_config
from clients.speaker.playout import Playout, volume_gain
from streamer.control.broker import STREAMER_USER
from tests.harness.audio import correlation, peak_hz, rms_dbfs
from tests.harness.broker import client, fleet_on, start_broker
from tests.harness.keys import STREAM_KEY_ARGS
from tests.harness.sink import SparseSink
from tests.harness.speaker import SpeakerProcess, speaker_process
from tests.harness.upstream import TONE_DBFS, TONE_PEAK, ToneUpstream, serving
from tests.harness.wait import until
from tests.harness.zones import KP1
from wire.messages import EmergencyState, zone_emergency_topic
from wire.packet import RtpPacket
from wire.priority import Priority

pytestmark = pytest.mark.realtime  # audio against the wall clock: see conftest.py

RATE = 48_000
FRAME = 960
SSRC = 0x4242
T0 = 1_795_402_800.0  # the fake wall clock starts here
NORMAL, EMERGENCY = 7, 4242  # broadcast ids
EMERGENCY_LEVEL = Priority.EMERGENCY  # what the RTP priority extension carries


# --------------------------------------------------------------------------- sans-IO helpers


class ValueDecoder:
    """Each packet decodes to 960 samples of 100 * payload[0]; concealment to 1000."""

    def set_gain(self, gain: float) -> bool:
        return False  # the playout applies the volume

    def decode(self, payload: bytes, frame_size: int, fec: bool = False) -> bytes:
        value = 100 * payload[0] if payload and not fec else 1000
        return np.full(FRAME, value, dtype="<i2").tobytes()


def packet(seq: int, bid: int, priority: int, value: int = 100) -> RtpPacket:
    return RtpPacket(SSRC, seq, seq * FRAME, bytes([value // 100]), broadcast_id=bid,
                     priority=priority)


def make_playout(**kw: Any) -> tuple[Playout, SparseSink, list[dict[str, Any]]]:
    sink, events = SparseSink(), []
    return Playout(sink, ValueDecoder(), T0, on_event=events.append, **kw), sink, events


def stream(p: Playout, first_seq: int, frames: list[tuple[int, int]], start: float) -> None:
    """Hand ``frames`` (broadcast id, priority) to the playout as packets captured 20 ms apart
    from ``start``, each decoding to 10000."""
    for k, (bid, priority) in enumerate(frames):
        p.receive(packet(first_seq + k, bid, priority, 10_000), start + k * 0.02)


# --------------------------------------------------------------------------- jitter, playout


def test_jitter_buffer_keeps_each_packets_priority_and_concealment_inherits_the_last() -> None:
    jb = JitterBuffer()
    jb.push(SSRC, 1, 0, T0, b"\x01", EMERGENCY, EMERGENCY_LEVEL)
    jb.push(SSRC, 3, 0, T0, b"\x03", NORMAL, 1)  # 2 is lost
    jb.push(SSRC, 4, 0, T0, b"\x04", EMERGENCY, EMERGENCY_LEVEL)
    frames = [jb.pop() for _ in range(5)]
    assert [(f.kind, f.broadcast_id, f.priority) for f in frames] == [
        (FrameKind.PACKET, EMERGENCY, 3),
        (FrameKind.FEC, NORMAL, 3),  # recovered from packet 3, at the priority of packet 1
        (FrameKind.PACKET, NORMAL, 1),
        (FrameKind.PACKET, EMERGENCY, 3),
        (FrameKind.PLC, EMERGENCY, 3),  # the stream stopped in an emergency: it stays one
    ]


@pytest.mark.parametrize("muted", [True, False])
def test_level_3_frames_play_at_the_emergency_volume_then_the_operator_setting_returns(
        muted: bool) -> None:
    p, sink, events = make_playout(volume_pct=20, muted=muted)
    captured: list[tuple[int, bytes]] = []
    p.capture = lambda bid, pcm: captured.append((bid, pcm))
    start = T0 + 1.0
    stream(p, 1, [(NORMAL, 1)] * 5 + [(EMERGENCY, EMERGENCY_LEVEL)] * 10 + [(NORMAL, 1)] * 5,
           start)
    playing = []
    for k in range(25):
        p.tick(start + 0.3 + k * 0.02)
        playing.append(p.emergency_playing)
    p.tick(start + 3.0)
    first = round((start + 0.3 - p.timeline.t0) * RATE)
    frames = sink.span(first, first + 20 * FRAME).reshape(20, FRAME).astype(float)
    operator = 0 if muted else int(10_000 * volume_gain(20))  # 20 %: -40 dB
    assert np.all(frames[:5] == operator)
    assert np.all(frames[6:15] == 10_000) and np.all(frames[5, 480:] == 10_000)
    assert np.all(frames[16:] == operator) and np.all(frames[15, 480:] == operator)
    # 10 ms glides in and out: no step, and nothing beyond the two gains
    up, down = frames[5, :480], frames[15, :480]
    assert np.all(np.diff(up) >= 0) and up[0] < operator + 10_000 / 100
    assert np.all(np.diff(down) <= 0) and down[-1] < operator + 10_000 / 100
    assert np.max(np.abs(np.diff(frames.ravel()))) < 10_000 / 400
    # the operator's settings are untouched
    assert (p.volume_pct, p.muted) == (20, muted)
    assert [(e["event"], e["broadcast"], e["priority"]) for e in events] == [
        ("play_start", NORMAL, 1), ("play", NORMAL, 1), ("play_start", EMERGENCY, 3),
        ("play", EMERGENCY, 3), ("play_start", NORMAL, 1), ("play", NORMAL, 1)]
    assert True in playing and not playing[-1] and not p.emergency_playing
    # the cache receives the emergency's PCM before volume, and nothing else
    assert [bid for bid, _ in captured] == [EMERGENCY] * 10
    assert all(np.all(np.frombuffer(pcm, "<i2") == 10_000) for _, pcm in captured)


def test_emergency_volume_comes_from_the_setting() -> None:
    p, sink, _ = make_playout(volume_pct=20, muted=True, emergency_volume_pct=80)
    stream(p, 1, [(EMERGENCY, EMERGENCY_LEVEL)] * 3, T0 + 1.0)
    p.tick(T0 + 2.0)
    frames = [pcm for _, pcm in sink.writes]
    assert len(frames) == 3 + 5  # three packets, then five concealed frames
    assert frames[1].max() == frames[1].min() == int(10_000 * volume_gain(80))
    assert frames[-1].max() == int(1000 * volume_gain(80))  # concealment stays forced


def test_local_replay_plays_forced_and_the_first_stream_packet_stops_it() -> None:
    p, sink, events = make_playout(volume_pct=20, muted=True)
    p.tick(T0 + 1.0)
    cached = np.full(RATE * 2, 5_000, dtype=np.int16)  # 2 s
    p.play_local(cached, EMERGENCY)
    start = p.timeline.cursor
    for k in range(25):  # 0.5 s
        p.tick(T0 + 1.0 + k * 0.02)
    assert p.local_playing and p.emergency_playing
    played = sink.span(start + 480, p.timeline.cursor)
    assert len(played) > RATE * 0.45 and np.all(played == 5_000)
    p.receive(packet(1, NORMAL, 1), T0 + 1.5)  # the network is back
    assert not p.local_playing
    assert [(e["event"], e.get("local")) for e in events] == [("play_start", True),
                                                              ("play", True)]
    assert events[1]["end"] == pytest.approx(p.timeline.time(p.timeline.cursor))
    # the stream plays at the operator's setting again (muted), after a 10 ms glide
    p.tick(T0 + 2.5)
    back = sink.span(p.timeline.index(T0 + 1.8), p.timeline.cursor)
    assert 0 < back[0] < 100 and back[480:].max() == 0
    # a replay that runs to its end is logged as ending there
    p.play_local(cached[:RATE // 10], EMERGENCY)
    at = p.timeline.time(p.timeline.cursor)
    p.tick(T0 + 3.0)
    assert events[-1]["event"] == "play" and events[-1]["local"] is True
    assert events[-1]["end"] - events[-1]["start"] == pytest.approx(0.1)
    assert events[-1]["start"] == pytest.approx(at)


# --------------------------------------------------------------------------- states, cache


def state(eid: int = EMERGENCY, **kw: Any) -> EmergencyState:
    fields: dict[str, Any] = {"id": eid, "active": True, "repeat_s": 120.0, "started": T0}
    return EmergencyState(**(fields | kw))


def test_latest_active_emergency_is_current_and_an_end_is_final() -> None:
    e = Emergencies()
    assert e.update(state(1, started=T0)) == "accepted"
    assert e.update(state(2, started=T0 + 10, volume=80.0)) == "accepted"
    assert e.update(state(1, started=T0)) == "duplicate"
    assert cast(EmergencyState, e.current(T0 + 20)).id == 2
    assert e.update(state(2, started=T0 + 10, volume=80.0, active=False)) == "accepted"
    assert cast(EmergencyState, e.current(T0 + 20)).id == 1
    assert e.update(state(2, started=T0 + 10, volume=80.0)) == "stale"  # no coming back
    assert cast(EmergencyState, e.latest()).volume == 80.0
    assert e.update(state(3, started=T0 + 30, expires=T0 + 40)) == "accepted"
    assert cast(EmergencyState, e.current(T0 + 39)).id == 3
    assert cast(EmergencyState, e.current(T0 + 40)).id == 1  # 3 expired
    for k in range(100):  # bounded
        e.update(state(100 + k, started=T0 + 100 + k))
    assert len(e.states) == 32 and min(s.id for s in e.states) == 168


def test_cache_round_trip_keeps_the_whole_take_and_only_the_latest_emergency(
        tmp_path: Path) -> None:
    cache = EmergencyCache(tmp_path / "c")
    assert cache.load() is None and cache.load_states() == []
    pcm = (np.arange(RATE) % 2000 - 1000).astype(np.int16)
    cache.store(CachedEmergency(5, T0, pcm, T0 + 60))
    loaded = cast(CachedEmergency, EmergencyCache(tmp_path / "c").load())
    assert (loaded.id, loaded.started, loaded.last_played) == (5, T0, T0 + 60)
    assert np.array_equal(loaded.pcm, pcm)
    meta = json.loads((tmp_path / "c" / "emergency.json").read_text())
    assert meta["duration_s"] == 1.0 and meta["id"] == 5
    cache.store(CachedEmergency(6, T0 + 100, pcm[:100], T0 + 100))
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "emergency-6.wav", "emergency.json"]
    cache.store_states([state(6, started=T0 + 100)])
    assert EmergencyCache(tmp_path / "c").load_states() == [state(6, started=T0 + 100)]


@pytest.mark.parametrize("damage", ["meta", "wav", "states"])
def test_a_damaged_cache_is_no_cache(tmp_path: Path, damage: str) -> None:
    cache = EmergencyCache(tmp_path)
    cache.store(CachedEmergency(5, T0, np.ones(960, dtype=np.int16), T0))
    cache.store_states([state()])
    target = {"meta": "emergency.json", "wav": "emergency-5.wav", "states": "states.json"}
    (tmp_path / target[damage]).write_bytes(b'{"id": "five"' if damage != "wav" else b"RIFF")
    if damage == "states":
        assert cache.load_states() == [] and cache.load() is not None
    else:
        assert cache.load() is None and cache.load_states() == [state()]


def test_recorder_keeps_one_broadcast_and_at_most_its_cap() -> None:
    r = EmergencyRecorder(max_s=0.05)  # 2400 samples
    r.add(1, bytes(1920))
    r.add(2, bytes(1920))  # another broadcast: starts over
    r.add(2, bytes(1920))
    r.add(2, bytes(1920))
    assert r.take(1) == []
    assert sum(map(len, r.take(2))) == 4800
    assert r.take(2) == []


# --------------------------------------------------------------------------- replay scheduler


class Scene:
    """A playout and an EmergencyPath on a fake clock, with the cache in a real directory."""

    def __init__(self, directory: Path, volume_pct: float = 20.0) -> None:
        self.events: list[dict[str, Any]] = []
        self.sink = SparseSink()
        self.playout = Playout(self.sink, ValueDecoder(), T0, volume_pct=volume_pct,
                               muted=True, on_event=self._event)
        cache = EmergencyCache(directory)
        self.path = EmergencyPath(self.playout, cache, cached=cache.load(),
                                  states=cache.load_states())
        self.playout.capture = self.path.recorder.add
        self.now = T0

    def _event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.path.on_event(event)

    def run(self, until: float, lost: bool) -> None:
        """Advance the clock to ``until`` in 20 ms steps, playout and scheduler both."""
        while self.now < until:
            self.now = min(until, self.now + 0.02)
            self.playout.tick(self.now)
            self.path.tick(self.now, lost)

    def local_starts(self) -> list[float]:
        return [e["start"] for e in self.events if e["event"] == "play_start" and e.get("local")]


def test_scheduler_replays_on_the_cadence_until_cancelled_then_again_after_a_restart(
        tmp_path: Path) -> None:
    s = Scene(tmp_path)
    s.path.on_state(state(repeat_s=120.0, started=T0), s.now)
    stream(s.playout, 1, [(EMERGENCY, EMERGENCY_LEVEL)] * 50, T0 + 1.0)  # 1 s, at T0 + 1.3
    s.run(T0 + 5, lost=False)
    cached = cast(CachedEmergency, EmergencyCache(tmp_path).load())  # on disk already
    # 50 packets and the 5 frames of concealment that followed them: what the horn played
    assert (cached.id, len(cached.pcm), cached.last_played) == (EMERGENCY, 55 * FRAME,
                                                                pytest.approx(T0 + 1.3))
    s.run(T0 + 121.5, lost=False)
    assert s.local_starts() == []  # due, but the stream is there
    s.run(T0 + 122, lost=True)
    assert s.local_starts() == [pytest.approx(T0 + 121.5, abs=0.05)]
    s.run(T0 + 130, lost=True)
    (replay,) = [e for e in s.events if e["event"] == "play" and e.get("local")]
    assert replay["end"] - replay["start"] == pytest.approx(1.1)
    a = s.playout.timeline.index(replay["start"])
    assert np.all(s.sink.span(a + 480, a + 50 * FRAME) == 10_000)  # forced, though muted
    assert s.path.replays == 1
    s.run(T0 + 250, lost=True)
    assert s.local_starts() == [pytest.approx(T0 + 121.5, abs=0.05),
                                pytest.approx(T0 + 241.5, abs=0.05)]
    # a restart finds the audio, the state and the cadence on disk
    again = Scene(tmp_path)
    again.now = T0 + 250
    again.run(T0 + 370, lost=True)
    assert again.local_starts() == [pytest.approx(T0 + 361.5, abs=0.05)]
    # cancelled in the middle of a replay: it stops at once, and for good
    again.run(T0 + 481.8, lost=True)
    again.path.on_state(state(repeat_s=120.0, started=T0, active=False), again.now)
    assert not again.playout.local_playing
    assert again.events[-1]["end"] == pytest.approx(T0 + 481.8, abs=0.03)
    again.run(T0 + 800, lost=True)
    assert len(again.local_starts()) == 2


def test_scheduler_never_replays_after_expiry_nor_without_a_cadence(tmp_path: Path) -> None:
    s = Scene(tmp_path, volume_pct=100)
    s.path.on_state(state(repeat_s=60.0, started=T0, expires=T0 + 130.3), s.now)
    stream(s.playout, 1, [(EMERGENCY, EMERGENCY_LEVEL)] * 50, T0 + 1.0)
    s.run(T0 + 5, lost=False)
    s.run(T0 + 400, lost=True)
    # replays at 61.3 and 121.3; the next would be at 181.3, after expiry
    assert s.local_starts() == [pytest.approx(T0 + 61.3, abs=0.05),
                                pytest.approx(T0 + 121.3, abs=0.05)]
    last = [e for e in s.events if e["event"] == "play" and e.get("local")][-1]
    assert last["end"] == pytest.approx(T0 + 121.3 + 1.1, abs=0.05)  # it ended on its own
    s2 = Scene(tmp_path / "2")
    s2.path.on_state(state(repeat_s=60.0, started=T0, expires=T0 + 61.5), s2.now)
    stream(s2.playout, 1, [(EMERGENCY, EMERGENCY_LEVEL)] * 50, T0 + 1.0)
    s2.run(T0 + 5, lost=False)
    s2.run(T0 + 61.4, lost=True)
    assert s2.playout.local_playing  # started at 61.3 ...
    s2.run(T0 + 63, lost=True)
    local = [e for e in s2.events if e["event"] == "play" and e.get("local")]
    assert local[-1]["end"] == pytest.approx(T0 + 61.5, abs=0.05)  # ... and cut at expires
    s3 = Scene(tmp_path / "3")
    s3.path.on_state(state(repeat_s=None), s3.now)  # once is enough
    stream(s3.playout, 1, [(EMERGENCY, EMERGENCY_LEVEL)] * 50, T0 + 1.0)
    s3.run(T0 + 1000, lost=True)
    assert s3.local_starts() == []


def test_a_shorter_take_of_the_same_emergency_leaves_the_whole_one_cached(
        tmp_path: Path) -> None:
    s = Scene(tmp_path)
    stream(s.playout, 1, [(EMERGENCY, EMERGENCY_LEVEL)] * 50, T0 + 1.0)
    s.run(T0 + 5, lost=False)
    stream(s.playout, 100, [(EMERGENCY, EMERGENCY_LEVEL)] * 10, T0 + 10.0)  # cut short
    s.run(T0 + 15, lost=False)
    cached = cast(CachedEmergency, EmergencyCache(tmp_path).load())
    assert (cached.id, len(cached.pcm)) == (EMERGENCY, 55 * FRAME)
    assert cached.last_played == pytest.approx(T0 + 10.3)  # the cadence counts from it
    stream(s.playout, 200, [(EMERGENCY + 1, EMERGENCY_LEVEL)] * 10, T0 + 20.0)
    s.run(T0 + 25, lost=False)
    cached = cast(CachedEmergency, EmergencyCache(tmp_path).load())
    assert (cached.id, len(cached.pcm)) == (EMERGENCY + 1, 15 * FRAME)  # a new one replaces


def test_replay_rules_in_one_table() -> None:
    c = CachedEmergency(EMERGENCY, T0, np.zeros(960, np.int16), last_played=T0)
    st = state(repeat_s=60.0)
    assert replay_due(st, c, None, T0 + 60, lost=True)
    assert not replay_due(st, c, None, T0 + 59, lost=True)
    assert not replay_due(st, c, None, T0 + 60, lost=False)
    assert not replay_due(state(99, repeat_s=60.0), c, None, T0 + 60, lost=True)  # not cached
    assert replay_due(st, c, 4.0, T0 + 4, lost=True)  # the override
    assert not replay_due(state(repeat_s=None), c, 4.0, T0 + 100, lost=True)
    assert not stream_lost(2.9, subscribed=False, offline_after_s=10, handshake_s=3)  # booting
    assert stream_lost(3.0, subscribed=False, offline_after_s=10, handshake_s=3)
    assert not stream_lost(9.9, subscribed=True, offline_after_s=10, handshake_s=3)
    assert stream_lost(10.0, subscribed=True, offline_after_s=10, handshake_s=3)


def test_emergency_volume_follows_the_latest_state_and_is_persisted(tmp_path: Path) -> None:
    s = Scene(tmp_path)
    assert s.playout.emergency_volume_pct == 100.0
    s.path.on_state(state(volume=70.0), s.now)
    assert s.playout.emergency_volume_pct == 70.0
    assert Scene(tmp_path).playout.emergency_volume_pct == 70.0
    assert s.path.messages == {"accepted": 1, "duplicate": 0, "stale": 0}


@pytest.mark.parametrize("argv, key", [
    (["--emergency-repeat-s", "0"], "emergency_repeat_s"),
    (["--offline-after-s", "-1"], "offline_after_s"),
    (["--emergency-volume", "101"], "emergency_volume"),
])
def test_bad_emergency_settings_name_the_key(argv: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}"):
        load_config(["--channel", "c", "--upstream", "h:1", *argv], {})


def test_cache_dir_defaults_to_one_per_speaker_under_the_var_dir() -> None:
    cfg = load_config(["--channel", "c", "--upstream", "h:1", "--id", "spk-9",
                       "--var-dir", "/srv/loa", *STREAM_KEY_ARGS], {})
    assert Path(cfg.cache_dir) == Path("/srv/loa/cache/spk-9")


# --------------------------------------------------------------------------- end to end


def stepped_tone(seconds: float, seed: int) -> np.ndarray:
    """A tone stepping to a random pitch every 100 ms (phase-continuous, peak TONE_PEAK): a
    constant level, and a shape that matches itself at one alignment only."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    hz = np.repeat(rng.choice([400, 500, 630, 750, 880, 1000], size=n // 4800 + 1), 4800)[:n]
    return (TONE_PEAK * 32767 * np.sin(2 * np.pi * np.cumsum(hz) / RATE)).astype("<i2")


ALARM = stepped_tone(2.4, seed=7)
TONE = (TONE_PEAK * 32767 * np.sin(2 * np.pi * 1000 * np.arange(FRAME) / RATE)).astype("<i2")


class ProgramUpstream(ToneUpstream):
    """The 1 kHz tone upstream of the harness (broadcast NORMAL, level 1) for any channel,
    except while a queued insert plays (its own broadcast id and level). With
    ``cut_after_insert`` it falls silent for good after the insert, handshakes included: the
    speaker has lost its network."""

    def __init__(self) -> None:
        super().__init__()
        self.insert: tuple[int, int, np.ndarray] | None = None
        self.cut_after_insert = False
        self._pos = 0

    def play(self, broadcast_id: int, priority: int, pcm: np.ndarray) -> None:
        self.insert = (broadcast_id, priority, pcm)

    def frame(self, n: int) -> tuple[bytes, int, int]:
        if self.insert is None:
            return TONE.tobytes(), NORMAL, 1
        bid, priority, whole = self.insert
        pcm, self._pos = whole[self._pos : self._pos + FRAME], self._pos + FRAME
        if self._pos >= len(whole):
            self.insert, self._pos, self.cut = None, 0, self.cut_after_insert
        return pcm.tobytes(), bid, priority


@pytest.fixture
async def upstream() -> AsyncIterator[ProgramUpstream]:
    async with serving(ProgramUpstream) as up:
        yield up


@contextlib.asynccontextmanager
async def speaker(tmp_path: Path, name: str, upstream: str, *extra: str,
                  broker: Any = None, password: str = "") -> AsyncIterator[SpeakerProcess]:
    """A ``loa speaker`` process (zone KP1) recording to WAV; on MQTT if ``broker``."""
    args = ["--channel", KP1, "--upstream", upstream, *extra]
    if broker is not None:
        pw_file = tmp_path / f"{name}.password"
        pw_file.write_text(password + "\n")
        args += ["--mqtt-url", broker.url, "--mqtt-password-file", str(pw_file)]
    async with speaker_process(tmp_path, name, *args, speaker_id=name.partition("#")[0]) as sp:
        yield sp
        assert "Traceback" not in sp.stderr.read_text(), sp.stderr.read_text()


def inner(event: dict[str, Any], lead_s: float = 0.2, tail_s: float = 0.2) -> tuple[float, float]:
    """A play record's span without its edges (decoder start-up, glides, PLC tail)."""
    return event["start"] + lead_s, event["end"] - tail_s


def same_audio(streamed: np.ndarray, replayed: np.ndarray) -> float:
    """How well ``replayed`` (with 50 ms of slack either side) repeats ``streamed``."""
    slack = RATE // 20
    return correlation(streamed[slack:-slack], replayed)


async def test_emergency_packets_override_volume_and_mute_then_the_setting_returns(
        upstream: ProgramUpstream, tmp_path: Path) -> None:
    async with speaker(tmp_path, "quiet", upstream.addr, "--volume", "20",
                       "--cache-dir", str(tmp_path / "quiet-cache")) as quiet, \
            speaker(tmp_path, "muted", upstream.addr, "--volume", "20", "--mute",
                    "--cache-dir", str(tmp_path / "muted-cache")) as muted:
        await until(quiet.subscribed, 10, "quiet subscribed")
        await until(muted.subscribed, 10, "muted subscribed")
        await asyncio.sleep(1.5)
        upstream.play(EMERGENCY, EMERGENCY_LEVEL, ALARM)

        async def playing() -> bool:
            return (await muted.metrics())["loa_speaker_emergency_playing"] == 1

        await until(playing, 5, "loa_speaker_emergency_playing 1")
        assert (await muted.health())["emergency"]["playing"] is True
        await until(lambda: bool(muted.plays(broadcast=EMERGENCY)), 10, "alarm played")
        await asyncio.sleep(1.8)  # the tone again, past the playout delay
        assert (await muted.metrics())["loa_speaker_emergency_playing"] == 0
        await asyncio.gather(quiet.stop(), muted.stop())
    for sp in (quiet, muted):
        plays = sp.plays()
        assert [(e["broadcast"], e["priority"]) for e in plays] == [
            (NORMAL, 1), (EMERGENCY, EMERGENCY_LEVEL), (NORMAL, 1)], plays
        before, alarm, after = (sp.window(*inner(e)) for e in plays)
        # the 100 % level, whatever volume and mute say
        assert abs(rms_dbfs(alarm) - TONE_DBFS) < 1.0, (sp.id, rms_dbfs(alarm))
        assert same_audio(ALARM[RATE // 5 : -RATE // 5] / 32768, alarm) > 0.8
        if sp is quiet:  # 20 % is -40 dB, before and after
            expected = TONE_DBFS + 20 * math.log10(volume_gain(20))
            for x in (before, after):
                assert abs(rms_dbfs(x) - expected) < 1.0, rms_dbfs(x)
                assert abs(peak_hz(x) - 1000) < 5
        else:  # muted, before and after
            assert not before.any() and not after.any()
        # the cache holds what played, before volume
        cached = cast(CachedEmergency, EmergencyCache(tmp_path / f"{sp.id}-cache").load())
        assert cached.id == EMERGENCY and cached.started == plays[1]["start"]
        assert abs(cached.duration_s - 2.4) < 0.15
        assert same_audio(alarm, np.asarray(cached.pcm) / 32768) > 0.95


async def test_cut_off_speaker_replays_the_cached_emergency_until_it_is_cancelled(
        mosquitto: Any, upstream: ProgramUpstream, tmp_path: Path) -> None:
    pw = start_broker(mosquitto, {"spk-e": KP1})
    cache = str(tmp_path / "cache")
    opts = ("--volume", "20", "--mute", "--failover-s", "1", "--emergency-repeat-s", "4",
            "--cache-dir", cache)
    alarm = EmergencyState(id=EMERGENCY, active=True, volume=100.0, repeat_s=3600.0,
                           started=time.time(), label="lũ quét")
    async with fleet_on(mosquitto, pw) as (fleet, rec), \
            client(mosquitto, STREAMER_USER, pw[STREAMER_USER]) as streamer_side:
        await fleet.publish_emergency(KP1, alarm)
        await fleet.publish_emergency("brvt.vung-tau", alarm)  # the same again: a duplicate
        await streamer_side.publish(zone_emergency_topic("brvt"), b'{"id": 1, "active": "yes"}',
                                    qos=1, retain=True)
        async with speaker(tmp_path, "spk-e", upstream.addr, *opts, broker=mosquitto,
                           password=pw["spk-e"]) as sp:
            await until(sp.subscribed, 10, "subscribed")

            async def knows() -> bool:
                return (await sp.health())["emergency"]["current"] == EMERGENCY

            await until(knows, 10, "emergency state received")
            metrics = await sp.metrics()
            assert metrics["loa_mqtt_bad_payloads_total[reason=invalid_fields]"
                           "[topic_kind=emergency]"] == 1
            assert metrics["loa_speaker_emergency_states_total[outcome=duplicate]"] == 1
            assert metrics["loa_speaker_emergency_states_total[outcome=accepted]"] == 1
            upstream.cut_after_insert = True
            upstream.play(EMERGENCY, EMERGENCY_LEVEL, ALARM)
            await until(lambda: len(sp.plays(local=True)) >= 2, 30, "two local replays")
            assert (await sp.metrics())["loa_speaker_emergency_replays_total"] >= 2
            await until(lambda: sum(ev.broadcast == EMERGENCY for _, ev in rec.plays) >= 3, 10,
                        "proof of play for the stream and both replays")
            await sp.stop()
        (streamed,) = sp.plays(broadcast=EMERGENCY, local=False)
        first, second = sp.plays(local=True)[:2]
        assert first["broadcast"] == second["broadcast"] == EMERGENCY
        assert first["priority"] == EMERGENCY_LEVEL
        # every 4 s from when it last played: the stream at first, then its own replays
        assert 3.95 < first["start"] - streamed["start"] < 7.0
        assert 3.9 < second["start"] - first["start"] < 4.6
        heard = sp.window(*inner(streamed))
        for replay in (first, second):
            assert replay["end"] - replay["start"] == pytest.approx(
                streamed["end"] - streamed["start"], abs=0.15)
            again = sp.window(*inner(replay, 0.15, 0.15))
            assert same_audio(heard, again) > 0.8
            assert abs(rms_dbfs(again) - TONE_DBFS) < 1.0  # forced: 100 %, though 20 % muted

        # Reboot with no network at all: the cache and the state are still there.
        dead, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        nowhere = "127.0.0.1:{}".format(dead.get_extra_info("sockname")[1])
        try:
            async with speaker(tmp_path, "spk-e#2", nowhere, *opts, broker=mosquitto,
                               password=pw["spk-e"]) as sp2:
                await until(lambda: any(e["event"] == "play_start" for e in sp2.events()), 15,
                            "replay after reboot")
                await asyncio.sleep(0.8)
                t_cancel = time.time()
                await fleet.publish_emergency(KP1, alarm.model_copy(update={"active": False}))
                await until(lambda: bool(sp2.plays(local=True)), 5, "replay stopped")
                await asyncio.sleep(5.5)  # longer than the cadence: no replay comes
                await sp2.stop()
        finally:
            dead.close()
    (cut,) = sp2.plays()
    assert cut["local"] is True and cut["broadcast"] == EMERGENCY
    assert cut["end"] - t_cancel < 1.0 and cut["end"] - cut["start"] < 2.2
    assert len([e for e in sp2.events() if e["event"] == "play_start"]) == 1
    assert same_audio(heard[: int(0.5 * RATE)],
                      sp2.window(cut["start"], cut["start"] + 0.7)) > 0.8
    assert not sp2.window(cut["end"] + 0.05, cut["end"] + 5.0).any()
