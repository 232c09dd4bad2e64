"""Channels added to and removed from a running mixer (a zone edit, issue 17): a new channel
carries a broadcast on its own SSRC from the frame after it is added; no channel that stays
sees a byte of its stream change, heartbeats included; a channel with something on air,
waiting, fading out or booked is not removed, and then nothing is; a removed channel sends
nothing more and takes no broadcast."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import opuslib
import pytest

from streamer.mixer.clock import FrameClock
from streamer.mixer.mixer import Mixer
from streamer.mixer.program import Item
from streamer.mixer.sources.tone import Tone
from tests.harness.audio import peak_hz
from tests.harness.sink import Sent
from wire import packet, rtcp
from wire.packet import RtpPacket
from wire.priority import Priority

N = 960  # 20 ms
WALL0 = 1_800_000_000.0
HEARTBEAT_MS = 500


def mixer(channels: list[str], sent: Sent, heartbeat_ms: int | None = None) -> Mixer:
    clock = FrameClock(20, start_mono=0.0, start_wall=WALL0)
    return Mixer(channels, clock, sent, wall=time.time, workers=1,
                 idle_heartbeat_ms=heartbeat_ms)


def tone(item_id: int, hz: float, seconds: float | None = None) -> Item:
    return Item(item_id, Priority.NORMAL, Tone(hz, seconds), item_id)


def run(m: Mixer, sent: Sent, frames: range,
        at: dict[int, Callable[[Mixer], object]]) -> list[int]:
    """Tick ``frames``, calling ``at[k](m)`` before frame k; returns where each frame's
    datagrams end in ``sent``."""
    ends = []
    for k in frames:
        if k in at:
            at[k](m)
        m.tick(k)
        ends.append(len(sent))
    return ends


def rtp_of(sent: list[tuple[str, bytes]], channel: str) -> list[RtpPacket]:
    return [packet.parse(d) for c, d in sent if c == channel and not packet.is_rtcp(d)]


def reports_of(sent: list[tuple[str, bytes]], channel: str) -> list[rtcp.SenderReport]:
    return [r for c, d in sent if c == channel and packet.is_rtcp(d)
            for r in rtcp.parse_compound(d) if isinstance(r, rtcp.SenderReport)]


def decoded_hz(packets: list[RtpPacket], skip_frames: int = 5) -> float:
    dec = opuslib.Decoder(48_000, 1)
    pcm = np.concatenate([np.frombuffer(dec.decode(p.payload, N), np.int16) for p in packets])
    return peak_hz(pcm[skip_frames * N:])


def test_a_channel_added_at_run_time_carries_a_broadcast_on_its_own_ssrc() -> None:
    sent = Sent()
    m = mixer(["p.d.a"], sent)
    new = "p.d.b"

    def add_and_start(m: Mixer) -> None:
        assert m.add_channels(["p.d.a", new, new]) == [new]  # only what is not there yet
        assert m.add_channels([new]) == []
        m.start(tone(1, 1000.0), [new])

    run(m, sent, range(60), {10: add_and_start})
    got = rtp_of(sent, new)
    assert len(got) == 50 and {p.ssrc for p in got} == {packet.ssrc_for(new)}
    assert [p.seq for p in got] == list(range(50))  # a fresh stream, contiguous
    assert {b.ts - a.ts for a, b in zip(got, got[1:], strict=False)} == {N}
    assert {p.broadcast_id for p in got} == {1}
    assert abs(decoded_hz(got) - 1000) < 5
    # its timestamps follow the rule of a channel that was there from the start
    ref_sent = Sent()
    run(mixer(["p.d.a", new], ref_sent), ref_sent, range(11), {})
    assert got[0].ts == rtp_of(ref_sent, new)[10].ts
    # its sender report (frame 50) counts what it sent since it was added
    sr = reports_of(sent, new)
    assert len(sr) == 1 and sr[0].ssrc == packet.ssrc_for(new)
    assert sr[0].packets == 41 and sr[0].octets == sum(len(p.payload) for p in got[:41])
    assert sr[0].rtp_ts == got[50 - 10].ts


def test_adding_channels_changes_no_byte_of_the_channels_already_there() -> None:
    """One channel plays a tone, one is silent; two channels are added mid-stream (they join
    the silent programme: no third encode). Every datagram of the first two is the one a
    mixer without the add sends: sequence numbers, timestamps, reports, audio."""
    def playing(m: Mixer) -> None:
        m.start(tone(1, 440.0), ["a"])

    def add(m: Mixer) -> None:
        m.add_channels(["b", "c"])
        assert len(m.programs) == 2

    sent, ref = Sent(), Sent()
    run(mixer(["a", "z"], sent), sent, range(80), {0: playing, 30: add})
    run(mixer(["a", "z"], ref), ref, range(80), {0: playing})
    for ch in ("a", "z"):
        assert [d for c, d in sent if c == ch] == [d for c, d in ref if c == ch], ch
    a = rtp_of(sent, "a")
    assert [p.seq for p in a] == list(range(80))
    assert {q.ts - p.ts for p, q in zip(a, a[1:], strict=False)} == {N}
    assert abs(decoded_hz(a) - 440) < 5
    assert [p.seq for p in rtp_of(sent, "b")] == list(range(50))


def test_removing_idle_channels_leaves_every_other_stream_as_it_was() -> None:
    """Quiet channels beat every 500 ms, each on its own frame. Removing "b" (a middle row:
    the rows after it move up) and later the rest of the silent programme changes no byte,
    heartbeat or frame of what the others send, and a removed channel sends nothing more."""
    chans = ["a", "b", "c", "d"]

    def playing(m: Mixer) -> None:
        m.start(tone(1, 660.0), ["d"])

    def remove_b(m: Mixer) -> None:
        assert m.remove_channels(["b", "nowhere"]) == ["b"]
        assert m.remove_channels(["b"]) == []

    def remove_rest(m: Mixer) -> None:
        assert m.remove_channels(["c", "a"]) == ["c", "a"]
        assert len(m.programs) == 1  # the silent programme went with its last channel

    sent, ref = Sent(), Sent()
    ends = run(mixer(chans, sent, HEARTBEAT_MS), sent, range(200),
               {0: playing, 100: remove_b, 150: remove_rest})
    ref_ends = run(mixer(chans, ref, HEARTBEAT_MS), ref, range(200), {0: playing})
    for ch in ("a", "c"):
        assert [d for c, d in sent[:ends[149]] if c == ch] == \
            [d for c, d in ref[:ref_ends[149]] if c == ch], ch
    assert [d for c, d in sent if c == "d"] == [d for c, d in ref if c == "d"]
    assert not [c for c, _ in sent[ends[99]:] if c == "b"]  # not even a heartbeat
    assert not [c for c, _ in sent[ends[149]:] if c in ("a", "c")]
    # "a" and "c" went on beating between the removals, every 25 frames, and "b" was beating
    # before it went: what stopped was a live heartbeat
    for ch in ("a", "c"):
        beats = [r.rtp_ts for r in reports_of(sent[ends[99]:ends[149]], ch)]
        assert len(beats) == 2 and (beats[1] - beats[0]) % 2**32 == 25 * N, ch
    assert len(reports_of(sent[:ends[99]], "b")) >= 3
    d = rtp_of(sent, "d")
    assert [p.seq for p in d] == list(range(200)) and abs(decoded_hz(d) - 660) < 5
    assert reports_of(sent, "d")[-1].packets == 151  # frame 150's report: frames 0-150


def _start(m: Mixer) -> None:
    m.start(tone(7, 880.0), ["b"])


#: what is on "b" when its removal is tried before frame 11, by the event that puts it there
HOLDS: dict[str, dict[int, Callable[[Mixer], object]]] = {
    "on air": {10: _start},
    "waiting": {11: _start},  # started, not rendered yet
    "fading out": {10: _start, 11: lambda m: m.stop(7)},
    "booked": {10: lambda m: m.start(tone(7, 880.0, 1.0), ["b"], at_frame=40)},
}


@pytest.mark.parametrize("hold", list(HOLDS))
def test_a_channel_something_is_on_or_booked_for_is_not_removed_nor_anything_else(
        hold: str) -> None:
    chans = ["a", "b", "c"]
    events = HOLDS[hold]

    def then_remove(m: Mixer) -> None:
        if 11 in events:
            events[11](m)
        with pytest.raises(ValueError, match=rf"^channel b .*: item 7 is {hold}"):
            m.remove_channels(["a", "b", "c"])
        assert list(m.channels) == chans

    sent, ref = Sent(), Sent()
    m = mixer(chans, sent)
    run(m, sent, range(60), {**events, 11: then_remove})
    run(mixer(chans, ref), ref, range(60), events)
    assert sent == ref  # the refused removal changed nothing anyone receives
    assert 7 in {p.broadcast_id for p in rtp_of(sent, "b")}
    # once nothing is on it any more, it goes
    m.stop(7)
    m.tick(60)  # the fade-out of whatever was playing
    assert m.remove_channels(["b"]) == ["b"]


def test_a_removed_channel_takes_no_broadcast_as_an_unknown_one_does() -> None:
    sent = Sent()
    m = mixer(["a", "b"], sent)
    m.tick(0)
    m.remove_channels(["b"])
    before = len(sent)
    for ids in (["b"], ["a", "b"], ["nowhere"]):
        with pytest.raises(KeyError):
            m.start(tone(1, 440.0), ids)
        with pytest.raises(KeyError):
            m.start(tone(2, 440.0), ids, at_frame=10)
    assert m.items == {} and m.booked(2) is None
    m.tick(1)
    assert [c for c, _ in sent[before:]] == ["a"]
