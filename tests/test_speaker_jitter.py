"""Unit tests of the speaker: jitter buffer, playout placement, WAV sink and configuration."""

from __future__ import annotations

import math
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clients.speaker.jitter import Arrival, FrameKind, JitterBuffer
from clients.speaker.main import ConfigError, load_config, open_sink
from clients.speaker.output import NullSink, SoundcardSink, WavSink
from clients.speaker.playout import Playout, Timeline, level_dbfs, volume_gain
from tests.harness.keys import STREAM_KEY_ARGS
from wire.packet import MalformedPacket, RtpPacket

SSRC = 0x1234


def push(jb: JitterBuffer, seq: int, ssrc: int = SSRC, bid: int = 0) -> Arrival:
    return jb.push(ssrc, seq, seq * 960, 1000.0 + seq * 0.02, bytes([seq & 0xFF]), bid)


def pop_all(jb: JitterBuffer) -> list[tuple[FrameKind, int]]:
    out = []
    while jb.next_present() is not None:
        f = jb.pop()
        out.append((f.kind, f.seq & 0xFFFF))
    return out


# --------------------------------------------------------------------------- jitter buffer


def test_reordered_packets_come_out_in_sequence() -> None:
    jb = JitterBuffer()
    for s in (10, 12, 11, 14, 13):
        assert push(jb, s) is Arrival.STORED
    assert pop_all(jb) == [(FrameKind.PACKET, s) for s in range(10, 15)]


def test_reordering_before_first_frame_starts_earlier() -> None:
    jb = JitterBuffer()
    push(jb, 5)
    push(jb, 4)
    assert [s for _, s in pop_all(jb)] == [4, 5]


def test_single_loss_asks_for_fec_from_the_following_packet() -> None:
    jb = JitterBuffer()
    push(jb, 1)
    push(jb, 3)
    assert jb.pop().kind is FrameKind.PACKET
    assert jb.next_present() == (1, 1000.0 + 3 * 0.02)  # one missing before seq 3
    f = jb.pop()
    assert (f.kind, f.seq, f.payload) == (FrameKind.FEC, 2, bytes([3]))
    assert f.capture_time is None
    f = jb.pop()
    assert (f.kind, f.seq) == (FrameKind.PACKET, 3)
    assert jb.lost == 1


def test_double_loss_is_plc_then_fec() -> None:
    jb = JitterBuffer()
    push(jb, 1, bid=7)
    push(jb, 4, bid=7)
    kinds = [(f.kind, f.broadcast_id) for f in (jb.pop() for _ in range(4))]
    assert kinds == [(FrameKind.PACKET, 7), (FrameKind.PLC, 7), (FrameKind.FEC, 7),
                     (FrameKind.PACKET, 7)]


def test_sequence_wraps_at_16_bits() -> None:
    jb = JitterBuffer()
    for s in (65534, 0, 65535, 1, 2):
        assert push(jb, s) is Arrival.STORED
    assert [s for _, s in pop_all(jb)] == [65534, 65535, 0, 1, 2]
    assert push(jb, 3) is Arrival.STORED
    assert jb.pop().seq == 65536 + 3  # extended numbering keeps counting


def test_duplicates_and_late_packets_are_dropped_and_counted() -> None:
    jb = JitterBuffer()
    push(jb, 1)
    push(jb, 2)
    assert push(jb, 2) is Arrival.DUPLICATE
    jb.pop()
    assert push(jb, 1) is Arrival.LATE  # already played
    jb.pop()
    jb.pop()  # seq 3 concealed as PLC
    assert push(jb, 3) is Arrival.LATE  # already concealed
    assert (jb.duplicates, jb.late) == (1, 2)


def test_big_jump_resets_only_when_the_next_packet_confirms_it() -> None:
    jb = JitterBuffer()
    for s in (100, 101):
        push(jb, s)
    jb.pop()
    assert push(jb, 40_000) is Arrival.HELD  # a stray packet must not flush the buffer
    assert push(jb, 102) is Arrival.STORED
    assert push(jb, 40_001) is Arrival.RESET  # upstream restarted: believe it
    assert jb.resets == 1
    assert [s for _, s in pop_all(jb)] == [40_000, 40_001]


