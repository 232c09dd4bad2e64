"""A speaker takes a pause as a pause however its datagrams come (``docs/protocol.md``, "Quiet
channels"): only a packet *newer* than the newest it has heard ends the pause. Packets heard
before the heartbeat and proven after it (their LOAS resent, or reordered behind the
heartbeat) still play, but they must not make the playout conceal past them: the sequence
numbers it would conceal are the next broadcast's, whose first frames it would then drop as
late. Real datagrams from the streamer's mixer and ``SigningSink``, into the speaker's
``Speaker`` and ``Playout``."""

from __future__ import annotations

import time

from clients.speaker.latency import Latency
from clients.speaker.net import Speaker
from clients.speaker.output import NullSink
from clients.speaker.playout import OpusDecoder, Playout
from streamer.mixer.clock import FrameClock
from streamer.mixer.mixer import Mixer
from streamer.mixer.program import Item
from streamer.mixer.sources.tone import Tone
from streamer.signing import SigningSink
from tests.harness.keys import TEST_KEY
from tests.harness.sink import Fanout
from wire import auth, packet, rtcp
from wire.auth import Keyring, MediaGate
from wire.priority import Priority
from wire.subscribe import ClientState, SubscribeClient

UPSTREAM = ("127.0.0.1", 1)




def tone_then_quiet(frames: int) -> list[bytes]:
    """Channel "a"'s datagrams, in the order they went out: a 300 ms tone from the first
    frame, the tail of silence, then heartbeats; capture times on today's wall clock."""
    fanout = Fanout()
    sink = SigningSink(fanout, TEST_KEY, registry=None)  # type: ignore[arg-type]
    clock = FrameClock(20, start_mono=0.0, start_wall=time.time())
    mixer = Mixer(["a"], clock, sink, wall=time.time, workers=1,  # type: ignore[arg-type]
                  idle_heartbeat_ms=500)
    mixer.start(Item(1, Priority.NORMAL, Tone(1000, 0.3), 1), ["a"])
    for k in range(frames):
        mixer.tick(k)
        sink.sign_pending()
    return [d for ch, d in fanout.sent if ch == "a"]


def is_heartbeat(data: bytes, newest_ts: int | None) -> bool:
    return (packet.is_rtcp(data) and not auth.is_loas(data)
            and (ts := rtcp.report_ts(data)) is not None and ts != newest_ts)


def loas_behind_the_first_heartbeat(datagrams: list[bytes]) -> list[bytes]:
    """The datagrams up to the first heartbeat, with the LOAS before it moved after it (the
    heartbeats after it would say "quiet" again, and hide what it did)."""
    newest_ts = None
    for i, d in enumerate(datagrams):
        if packet.is_rtp(d) and not packet.is_rtcp(d):
            newest_ts = packet.parse(d).ts
        elif is_heartbeat(d, newest_ts):
            last = max(j for j in range(i) if auth.is_loas(datagrams[j]))
            out = datagrams[:last] + datagrams[last + 1:i + 1] + [datagrams[last]]
            return out
    raise AssertionError("no heartbeat")


def speaker() -> Speaker:
    client = SubscribeClient("spk", "a", [UPSTREAM])
    client.state = ClientState.SUBSCRIBED
    client._cookie = bytes(24)  # as a SUBACK leaves it
    now = time.monotonic()
    client.heard(now)
    client.on_media(now)
    playout = Playout(NullSink(), OpusDecoder(), t0=time.time(), delay_ms=300)
    return Speaker(client, playout, Latency(), MediaGate("a", Keyring([TEST_KEY.public])))


def played_through(datagrams: list[bytes]) -> Playout:
    """Every datagram into a speaker at once, then its playout ticked 2 s on."""
    spk = speaker()
    for d in datagrams:
        spk.datagram_received(d, UPSTREAM)
    assert sum(spk.bad.values()) == 0, spk.bad
    play, t = spk.playout, time.time()
    for _ in range(100):
        play.tick(t)
        t += 0.02
    return play


def test_packets_proven_after_the_heartbeat_play_and_do_not_end_the_pause() -> None:
    in_order = tone_then_quiet(60)
    media = sum(1 for d in in_order if packet.is_rtp(d) and not packet.is_rtcp(d))
    assert media >= 15  # the tone and its tail

    play = played_through(in_order)
    assert play.quiet and play.frames == media and play.plc == 0

    play = played_through(loas_behind_the_first_heartbeat(in_order))
    assert play.quiet  # the pause goes on: nothing past them is concealed
    assert play.plc == 0 and play.jitter.lost == 0, (play.plc, play.jitter.lost)
    assert play.frames == media  # and the late-proven packets all play
