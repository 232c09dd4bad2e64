"""Signed media, sans-IO (``wire/auth.py``): batches signed by the streamer's key, verified by
a receiver's gate from the packets it holds, with losses and impostors."""

from __future__ import annotations

import pytest

from fanout.ring import PacketRing
from wire import auth
from wire.packet import MalformedPacket, RtpPacket, ssrc_for

CH = "vn.79.760.26734/main"
SSRC = ssrc_for(CH)


def packets(n: int, first_seq: int = 100, priority: int = 0, tag: bytes = b"") -> list[bytes]:
    return [RtpPacket(SSRC, (first_seq + i) % 65536, 960 * i, b"\xf8" + tag + bytes([i]) * 40,
                      capture_ntp=(1 << 40) + i, broadcast_id=7, priority=priority).build()
            for i in range(n)]


def signed(key: auth.SigningKey, pkts: list[bytes],
           frames: int = auth.DEFAULT_BATCH_FRAMES) -> list[bytes]:
    """The LOAS datagrams that sign ``pkts`` in batches of ``frames``, as the streamer signs a
    channel on air (its signer starts with a packet alone and a ramp: see the signer's tests)."""
    out = []
    for i in range(0, len(pkts), frames):
        batch = pkts[i:i + frames]
        out.append(auth.sign_batch(key, CH, SSRC, int.from_bytes(batch[0][2:4], "big"),
                                   [auth.packet_hash(p) for p in batch]).build())
    return out


def gate_for(*keys: auth.SigningKey) -> auth.MediaGate[bytes]:
    return auth.MediaGate(CH, auth.Keyring(k.public for k in keys))


def hold_all(gate: auth.MediaGate[bytes], pkts: list[bytes], now: float = 0.0) -> None:
    for p in pkts:
        gate.hold(int.from_bytes(p[2:4], "big"), p, p, now)


@pytest.fixture(scope="module")
def key() -> auth.SigningKey:
    return auth.SigningKey.generate()


def test_a_whole_batch_is_vouched_for_in_order(key):
    pkts = packets(12)
    [loas] = signed(key, pkts)
    assert len(loas) == auth.LOAS_LEN == 116 and auth.is_loas(loas)
    gate = gate_for(key)
    hold_all(gate, list(reversed(pkts)))
    assert gate.vouch(loas, 0.0) == pkts
    assert gate.last == "verified" and len(gate) == 0


@pytest.mark.parametrize("lost", [(0,), (11,), (3, 4), (0, 11), (5, 9)])
def test_up_to_two_lost_packets_leave_the_rest_playable(key, lost):
    pkts = packets(12, first_seq=65530)  # the batch wraps the 16-bit sequence number
    [loas] = signed(key, pkts)
    gate = gate_for(key)
    hold_all(gate, [p for i, p in enumerate(pkts) if i not in lost])
    assert gate.vouch(loas, 0.0) == [p for i, p in enumerate(pkts) if i not in lost]


def test_three_lost_packets_make_the_batch_unverifiable_and_nothing_plays(key):
    pkts = packets(12)
    [loas] = signed(key, pkts)
    gate = gate_for(key)
    hold_all(gate, pkts[3:], now=1.0)
    assert gate.vouch(loas, 1.0) == [] and gate.last == auth.PENDING  # they may still come
    assert gate.loas["unverifiable"] == 0
    assert gate.expire(before=2.0) == 9 and gate.dropped["unverified"] == 9
    assert gate.loas["unverifiable"] == 1 and not gate.late


def test_an_impostor_at_every_sequence_number_is_told_apart(key):
    """A raw-socket sender copies the sequence numbers and gets there first: the gate keeps
    both candidates and the signature picks the genuine one at each position."""
    pkts = packets(12)
    forged = packets(12, tag=b"\xee")
    [loas] = signed(key, pkts)
    gate = gate_for(key)
    for f, p in zip(forged, pkts, strict=True):
        hold_all(gate, [f, p])
    assert gate.vouch(loas, 0.0) == pkts
    assert gate.dropped["forged"] == 12


def test_impostors_and_a_loss_together(key):
    pkts = packets(12)
    forged = packets(12, tag=b"\xee")
    [loas] = signed(key, pkts)
    gate = gate_for(key)
    hold_all(gate, forged[:6])
    hold_all(gate, [p for i, p in enumerate(pkts) if i != 2])
    assert gate.vouch(loas, 0.0) == [p for i, p in enumerate(pkts) if i != 2]