def test_a_restarted_sender_a_little_behind_is_a_new_stream_not_late_packets() -> None:
    """A quiet channel sends few packets: a streamer restarted from seq 0 lands within the
    buffer's reach behind the old numbering. Captured seconds later, it is a new stream."""
    jb = JitterBuffer()
    for s in range(300):
        push(jb, s)
    pop_all(jb)
    restart = 1000.0 + 300 * 0.02 + 2.0  # two seconds after the old stream's last packet
    assert jb.push(SSRC, 0, 0, restart, b"\x00", 7) is Arrival.HELD
    assert jb.push(SSRC, 1, 960, restart + 0.02, b"\x01", 7) is Arrival.RESET
    assert [s for _, s in pop_all(jb)] == [0, 1] and jb.late == 0
    # one of the old stream's, arriving late, is still late
    for s in range(2, 300):
        jb.push(SSRC, s, s * 960, restart + s * 0.02, bytes([s & 0xFF]), 7)
    pop_all(jb)
    assert push(jb, 250) is Arrival.LATE and jb.late == 1


def test_ssrc_change_resets_the_buffer() -> None:
    jb = JitterBuffer()
    for s in (1, 2, 3):
        push(jb, s)
    jb.pop()
    assert push(jb, 500, ssrc=0x9999) is Arrival.HELD
    assert push(jb, 501, ssrc=0x9999) is Arrival.RESET
    assert jb.ssrc == 0x9999 and jb.depth == 2
    assert [s for _, s in pop_all(jb)] == [500, 501]


def test_skip_jumps_a_hole() -> None:
    jb = JitterBuffer()
    push(jb, 1)
    push(jb, 9)
    jb.pop()
    assert jb.skip() == 7
    assert jb.pop().seq == 9
    assert jb.lost == 7


# --------------------------------------------------------------------------- playout


