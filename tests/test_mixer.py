"""Mixer: the arbiter's rules (docs/priorities.md), shared programs, and the frame clock."""

import numpy as np
import opuslib

from streamer.mixer.clock import FrameClock
from streamer.mixer.mixer import Mixer
from streamer.mixer.program import Item, Priority, Program
from streamer.rtp import packet, rtcp

N = 960  # 20 ms


class Ramp:
    """A source whose every sample says where it came from: value = (pos + 1) * scale."""

    def __init__(self, length, scale=1e-6):
        self.length, self.scale = length, scale

    def read(self, pos, n):
        idx = np.arange(pos, pos + n, dtype=np.float64)
        out = np.where(idx < self.length, (idx + 1) * self.scale, 0.0)
        return out.astype(np.float32)


def item(i, prio, length, order=None, scale=1e-6):
    return Item(i, prio, Ramp(length, scale), order if order is not None else i)


def test_top_item_is_highest_level_then_first_come():
    p = Program()
    for it in (item(1, Priority.NORMAL, 10), item(2, Priority.NORMAL, 10),
               item(3, Priority.BACKGROUND, 10)):
        p.add(it)
    assert p.top().id == 1
    p.add(item(4, Priority.EMERGENCY, 10))
    assert p.top().id == 4


def test_preemption_fades_and_resumes_where_it_paused():
    p = Program(fade_samples=480)
    p.add(item(1, Priority.NORMAL, 10 * N))
    fin = []
    first = p.render(N, fin)
    assert p.cursors[1] == N and first[-1] > 0
    p.add(item(2, Priority.EMERGENCY, N // 2, scale=-1e-3))  # negative: tells voices apart
    f2 = p.render(N, fin)
    # rule 1: old fades out over 480 samples, then the new item: never both at once
    assert np.all(f2[:480] >= 0) and np.all(f2[480:] <= 0)
    assert p.cursors[1] == N + 480  # paused right after its fade-out
    assert f2[479] < f2[0]  # fading out
    # emergency had 480 samples: ran out inside frame 2 ([480, 960)) => finished
    assert fin == [2] and p.current is None
    f3 = p.render(N, fin)
    # rule 3: the bulletin resumes from its cursor, fading in
    expected = (np.arange(N + 480, 2 * N + 480) + 1) * 1e-6
    assert f3[0] == 0.0 and np.allclose(f3[480:], expected[480:], rtol=1e-5)


def test_stop_fades_out_the_playing_item():
    p = Program(fade_samples=480)
    p.add(item(1, Priority.NORMAL, 10 * N))
    p.render(N, [])
    p.remove(1)
    out = p.render(N, [])
    assert out[0] > 0 and np.all(out[480:] == 0) and p.current is None
    assert p.tail is None and p.signature() == ((), None, None)


def _mixer(channels, publish=lambda c, d: None):
    clock = FrameClock(20, start_mono=0.0, start_wall=1_800_000_000.0)
    return Mixer(channels, clock, publish)


def test_one_encode_for_200_zones_under_one_broadcast():
    chans = [f"p.d{i // 20}.c{i}" for i in range(200)]
    m = _mixer(chans)
    m.tick(0)
    assert m.metrics.encodes_per_frame._value.get() == 1
    from streamer.mixer.sources.tone import Tone

    m.start(Item(1, Priority.NORMAL, Tone(1000, 1.0), 1), chans)
    m.tick(1)
    assert len(m.programs) == 1 and m.metrics.encodes_per_frame._value.get() == 1
    # an emergency in 20 of them forks exactly one more program
    m.start(Item(2, Priority.EMERGENCY, Tone(500, 0.1), 2), chans[:20])
    m.tick(2)
    assert m.metrics.encodes_per_frame._value.get() == 2
    assert sorted(len(p.channels) for p in m.programs) == [20, 180]


def test_programs_merge_when_they_become_identical():
    from streamer.mixer.sources.tone import Tone

    m = _mixer(["a", "b", "c"])
    done = []
    m.on_finished = done.append
    m.start(Item(1, Priority.NORMAL, Tone(440, 0.1), 1), ["a"])
    m.start(Item(2, Priority.NORMAL, Tone(440, 0.1), 2), ["b"])
    m.tick(0)
    assert len(m.programs) == 3
    for k in range(1, 8):
        m.tick(k)
    assert len(m.programs) == 1 and sorted(done) == [1, 2] and m.items == {}


def test_packets_carry_capture_time_broadcast_and_decode_to_the_tone():
    from streamer.mixer.sources.tone import Tone

    sent = []
    m = _mixer(["a", "b"], lambda c, d: sent.append((c, d)))
    m.start(Item(9, Priority.NORMAL, Tone(1000, 2.0), 1), ["a"])
    for k in range(50):
        m.tick(k)
    rtp = [(c, packet.parse(d)) for c, d in sent if not packet.is_rtcp(d)]
    srs = [rtcp.parse_compound(d)[0] for c, d in sent if packet.is_rtcp(d)]
    a = [p for c, p in rtp if c == "a"]
    b = [p for c, p in rtp if c == "b"]
    assert len(a) == len(b) == 50 and len(srs) == 2
    assert {p.broadcast_id for p in a} == {9} and {p.broadcast_id for p in b} == {0}
    assert [p.seq for p in a] == list(range(50))
    assert a[10].ts - a[9].ts == N and a[0].ssrc == packet.ssrc_for("a")
    # capture time of the decoded audio: frame start minus the encoder lookahead (312)
    assert abs(a[10].capture_time - (1_800_000_000.0 + 0.2 - 312 / 48000)) < 1e-6
    dec = opuslib.Decoder(48000, 1)
    pcm = np.concatenate([np.frombuffer(dec.decode(p.payload, N), np.int16) for p in a])
    spec = np.abs(np.fft.rfft(pcm[4800:].astype(np.float64)))
    assert abs(np.argmax(spec) * 48000 / len(pcm[4800:]) - 1000) < 5
    dec_b = opuslib.Decoder(48000, 1)
    silent = np.concatenate([np.frombuffer(dec_b.decode(p.payload, N), np.int16) for p in b])
    assert np.abs(silent).max() < 50


def test_frame_clock_never_drifts_and_counts_misses():
    c = FrameClock(20, start_mono=100.0, start_wall=0.0)
    assert c.due(99.99) == []
    assert c.due(100.0) == [0]
    assert c.due(100.0401) == [1, 2]  # woke 40 ms late: both frames, frame 1 missed
    assert c.misses == 1
    assert c.deadline() == 100.06
    late = c.due(110.0)  # a 10 s stall is skipped, not replayed
    assert late == [500] and c.skipped > 0
    assert c.deadline(1000) == 100.0 + 20.0
