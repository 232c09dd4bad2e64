"""Idle costs nothing (``docs/protocol.md``, "Quiet channels"): a channel with nothing on air
sends its last frames of silence, then only a heartbeat (a sender report) every 500 ms; the
first frame of a broadcast still leaves on the frame it starts, with the marker bit; the last
packets before the pause are signed at once; subscribers tell the pause from a dead upstream
(1.5 s instead of 0.3 s without a datagram) and do not conceal it. The end-to-end test runs a
real streamer, relay and ``loa speaker`` and measures the bytes an idle speaker receives."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import opuslib
import pytest

from clients.speaker.output import NullSink
from clients.speaker.playout import OpusDecoder, Playout
from fanout.http import SILENT_FRAME, pause_frames
from streamer.mixer.clock import FrameClock
from streamer.mixer.mixer import QUIET_TAIL_FRAMES, Mixer
from streamer.mixer.program import Item
from streamer.mixer.sources.tone import Tone
from streamer.signing import SigningSink
from tests.harness.api import call
from tests.harness.audio import peak_hz, rms_dbfs
from tests.harness.keys import TEST_KEY
from tests.harness.relay import relay_process
from tests.harness.sink import Fanout, Sent
from tests.harness.speaker import speaker_process
from tests.harness.subscriber import Subscriber
from tests.harness.wait import until
from tests.harness.zones import KP1
from wire import packet, rtcp
from wire.auth import DEFAULT_BATCH_FRAMES, Keyring, MediaGate
from wire.packet import RtpPacket
from wire.priority import Priority
from wire.subscribe import ClientState, SubscribeClient

N = 960  # 20 ms
HEARTBEAT_FRAMES = 25  # 500 ms
WALL0 = 1_800_000_000.0
IP_UDP = 28  # bytes of IPv4 and UDP header per datagram
IDLE_BOUND = 200  # bytes/s per idle speaker on the wire (the goal)


def quiet_mixer(channels: list[str], sink: object) -> Mixer:
    clock = FrameClock(20, start_mono=0.0, start_wall=WALL0)
    return Mixer(channels, clock, sink, wall=time.time, workers=1,  # type: ignore[arg-type]
                 idle_heartbeat_ms=500)


def by_channel(sent: Sent, channel: str) -> tuple[list[RtpPacket], list[rtcp.SenderReport]]:
    rtp = [packet.parse(d) for c, d in sent if c == channel and not packet.is_rtcp(d)]
    srs = [r for c, d in sent if c == channel and packet.is_rtcp(d)
           for r in rtcp.parse_compound(d) if isinstance(r, rtcp.SenderReport)]
    return rtp, srs


# --------------------------------------------------------------------------- the mixer


def test_a_quiet_channel_sends_its_tail_then_a_heartbeat_every_500_ms() -> None:
    sent = Sent()
    channels = ["a", "b", "c"]
    m = quiet_mixer(channels, sent)
    for k in range(200):
        m.tick(k)
    assert sent.paused == channels  # once each, when they fell quiet
    for ch in channels:
        rtp, srs = by_channel(sent, ch)
        assert [p.seq for p in rtp] == list(range(QUIET_TAIL_FRAMES))  # then no media at all
        ts0 = rtp[0].ts
        frames = [(r.rtp_ts - ts0) % 2**32 // N for r in srs]
        assert frames[0] == 0  # the report every 50 frames of a channel that sends
        srs, frames = srs[1:], frames[1:]
        assert frames[0] == QUIET_TAIL_FRAMES  # the first heartbeat at once
        assert 0 < frames[1] - frames[0] <= HEARTBEAT_FRAMES
        assert set(np.diff(frames[1:]).tolist()) == {HEARTBEAT_FRAMES}
        assert frames[-1] >= 200 - HEARTBEAT_FRAMES
        assert {r.packets for r in srs} == {QUIET_TAIL_FRAMES}  # the packets it did send
        # each heartbeat carries the wall time of its frame: the channel's timeline goes on
        assert abs(srs[-1].ntp / 2**32 - 2_208_988_800 - (WALL0 + frames[-1] * 0.02)) < 0.01
    # channels beat on different frames, so a province does not beat all at once
    assert len({by_channel(sent, ch)[1][2].rtp_ts - by_channel(sent, ch)[0][0].ts
                for ch in channels}) == 3
    # nothing is rendered or encoded for a programme whose channels are all quiet
    assert m.metrics.encodes_per_frame._value.get() == 0
    assert m.metrics.encodes._value.get() == QUIET_TAIL_FRAMES
    # what an idle channel costs on the wire: two reports a second, 112 bytes
    rtp, srs = by_channel(sent, "a")
    last_2_s = [r for r in srs if (r.rtp_ts - rtp[0].ts) % 2**32 // N >= 100]
    assert len(last_2_s) * (rtcp.SR_LEN + IP_UDP) / 2.0 == 112


def test_a_broadcast_after_a_pause_goes_out_on_its_frame_with_the_marker_bit() -> None:
    sent = Sent()
    m = quiet_mixer(["a", "b"], sent)
    for k in range(100):
        m.tick(k)
    m.start(Item(7, Priority.NORMAL, Tone(1000, 0.4), 1), ["a"], at_frame=100)
    for k in range(100, 160):
        m.tick(k)
    rtp, _ = by_channel(sent, "a")
    talk = [p for p in rtp if p.broadcast_id == 7]
    first = talk[0]
    assert (first.ts - rtp[0].ts) // N == 100  # on the frame it was booked for
    assert first.seq == QUIET_TAIL_FRAMES and first.marker  # numbering goes on; marked
    assert not any(p.marker for p in rtp if p is not first)
    assert [p.seq for p in rtp] == list(range(len(rtp)))  # contiguous across the pause
    # 20 frames of tone, then the tail of silence, then quiet again
    after = [p for p in rtp if (p.ts - first.ts) // N >= 20]
    assert len(after) == QUIET_TAIL_FRAMES and sent.paused == ["a", "b", "a"]
    dec = opuslib.Decoder(48_000, 1)
    pcm = np.concatenate([np.frombuffer(dec.decode(p.payload, N), np.int16) for p in talk])
    assert abs(peak_hz(pcm[N * 5:]) - 1000) < 5
    assert not [p for p in by_channel(sent, "b")[0] if p.seq >= QUIET_TAIL_FRAMES]




@dataclass
class SignedRun:
    """What a receiver saw of channel "a": by sequence number, the frame each packet was sent
    on and the frame it was proven on; its gate; and, at each heartbeat, how many packets
    sent before it the gate still held unproven."""
    sent_at: dict[int, int]
    proven_at: dict[int, int]
    gate: MediaGate[int]
    held_at_heartbeats: list[int]


def signed_run(frames: int, starts: dict[int, Item]) -> SignedRun:
    """Channel "a" of a quiet mixer behind the streamer's ``SigningSink`` for ``frames``
    frames, each item started on its frame, every datagram through a receiver's gate in the
    order it went out."""
    fanout = Fanout()
    sink = SigningSink(fanout, TEST_KEY, registry=None)  # type: ignore[arg-type]
    m = quiet_mixer(["a"], sink)
    run = SignedRun({}, {}, MediaGate("a", Keyring([TEST_KEY.public])), [])
    newest_ts = None
    for k in range(frames):
        if k in starts:
            m.start(starts[k], ["a"])
        m.tick(k)
        sink.sign_pending()
        for ch, d in fanout.sent:
            if packet.is_rtp(d) and not packet.is_rtcp(d):
                p = packet.parse(d)
                run.gate.hold(p.seq, d, p.seq, k * 0.02)
                run.sent_at[p.seq] = k
                newest_ts = p.ts
            elif ch == "a" and packet.is_rtcp(d) and d[1] == rtcp.PT_APP:
                run.proven_at.update((seq, k) for seq in run.gate.vouch(d, k * 0.02))
            elif ch == "a" and (ts := rtcp.report_ts(d)) is not None and ts != newest_ts:
                run.held_at_heartbeats.append(len(run.gate))  # "quiet", as a speaker reads it
        fanout.sent.clear()
    return run


def test_the_last_packets_before_a_pause_are_proven_at_once() -> None:
    """Without the pause the batch would close only when the next broadcast filled it, and
    the gate would hold the tone's end (and drop it) until then."""
    run = signed_run(60, {0: Item(3, Priority.NORMAL, Tone(1000, 0.3), 1)})
    sent_seqs = 15 + QUIET_TAIL_FRAMES  # the tone, then the tail of silence
    assert sorted(run.proven_at) == list(range(sent_seqs)) and len(run.gate) == 0


