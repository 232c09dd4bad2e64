"""Wire format: RTP with Loa's header extensions, RTCP, and the subscribe handshake."""

import os
import random

import pytest

from wire import packet, rtcp
from wire import subscribe as sub
from wire.packet import MalformedPacket
from wire.priority import Priority


def test_rtp_roundtrip_with_extensions():
    p = packet.RtpPacket(ssrc=0xDEADBEEF, seq=65535, ts=2**32 - 1, payload=b"\xfc\x01\x02",
                         capture_ntp=packet.unix_to_ntp64(1_790_000_000.25), broadcast_id=42,
                         priority=Priority.EMERGENCY)
    data = p.build()
    assert len(data) == packet.HEADER_LEN + 3
    assert data[30:32] == b"\x30\x03"  # ID 3, one byte: the level (docs/protocol.md)
    q = packet.parse(data)
    assert (q.ssrc, q.seq, q.ts, q.payload, q.broadcast_id, q.priority) == (
        0xDEADBEEF, 65535, 2**32 - 1, b"\xfc\x01\x02", 42, 3)
    assert abs(q.capture_time - 1_790_000_000.25) < 1e-6
    assert packet.peek_ssrc(data) == 0xDEADBEEF


def test_loa_layout_and_the_general_walk_read_the_same_packet():
    p = packet.RtpPacket(ssrc=7, seq=3, ts=960, payload=b"\xfc\x01", pt=100, marker=True,
                         capture_ntp=packet.unix_to_ntp64(1_790_000_000.5), broadcast_id=9,
                         priority=2)
    data = p.build()  # Loa's layout: read in one unpack
    ext = data[16:32]
    # the same elements in another order: read element by element
    walked = data[:16] + ext[14:16] + ext[9:14] + ext[0:9] + data[32:]
    assert packet.parse(data) == packet.parse(walked) == p
    # Loa's layout but for an element it does not know (ID 4 where the priority goes): the
    # unknown element is skipped, not read as the priority
    foreign = data[:30] + b"\x40" + data[31:]
    q = packet.parse(foreign)
    assert (q.priority, q.broadcast_id, q.payload) == (0, 9, b"\xfc\x01")


def test_parse_foreign_rtp_without_extension_and_with_csrc_and_padding():
    # V=2, P=1, X=0, CC=1; PT 96; one CSRC; payload 'ab'; 2 bytes of padding
    data = bytes([0xA1, 96, 0, 7, 0, 0, 0, 9, 0, 0, 0, 5, 0, 0, 0, 1]) + b"ab" + b"\x00\x02"
    q = packet.parse(data)
    assert (q.pt, q.seq, q.ts, q.ssrc, q.payload, q.capture_ntp) == (96, 7, 9, 5, b"ab", None)


@pytest.mark.parametrize("data", [b"", b"\x80", bytes(11), b"\x40" + bytes(20),
                                  bytes([0xB0, 111]) + bytes(10) + b"\xbe\xde\x00\x09",
                                  bytes([0xA0, 111]) + bytes(10) + b"\x00"])
def test_malformed_rtp_raises(data):
    with pytest.raises(MalformedPacket):
        packet.parse(data)


def test_random_bytes_never_raise_anything_but_malformed():
    rng = random.Random(1)
    for size in range(0, 200):
        data = bytes([0x80 | rng.randrange(64)]) + rng.randbytes(size)
        try:
            packet.parse(data)
        except MalformedPacket:
            pass


def test_ssrc_is_stable_and_distinct():
    assert packet.ssrc_for("brvt.a") == packet.ssrc_for("brvt.a")
    assert packet.ssrc_for("brvt.a") != packet.ssrc_for("brvt.b")


def test_opus_samples_from_toc():
    assert packet.opus_samples(bytes([0xFC])) == 960  # CELT FB 20 ms, code 0
    assert packet.opus_samples(bytes([0x78 | 1])) == 1920  # hybrid 20 ms x2
    assert packet.opus_samples(bytes([0x1B, 2])) == 2 * 2880  # SILK 60 ms, code 3 x2
    for bad in (b"", bytes([0x1B, 3]), bytes([0x1B, 0])):  # empty, 180 ms, zero frames
        with pytest.raises(MalformedPacket):
            packet.opus_samples(bad)


