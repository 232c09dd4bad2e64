"""The mixer on every core and over capacity (issue 15): encoder threads change no byte of any
channel, and when the host is over capacity the deadline guard makes normal and background
programmes cheaper while emergency and priority programmes go out first, untouched.

No timing here: overload is made deterministic by telling the guard how long each tick took.
"""

import math
import os
import threading
import time

import numpy as np
import opuslib
import pytest
from prometheus_client import CollectorRegistry

from common.opus import OpusEncoder
from streamer.mixer.clock import FrameClock
from streamer.mixer.guard import CHEAP_COMPLEXITY, DeadlineGuard
from streamer.mixer.mixer import Mixer
from streamer.mixer.program import Item
from streamer.mixer.sources.live import LiveBuffer
from streamer.mixer.sources.tone import Tone
from streamer.playout import set_thread_nice
from tests.harness.sink import Sent
from wire import packet
from wire.priority import Priority

N = 960  # 20 ms
#: more distinct programmes than one core encodes in real time (about 44 of speech, 56-61 of
#: tones at the default settings: docs/BENCHMARKS.md)
PROGRAMMES = 64
CHANNELS = [f"c{i:02d}" for i in range(PROGRAMMES)]
EMERGENCY = CHANNELS[:4]
PRIORITY = CHANNELS[4:6]
EMERGENCY_HZ, PRIORITY_HZ = 1500.0, 2500.0


def hz_of(channel: str) -> float:
    return 200.0 + 17.0 * CHANNELS.index(channel)


class Never(DeadlineGuard):
    """The guard of a host that always has time."""

    def __init__(self) -> None:
        super().__init__(0.02, degrade_at=math.inf)


class Scripted(DeadlineGuard):
    """The guard of a host whose ticks take the times given, one per frame, then the last
    one for ever."""

    def __init__(self, tick_s: list[float], **kw: int) -> None:
        super().__init__(0.02, **kw)
        self.times = tick_s

    def record(self, tick_s: float, **kw: float) -> bool:
        took = self.times.pop(0) if len(self.times) > 1 else self.times[0]
        return super().record(took, **kw)  # type: ignore[arg-type]


def province(workers: int, guard: DeadlineGuard, frames: int,
             registry: CollectorRegistry | None = None) -> Sent:
    """The morning peak in small: a relayed live stream under every channel (one item in
    every programme), a bulletin of its own in each of the 64 channels, a priority notice in
    two of them from frame 4 and an emergency in four from frame 8 (its last samples, after
    the fade of rule 1, in frame 20)."""
    sent = Sent()
    clock = FrameClock(20, start_mono=0.0, start_wall=1_800_000_000.0)
    m = Mixer(CHANNELS, clock, sent, wall=time.time, workers=workers, guard=guard,
              registry=registry)
    relay = LiveBuffer()
    relay.write(Tone(100.0, 3.0).read(0, 3 * 48_000))  # what the radio sent so far
    m.start(Item(1, Priority.BACKGROUND, relay.reader(), 1), CHANNELS)
    for i, c in enumerate(CHANNELS):
        m.start(Item(10 + i, Priority.NORMAL, Tone(hz_of(c), None), 10 + i), [c])
    m.start(Item(2, Priority.PRIORITY, Tone(PRIORITY_HZ, None), 2), PRIORITY, at_frame=4)
    m.start(Item(3, Priority.EMERGENCY, Tone(EMERGENCY_HZ, 0.24), 3), EMERGENCY, at_frame=8)
    try:
        for k in range(frames):
            m.tick(k)
            assert len(m.programs) >= PROGRAMMES
    finally:
        m.close()
    return sent


def frames_of(sent: Sent) -> list[list[tuple[str, packet.RtpPacket]]]:
    """The RTP packets of each frame (every channel's packet of a frame has its sequence
    number), in the order they were handed to the fan-out."""
    out: dict[int, list[tuple[str, packet.RtpPacket]]] = {}
    for c, data in sent:
        if not packet.is_rtcp(data):
            p = packet.parse(data)
            out.setdefault(p.seq, []).append((c, p))
    return [out[s] for s in sorted(out)]


