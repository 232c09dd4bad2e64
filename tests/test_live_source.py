"""Live sources: the buffer a live input writes, the reader a broadcast plays, rule 8."""

import numpy as np

from streamer.mixer.program import Item, Program
from streamer.mixer.sources.live import LiveBuffer
from streamer.mixer.sources.tone import Tone
from wire.priority import Priority

N = 960  # one 20 ms frame


def ramp(start: int, n: int) -> np.ndarray:
    """Samples that carry their own position, so a test can tell which ones it got."""
    return (np.arange(start, start + n) % 100_000).astype(np.float32) / 100_000


def test_reader_stays_latency_behind_the_writer():
    buf = LiveBuffer()
    buf.write(ramp(0, 4800))
    r = buf.reader(latency_s=0.02)
    out = r.read(0, N)
    # anchored 960 samples (20 ms) behind the newest sample written
    assert np.allclose(out, ramp(4800 - 960, N))
    buf.write(ramp(4800, N))
    assert np.allclose(r.read(N, N), ramp(4800, N))
    assert r.underruns == 0 and r.skips == 0


def test_underrun_plays_silence_then_reanchors():
    buf = LiveBuffer()
    buf.write(ramp(0, 2 * N))
    r = buf.reader(latency_s=0.02)
    assert np.allclose(r.read(0, N), ramp(N, N))
    gap = r.read(N, N)  # the writer stalled: nothing new
    assert not gap.any() and r.underruns == 1
    buf.write(ramp(2 * N, 3 * N))
    # starts again `latency` behind the writer, not where the gap began
    assert np.allclose(r.read(2 * N, N), ramp(4 * N, N))


def test_writer_far_ahead_is_skipped_forward():
    buf = LiveBuffer()
    buf.write(ramp(0, N))
    r = buf.reader(latency_s=0.02, slack_s=0.05)
    r.read(0, N)
    buf.write(ramp(N, 48_000))  # a one-second burst after a stall
    out = r.read(N, N)
    assert r.skips == 1
    newest = N + 48_000
    assert np.allclose(out, ramp(newest - 960 - N, N))


def test_same_position_read_twice_is_the_same_audio():
    buf = LiveBuffer()
    buf.write(ramp(0, 4 * N))
    r = buf.reader()
    a = r.read(0, N)
    b = r.read(0, N)
    assert a is b


def test_level_and_ring_wrap():
    buf = LiveBuffer(capacity_s=0.1)  # 4800 samples
    x = 0.5 * np.sin(np.arange(10_000) * 0.1).astype(np.float32)
    buf.write(x)
    assert abs(buf.take_level_dbfs() - 20 * np.log10(0.5 / np.sqrt(2))) < 0.1
    assert buf.take_level_dbfs() == -120.0
    out = np.zeros(N, dtype=np.float32)
    assert buf.copy(10_000 - N, N, out) == N
    assert np.allclose(out, x[-N:])
    out[:] = 7
    buf.copy(0, N, out)  # fell out of the ring: left alone
    assert (out == 7).all()


def test_preempted_live_item_resumes_at_now():
    """Rule 8: a live item under an emergency keeps time; a clip would resume where it paused."""
    buf = LiveBuffer()
    buf.write(ramp(0, 2 * N))
    live = Item(1, Priority.NORMAL, buf.reader(latency_s=0.02), order=1)
    p = Program(fade_samples=48)
    p.add(live)
    done: list[int] = []
    p.render(N, done)
    emergency = Item(2, Priority.EMERGENCY, Tone(1000, 0.2), order=2)
    p.add(emergency)
    frames = 1
    while not done:  # 200 ms of emergency while the studio goes on talking
        buf.write(ramp(buf.written, N))
        p.render(N, done)
        frames += 1
    assert done == [2] and frames == 12
    assert p.current == 1  # back within the frame the emergency ended in
    buf.write(ramp(buf.written, N))
    out = p.render(N, done)
    # the live voice is what was written last frame (20 ms latency), not 200 ms ago
    assert np.allclose(out, ramp(buf.written - 960, N), atol=1e-6)
    assert p.cursors[1] == 13 * N


def test_clip_item_still_resumes_where_it_paused():
    clip = Item(1, Priority.NORMAL, Tone(440, 2.0), order=1)
    p = Program(fade_samples=48)
    p.add(clip)
    done: list[int] = []
    p.render(N, done)
    p.add(Item(2, Priority.EMERGENCY, Tone(1000, 0.1), order=2))
    for _ in range(3):
        p.render(N, done)
    assert not done and p.current == 2
    # one frame of clip plus the fade-out of the first preempted frame; no more
    assert p.cursors[1] == N + 48


def test_a_chime_before_a_live_voice_waits_its_turn():
    """Rule 8 applies from the live part on: a chimed live emergency queued behind another
    keeps its chime for when it airs."""
    from streamer.mixer.sources.chime import Sequence, chime

    buf = LiveBuffer()
    buf.write(ramp(0, 4 * N))
    chimed = Sequence([chime(), buf.reader(latency_s=0.02)])
    p = Program(fade_samples=48)
    p.add(Item(1, Priority.EMERGENCY, Tone(440, 1.0), order=1))
    p.add(Item(2, Priority.EMERGENCY, chimed, order=2))
    done: list[int] = []
    for _ in range(10):
        buf.write(ramp(buf.written, N))
        p.render(N, done)
    assert p.current == 1 and p.cursors[2] == 0  # waiting: the chime has not started