def test_rtcp_compound_roundtrip():
    sr = rtcp.SenderReport(7, packet.unix_to_ntp64(1e9), 1234, 10, 1000)
    app = rtcp.App(7, b"LOAS", 1, bytes(8))
    parsed = rtcp.parse_compound(sr.build() + app.build() + rtcp.Bye(7).build())
    assert parsed == [sr, app, rtcp.Bye(7)]
    assert packet.is_rtcp(sr.build()) and not packet.is_rtcp(
        packet.RtpPacket(1, 1, 1, b"x").build())
    with pytest.raises(MalformedPacket):
        rtcp.parse_compound(sr.build()[:20])


SECRET = b"s" * 32
UP = ("127.0.0.1", 5000)
ME = ("10.1.2.3", 40000)


def server(secret=SECRET, **kw):
    return sub.SubscribeServer(secret=secret, channel_ssrc=lambda c: 77 if c == "ch" else None,
                               **kw)


def handshake(srv, cl, addr=ME, now=0.0):
    (hello, _), = cl.start(now)
    reply, _ = srv.handle(hello, addr, now)
    (subscribe, _), = cl.handle(reply, cl.upstream, now)
    reply, event = srv.handle(subscribe, addr, now)
    assert cl.handle(reply, cl.upstream, now) == []
    return event


def test_handshake_subscribes_and_acks():
    srv, cl = server(), sub.SubscribeClient("spk-1", "ch", [UP])
    event = handshake(srv, cl)
    assert event == sub.Subscribed(ME, "ch", "spk-1")
    assert cl.state is sub.ClientState.SUBSCRIBED and cl.ssrc == 77
    assert srv.addresses("ch") == [ME]


def test_cookie_is_bound_to_source_address():
    srv, cl = server(), sub.SubscribeClient("spk-1", "ch", [UP])
    (hello, _), = cl.start(0)
    cookie, _ = srv.handle(hello, ME, 0)
    (subscribe, _), = cl.handle(cookie, UP, 0)
    reply, event = srv.handle(subscribe, ("10.9.9.9", 40000), 0)  # another source
    assert event is None and sub.parse(reply).reason == sub.RejectReason.BAD_COOKIE
    reply, event = srv.handle(subscribe, ME, sub.COOKIE_TTL_S + 5)  # too old
    assert event is None and sub.parse(reply).type is sub.MsgType.REJECT
    assert srv.addresses("ch") == []


def test_server_never_replies_larger_than_the_request():
    srv = server()
    for msg in [sub.Message(sub.MsgType.HELLO, "ch", identity="x"),
                sub.Message(sub.MsgType.HELLO, "c" * 120),
                sub.Message(sub.MsgType.KEEPALIVE, "ch", cookie=bytes(24)),
                sub.Message(sub.MsgType.SUBSCRIBE, "ch", cookie=bytes(24))]:
        data = msg.build()
        reply, _ = srv.handle(data, ME, 0)
        assert reply is not None and len(reply) <= len(data)
    # a hand-made HELLO without padding gets no answer at all
    short = sub.MAGIC + bytes((1, 0, 2)) + b"ch" + bytes((0, 0, 0))
    assert srv.handle(short, ME, 0) == (None, None)


def test_keepalive_expiry_and_bye():
    srv, cl = server(expire_s=15), sub.SubscribeClient("spk-1", "ch", [UP])
    handshake(srv, cl)
    cl.on_media(10)
    (ka, _), = cl.tick(10)
    assert sub.parse(ka).type is sub.MsgType.KEEPALIVE
    srv.handle(ka, ME, 10)
    assert srv.expire(20) == []
    assert srv.expire(26) == [sub.Unsubscribed(ME, "ch", "expired")]
    handshake(srv, cl, now=30)
    (bye, _), = cl.close()
    assert srv.handle(bye, ME, 31) == (None, sub.Unsubscribed(ME, "ch", "bye"))
    assert srv.count == 0


def test_keepalive_and_bye_carry_the_subscriptions_cookie():
    srv, cl = server(), sub.SubscribeClient("spk-1", "ch", [UP])
    assert cl.close() == []  # not subscribed: no cookie, nothing to leave
    handshake(srv, cl)
    cookie = cl._cookie
    cl.on_media(5)
    (ka, _), = cl.tick(5)
    (bye, _), = cl.close()
    for data, t in ((ka, sub.MsgType.KEEPALIVE), (bye, sub.MsgType.BYE)):
        assert sub.parse(data) == sub.Message(t, "ch", cookie=cookie)
        assert len(data) == 6 + 1 + 2 + 24  # header, str8 "ch", cookie (docs/protocol.md)
        assert data[7:9] == b"ch" and data[9:] == cookie