def peak_hz(payloads: list[bytes]) -> float:
    dec = opuslib.Decoder(48000, 1)
    pcm = np.concatenate([np.frombuffer(dec.decode(p, N), np.int16) for p in payloads])
    pcm = pcm[len(pcm) // 4:].astype(np.float64)  # past the fade-in and the codec's start
    return float(np.argmax(np.abs(np.fft.rfft(pcm))) * 48000 / len(pcm))


def test_encoder_threads_change_no_byte_of_any_channel(monkeypatch):
    threads: set[int] = set()
    encode = OpusEncoder.encode

    def spied(self, pcm):
        threads.add(threading.get_ident())
        return encode(self, pcm)

    monkeypatch.setattr(OpusEncoder, "encode", spied)
    serial = province(1, Never(), 30)
    assert threads == {threading.get_ident()}
    threads.clear()
    parallel = province(4, Never(), 30)
    assert len(threads) == 4  # three encoder threads and the ticking one all encoded
    assert len(serial) == len(parallel) == 30 * PROGRAMMES + PROGRAMMES  # + frame 0's reports
    assert parallel == serial  # every datagram, in the same order
    # and what they carry is the programme of each channel
    by_channel: dict[str, list[packet.RtpPacket]] = {}
    for frame in frames_of(parallel):
        for c, p in frame:
            by_channel.setdefault(c, []).append(p)
    assert {c: len(ps) for c, ps in by_channel.items()} == dict.fromkeys(CHANNELS, 30)
    for c in (CHANNELS[10], CHANNELS[-1]):
        assert abs(peak_hz([p.payload for p in by_channel[c]]) - hz_of(c)) < 5
    alarm = [p.payload for p in by_channel[EMERGENCY[0]][9:20]]
    assert abs(peak_hz(alarm) - EMERGENCY_HZ) < 5


def test_over_capacity_lower_levels_get_cheaper_and_the_emergency_is_never_late(monkeypatch):
    frames = 30
    reference = frames_of(province(2, Never(), frames))
    own = int(OpusEncoder(N)._enc.complexity)
    assert own > CHEAP_COMPLEXITY
    complexity: dict[bytes, int] = {}  # payload -> complexity of the encoder that made it
    encode = OpusEncoder.encode

    def spied(self, pcm):
        payload = encode(self, pcm)
        complexity[payload] = int(self._enc.complexity)
        return payload

    monkeypatch.setattr(OpusEncoder, "encode", spied)
    reg = CollectorRegistry()
    # Every tick took a whole frame: the guard degrades after 5 ticks over budget, so frames
    # 5 on are degraded; the priority notice started before (frame 4), the emergency after (8).
    over = frames_of(province(2, Scripted([0.02]), frames, reg))
    assert [len(f) for f in over] == [PROGRAMMES] * frames  # every channel, every frame
    normal = [c for c in CHANNELS if c not in EMERGENCY + PRIORITY]
    for k, (ref, got) in enumerate(zip(reference, over, strict=True)):
        ref_of, got_of = dict(ref), dict(got)
        level = {c: 3 if c in EMERGENCY and 8 <= k <= 20 else 2 if c in PRIORITY and k >= 4 else
                 1 for c in CHANNELS}
        # emergency and priority first: no lower level's packet before theirs in any frame
        order = [level[c] for c, _ in got]
        assert order == sorted(order, reverse=True), k
        # priority channels: the same bytes as on a host with time to spare
        for c in PRIORITY:
            assert got_of[c].payload == ref_of[c].payload, (k, c)
        # the emergency at its own setting from its first frame, though it arrived degraded
        for c in EMERGENCY:
            want = CHEAP_COMPLEXITY if 5 <= k < 8 or k > 20 else own
            assert complexity[got_of[c].payload] == want, (k, c)
        # every normal programme at the cheap setting from frame 5, and not before
        cheap = {complexity[got_of[c].payload] == CHEAP_COMPLEXITY for c in normal}
        assert cheap == {k >= 5}, k
        if k < 5:
            assert all(got_of[c].payload == ref_of[c].payload for c in normal), k
    # the cheaper programmes still carry their own programme
    c = normal[30]
    assert abs(peak_hz([dict(f)[c].payload for f in over[5:]]) - hz_of(c)) < 5
    assert reg.get_sample_value("loa_mixer_degraded") == 1
    assert reg.get_sample_value("loa_mixer_degraded_frames_total") == frames - 5
    assert reg.get_sample_value("loa_mixer_degraded_programs") == len(normal) + len(EMERGENCY)
    assert reg.get_sample_value("loa_mixer_encoder_threads") == 2


def test_the_guard_recovers_when_the_host_has_time_again():
    reg = CollectorRegistry()
    # 5 ticks over budget, then ticks of 1 ms: back at the own setting after 3 frames under
    guard = Scripted([0.02] * 5 + [0.001], recover_frames=3)
    sent = Sent()
    m = Mixer(CHANNELS[:3], FrameClock(20, start_mono=0.0, start_wall=0.0), sent, workers=2,
              wall=time.time, guard=guard, registry=reg)
    for i, c in enumerate(CHANNELS[:3]):
        m.start(Item(i + 1, Priority.NORMAL, Tone(hz_of(c), None), i + 1), [c])
    degraded = []
    for k in range(12):
        m.tick(k)
        degraded.append(reg.get_sample_value("loa_mixer_degraded_programs"))
    m.close()
    assert degraded == [0] * 5 + [3] * 3 + [0] * 4
    assert reg.get_sample_value("loa_mixer_degraded") == 0
    assert reg.get_sample_value("loa_mixer_degraded_frames_total") == 3


# --------------------------------------------------------------------------- the guard alone


def test_a_short_stall_does_not_degrade():
    g = DeadlineGuard(0.02, over_frames=5)
    for _ in range(3):
        for _ in range(4):
            assert not g.record(0.019)
        assert not g.record(0.002)  # under budget: the count starts again
    for _ in range(4):
        assert not g.record(0.018)
    assert g.record(0.018)  # the 5th tick in a row over 85 % of the frame


def test_a_host_that_only_fits_at_the_cheap_setting_stays_there():
    g = DeadlineGuard(0.02, over_frames=1, recover_frames=10)
    assert g.record(0.030, full_s=0.030, full_n=60)  # 500 µs per full encode
    # degraded: 60 cheap encodes of 100 µs on 2 threads make 5 ms ticks, but at full cost
    # the tick would take 5 + 60 × 400 µs / 2 = 17 ms: not under 70 % of the frame
    for _ in range(100):
        assert g.record(0.005, cheap_s=0.006, cheap_n=60, threads=2)
    # with 10 programmes it would fit (4 + 10 × 400 µs / 2 = 6 ms): recovers after 10 ticks
    for _ in range(9):
        assert g.record(0.004, cheap_s=0.001, cheap_n=10, threads=2)
    assert not g.record(0.004, cheap_s=0.001, cheap_n=10, threads=2)


@pytest.mark.parametrize("kw", [{"degrade_at": 0.3, "recover_at": 0.4}, {"over_frames": 0},
                                {"recover_frames": 0}, {"recover_at": 0.0}])
def test_the_guard_refuses_thresholds_that_cannot_work(kw):
    with pytest.raises(ValueError):
        DeadlineGuard(0.02, **kw)


def test_a_mixer_needs_one_worker_at_least():
    with pytest.raises(ValueError, match="workers"):
        Mixer(["a"], FrameClock(20, start_mono=0.0, start_wall=0.0), Sent(), wall=time.time,
              workers=0)


def test_an_encode_that_fails_on_a_thread_fails_its_frame_not_the_next(monkeypatch):
    sent = Sent()
    m = Mixer(CHANNELS[:8], FrameClock(20, start_mono=0.0, start_wall=0.0), sent, workers=3,
              wall=time.time, guard=Never())
    for i, c in enumerate(CHANNELS[:8]):
        m.start(Item(i + 1, Priority.NORMAL, Tone(hz_of(c), None), i + 1), [c])
    m.tick(0)
    encode = OpusEncoder.encode
    failing = m._outputs[m.channels[CHANNELS[5]].program].encoder

    def broken(self, pcm):
        if self is failing:
            raise ValueError("libopus said no")
        return encode(self, pcm)

    monkeypatch.setattr(OpusEncoder, "encode", broken)
    with pytest.raises(ValueError, match="libopus said no"):
        m.tick(1)
    monkeypatch.setattr(OpusEncoder, "encode", encode)
    m.tick(2)  # nothing of frame 1 is left in the pool to go out with frame 2
    m.close()
    got = {c: [p for c2, p in ((c2, packet.parse(d)) for c2, d in sent
                               if not packet.is_rtcp(d)) if c2 == c] for c in CHANNELS[:8]}
    frames = {c: [(p.ts - ps[0].ts) // N for p in ps] for c, ps in got.items()}
    # every channel has frames 0 and 2; frame 1 went out only for the programmes before the
    # failed one in the sending order; sequence numbers count the packets that went out
    assert all(f in ([0, 2], [0, 1, 2]) for f in frames.values()), frames
    assert frames[CHANNELS[5]] == [0, 2] and [0, 1, 2] in frames.values()
    assert all([p.seq for p in ps] == list(range(len(ps))) for ps in got.values())


def test_encoder_threads_take_the_priority_of_the_thread_that_ticks(monkeypatch):
    """Playout raises its thread's priority; the encoder threads it starts share it. Shown
    with a lowered priority, which needs no privilege (on a throwaway thread)."""
    nice: dict[int, int] = {}
    encode = OpusEncoder.encode

    def spied(self, pcm):
        me = threading.get_native_id()
        nice[me] = os.getpriority(os.PRIO_PROCESS, me)
        return encode(self, pcm)

    monkeypatch.setattr(OpusEncoder, "encode", spied)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    m = Mixer(CHANNELS[:8], FrameClock(20, start_mono=0.0, start_wall=0.0), Sent(), workers=3,
              wall=time.time, guard=Never())
    for i, c in enumerate(CHANNELS[:8]):
        m.start(Item(i + 1, Priority.NORMAL, Tone(hz_of(c), None), i + 1), [c])

    def playout() -> None:
        assert set_thread_nice(base + 3)
        for k in range(20):
            m.tick(k)

    t = threading.Thread(target=playout)
    t.start()
    t.join()
    m.close()
    assert len(nice) >= 2 and set(nice.values()) == {base + 3}  # an encoder thread encoded