# seq, timestamp, capture time, broadcast id, level, payload
@pytest.mark.parametrize("byte", [2, 7, 16, 25, 29, 31, 32, 60])
def test_a_changed_byte_anywhere_is_never_played(key, byte):
    pkts = packets(12)
    [loas] = signed(key, pkts)
    altered = bytearray(pkts[5])
    altered[byte] ^= 0x01
    gate = gate_for(key)
    hold_all(gate, pkts[:5] + [bytes(altered)] + pkts[6:])
    released = gate.vouch(loas, 0.0)
    assert bytes(altered) not in released
    # one altered packet reads as one lost one: the rest still verifies (seq changes excepted,
    # which move the packet to another position)
    if byte != 2:
        assert released == pkts[:5] + pkts[6:]


def test_an_altered_batch_with_no_genuine_packet_plays_nothing(key):
    pkts = packets(12)
    [loas] = signed(key, pkts)
    gate = gate_for(key)
    hold_all(gate, packets(12, tag=b"\x01"))
    assert gate.vouch(loas, 0.0) == [] and gate.last == "bad_signature"


def test_the_emergency_level_cannot_be_added_or_stripped(key):
    for real, fake in ((0, 3), (3, 0)):
        pkts = packets(12, priority=real)
        [*loases] = signed(key, pkts)
        gate = gate_for(key)
        hold_all(gate, packets(12, priority=fake))
        assert all(gate.vouch(loas, 0.0) == [] for loas in loases)


def test_another_channel_or_an_unknown_key_is_refused(key):
    pkts = packets(12)
    loas = auth.sign_batch(key, "vn.79.760.26735/main", SSRC, 100,
                           [auth.packet_hash(p) for p in pkts]).build()
    gate = gate_for(key)
    hold_all(gate, pkts)
    assert gate.vouch(loas, 0.0) == [] and gate.last == "bad_signature"
    [own] = signed(auth.SigningKey.generate(), pkts)
    assert gate.vouch(own, 0.0) == [] and gate.last == "unknown_key"


def test_a_replayed_packet_is_dropped_and_counted(key):
    pkts = packets(12)
    [loas] = signed(key, pkts)
    gate = gate_for(key)
    hold_all(gate, pkts)
    assert gate.vouch(loas, 0.0) == pkts
    hold_all(gate, pkts)
    assert gate.dropped["replayed"] == 12 and len(gate) == 0
    assert gate.vouch(loas, 0.0) == [] and gate.last == "duplicate"


def test_a_loas_before_its_packets_waits_for_them(key):
    """Reordered on the way: the LOAS is kept, the batch verifies once ten packets are held,
    and the last two are checked against the hashes the parity recovered."""
    pkts = packets(12)
    [loas] = signed(key, pkts)
    gate = gate_for(key)
    assert gate.vouch(loas, 0.0) == [] and gate.last == auth.PENDING
    hold_all(gate, pkts[:9])
    assert not gate.late and len(gate) == 9
    hold_all(gate, pkts[9:10])
    assert gate.late and gate.take_late() == (pkts[:10], [loas]) and not gate.late
    for p in pkts[10:]:
        assert gate.hold(int.from_bytes(p[2:4], "big"), p, p, 0.0)
    assert gate.take_late() == (pkts[10:], [])
    assert gate.loas["verified"] == 1 and len(gate) == 0
    assert gate.vouch(loas, 0.0) == [] and gate.last == "duplicate"


def test_a_forged_copy_of_a_loas_kept_first_does_not_shut_out_the_genuine_one(key):
    """Someone who got the LOAS too (a subscriber of the same relay) sends it on first with
    another first sequence number: it is kept, but the genuine one is still checked."""
    pkts = packets(12)
    [loas] = signed(key, pkts)
    forged = bytearray(loas)
    forged[16:18] = (500).to_bytes(2, "big")
    gate = gate_for(key)
    hold_all(gate, pkts[:6])
    assert gate.vouch(bytes(forged), 0.0) == [] and gate.last == auth.PENDING
    assert gate.vouch(loas, 0.0) == [] and gate.last == auth.PENDING  # not a duplicate
    hold_all(gate, pkts[6:10])
    assert gate.take_late() == (pkts[:10], [loas])


