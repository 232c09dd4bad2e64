"""Loss recovery (issue 13 item 4), sans-IO: the NACK message (RESEND kind 2), the receiver's
:class:`LossTracker`, the upstream's answer and the ring it answers from; and that a
retransmitted packet, being the original datagram, is proven by its batch's LOAS."""

from __future__ import annotations

import pytest

from fanout.ring import KEEP_PACKETS, PacketRing
from wire import auth
from wire import subscribe as sub
from wire.packet import MalformedPacket, RtpPacket, ssrc_for
from wire.retransmit import MAX_GAP, MIN_REQUEST, LossTracker, answer

UP = ("127.0.0.1", 5000)
ME = ("10.1.2.3", 40000)


def subscribed() -> tuple[sub.SubscribeServer, sub.SubscribeClient]:
    srv = sub.SubscribeServer(secret=b"s" * 32, channel_ssrc=lambda c: 77)
    cl = sub.SubscribeClient("spk-1", "ch", [UP])
    (hello, _), = cl.start(0.0)
    (subscribe, _), = cl.handle(srv.handle(hello, ME, 0.0)[0], UP, 0.0)
    assert cl.handle(srv.handle(subscribe, ME, 0.0)[0], UP, 0.0) == []
    assert cl.state is sub.ClientState.SUBSCRIBED
    return srv, cl


def rtp(seq: int, size: int = 100) -> bytes:
    return RtpPacket(ssrc_for("ch"), seq % 65536, seq * 960, bytes(size - 32)).build()


# --------------------------------------------------------------------------- the message


def test_a_nack_names_its_packets_carries_the_cookie_and_is_padded_to_its_answer() -> None:
    srv, cl = subscribed()
    (data, to), = cl.nack(65534, 0b101, 400)  # 65534, then 65535 + 0 and 65535 + 2 = 1
    assert to == UP and len(data) == 400
    msg = sub.parse(data)
    assert (msg.kind, msg.seq, msg.mask) == (sub.RESEND_PACKETS, 65534, 0b101)
    reply, event = srv.handle(data, ME, 1.0)
    assert reply is None and isinstance(event, sub.Resend)
    assert event.kind == sub.RESEND_PACKETS and event.seqs == [65534, 65535, 1]
    # a forged cookie or a stranger's address: nothing
    forged = sub.Message(sub.MsgType.RESEND, "ch", cookie=bytes(24), seq=1,
                         kind=sub.RESEND_PACKETS, size=400).build()
    assert srv.handle(forged, ME, 1.0) == (None, sub.Dropped(ME, "ch", "resend", "bad_cookie"))
    assert srv.handle(data, ("10.7.7.7", 1), 1.0) == (None, None)
    # never padded below its own fields; cut short it is malformed
    (short, _), = cl.nack(3, 0, 0)
    assert len(short) == 6 + 1 + 2 + 24 + 5
    with pytest.raises(MalformedPacket):
        sub.parse(short[:-1])
    # the LOAS kind is unchanged
    assert sub.parse(cl.resend(9)[0][0]).kind == sub.RESEND_LOAS


def test_nothing_is_asked_for_before_the_subscription() -> None:
    cl = sub.SubscribeClient("spk-1", "ch", [UP])
    assert cl.nack(1, 0, 200) == []


# --------------------------------------------------------------------------- the receiver


def test_a_gap_is_asked_for_at_once_then_again_until_it_comes() -> None:
    t = LossTracker(deadline_s=1.0, retry_s=0.125)  # times in binary fractions: exact sums
    t.arrived(10, 100, 0.0)
    t.arrived(11, 120, 0.0625)
    assert t.due(0.0625) == []
    t.arrived(14, 100, 0.125)  # 12 and 13 lost
    assert t.due(0.125) == [(12, 0b1, max(MIN_REQUEST, 2 * 120))]
    assert t.due(0.1875) == []  # not again before retry_s
    assert t.due(0.25) == [(12, 0b1, 240)]
    t.arrived(13, 100, 0.3125)  # one came back
    assert t.due(0.375) == [(12, 0, 120)]
    t.arrived(12, 100, 0.4375)
    assert t.due(1.0) == [] and len(t) == 0
    assert (t.asked, t.recovered, t.abandoned, t.requests) == (5, 2, 0, 3)
    assert t.request_bytes == 240 + 240 + 120


def test_a_packet_is_given_up_after_its_tries_or_its_deadline() -> None:
    t = LossTracker(deadline_s=10.0, retry_s=0.125, max_tries=3)
    t.arrived(0, 100, 0.0)
    t.arrived(2, 100, 0.0)
    assert [len(t.due(0.125 * k)) for k in range(6)] == [1, 1, 1, 0, 0, 0]
    assert t.abandoned == 1 and len(t) == 0
    late = LossTracker(deadline_s=0.25, retry_s=0.125, max_tries=10)
    late.arrived(0, 100, 0.0)
    late.arrived(2, 100, 0.0)
    assert [len(late.due(0.125 * k)) for k in range(5)] == [1, 1, 1, 0, 0]
    assert late.abandoned == 1  # its play time has passed: FEC or PLC plays it