def test_the_heartbeat_comes_after_the_proof_of_the_last_packets() -> None:
    """The first heartbeat, sent on the frame the channel falls quiet, follows the LOAS that
    proves the tail. Before it, a speaker read "quiet", then the proof; the packets proven
    after the heartbeat ended the pause (``Playout.receive``), so once they had played the
    speaker concealed the sequence numbers that come next, and the next broadcast, within a
    second, lost its first frames as late: up to 100 ms of a province-wide tone that followed
    a bulletin to one commune (tests/test_e2e.py, the reach test)."""
    run = signed_run(80, {0: Item(3, Priority.NORMAL, Tone(1000, 0.3), 1)})
    assert len(run.held_at_heartbeats) >= 3
    assert run.held_at_heartbeats == [0] * len(run.held_at_heartbeats)


def test_the_next_broadcast_after_a_pause_is_proven_from_its_first_packet() -> None:
    """A bulletin after a quiet spell, at the level of the last one: its first packet is
    signed alone and the next ones in short batches, so the start of the broadcast does not
    spend the speaker's playout delay (300 ms) waiting for a 240 ms batch to fill."""
    run = signed_run(120, {  # the second long after the first fell quiet
        k: Item(3 + k, Priority.NORMAL, Tone(1000, 0.3), 1) for k in (0, 60)})
    sent_at, proven_at = run.sent_at, run.proven_at
    second = sorted(seq for seq, k in sent_at.items() if k >= 60)
    assert len(second) == 15 + QUIET_TAIL_FRAMES and set(second) <= set(proven_at)
    waits = [proven_at[seq] - sent_at[seq] for seq in second]
    assert waits[0] == 0  # proven on the frame it was sent
    assert max(waits[:7]) <= 3, waits  # then batches of 2 and 4
    assert max(waits) < DEFAULT_BATCH_FRAMES, waits


