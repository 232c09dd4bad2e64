"""The speaker reads its socket at its own pace (``clients/speaker/net.py``): while it plays,
only at the beat, every few packets. What it reads late must still carry when it came: the
kernel stamps each datagram (``SO_TIMESTAMPNS``, ``fanout/udp.py``), and the clock sync's
t4 is that, not the time of the read. Real UDP sockets on the loopback."""

from __future__ import annotations

import asyncio
import socket
import time

from clients.speaker.latency import Latency
from clients.speaker.net import Speaker
from clients.speaker.output import NullSink
from clients.speaker.playout import OpusDecoder, Playout
from device.streamer_time import StreamerTime
from fanout import udp
from wire import subscribe as sub

NS = 1_000_000_000
WAIT_S = 0.2  # a datagram left in the socket this long before it is read


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def test_a_datagram_read_late_carries_the_time_it_came() -> None:
    rx, tx = udp_socket(), udp_socket()
    try:
        assert udp.stamp_arrivals(rx)
        sent_ns = time.time_ns()
        tx.sendto(b"x", rx.getsockname())
        time.sleep(WAIT_S)
        read_ns = time.time_ns()
        got: list[tuple[bytes, int]] = []
        udp.drain_stamped(rx, lambda data, addr, stamp: got.append((data, stamp)), 8,
                          2048, lambda e: None)
        (data, stamp), = got
        assert data == b"x"
        assert sent_ns <= stamp < read_ns - WAIT_S / 2 * NS  # when it came, not when read
    finally:
        rx.close()
        tx.close()


class Answers(StreamerTime):
    """The clock sync, noting how old each TIMEREPLY was when it was taken."""

    def __init__(self) -> None:
        super().__init__(time.time_ns)
        self.ages_ns: list[int] = []

    def answered(self, t1: int, t2: int, t3: int, age_ns: int = 0) -> None:
        self.ages_ns.append(age_ns)
        super().answered(t1, t2, t3, age_ns)


async def test_a_time_reply_read_at_the_beat_gives_the_clock_sync_its_arrival() -> None:
    up = udp_socket()
    srv = sub.SubscribeServer(secret=b"s" * 32, channel_ssrc=lambda c: 77)
    client = sub.SubscribeClient("spk-1", "ch", [up.getsockname()])
    answers = Answers()
    speaker = Speaker(client, Playout(NullSink(), OpusDecoder(), time.time()), Latency(),
                      None, answers)
    sock = udp_socket()
    me = sock.getsockname()
    speaker.attach(sock)
    try:
        speaker.listen(False)  # as while playing: only the beat reads
        (hello, _), = client.start(0.0)
        reply, _ = srv.handle(hello, me, 0.0)
        (subscribe, _), = client.handle(reply, client.upstream, 0.0)
        reply, _ = srv.handle(subscribe, me, 0.0)
        client.handle(reply, client.upstream, 0.0)
        assert client.state is sub.ClientState.SUBSCRIBED
        t1 = time.time_ns()
        (ask, _), = client.ask_time(t1)
        assert sub.parse(ask).t1 == t1
        up.sendto(sub.Message(sub.MsgType.TIMEREPLY, "ch", t1=t1, t2=t1, t3=t1).build(), me)
        await asyncio.sleep(WAIT_S)  # the loop runs: nothing reads the socket meanwhile
        assert answers.ages_ns == []
        speaker.drain()  # the beat
        (age_ns,) = answers.ages_ns
        assert WAIT_S / 2 * NS < age_ns < (time.time_ns() - t1)
        assert answers.timeline.filter.taken == 1
    finally:
        speaker.detach()
        sock.close()
        up.close()