def test_runs_wider_than_the_mask_go_in_several_requests_across_the_wrap() -> None:
    t = LossTracker(deadline_s=1.0)
    t.arrived(65530, 100, 0.0)
    t.arrived((65530 + 20) % 65536, 100, 0.0)  # 19 missing: 65531 … 13 (wrapped)
    reqs = t.due(0.0)
    asked = [(s + 1 + i) % 65536 for s, mask, _ in reqs for i in range(16) if mask >> i & 1]
    asked += [s for s, _, _ in reqs]
    assert sorted(asked, key=lambda s: (s - 65531) % 65536) == [
        (65531 + i) % 65536 for i in range(19)]
    assert [s for s, _, _ in reqs] == [65531, (65531 + 17) % 65536]


def test_a_jump_is_a_restart_not_loss_and_reordering_asks_nothing() -> None:
    t = LossTracker(deadline_s=1.0)
    t.arrived(100, 100, 0.0)
    t.arrived(100 + MAX_GAP + 2, 100, 0.0)  # another upstream's numbering, or a restart
    assert t.due(0.0) == [] and len(t) == 0
    t.arrived(200, 100, 0.0)
    t.arrived(202, 100, 0.0)
    t.arrived(201, 100, 0.0)  # only late, before anyone asked
    t.arrived(203, 100, 0.0)
    assert t.due(0.0) == [] and t.recovered == 0


# --------------------------------------------------------------------------- the upstream


def test_the_ring_keeps_the_last_packets_by_sequence_number() -> None:
    ring = PacketRing(0.0, 0.02)  # no join burst: packets are kept for NACKs all the same
    for k in range(65500, 65500 + 100):
        ring.add(rtp(k), 0.0)
    newest = (65500 + 99) % 65536
    assert ring.packet(newest) == rtp(65500 + 99)
    assert ring.packet((newest - KEEP_PACKETS + 1) % 65536) is not None
    assert ring.packet((newest - KEEP_PACKETS) % 65536) is None  # overwritten
    assert ring.packet((newest + 1) % 65536) is None  # not sent yet


def test_an_answer_never_has_more_bytes_than_its_request() -> None:
    kept = {1: rtp(1, 100), 2: rtp(2, 150), 4: rtp(4, 100)}
    out, unknown, too_big = answer([1, 2, 3, 4], 230, kept.get)
    assert out == [kept[1], kept[4]] and (unknown, too_big) == (1, 1)
    assert sum(map(len, out)) <= 230
    assert answer([1, 2, 4], 350, kept.get)[0] == [kept[1], kept[2], kept[4]]


# --------------------------------------------------------------------------- signed media


def test_a_retransmitted_packet_is_proven_by_its_batch() -> None:
    """Three packets of a batch lost: the LOAS cannot verify (two at most are solved from the
    parity) and is kept; the copies sent again are the original datagrams, so the batch
    verifies and all twelve play."""
    key = auth.SigningKey.generate()
    batch = [rtp(k, 90 + k) for k in range(12)]
    loas = auth.sign_batch(key, "ch", ssrc_for("ch"), 0,
                           [auth.packet_hash(p) for p in batch]).build()
    gate: auth.MediaGate[int] = auth.MediaGate("ch", auth.Keyring([key.public]))
    lost = {3, 4, 5}
    for k, p in enumerate(batch):
        if k not in lost:
            assert gate.hold(k, p, k, 0.0)
    assert gate.vouch(loas, 0.0) == [] and gate.last == auth.PENDING
    ring = PacketRing(0.0, 0.02)
    for p in batch:
        ring.add(p, 0.0)
    copies, _, _ = answer(sorted(lost), 3 * 120, ring.packet)
    for p in copies:
        gate.hold(int.from_bytes(p[2:4], "big"), p, int.from_bytes(p[2:4], "big"), 0.1)
    played, _ = gate.take_late()
    assert sorted(played) == list(range(12)) and gate.loas["verified"] == 1


def test_a_lost_loas_is_asked_for_as_soon_as_a_later_batch_comes() -> None:
    """A batch's LOAS goes out right after its last packet: once packets a whole batch (and
    one) past a held packet have come, its LOAS is lost, before ``OVERDUE_S`` has passed, and
    every round trip saved is one more try within the playout delay."""
    key = auth.SigningKey.generate()
    gate: auth.MediaGate[int] = auth.MediaGate("ch", auth.Keyring([key.public]))
    first = [rtp(k) for k in range(12)]
    for k, p in enumerate(first):
        gate.hold(k, p, k, 0.0)
    loas = auth.sign_batch(key, "ch", ssrc_for("ch"), 0, [auth.packet_hash(p) for p in first])
    assert gate.vouch(loas.build(), 0.0) == list(range(12))  # the gate learns: 12 a batch
    for k in range(12, 26):  # the second batch, its LOAS lost, then the third's first two
        p = rtp(k)
        now = 1.0 + 0.02 * (k - 12)
        gate.hold(k, p, k, now)
        if k == 24:
            assert gate.overdue(now) is None  # the LOAS may still be just behind this one
    assert now - 1.0 < auth.OVERDUE_S
    assert gate.overdue(now) == 12