def test_a_packet_after_its_verified_batch_must_be_the_signed_one(key):
    pkts = packets(12)
    [loas] = signed(key, pkts)
    gate = gate_for(key)
    hold_all(gate, pkts[:11])
    assert gate.vouch(loas, 0.0) == pkts[:11]
    forged = packets(12, tag=b"\xee")[11]
    assert not gate.hold(111, forged, forged, 0.0) and gate.dropped["forged"] == 1
    assert gate.hold(111, pkts[11], pkts[11], 0.0) and gate.take_late() == ([pkts[11]], [])
    assert not gate.hold(111, pkts[11], pkts[11], 0.0) and gate.dropped["replayed"] == 1


def test_a_kept_loas_sorts_out_an_impostor_once_enough_has_come(key):
    """Two packets missing and an altered one: too many erasures to verify, until one of
    the missing arrives."""
    pkts = packets(12)
    [loas] = signed(key, pkts)
    altered = packets(12, tag=b"\xee")[0]
    gate = gate_for(key)
    hold_all(gate, [altered, *pkts[1:10]])
    assert gate.vouch(loas, 0.0) == [] and gate.last == auth.PENDING
    hold_all(gate, pkts[10:11])
    assert gate.take_late() == (pkts[1:11], [loas]) and gate.dropped["forged"] == 1
    hold_all(gate, [pkts[0], pkts[11]])
    assert gate.take_late() == ([pkts[0], pkts[11]], [])


def test_a_single_packet_batch_verifies_from_its_loas_alone(key):
    """The first packet of an emergency is signed alone: a LOAS overtaking it proves it."""
    [pkt] = packets(1, priority=3)
    [loas] = signed(key, [pkt])
    gate = gate_for(key)
    assert gate.vouch(loas, 0.0) == [] and gate.last == "verified"
    assert gate.hold(100, pkt, pkt, 0.0) and gate.take_late() == ([pkt], [])


def test_kept_loas_are_bounded_and_counted(key):
    gate = gate_for(key)
    loases = [signed(key, packets(12, first_seq=100 + 12 * i))[0] for i in range(6)]
    for loas in loases:
        gate.vouch(loas, 0.0)
    assert gate.loas["unverifiable"] == 2  # the oldest two made room
    gate.expire(before=1.0)
    assert gate.loas["unverifiable"] == 6 and gate.loas["verified"] == 0


def test_an_overdue_loas_is_asked_for_once_per_interval(key):
    pkts = packets(12)
    [loas] = signed(key, pkts)
    gate = gate_for(key)
    hold_all(gate, pkts, now=10.0)
    assert gate.overdue(10.0 + auth.OVERDUE_S - 0.01) is None  # not late yet
    t = 10.0 + auth.OVERDUE_S + 0.01
    assert gate.overdue(t) == 100 and gate.loas[auth.REQUESTED] == 1
    assert gate.overdue(t + 0.05) is None  # asked just now
    assert gate.overdue(t + auth.ASK_EVERY_S + 0.01) == 100
    assert gate.vouch(loas, t + 0.2) == pkts and gate.overdue(t + 1.0) is None


def test_packets_a_kept_loas_waits_for_are_not_asked_for(key):
    pkts = packets(12)
    [loas] = signed(key, pkts)
    gate = gate_for(key)
    hold_all(gate, pkts[:5], now=0.0)
    assert gate.vouch(loas, 0.0) == [] and gate.last == auth.PENDING
    assert gate.overdue(1.0) is None  # its packets were lost, not its LOAS


def test_a_ring_keeps_the_last_loas_for_a_resend(key):
    ring = PacketRing(0.0, 0.02)  # no burst: signatures are kept all the same
    batches = [packets(12, first_seq=65530 + 12 * i) for i in range(10)]
    loases = [signed(key, b)[0] for b in batches]
    for b, loas in zip(batches, loases, strict=True):
        for p in b:
            ring.add(p, 0.0)
        ring.add(loas, 0.0)
    assert ring.loas_for((65530 + 12 * 9 + 11) % 65536) == loases[9]
    assert ring.loas_for(65530 + 12 * 2) == loases[2]  # the 8 newest are kept
    assert ring.loas_for(65530 + 12 * 1) is None and ring.loas_for(65530) is None


def test_a_third_candidate_is_refused(key):
    gate = gate_for(key)
    a, b, c = (packets(1, tag=t)[0] for t in (b"a", b"b", b"c"))
    assert gate.hold(100, a, a, 0) and gate.hold(100, b, b, 0)
    assert not gate.hold(100, c, c, 0) and gate.dropped["candidates"] == 1


