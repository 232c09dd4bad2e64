"""Mixer: the arbiter's rules (docs/priorities.md), shared programs, per-channel RTP continuity,
the frame clock, and the encode-time and time-to-air metrics (down to the API request)."""

import time

import aiohttp
import numpy as np
import opuslib
import pytest
from prometheus_client import CollectorRegistry

from streamer.mixer.clock import FrameClock
from streamer.mixer.mixer import Mixer
from streamer.mixer.program import Item, Program
from streamer.mixer.sources.tone import Tone
from tests.harness.sink import Sent
from tests.harness.wait import until
from wire import packet, rtcp
from wire.priority import Priority

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


def _mixer(channels, sink=None, registry=None):
    clock = FrameClock(20, start_mono=0.0, start_wall=1_800_000_000.0)
    return Mixer(channels, clock, Sent() if sink is None else sink, wall=time.time,
                 registry=registry)


def test_one_encode_for_200_zones_under_one_broadcast():
    chans = [f"p.d{i // 20}.c{i}" for i in range(200)]
    m = _mixer(chans)
    m.tick(0)
    assert m.metrics.encodes_per_frame._value.get() == 1
    m.start(Item(1, Priority.NORMAL, Tone(1000, 1.0), 1), chans)
    m.tick(1)
    assert len(m.programs) == 1 and m.metrics.encodes_per_frame._value.get() == 1
    # an emergency in 20 of them forks exactly one more program
    m.start(Item(2, Priority.EMERGENCY, Tone(500, 0.1), 2), chans[:20])
    m.tick(2)
    assert m.metrics.encodes_per_frame._value.get() == 2
    assert sorted(len(p.channels) for p in m.programs) == [20, 180]


def test_programs_merge_when_they_become_identical():
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
    sent = Sent()
    m = _mixer(["a", "b"], sent)
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
    assert c.late(1, 100.0401) and not c.late(2, 100.0401)
    assert c.deadline() == 100.06
    late = c.due(110.0)  # a 10 s stall is skipped, not replayed
    assert late == [500] and c.skipped > 0
    assert c.deadline(1000) == 100.0 + 20.0


def test_rtp_stays_continuous_per_channel_across_splits_and_merges():
    chans = ["a", "b", "c", "d"]
    sent = Sent()
    m = _mixer(chans, sent)
    m.tick(0)
    # a and c split off (rows 0 and 2: not contiguous), then b splits from d
    m.start(Item(1, Priority.NORMAL, Tone(440, 0.1), 1), ["a", "c"], at_frame=1)
    m.start(Item(2, Priority.NORMAL, Tone(660, 0.3), 2), ["b"], at_frame=3)
    counts = []
    for k in range(1, 60):
        m.tick(k)
        counts.append(len(m.programs))
    assert max(counts) == 3 and counts[-1] == 1  # split into three, merged back into one
    for c in chans:
        rtp = [packet.parse(d) for ch, d in sent if ch == c and not packet.is_rtcp(d)]
        assert [p.seq for p in rtp] == list(range(60)), c
        assert {b.ts - a.ts for a, b in zip(rtp, rtp[1:], strict=False)} == {N}, c
        assert {p.ssrc for p in rtp} == {packet.ssrc_for(c)}
        assert {p.broadcast_id for p in rtp} == {"a": {0, 1}, "b": {0, 2}, "c": {0, 1},
                                                   "d": {0}}[c]
        srs = [rtcp.parse_compound(d)[0] for ch, d in sent if ch == c and packet.is_rtcp(d)]
        assert len(srs) == 2 and srs[1].ssrc == packet.ssrc_for(c)
        # the report of frame 50 counts frames 0-50 and their payload octets
        assert srs[1].rtp_ts == rtp[50].ts and srs[1].packets == 51
        assert srs[1].octets == sum(len(p.payload) for p in rtp[:51])