# --------------------------------------------------------------------------- subscribers


def subscribed_client(now: float) -> SubscribeClient:
    client = SubscribeClient("spk", "a", [("127.0.0.1", 1), ("127.0.0.1", 2)])
    client.state = ClientState.SUBSCRIBED
    client._cookie = bytes(24)  # as a SUBACK leaves it, for the keepalives
    client.heard(now)
    client.on_media(now)
    return client


def test_a_subscriber_waits_for_heartbeats_while_quiet_and_not_longer() -> None:
    c = subscribed_client(0.0)
    c.heard_packet(0.0, 1000)
    c.heard_report(0.0, 1000)  # a report of the frame just sent: not quiet
    assert not c.quiet
    c.tick(0.2)
    assert c.tick(0.45) and c.failovers == 1  # 300 ms with nothing: dead

    c = subscribed_client(0.0)
    c.heard_packet(0.0, 1000)
    c.heard_report(0.02, 1000 + N)  # the clock moved on without a packet: quiet
    assert c.quiet
    for t in np.arange(0.1, 1.5, 0.1):
        assert c.tick(float(t)) == [] or c.failovers == 0
    assert c.failovers == 0
    c.heard_report(1.4, 1000 + 71 * N)  # a heartbeat keeps it
    c.heard_packet(1.45, 1000 - N)  # an old packet sent again does not end the pause
    assert c.quiet
    t = 1.5
    while not c.failovers:
        c.tick(t)
        t = round(t + 0.1, 2)
    # the last datagram at 1.45: dead after 1.5 s more, at the next tick, within 2 s
    assert 1.45 + 1.5 < t - 0.1 <= 1.45 + 1.6

    c = subscribed_client(0.0)
    c.heard_packet(0.0, 1000)
    c.heard_report(0.02, 1000 + N)
    c.heard_packet(0.1, 1000 + 5 * N)  # talk again: 300 ms is the bound again
    assert not c.quiet
    c.tick(0.2)
    c.tick(0.45)
    assert c.failovers == 1
    # a new subscription with nothing yet (a relay that just took the channel has no
    # heartbeat to replay): the longer bound until its first packet
    c = subscribed_client(0.0)
    for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5):
        c.tick(t)
    assert c.failovers == 0
    c.tick(1.6)
    assert c.failovers == 1
    # a sender that restarted (timestamps far behind) starts the stream anew
    c = subscribed_client(0.0)
    c.heard_packet(0.0, 5_000_000)
    c.heard_report(0.02, 5_000_000 + N)
    c.heard_packet(0.04, 7)
    assert not c.quiet