def _forged_cookies(srv):
    """Cookies a forger might put in a KEEPALIVE or BYE from ME on "ch" (ME holds one)."""
    other = ("10.1.2.4", 40000)
    cl = sub.SubscribeClient("spk-2", "ch", [UP])
    handshake(srv, cl, addr=other)  # a genuine subscriber's cookie, for another address
    return {
        "zero": bytes(24),
        "another address's": cl._cookie,
        "another channel's": sub.make_cookie(SECRET, ME, "ch2", "spk-1", 0),
        "another identity's": sub.make_cookie(SECRET, ME, "ch", "spk-9", 0),
        "another secret's": sub.make_cookie(b"x" * 32, ME, "ch", "spk-1", 0),
    }


def test_a_forged_bye_or_keepalive_changes_nothing_and_is_reported():
    srv, cl = server(expire_s=15), sub.SubscribeClient("spk-1", "ch", [UP])
    handshake(srv, cl)
    for name, cookie in _forged_cookies(srv).items():
        for t, kind in ((sub.MsgType.BYE, "bye"), (sub.MsgType.KEEPALIVE, "keepalive")):
            data = sub.Message(t, "ch", cookie=cookie).build()
            assert srv.handle(data, ME, 10) == (
                None, sub.Dropped(ME, "ch", kind, "bad_cookie")), name
    assert sorted(srv.addresses("ch")) == [ME, ("10.1.2.4", 40000)] and srv.count == 2
    # the forged KEEPALIVEs at t=10 did not refresh ME: it expires 15 s after its handshake
    assert sub.Unsubscribed(ME, "ch", "expired") in srv.expire(16)
    # a BYE without any cookie (the old 4 reserved bytes) is malformed
    old_bye = sub.MAGIC + bytes((sub.MsgType.BYE, 0, 2)) + b"ch" + bytes(4)
    with pytest.raises(MalformedPacket):
        srv.handle(old_bye, ME, 10)


def test_the_genuine_keepalive_refreshes_and_the_genuine_bye_leaves_after_forgeries():
    srv, cl = server(expire_s=15), sub.SubscribeClient("spk-1", "ch", [UP])
    handshake(srv, cl)
    for cookie in _forged_cookies(srv).values():
        srv.handle(sub.Message(sub.MsgType.KEEPALIVE, "ch", cookie=cookie).build(), ME, 5)
    cl.on_media(10)
    (ka, _), = cl.tick(10)
    assert srv.handle(ka, ME, 10) == (None, None)
    assert srv.expire(16) == [sub.Unsubscribed(("10.1.2.4", 40000), "ch", "expired")]
    assert srv.addresses("ch") == [ME]  # refreshed at 10
    # a renewed handshake replaces the cookie: the old one no longer counts
    old = sub.Message(sub.MsgType.BYE, "ch", cookie=cl._cookie).build()
    cl.start(20)
    handshake(srv, cl, now=20)
    assert srv.handle(old, ME, 21) == (None, sub.Dropped(ME, "ch", "bye", "bad_cookie"))
    (bye, _), = cl.close()
    assert srv.handle(bye, ME, 21) == (None, sub.Unsubscribed(ME, "ch", "bye"))
    assert srv.addresses("ch") == [] and srv.count == 0


def test_unknown_keepalive_makes_client_handshake_again():
    srv, cl = server(), sub.SubscribeClient("spk-1", "ch", [UP])
    handshake(srv, cl)
    restarted = server(secret=b"r" * 32)
    cl.on_media(10)
    (ka, _), = cl.tick(10)  # carries the cookie of a secret the restarted upstream lost
    reject, _ = restarted.handle(ka, ME, 1)
    (again, _), = cl.handle(reject, UP, 1)
    assert sub.parse(again).type is sub.MsgType.HELLO


def test_client_ignores_a_suback_out_of_turn():
    """Found by loadtest/fuzz.py: a SUBACK before any COOKIE made the client subscribed with
    no cookie, and its next KEEPALIVE (or BYE) raised instead of being sent."""
    cl = sub.SubscribeClient("spk-1", "ch", [UP])
    cl.start(0)
    suback = sub.Message(sub.MsgType.SUBACK, "ch", ssrc=1, keepalive_s=5, ptime_ms=20).build()
    assert cl.handle(suback, UP, 0) == []
    assert cl.state is sub.ClientState.HELLO and cl.ssrc is None
    (hello, _), = cl.tick(1)  # still handshaking
    assert sub.parse(hello).type is sub.MsgType.HELLO
    assert cl.close() == []