def _count(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0.0


def test_time_to_air_is_observed_once_per_item_when_its_first_frame_goes_out():
    reg = CollectorRegistry()
    m = _mixer(["a", "b"], registry=reg)
    tta = "loa_time_to_air_seconds_count"
    asked = time.time() - 0.25  # the request arrived a quarter of a second ago
    alarm = Item(1, Priority.EMERGENCY, Tone(440, 0.1), 1, requested_at=asked)
    waits = Item(2, Priority.NORMAL, Tone(660, 1.0), 2)  # no request: counts from its start
    gone = Item(3, Priority.PRIORITY, Tone(880, 1.0), 3, requested_at=asked)
    m.start(alarm, ["a"])
    m.start(waits, ["a"])
    m.start(gone, ["b"])
    m.stop(3)  # stopped before it aired: never observed
    assert _count(reg, tta, priority="emergency") == 0  # started, not aired yet
    m.tick(0)
    assert _count(reg, tta, priority="emergency") == 1
    total = _count(reg, "loa_time_to_air_seconds_sum", priority="emergency")
    assert total == alarm.aired_at - asked and 0.25 <= total < 60
    # the normal item waits under the emergency (5 frames and a fade): not aired until then
    k = 1
    while m.channels["a"].program.current != 2:
        assert _count(reg, tta, priority="normal") == 0 and waits.aired_at is None
        m.tick(k)
        k += 1
    assert k > 5 and _count(reg, tta, priority="normal") == 1
    # stopped and started again, it has aired already: not observed twice
    m.stop(2)
    m.start(waits, ["a"])
    for j in range(k, k + 5):
        m.tick(j)
    assert _count(reg, tta, priority="emergency") == _count(reg, tta, priority="normal") == 1
    assert _count(reg, tta, priority="priority") == _count(reg, tta, priority="background") == 0


def test_every_encode_is_timed():
    reg = CollectorRegistry()
    m = _mixer(["a", "b", "c"], registry=reg)
    m.start(Item(1, Priority.NORMAL, Tone(440, 0.1), 1), ["a"])
    for k in range(10):
        m.tick(k)
    encodes = _count(reg, "loa_mixer_encodes_total")
    assert encodes > 10  # two programs while the tone played, one after
    assert _count(reg, "loa_mixer_encode_seconds_count") == encodes
    assert 0 < _count(reg, "loa_mixer_encode_seconds_sum") < encodes * 1.0


async def test_time_to_air_counts_from_the_api_request_of_an_emergency_and_an_approval(
        streamer):
    zone = "brvt.vung-tau.thang-tam"
    tone = {"kind": "tone", "hz": 440, "seconds": 0.2}

    async def call(path, body):
        async with aiohttp.ClientSession() as http, http.request(
                "PATCH" if "zones/" in path else "POST", streamer.http_url + path,
                headers=streamer.admin, json=body) as r:
            return r.status, await r.json()

    def count(level):
        return _count(streamer.registry, "loa_time_to_air_seconds_count", priority=level)

    assert (await call(f"/api/v1/zones/{zone}", {"requires_approval": True}))[0] == 200
    asked = time.time()
    status, e = await call("/api/v1/emergency", {"zones": [zone], "source": tone})
    answered = time.time()
    assert status == 201, e
    alarm = streamer.broadcasts.items[e["id"]]
    assert asked <= alarm.requested_at <= answered
    status, b = await call("/api/v1/broadcasts", {"zones": [zone], "source": tone})
    assert status == 201 and b["state"] == "pending_approval", b
    asked = time.time()
    status, b = await call(f"/api/v1/approvals/broadcasts/{b['id']}", {"decision": "approve"})
    answered = time.time()
    assert status == 200, b
    bulletin = streamer.broadcasts.items[b["id"]]
    assert asked <= bulletin.requested_at <= answered  # from the approval, not the request
    await until(lambda: count("normal") == 1, 10, "the approved bulletin on the air")
    assert count("emergency") == 1 and count("priority") == count("background") == 0
    for level, it in (("emergency", alarm), ("normal", bulletin)):
        total = _count(streamer.registry, "loa_time_to_air_seconds_sum", priority=level)
        assert total == pytest.approx(it.aired_at - it.requested_at)