def test_heartbeats_between_forged_packets_do_not_keep_a_tampering_upstream() -> None:
    """Heartbeats are not signed: they stand for proven media only while no packet comes.
    An upstream that sends packets no LOAS proves (never ``on_media``) with a heartbeat now
    and then is still left after ``media_timeout_s``; one that sends only heartbeats is a
    quiet channel and is kept."""
    c = subscribed_client(0.0)
    t, ts, left = 0.0, 1000, None
    while t < 5.0 and left is None:
        c.heard_packet(t, ts)  # a forgery: heard, never proven
        if round(t / 0.02) % 25 == 0:
            c.heard_report(t, ts + N)
        if round(t / 0.02) % 5 == 0 and c.tick(t) and c.failovers:
            left = t
        t, ts = round(t + 0.02, 2), ts + N
    assert left is not None and 3.0 < left <= 3.2, left
    c = subscribed_client(0.0)
    c.heard_packet(0.0, 1000)
    for i in range(1, 20):  # 10 s of heartbeats only
        c.heard_report(i * 0.5, 1000 + i * 25 * N)
        c.tick(i * 0.5 - 0.25)
        c.tick(i * 0.5)
    assert c.quiet and c.failovers == 0


def test_the_playout_does_not_conceal_a_pause_and_plays_what_follows_on_time() -> None:
    enc = opuslib.Encoder(48_000, 1, opuslib.APPLICATION_AUDIO)
    tone = (0.3 * 32767 * np.sin(2 * np.pi * 1000 * np.arange(N) / 48_000)).astype("<i2")
    payload = enc.encode(tone.tobytes(), N)
    play = Playout(NullSink(), OpusDecoder(), t0=100.0, delay_ms=300)

    def push(seq: int, capture: float) -> None:
        play.receive(RtpPacket(1, seq, seq * N, payload, broadcast_id=4), capture)

    for seq in range(10):
        push(seq, 100.0 + seq * 0.02)
    play.quiet = True  # the heartbeat came
    now = 100.0
    while now < 103.0:
        play.tick(now)
        now += 0.02
    assert play.frames == 10 and play.plc == 0 and play.jitter.lost == 0
    for seq in range(10, 20):  # the next broadcast, 2.8 s later, seq contiguous
        push(seq, 103.0 + (seq - 10) * 0.02)
    assert not play.quiet
    play.quiet = True  # and its heartbeat after it
    while now < 104.0:
        play.tick(now)
        now += 0.02
    assert play.frames == 20 and play.plc == 0 and play.jitter.lost == 0
    assert play.timeline.cursor >= play.timeline.index(103.3 + 0.02)