def test_client_fails_over_on_silence_and_on_dead_upstream():
    other = ("127.0.0.2", 5000)
    cl = sub.SubscribeClient("spk-1", "ch", [UP, other], failover_s=3, media_timeout_s=3)
    cl.start(0)
    assert cl.tick(1) and cl.upstream == UP  # retries HELLO
    out = cl.tick(3.5)  # no answer for 3 s: next upstream
    assert cl.upstream == other and sub.parse(out[-1][0]).type is sub.MsgType.HELLO
    srv = server()
    handshake(srv, cl, now=4)
    cl.on_media(5)
    assert cl.upstream == other
    out = cl.tick(8.5)  # media stopped for 3.5 s
    assert cl.upstream == UP and cl.failovers == 2
    assert [sub.parse(d).type for d, _ in out] == [sub.MsgType.BYE, sub.MsgType.HELLO]


OTHER = ("127.0.0.2", 5000)


def stream(cl, start, end, every=0.02, tick_every=0.1):
    """The upstream's packets every ``every`` s and the edge's ticks every ``tick_every`` s from
    ``start`` to ``end`` (exclusive), in time order; what the ticks sent."""
    events = sorted([(start + i * every, "heard") for i in range(round((end - start) / every))]
                    + [(start + i * tick_every, "tick")
                       for i in range(1, round((end - start) / tick_every))])
    out = []
    for t, what in events:
        if what == "heard":
            cl.heard_packet(t, round(t / every) * 960)  # an RTP packet of the stream
        else:
            out += cl.tick(t)
    return out


def types(out):
    return [sub.parse(d).type for d, _ in out]


def test_client_leaves_an_upstream_silent_for_silence_s_at_the_next_tick():
    cl = sub.SubscribeClient("spk-1", "ch", [UP, OTHER], silence_s=0.3)
    handshake(server(), cl, now=0)
    cl.on_media(0)
    assert stream(cl, 0, 1.0) == [] and cl.upstream == UP  # the live stream: keepalives only
    # the last packet came at 0.98: 0.3 s later is 1.28, so the tick at 1.3 leaves
    for t in (1.0, 1.1, 1.2):
        assert cl.tick(t) == [] and cl.upstream == UP
    out = cl.tick(1.3)
    assert cl.upstream == OTHER and cl.failovers == 1
    assert types(out) == [sub.MsgType.BYE, sub.MsgType.HELLO]
    assert out[0][1] == UP and out[1][1] == OTHER


def test_one_late_packet_is_not_a_dead_upstream_and_the_new_one_is_kept():
    """No flapping: a packet 250 ms late (the 12 frames before it held up on the path) does
    not move the subscriber; a dead primary does, once, and the next upstream keeps it even
    when the old one talks again."""
    cl = sub.SubscribeClient("spk-1", "ch", [UP, OTHER], silence_s=0.3)
    handshake(server(), cl, now=0)
    stream(cl, 0, 1.0)
    for t in (1.05, 1.15):  # nothing arrives from 0.98 to 1.23
        assert cl.tick(t) == []
    cl.heard(1.23)
    assert stream(cl, 1.25, 3.0) == [] and cl.failovers == 0
    for t in (3.1, 3.2, 3.3):  # dead from 2.98 on
        cl.tick(t)
    assert cl.upstream == OTHER and cl.failovers == 1
    srv = server()
    handshake(srv, cl, addr=ME, now=3.31)
    assert cl.state is sub.ClientState.SUBSCRIBED and cl.upstream == OTHER
    # the old primary comes back: its answers are not ours to take (the edge drops its media)
    cookie = sub.Message(sub.MsgType.COOKIE, "ch", cookie=bytes(sub.COOKIE_LEN)).build()
    assert cl.handle(cookie, UP, 3.32) == []
    stream(cl, 3.32, 6.0)
    assert cl.upstream == OTHER and cl.failovers == 1


def test_a_tick_late_by_silence_s_is_our_own_stall_not_the_upstreams():
    cl = sub.SubscribeClient("spk-1", "ch", [UP, OTHER], silence_s=0.3)
    handshake(server(), cl, now=0)
    stream(cl, 0, 1.0)
    assert cl.tick(2.0) == [] and cl.upstream == UP  # stalled a second: measure afresh
    assert cl.tick(2.1) == [] and cl.tick(2.3) == []
    cl.tick(2.4)  # but silence after the stall is silence
    assert cl.upstream == OTHER