def test_rotation_both_pinned_keys_verify(key):
    new = auth.SigningKey.generate()
    gate = gate_for(key, new)
    first, second = packets(12, 100), packets(12, 112)
    hold_all(gate, first + second)
    [old_loas], [new_loas] = signed(key, first), signed(new, second)
    assert gate.vouch(old_loas, 0.0) == first and gate.vouch(new_loas, 0.0) == second


def _closes(signer: auth.ChannelSigner, seq_levels, flush_before=()) -> list[tuple]:
    """(seq that closed it or "flush", first seq, count) for each LOAS the signer sends."""
    closes: list[tuple] = []
    for seq, level in seq_levels:
        out = signer.flush() if seq in flush_before else []
        closes += [("flush", auth.parse_loas(x).first_seq, auth.parse_loas(x).count) for x in out]
        out = signer.add(packets(1, seq, priority=level)[0], seq, level)
        closes += [(seq, auth.parse_loas(x).first_seq, auth.parse_loas(x).count) for x in out]
    return closes


def test_batches_close_at_size_gap_and_level_change(key):
    signer = auth.ChannelSigner(key, CH, SSRC, frames=4, phase=1)
    assert _closes(signer, [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (7, 0), (8, 1),
                            (9, 3), (10, 3), (11, 0), (12, 0)]) == [
        (0, 0, 1),  # the channel's first packet is signed alone
        (2, 1, 2),  # then the ramp: 2 packets, then 4 (cut short here)
        (7, 3, 3),  # the gap at 6 closes 3..5 when 7 arrives
        (8, 7, 1),  # level 0 → 1 closes 7; a rise signs 8 alone
        (8, 8, 1),
        (9, 9, 1),  # 1 → 3 is a rise too
        (11, 10, 1),  # falling back closes 10 and starts a new batch (the ramp's 2)
        (12, 11, 2),
    ]


def test_after_a_pause_the_next_broadcast_starts_with_a_packet_alone(key):
    """A quiet channel's next broadcast is often at the level of the last one: its first
    packet is still signed alone, and the batches ramp up again, so the start of the broadcast
    does not wait a whole batch for its signature."""
    signer = auth.ChannelSigner(key, CH, SSRC, frames=4, phase=1)
    assert _closes(signer, [(i, 1) for i in range(17)], flush_before={13}) == [
        (0, 0, 1), (2, 1, 2), (6, 3, 4),
        (9, 7, 3),  # phase 1: one frame short, back on the channel's own frame
        ("flush", 10, 3),  # the channel pauses with 10..12 unsigned: signed now
        (13, 13, 1), (15, 14, 2),  # same level, still alone, then the ramp again
    ]


def test_channels_that_start_together_sign_on_different_frames(key):
    """At 06:00 every commune starts on the same frame; after the ramp each channel's batches
    close on its own frame (its phase), so a thousand channels do not all sign at once."""
    frames = auth.DEFAULT_BATCH_FRAMES
    closing: list[set[int]] = []
    for phase in range(frames):
        signer = auth.ChannelSigner(key, CH, SSRC, frames=frames, phase=phase)
        closes = _closes(signer, [(i, 1) for i in range(10 * frames)])
        closing.append({seq % frames for seq, _, _ in closes if seq >= 4 * frames})
    assert all(len(c) == 1 for c in closing), closing  # one frame each, batch after batch
    assert len(set.union(*closing)) == frames  # and a different one for each phase


def test_keys_read_and_write():
    key = auth.SigningKey.generate()
    again = auth.SigningKey.from_pem(key.to_pem())
    assert again.public == key.public and again.id == auth.key_id(key.public)
    assert auth.decode_public(key.public_text) == key.public
    for bad in ("", "not base64!", auth.encode_public(b"x" * 31)):
        with pytest.raises(auth.BadKey):
            auth.decode_public(bad)
    with pytest.raises(auth.BadKey):
        auth.SigningKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


@pytest.mark.parametrize("data", [b"", b"\x80\xcc\x00\x1c" + b"\x00" * 112,
                                  b"\x80\xcc\x00\x1c" + b"\x00" * 4 + b"LOAS" + b"\x00" * 104])
def test_malformed_loas(data):
    with pytest.raises(MalformedPacket):
        auth.parse_loas(data)
    gate: auth.MediaGate[bytes] = auth.MediaGate(CH, auth.Keyring())
    assert gate.vouch(data, 0.0) == [] and gate.last == "malformed"