def test_listen_in_fills_a_pause_with_silence_but_not_a_new_stream() -> None:
    assert pause_frames(1000, 1000) == 0  # the next packet, right after the last
    assert pause_frames(1000, 1000 + 25 * N) == 25  # a heartbeat 500 ms on
    assert pause_frames(2**32 - N, 24 * N) == 25  # across the wrap
    assert pause_frames(1000, 1000 - N) == 0  # an old one
    assert pause_frames(1000, 1000 + 11 * 48_000) == 0  # a restart, not a pause
    pcm = opuslib.Decoder(48_000, 1).decode(SILENT_FRAME, 5760)
    assert len(pcm) == 2 * N and not any(pcm)


# --------------------------------------------------------------------------- end to end


class Counting(Subscriber):
    """A subscriber that counts what crosses its link, as a 4G modem's bill does."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.octets = 0  # with IP and UDP headers

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.octets += len(data) + IP_UDP
        super().datagram_received(data, addr)

    async def rate(self, seconds: float) -> float:
        before = self.octets
        await asyncio.sleep(seconds)
        return (self.octets - before) / seconds


@pytest.mark.realtime
async def test_an_idle_speaker_costs_a_heartbeat_and_a_broadcast_after_a_pause_plays(
        streamer, tmp_path: Path) -> None:
    async with relay_process(tmp_path, "relay", "--upstream", streamer.media_addr) as relay, \
            relay_process(tmp_path, "standby", "--upstream", streamer.media_addr) as standby:
        link = Counting(KP1, [relay.media], identity="meter")
        await link.start()
        async with speaker_process(tmp_path, "spk", "--channel", KP1, "--upstream",
                                   relay.media_addr, "--upstream", standby.media_addr) as spk:
            await until(spk.subscribed, 10, "the speaker subscribed")
            await until(lambda: link.client.state is ClientState.SUBSCRIBED, 10, "subscribed")
            await asyncio.sleep(1.0)
            before = await spk.metrics()
            idle = await link.rate(6.0)
            after = await spk.metrics()
            health = await spk.health()
            assert health["quiet"] and health["failovers"] == 0, health
            # the pause is neither concealed nor counted as loss
            for name in ("loa_speaker_plc_frames_total", "loa_speaker_packets_lost_total"):
                assert after[name] == before[name], name
            status, body = await call(streamer, "POST", "/api/v1/broadcasts", json={
                "zones": [KP1], "source": {"kind": "tone", "hz": 1000, "seconds": 3}})
            assert status == 201, body
            aired = time.time()
            talking = await link.rate(2.0)
            played = await spk.wait_window(aired, aired + 3.5)  # waits for the WAV to get there
            assert abs(peak_hz(played) - 1000) < 5 and rms_dbfs(played) > -30
            # the tone came out within the playout delay and some, as from a live channel
            # (waiting for a handshake or a heartbeat would add half a second or more)
            on = np.flatnonzero(np.abs(played) > np.abs(played).max() / 2)
            assert on[0] / 48_000 < 0.3 + 0.4, on[0] / 48_000
            # quiet again after the tone: its last packet, then the next heartbeat (500 ms)
            await until(lambda: _quiet(spk), 2.0, "the speaker quiet again after the tone")
            # a dead relay is told from a quiet channel within 2 s
            relay.proc.kill()
            killed = time.monotonic()
            await until(lambda: _failed_over(spk), 4, "the speaker left the dead relay")
            noticed_s = time.monotonic() - killed
            await until(lambda: _on(spk, standby.media_addr), 6, "the speaker on the standby")
        link.close()
    print(f"\nquiet channel: {idle:.0f} B/s idle, {talking:.0f} B/s during a tone; "
          f"dead relay left after {noticed_s:.2f} s")
    assert idle <= IDLE_BOUND, idle
    assert talking > 20 * idle
    assert noticed_s < 2.0


async def _quiet(spk) -> bool:
    return bool((await spk.health())["quiet"])


async def _failed_over(spk) -> bool:
    return bool((await spk.health())["failovers"] >= 1)


async def _on(spk, addr: str) -> bool:
    health = await spk.health()
    return bool(health["upstream"] == addr and health["state"] == "subscribed")
