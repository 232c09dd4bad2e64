"""The fan-out's fast path: sendmmsg batches, the join burst, unreachable subscribers, blocks."""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from fanout.endpoint import UNREACHABLE_S, FanoutEndpoint
from fanout.mmsg import MAX_BATCH, RecvBatch, SendBatch, timestamp_socket
from fanout.ring import PacketRing
from tests.harness.subscriber import Subscriber
from tests.harness.wait import until
from wire.packet import RtpPacket, ssrc_for
from wire.rtcp import SenderReport
from wire.subscribe import MAGIC, Message, MsgType

CH = "bt.vt.p1"


def _packet(seq: int, channel: str = CH) -> bytes:
    return RtpPacket(ssrc_for(channel), seq, seq * 960, seq.to_bytes(4, "big")).build()


def _seqs(sub: Subscriber) -> list[int]:
    return [int.from_bytes(p[:4], "big") for p in sub.payloads]


def _metric(fanout: FanoutEndpoint, name: str, **labels: str) -> float:
    value = fanout.registry.get_sample_value(name, {"process": fanout.process, **labels})
    return value or 0.0


async def _subscribed(fanout: FanoutEndpoint, channel: str, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while fanout.table.subscribers(channel) != n:
        assert time.monotonic() < deadline, f"{fanout.table.subscribers(channel)} subscribers"
        await asyncio.sleep(0.02)


def test_one_packet_reaches_thousands_of_sockets_in_a_few_calls() -> None:
    n = 2 * MAX_BATCH + 300
    rx = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for s in rx:
            s.bind(("127.0.0.1", 0))
            timestamp_socket(s)
        batch = SendBatch([s.getsockname() for s in rx])
        before = time.time()
        assert batch.send(tx.fileno(), _packet(7)) == (3, 0, 0)  # ceil(2348 / 1024) calls
        assert batch.send(tx.fileno(), _packet(8)) == (3, 0, 0)
        got = RecvBatch(size=4)
        for s in rx:
            assert got.recv(s.fileno()) == 2, "every socket gets both packets, once each"
            assert bytes(got.data[0, :got.lengths[0]]) == _packet(7)
            assert bytes(got.data[1, :got.lengths[1]]) == _packet(8)
            assert before <= got.times[0] <= time.time()  # the kernel's receive time
        assert got.recv(rx[0].fileno()) == 0
    finally:
        for s in (*rx, tx):
            s.close()


def test_ring_keeps_only_recent_media_and_the_heartbeat_of_a_quiet_channel() -> None:
    ring = PacketRing(burst_s=0.2, ptime_s=0.02)
    for k in range(40):
        ring.add(_packet(k), k * 0.02)
        if k == 35:  # a report with media after it: not replayed
            ring.add(SenderReport(1, 0, 0, 0, 0).build(), k * 0.02)
    assert [int.from_bytes(p[-4:], "big") for p in ring.burst(0.79)] == list(range(30, 40))
    assert list(ring.burst(5.0)) == []  # nothing that old is worth sending
    heartbeat = SenderReport(1, 0, 40 * 960, 40, 0).build()  # the channel fell quiet
    ring.add(heartbeat, 0.8)
    assert list(ring.burst(5.0)) == [heartbeat]  # a joiner learns the silence is a pause
    ring.add(_packet(41), 5.0)
    assert [int.from_bytes(p[-4:], "big") for p in ring.burst(5.0)] == [41]
    assert list(PacketRing(burst_s=0, ptime_s=0.02).burst(0.0)) == []


async def test_a_joining_subscriber_gets_the_last_burst_then_the_stream() -> None:
    now = [1000.0]
    fanout = FanoutEndpoint(channel_ssrc=ssrc_for, registry=CollectorRegistry(), process="burst",
                            clock=lambda: now[0], burst_s=0.2)
    first, late = Subscriber(CH, []), Subscriber(CH, [])
    addr = await fanout.start("127.0.0.1", 0)
    first.client.upstreams = late.client.upstreams = [addr]
    try:
        await first.start()
        await _subscribed(fanout, CH, 1)
        for k in range(20):  # 400 ms of stream, on the fan-out's clock
            fanout.publish(CH, _packet(k))
            now[0] += 0.02
        await late.start()
        await _subscribed(fanout, CH, 2)
        await late.wait_packets(10)
        fanout.publish(CH, _packet(20))
        await late.wait_packets(11)
        await first.wait_packets(21)
        # The last 200 ms (seq 10-19, sent at t-0.18 … t) in order, then the live packet.
        assert _seqs(late) == list(range(10, 21))
        assert _seqs(first) == list(range(21))
        assert _metric(fanout, "loa_fanout_burst_packets_total") == 10
    finally:
        first.close()
        late.close()
        fanout.close()


async def test_an_unreachable_subscriber_is_dropped_and_counted() -> None:
    fanout = FanoutEndpoint(channel_ssrc=ssrc_for, registry=CollectorRegistry(), process="icmp")
    addr = await fanout.start("127.0.0.1", 0)
    alive, gone = Subscriber(CH, [addr]), Subscriber(CH, [addr])
    try:
        await alive.start()
        await gone.start()
        await _subscribed(fanout, CH, 2)
        assert gone.transport is not None
        gone._task.cancel()  # type: ignore[union-attr]  # the box loses power: no BYE
        gone.transport.close()
        k = 0
        deadline = time.monotonic() + 6 * UNREACHABLE_S
        while fanout.table.subscribers(CH) == 2:
            assert time.monotonic() < deadline, "the dead subscriber was never dropped"
            fanout.publish(CH, _packet(k))
            k += 1
            await asyncio.sleep(0.02)
        assert fanout.table.subscribers(CH) == 1
        assert _metric(fanout, "loa_fanout_dropped_subscribers_total", reason="unreachable") == 1
        fanout.publish(CH, _packet(k))
        await alive.wait_packets(k + 1)
        assert _seqs(alive) == list(range(k + 1))  # the live one missed nothing meanwhile
    finally:
        alive.close()
        fanout.close()


async def test_a_block_goes_row_by_row_to_each_channels_consumers() -> None:
    channels = ["a", "b", "c"]
    fanout = FanoutEndpoint(channel_ssrc=ssrc_for, registry=CollectorRegistry(), process="block")
    addr = await fanout.start("127.0.0.1", 0)
    sub_a, sub_c = Subscriber("a", [addr]), Subscriber("c", [addr])
    heard_b: list[bytes] = []
    try:
        await sub_a.start()
        await sub_c.start()
        await _subscribed(fanout, "a", 1)
        await _subscribed(fanout, "c", 1)
        fanout.add_listener("b", heard_b.append)
        rows = [_packet(100 + i, ch) for i, ch in enumerate(channels)]
        block = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(3, -1).copy()
        fanout.publish_block(channels, block)
        await sub_a.wait_packets(1)
        await sub_c.wait_packets(1)
        assert _seqs(sub_a) == [100] and _seqs(sub_c) == [102]
        assert heard_b == [rows[1]]
        assert _metric(fanout, "loa_fanout_packets_out_total", channel="a") == 1
        assert _metric(fanout, "loa_fanout_bytes_out_total", channel="c") == len(rows[2])
        assert _metric(fanout, "loa_fanout_batches_total") == 2
    finally:
        sub_a.close()
        sub_c.close()
        fanout.close()


async def _counted(fanout: FanoutEndpoint, n: float, timeout: float = 5.0, **labels: str) -> None:
    deadline, name = time.monotonic() + timeout, "loa_fanout_control_dropped_total"
    while _metric(fanout, name, **labels) < n:
        assert time.monotonic() < deadline, f"{labels} counted {_metric(fanout, name, **labels)}"
        await asyncio.sleep(0.02)


async def test_a_forged_bye_or_keepalive_leaves_the_subscriber_playing() -> None:
    """The attack of the security review: a BYE with the subscriber's address and channel but
    not its cookie. Sent from the subscriber's own socket (what a spoofed source address looks
    like to the fan-out) and from another one; media must go on, and each forgery is counted."""
    fanout = FanoutEndpoint(channel_ssrc=ssrc_for, registry=CollectorRegistry(), process="bye")
    addr = await fanout.start("127.0.0.1", 0)
    victim, other = Subscriber(CH, [addr]), Subscriber(CH, [addr])
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        await victim.start()
        await other.start()
        await _subscribed(fanout, CH, 2)
        assert victim.transport is not None
        fanout.publish(CH, _packet(0))
        await victim.wait_packets(1)
        attacker.sendto(Message(MsgType.BYE, CH, cookie=bytes(24)).build(), addr)
        forged = [bytes(24), other.client._cookie]  # none, and another address's own cookie
        for cookie in forged:
            for t in (MsgType.BYE, MsgType.KEEPALIVE):
                victim.transport.sendto(Message(t, CH, cookie=cookie).build(), addr)
        # last, the pre-cookie BYE (4 reserved bytes): once it is counted, all the rest
        # (sent before it, on loopback) has been handled
        victim.transport.sendto(MAGIC + bytes((MsgType.BYE, 0, len(CH))) + CH.encode()
                                + bytes(4), addr)
        await _counted(fanout, 1, type="bye", reason="malformed")
        assert fanout.table.subscribers(CH) == 2
        # and the victim was never made to handshake again (a forged BYE would unsubscribe
        # it, then a forged KEEPALIVE get it a REJECT and it would come back with a HELLO)
        assert _metric(fanout, "loa_fanout_handshakes_total", outcome="hello") == 2
        for k in range(1, 50):
            fanout.publish(CH, _packet(k))
        await victim.wait_packets(50)
        assert _seqs(victim) == list(range(50))
        assert _metric(fanout, "loa_fanout_control_dropped_total", type="bye",
                       reason="bad_cookie") == 2
        assert _metric(fanout, "loa_fanout_control_dropped_total", type="keepalive",
                       reason="bad_cookie") == 2
        assert _metric(fanout, "loa_fanout_handshakes_total", outcome="dropped") == 4
        # the genuine BYE still leaves at once
        (bye, to), = victim.client.close()
        victim.transport.sendto(bye, to)
        await _subscribed(fanout, CH, 1)
    finally:
        attacker.close()
        victim.close()
        other.close()
        fanout.close()


@pytest.mark.parametrize("retransmit", [True, False], ids=["on", "off"])
async def test_a_subscriber_that_lost_packets_gets_the_originals_and_never_more_bytes(
        retransmit: bool) -> None:
    """RESEND kind 2 (a NACK): the fan-out sends back, from its ring, the very datagrams it
    sent, as many as fit in the request's bytes; a relay with ``retransmit`` off sends none."""
    fanout = FanoutEndpoint(channel_ssrc=ssrc_for, registry=CollectorRegistry(), process="nack",
                            burst_s=0.0, retransmit=retransmit)
    sub = Subscriber(CH, [])
    addr = await fanout.start("127.0.0.1", 0)
    sub.client.upstreams = [addr]
    try:
        await sub.start()
        await _subscribed(fanout, CH, 1)
        sent = [_packet(k) for k in range(10)]
        for p in sent:
            fanout.publish(CH, p)
        await sub.wait_packets(10)
        # ask for 3, 4 and 6, padded for two packets only: the third does not fit
        (nack, to), = sub.client.nack(3, 0b101, 2 * len(sent[3]))
        assert sub.transport is not None
        sub.transport.sendto(nack, to)
        if retransmit:
            await sub.wait_packets(12)
            assert _seqs(sub)[10:] == [3, 4]
            assert _metric(fanout, "loa_fanout_retransmits_total", outcome="sent") == 2
            assert _metric(fanout, "loa_fanout_retransmits_total", outcome="too_big") == 1
        else:
            await until(lambda: _metric(fanout, "loa_fanout_retransmits_total",
                                        outcome="off") == 3, 5, "the NACK handled")
            assert len(sub.payloads) == 10
    finally:
        sub.close()
        fanout.close()