def test_an_upstream_sending_only_unproven_media_is_left_after_media_timeout_s():
    cl = sub.SubscribeClient("spk-1", "ch", [UP, OTHER], media_timeout_s=3.0)
    handshake(server(), cl, now=0)
    stream(cl, 0, 2.95)  # heard, but nothing proven
    assert cl.upstream == UP
    stream(cl, 2.95, 3.2)
    assert cl.upstream == OTHER


def test_handshake_gives_up_in_failover_s_then_backs_off_round_by_round():
    # times in 1/16 s, exact in binary: no tick falls on a boundary by rounding
    cl = sub.SubscribeClient("spk-1", "ch", [UP, OTHER], retry_s=0.125, failover_s=0.5)
    sent = cl.start(0)
    moves = []

    def run(ticks):
        for t in ticks:
            before = cl.index
            out = cl.tick(t)
            if cl.index != before:
                moves.append(t)
            else:
                sent.extend(out)

    run(i / 16 for i in range(1, 321))  # 20 s of dead upstreams
    # a round at 0.5 s an upstream, then 1 s, 2 s, then 4 s (MAX_HANDSHAKE_S) from then on
    assert moves == [0.5625, 1.125, 2.1875, 3.25, 5.3125, 7.375, 11.4375, 15.5, 19.5625]
    # HELLOs at 0, 0.125, 0.25, 0.375 and 0.5, then the next upstream's (every 0.125 s)
    assert [a for _, a in sent[:6]] == [UP] * 5 + [OTHER]
    assert set(types(sent)) == {sub.MsgType.HELLO}
    # a SUBACK ends the back-off: the next dead upstream is given up after 0.5 s again
    handshake(server(), cl, now=30.0)
    cl.heard_packet(30.0, 0)  # its stream starts (before the first packet the bound is longer)
    moves.clear()
    run([30.0, *(30 + i / 16 for i in range(1, 17))])
    assert moves == [30.3125, 30.875]  # silent for > 0.3 s, then 0.5 s without a COOKIE


def test_a_standby_streamer_rejects_and_its_pair_is_asked_again_without_back_off():
    """A standby (REJECT 8) moves the subscriber on at once, and the round it answered in
    does not double the handshake's times: the dead active streamer is given up after
    ``failover_s`` every time, and the standby is subscribed to once it has taken over."""
    standby = server(standby=True)
    cl = sub.SubscribeClient("relay-1", "ch", [UP, OTHER], retry_s=0.125, failover_s=0.5)
    cl.start(0)
    asked = []  # when the standby was asked: each time UP was given up
    for i in range(1, 97):  # 6 s: UP is dead, OTHER (the standby) answers every HELLO
        t = i / 16
        for data, addr in cl.tick(t):
            if addr == OTHER:
                asked.append(t)
                reply, event = standby.handle(data, ME, t)
                assert event is None and sub.parse(reply).reason == sub.RejectReason.STANDBY
                assert [a for _, a in cl.handle(reply, OTHER, t)] == [UP]  # back to UP at once
    gaps = [b - a for a, b in zip(asked, asked[1:], strict=False)]
    # UP's 0.5 s (and one tick) each time, the standby's answer at once: no doubling
    assert len(asked) >= 10 and max(gaps) <= 0.5625 + 1e-9, asked
    assert cl.state is not sub.ClientState.SUBSCRIBED
    # it takes over: the next HELLO it gets is answered, and the handshake completes
    standby.standby = False
    while cl.upstream != OTHER:
        cl.tick(t := t + 1 / 16)
    assert handshake(standby, cl, now=t + 0.1) == sub.Subscribed(ME, "ch", "relay-1")
    assert cl.state is sub.ClientState.SUBSCRIBED


def test_unknown_channel_rejected_and_garbage_is_malformed():
    srv = server()
    reply, _ = srv.handle(sub.Message(sub.MsgType.HELLO, "nope").build(), ME, 0)
    assert sub.parse(reply).reason == sub.RejectReason.UNKNOWN_CHANNEL
    for n in range(0, 300):
        data = sub.MAGIC + os.urandom(n)
        try:
            srv.handle(data, ME, 0)
        except MalformedPacket:
            pass


def test_drop_channel_forgets_its_subscribers():
    srv, cl = server(), sub.SubscribeClient("spk-1", "ch", [UP])
    handshake(srv, cl)
    assert srv.drop_channel("ch") == [ME] and srv.count == 0 and srv.addresses("ch") == []