class FakeDecoder:
    """Each packet decodes to 960 samples of value 100 * payload[0]; FEC 2000, PLC 1000."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, int, bool]] = []

    def set_gain(self, gain: float) -> bool:
        return False  # the playout applies the volume

    def decode(self, payload: bytes, frame_size: int, fec: bool = False) -> bytes:
        self.calls.append((payload, frame_size, fec))
        if payload == b"\xff":
            raise MalformedPacket("corrupt")
        value = 1000 if not payload else 2000 if fec else 100 * payload[0]
        return np.full(960, value, dtype="<i2").tobytes()


class RecordingSink:
    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []

    def write(self, pcm: np.ndarray) -> None:
        self.chunks.append(np.array(pcm, dtype=np.int16))

    def write_silence(self, n: int) -> None:
        self.chunks.append(np.zeros(n, dtype=np.int16))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def pcm(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


T0 = 1_700_000_000.0


def make_playout(**kw: Any) -> tuple[Playout, RecordingSink, FakeDecoder, list[dict[str, Any]]]:
    sink, dec, events = RecordingSink(), FakeDecoder(), []
    p = Playout(sink, dec, T0, on_event=events.append, **kw)
    return p, sink, dec, events


def rtp(seq: int, bid: int = 5, payload: bytes | None = None) -> RtpPacket:
    if payload is None:
        payload = bytes([seq % 100 + 1])
    return RtpPacket(SSRC, seq, seq * 960, payload, broadcast_id=bid)


def test_timeline_anchor_and_placement() -> None:
    tl = Timeline(T0 + 0.123456789, slack=24)
    assert tl.t0 * 48_000 == round(tl.t0 * 48_000)  # anchored on a sample
    assert tl.index(tl.t0 + 1.0) == 48_000
    assert tl.place(tl.t0 + 0.01, 960) == (480, 0)  # hole before the frame: zeros
    tl.cursor = 480
    assert tl.place(tl.t0 + 0.01, 960) == (0, 0)  # where it belongs: contiguous
    # within slack: contiguous, and one sample nearer (repeated or dropped) per frame
    assert tl.place(tl.t0 + 0.01 + 20 / 48_000, 960) == (1, 0)
    assert tl.place(tl.t0 + 0.01 - 20 / 48_000, 960) == (0, 1)
    assert tl.place(tl.t0 + 0.005, 960) == (0, 240)  # too late for its place: trimmed


@pytest.mark.parametrize("drift_ppm", [80.0, -60.0, 500.0])
def test_a_drifting_clock_stays_within_a_sample_of_the_streamers_timeline(
        drift_ppm: float) -> None:
    """Frames captured every 20 ms on the streamer's clock, played by a speaker whose clock
    runs ``drift_ppm`` fast (and 0.4 s off) but knows the shift: over a minute every frame
    begins within a sample of where the streamer's timeline puts it, with no gap or jump
    (the difference is taken up a sample at a time)."""
    r = drift_ppm * 1e-6
    off = 0.4
    c0 = T0 + 1.0

    def local(t: float) -> float:  # streamer time -> this speaker's clock
        return T0 + off + (t - T0) * (1 + r)

    p, sink, _, _ = make_playout(delay_ms=300)
    p.timeline = type(p.timeline)(local(T0), slack=24)
    frames = 3000
    starts = []
    for k in range(frames):
        capture = c0 + k * 0.02
        p.receive(rtp(k, payload=bytes([k % 200 + 1])), capture)
        now_streamer = capture + 0.29
        before = p.timeline.cursor
        p.tick(local(now_streamer), shift_s=now_streamer - local(now_streamer))
        starts.append(before)
    pcm = sink.pcm.astype(np.int64)
    assert np.count_nonzero(pcm[starts[1]:]) == len(pcm) - starts[1]  # no hole after the first
    edges = np.flatnonzero(np.diff(pcm)) + 1  # where one frame's value gives way to the next
    ideal = [round((local(c0 + k * 0.02 + 0.3) - p.timeline.t0) * 48_000)
             for k in range(1, frames - 1)]
    got = [int(edges[np.searchsorted(edges, i - 3)]) for i in ideal]
    errors = np.abs(np.array(got) - np.array(ideal))
    assert errors.max() <= 1, (errors.max(), int(np.argmax(errors)))
    if drift_ppm == 500.0:  # a drift the one-sample steps can only just follow
        assert p.late_samples == 0


def test_frame_plays_at_capture_time_plus_delay() -> None:
    p, sink, _, _ = make_playout(delay_ms=300)
    capture = T0 + 1.0
    p.receive(rtp(1), capture)
    assert p.tick(capture + 0.1) == 0  # not due before capture + delay - ptime
    assert p.tick(capture + 0.29) == 1
    pcm = sink.pcm
    first = int(np.flatnonzero(pcm)[0])
    assert first == round((capture + 0.3 - p.timeline.t0) * 48_000)
    assert np.all(pcm[first : first + 960] == 200)


def test_output_is_padded_with_silence_to_now() -> None:
    p, sink, _, _ = make_playout()
    p.tick(T0 + 0.5)
    assert len(sink.pcm) == 24_000 and not sink.pcm.any()


def test_consecutive_frames_are_contiguous_and_loss_uses_fec() -> None:
    p, sink, dec, _ = make_playout(delay_ms=300)
    capture = T0 + 1.0
    for seq in (1, 2, 4):  # 3 lost
        p.receive(rtp(seq), capture + (seq - 1) * 0.02)
    assert p.tick(capture + 0.35) == 4  # the last frame plays at capture + 0.36
    assert dec.calls[2] == (rtp(4).payload, 960, True)  # FEC from the following packet
    assert (p.fec, p.plc) == (1, 0)
    start = round((capture + 0.3 - p.timeline.t0) * 48_000)
    pcm = sink.pcm
    values = [int(pcm[start + k * 960 + 480]) for k in range(4)]
    assert values == [200, 300, 2000, 500]
    assert pcm[start - 1] == 0 and pcm[start + 4 * 960 - 1] == 500


def test_stream_stop_conceals_briefly_then_falls_silent() -> None:
    p, sink, _, _ = make_playout(max_conceal=3)
    p.receive(rtp(1), T0 + 1.0)
    p.tick(T0 + 3.0)
    assert (p.frames, p.plc) == (4, 3)  # one packet, three PLC frames, then silence
    assert len(sink.pcm) == 3 * 48_000


def test_long_hole_is_concealed_briefly_then_skipped() -> None:
    p, _, _, _ = make_playout(max_conceal=5)
    p.receive(rtp(1), T0 + 1.0)
    p.receive(rtp(50), T0 + 1.0 + 49 * 0.02)
    p.tick(T0 + 3.0)
    assert p.jitter.lost == 48 + 5  # the hole, then the PLC tail after seq 50
    assert p.plc == 5 + 5 and p.fec == 0  # five frames of the hole concealed, the rest silent


def test_a_hole_is_concealed_only_as_it_falls_due_so_late_packets_still_play() -> None:
    """A batch proven late (its signature was asked for again) or a packet sent again: the
    frames of the hole that are not yet due still play when their packets come, although a
    later packet was already waiting."""
    p, _, _, _ = make_playout(delay_ms=300, max_conceal=5)
    capture = T0 + 1.0
    p.receive(rtp(1), capture)
    p.receive(rtp(14), capture + 13 * 0.02)  # 2..13 not here yet (a late batch)
    p.tick(capture + 0.31)  # frame 1 and frame 2 (concealed) are due, not frame 3
    assert p.plc == 1
    for seq in range(3, 14):  # the rest of the batch, proven now
        p.receive(rtp(seq), capture + (seq - 1) * 0.02)
    p.tick(capture + 0.55)  # up to frame 14, at capture + 0.56
    assert p.plc == 1 and p.jitter.lost == 1 and p.frames == 14


def test_a_tick_ahead_conceals_a_missing_frame_only_a_packet_time_before_it_plays() -> None:
    """A playing speaker ticks every few packets and writes that far ahead (``ahead_s``);
    a missing frame (its batch's LOAS not read yet, a packet asked for again) waits until a
    packet time before its play time, as with a tick every packet, and ``wake_at`` says
    when to tick for it."""
    p, _, _, _ = make_playout(delay_ms=300, max_conceal=5)
    capture = T0 + 1.0  # frames 1, 2, 3, 4 play at capture + 0.30, 0.32, 0.34, 0.36
    for seq in (1, 2, 4):
        p.receive(rtp(seq), capture + (seq - 1) * 0.02)
    p.tick(capture + 0.28, ahead_s=0.1)
    assert (p.frames, p.plc) == (2, 0)  # frames 1 and 2; frame 3 not yet
    assert p.wake_at == pytest.approx(capture + 0.32)
    p.receive(rtp(3), capture + 0.04)  # it came meanwhile
    p.tick(capture + 0.32, ahead_s=0.1)
    assert (p.frames, p.plc, p.jitter.lost) == (4, 0, 0)
    assert p.wake_at == pytest.approx(capture + 0.36)  # the stream may go on: frame 5
    p.tick(capture + 0.36, ahead_s=0.1)
    assert p.plc == 1 and p.wake_at == pytest.approx(capture + 0.38)  # it did not


def test_the_level_meter_of_the_mqtt_side_takes_the_playouts_measurement() -> None:
    """With MQTT the playout measures each frame for proof of play and the sink's level
    meter (``ToneOverlay``) takes that measurement instead of summing the frame again: the
    level is still that of what was written."""
    from clients.speaker.mqtt import ToneOverlay

    inner = RecordingSink()
    overlay = ToneOverlay(inner)
    p = Playout(overlay, FakeDecoder(), T0, volume_pct=50, measure_level=True)
    capture = T0 + 1.0
    for seq in range(1, 4):
        p.receive(rtp(seq), capture + (seq - 1) * 0.02)
    p.tick(capture + 0.3 + 0.06)
    assert p.frames >= 3 and overlay.measured is None
    pcm = inner.pcm.astype(np.float64)
    expected = 10 * math.log10(float(np.sum(pcm * pcm)) / len(pcm) / 32768**2)
    assert overlay.take_level_dbfs() == pytest.approx(expected, abs=0.01)


def test_corrupt_payload_is_concealed_and_counted() -> None:
    p, sink, _, _ = make_playout()
    p.receive(rtp(1, payload=b"\xff"), T0 + 1.0)
    p.tick(T0 + 1.29)
    assert p.bad_payloads == 1 and p.plc == 1
    assert sink.pcm.max() == 1000


def test_volume_is_db_law_and_mute_silences() -> None:
    assert volume_gain(100) == 1.0
    assert volume_gain(0) == 0.0
    assert 20 * math.log10(volume_gain(50)) == pytest.approx(-25.0)
    p, sink, _, _ = make_playout(volume_pct=50)
    p.receive(rtp(99), T0 + 1.0)  # decodes to 10000
    p.tick(T0 + 1.29)
    assert sink.pcm.max() == int(10_000 * volume_gain(50))
    p.muted = True
    p.receive(rtp(100), T0 + 1.02)
    p.tick(T0 + 1.4)
    assert sink.pcm[-960:].max() == 0


def test_libopus_applies_the_volume_and_the_level_logged_is_what_played() -> None:
    """With the real decoder the volume is applied inside libopus (``OPUS_SET_GAIN``): the
    same tone played at 50 % is 25 dB below 100 %, in the samples and in the play log."""
    import opuslib

    from clients.speaker.playout import OpusDecoder

    enc = opuslib.Encoder(48_000, 1, opuslib.APPLICATION_AUDIO)
    tone = (0.5 * 32767 * np.sin(2 * np.pi * 1000 * np.arange(960 * 30) / 48_000)).astype("<i2")
    payloads = [enc.encode(tone[i : i + 960].tobytes(), 960) for i in range(0, len(tone), 960)]
    played = {}
    for volume in (100, 50):
        sink, events = RecordingSink(), []
        p = Playout(sink, OpusDecoder(), T0, on_event=events.append, volume_pct=volume)
        for seq, payload in enumerate(payloads, 1):
            p.receive(rtp(seq, payload=payload), T0 + 1.0 + seq * 0.02)
        p.tick(T0 + 2.0)
        p.close(T0 + 2.0)
        pcm = sink.pcm[np.flatnonzero(sink.pcm)[0]:].astype(np.float64)[960 * 5 : 960 * 25]
        played[volume] = (10 * math.log10(np.mean(pcm**2) / 32768**2), events[-1]["level_dbfs"])
    assert played[100][0] == pytest.approx(-9.0, abs=0.5)  # a -6 dBFS sine: -9 dB re square
    assert played[50][0] - played[100][0] == pytest.approx(-25.0, abs=0.05)
    assert played[50][1] - played[100][1] == pytest.approx(-25.0, abs=0.05)


def test_play_log_events_per_broadcast() -> None:
    p, _, _, events = make_playout(broadcast_gap_s=1.0)
    for seq in range(1, 6):
        p.receive(rtp(seq, bid=0 if seq == 1 else 5 if seq < 4 else 6), T0 + 1.0 + seq * 0.02)
    p.tick(T0 + 2.0)
    assert [(e["event"], e["broadcast"]) for e in events] == [
        ("play_start", 5), ("play", 5), ("play_start", 6)]
    play5 = events[1]
    assert play5["start"] == pytest.approx(T0 + 1.0 + 0.04 + 0.3)
    assert play5["end"] == pytest.approx(play5["start"] + 0.04)
    expected_level = level_dbfs(960 * (300**2 + 400**2), 2 * 960)
    assert play5["level_dbfs"] == pytest.approx(expected_level, abs=0.01)
    p.tick(T0 + 5.0)  # quiet for longer than broadcast_gap_s: broadcast 6 ended
    assert events[-1]["event"] == "play" and events[-1]["broadcast"] == 6


def test_without_a_reader_for_the_level_the_play_records_leave_it_out() -> None:
    runs = []
    for measure in (True, False):
        p, sink, _, events = make_playout(measure_level=measure)
        for seq in range(1, 4):
            p.receive(rtp(seq), T0 + 1.0 + seq * 0.02)
        p.tick(T0 + 5.0)
        runs.append((sink.pcm, events))
    (measured_pcm, measured), (pcm, events) = runs
    assert "level_dbfs" in measured[1] and "level_dbfs" not in events[1]
    del measured[1]["level_dbfs"]
    assert events == measured  # the same records, but for the level
    assert np.array_equal(pcm, measured_pcm) and pcm.any()  # and the same sound


def test_level_dbfs() -> None:
    assert level_dbfs(0.0, 0) == -120.0
    assert level_dbfs(32768.0**2 * 10, 10) == 0.0


# --------------------------------------------------------------------------- output, config


def test_wav_is_valid_while_growing(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    sink = WavSink(str(path), T0)
    sink.write(np.arange(100, dtype=np.int16))
    sink.write_silence(48_000)  # crosses one second: the header is patched without a flush
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (48_000, 2, 1)
        assert w.getnframes() == 48_100
        assert np.frombuffer(w.readframes(100), "<i2").tolist() == list(range(100))
    sink.write_silence(10)
    sink.close()
    with wave.open(str(path), "rb") as w:
        assert w.getnframes() == 48_110


def test_config_precedence_defaults_toml_env_cli(tmp_path: Path) -> None:
    toml = tmp_path / "speaker.toml"
    toml.write_text('channel = "c1"\nupstream = ["relay-a:5004", "10.0.0.2:5004"]\n'
                    'delay_ms = 250\nvolume = 80\n')
    env = {"LOA_SPEAKER_DELAY_MS": "400", "LOA_SPEAKER_VOLUME": "70"}
    cfg = load_config(["--config", str(toml), "--volume", "60", "--id", "sp1", *STREAM_KEY_ARGS],
                      env)
    assert cfg.channel == "c1" and cfg.id == "sp1"
    assert cfg.upstream == [("relay-a", 5004), ("10.0.0.2", 5004)]
    assert (cfg.delay_ms, cfg.volume) == (400, 60.0)  # env beats the file, the flag beats env
    assert cfg.bind == ("0.0.0.0", 0) and cfg.http is None and cfg.wav is None
    assert cfg.mute is False
    assert load_config(["--config", str(toml), "--mute", *STREAM_KEY_ARGS], {}).mute is True
    assert load_config(["--config", str(toml), *STREAM_KEY_ARGS],
                       {"LOA_SPEAKER_MUTE": "yes"}).mute is True


@pytest.mark.parametrize("argv, field", [
    (["--upstream", "h:1"], "channel"),
    (["--channel", "c"], "upstream"),
    (["--channel", "c", "--upstream", "nohost"], "upstream"),
    (["--channel", "c", "--upstream", "h:1", "--volume", "150"], "volume"),
])
def test_bad_config_names_the_field(argv: list[str], field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}"):
        load_config(argv, {})


def test_bad_mute_value_names_the_field() -> None:
    with pytest.raises(ConfigError, match="^mute"):
        load_config(["--channel", "c", "--upstream", "h:1"], {"LOA_SPEAKER_MUTE": "maybe"})


def test_without_wav_or_sound_card_the_output_is_null() -> None:
    cfg = load_config(["--channel", "c", "--upstream", "h:1", *STREAM_KEY_ARGS], {})
    if not SoundcardSink.available():
        assert isinstance(open_sink(cfg, T0), NullSink)