def test_keepalives_are_jittered_so_bursts_spread_out():
    due = []
    for seed in range(20):
        srv, cl = server(), sub.SubscribeClient("spk", "ch", [UP], rng=random.Random(seed))
        handshake(srv, cl)
        t = 0.0
        while True:
            t += 0.05
            cl.on_media(t)
            if cl.tick(t):
                due.append(t)
                break
    assert all(3.7 <= t <= 5.05 for t in due) and max(due) - min(due) > 0.5


def test_time_is_asked_with_the_cookie_and_only_answers_to_our_questions_count():
    srv = server()
    got: list[tuple[int, int, int]] = []
    cl = sub.SubscribeClient("spk-1", "ch", [UP], on_time=lambda *t: got.append(t))
    assert cl.ask_time(5) == []  # not subscribed: no cookie to ask with
    handshake(srv, cl)
    t1 = 1_796_000_000_123_456_789
    (data, to), = cl.ask_time(t1)
    assert to == UP and sub.parse(data) == sub.Message(sub.MsgType.TIME, "ch",
                                                       cookie=cl._cookie, t1=t1)
    assert srv.handle(data, ME, 1) == (None, sub.TimeAsked(ME, "ch", t1))
    for name, cookie in _forged_cookies(srv).items():
        forged = sub.Message(sub.MsgType.TIME, "ch", cookie=cookie, t1=t1).build()
        assert srv.handle(forged, ME, 1) == (
            None, sub.Dropped(ME, "ch", "time", "bad_cookie")), name
    assert srv.handle(data, ("10.7.7.7", 1), 1) == (None, None)  # no reflector for others
    reply = sub.Message(sub.MsgType.TIMEREPLY, "ch", t1=t1, t2=t1 + 7, t3=t1 + 9).build()
    assert len(reply) < len(data)  # never an amplifier
    assert sub.parse(reply).t3 == t1 + 9
    for forged in (sub.Message(sub.MsgType.TIMEREPLY, "ch", t1=t1 + 1, t2=1, t3=1).build(),
                   sub.Message(sub.MsgType.TIMEREPLY, "other", t1=t1, t2=1, t3=1).build()):
        assert cl.handle(forged, UP, 1) == []
    assert cl.handle(reply, ("10.9.9.9", 5000), 1) == []  # not from our upstream
    assert got == []
    assert cl.handle(reply, UP, 1) == [] and cl.handle(reply, UP, 1) == []  # the same twice
    assert got == [(t1, t1 + 7, t1 + 9)]
    # the last 8 asked are remembered: a late answer to the 8th-last still counts
    asked = [cl.ask_time(t1 + 100 + i) for i in range(9)]
    assert all(asked)
    late = sub.Message(sub.MsgType.TIMEREPLY, "ch", t1=t1 + 100, t2=0, t3=0).build()
    cl.handle(late, UP, 2)
    still = sub.Message(sub.MsgType.TIMEREPLY, "ch", t1=t1 + 101, t2=0, t3=0).build()
    cl.handle(still, UP, 2)
    assert got[1:] == [(t1 + 101, 0, 0)]


def test_a_resend_carries_the_cookie_and_is_padded_against_amplification():
    srv, cl = server(), sub.SubscribeClient("spk-1", "ch", [UP])
    assert cl.resend(7) == []  # not subscribed: no cookie to ask with
    handshake(srv, cl)
    (data, to), = cl.resend(65535)
    assert to == UP and len(data) == sub.RESEND_MIN_LEN >= 116  # a LOAS is 116 bytes
    assert sub.parse(data) == sub.Message(sub.MsgType.RESEND, "ch", cookie=cl._cookie,
                                          seq=65535)
    assert srv.handle(data, ME, 1) == (None, sub.Resend(ME, "ch", 65535))
    for name, cookie in _forged_cookies(srv).items():
        forged = sub.Message(sub.MsgType.RESEND, "ch", cookie=cookie, seq=3).build()
        assert srv.handle(forged, ME, 1) == (
            None, sub.Dropped(ME, "ch", "resend", "bad_cookie")), name
    # from an address that is not subscribed: nothing at all
    assert srv.handle(data, ("10.7.7.7", 1), 1) == (None, None)
    # a RESEND of an unknown kind is malformed
    bad = bytearray(data)
    bad[9 + 24] = 3
    with pytest.raises(MalformedPacket):
        sub.parse(bytes(bad))
