"""Stream key sets (``wire/keyset.py``): the streamer tells devices its keys, endorsed by a key
they already trust; what a device keeps (``device/trust.py``) and what the streamer announces
(``streamer/control/keys.py``). The end to end run over MQTT is in ``tests/test_keypush.py``."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from common.config import ConfigError
from device.trust import StreamTrustKeys, TrustedKeys, keys_metrics
from streamer.control.keys import KeyAnnouncer
from wire import keyset
from wire.auth import Keyring, SigningKey
from wire.packet import MalformedPacket

NOW = 1_900_000_000.0  # a fixed clock: nothing here reads the real one
MS = int(NOW * 1000)
A, B, C = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
PINNED_A = Keyring([A.public])


def test_a_set_signed_by_a_trusted_key_verifies_and_round_trips() -> None:
    data = keyset.sign(A, [A.public, B.public], MS)
    assert len(data) == keyset.HEAD_LEN + 2 * 32 + 64
    ks = keyset.verify(PINNED_A, data, NOW)
    assert isinstance(ks, keyset.KeySet)
    assert ks.keys == (A.public, B.public) and ks.issued_ms == MS and ks.endorser == A.id
    assert ks.build() == data
    assert keyset.parse(data) == ks
    # the endorser need not be in the set (a pinned key vouching for others)
    assert isinstance(keyset.verify(PINNED_A, keyset.sign(A, [B.public], MS), NOW),
                      keyset.KeySet)


def test_forged_and_unendorsed_sets_are_refused() -> None:
    assert keyset.verify(PINNED_A, keyset.sign(C, [C.public], MS), NOW) == keyset.UNENDORSED
    data = keyset.sign(A, [A.public, B.public], MS)
    # C's key put in place of B's, the signature kept: every byte is covered
    swapped = data.replace(B.public, C.public)
    assert keyset.verify(PINNED_A, swapped, NOW) == keyset.BAD_SIGNATURE
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        assert keyset.verify(PINNED_A, bytes(flipped), NOW) in (
            keyset.BAD_SIGNATURE, keyset.UNENDORSED, keyset.MALFORMED), i
    # C claims to be A: the id says A, the signature is C's
    body = keyset.KeySet(MS, (C.public,), A.id).body()
    assert keyset.verify(PINNED_A, body + C.private.sign(b"loa/keys/1\x00" + body),
                         NOW) == keyset.BAD_SIGNATURE


def test_a_signature_under_another_domain_does_not_pass() -> None:
    """The same bytes signed as a token or a LOAS (another domain string) or with none."""
    body = keyset.KeySet(MS, (A.public, B.public), A.id).body()
    for domain in (b"", b"loa/token/1\x00", b"loa/LOAS/1\x00", b"loa/keys/2\x00"):
        data = body + A.private.sign(domain + body)
        assert keyset.verify(PINNED_A, data, NOW) == keyset.BAD_SIGNATURE, domain
    assert isinstance(keyset.verify(PINNED_A, body + A.private.sign(b"loa/keys/1\x00" + body),
                                    NOW), keyset.KeySet)


def test_rollback_and_replay_are_refused_and_the_held_set_again_is_current() -> None:
    old = keyset.sign(A, [A.public], MS)
    new = keyset.sign(A, [A.public, B.public], MS + 1)
    held = keyset.parse(new)
    assert keyset.verify(PINNED_A, old, NOW, held) == keyset.ROLLBACK
    same_time = keyset.sign(A, [B.public], MS + 1)  # another set with the same issued
    assert keyset.verify(PINNED_A, same_time, NOW, held) == keyset.ROLLBACK
    assert keyset.verify(PINNED_A, new, NOW, held) == keyset.CURRENT
    newer = keyset.sign(A, [B.public], MS + 2)
    assert isinstance(keyset.verify(PINNED_A, newer, NOW, held), keyset.KeySet)


def test_a_set_dated_ahead_of_the_clock_is_refused() -> None:
    ahead = keyset.sign(A, [A.public], MS + keyset.SKEW_S * 1000 + 1)
    assert keyset.verify(PINNED_A, ahead, NOW) == keyset.FUTURE
    assert isinstance(keyset.verify(PINNED_A, ahead, NOW + 1), keyset.KeySet)


def test_too_many_keys_duplicates_and_garbage_are_malformed() -> None:
    nine = [SigningKey.generate().public for _ in range(9)]
    with pytest.raises(ValueError, match="1 to 8"):
        keyset.sign(A, nine, MS)
    with pytest.raises(ValueError, match="1 to 8"):
        keyset.sign(A, [], MS)
    with pytest.raises(ValueError, match="once"):
        keyset.sign(A, [A.public, A.public], MS)
    with pytest.raises(ValueError, match="32 bytes"):
        keyset.sign(A, [b"short"], MS)
    # nine keys built by hand, signed properly: refused by length and count
    body = bytes([1, 9]) + A.id.to_bytes(4, "big") + MS.to_bytes(8, "big") + b"".join(nine)
    nine_signed = body + A.private.sign(b"loa/keys/1\x00" + body)
    eight = keyset.sign(A, nine[:8], MS)
    assert len(eight) == keyset.MAX_LEN
    bad = [
        b"", b"\x01", os.urandom(110), os.urandom(334), nine_signed,
        eight[:-1], eight + b"\x00",
        b"\x02" + eight[1:],  # another version
        eight[:1] + b"\x00" + eight[2:],  # zero keys
        eight[:1] + b"\x07" + eight[2:],  # a count that disagrees with the length
    ]
    body2 = bytes([1, 2]) + A.id.to_bytes(4, "big") + MS.to_bytes(8, "big") + A.public * 2
    bad.append(body2 + A.private.sign(b"loa/keys/1\x00" + body2))  # a key listed twice
    for data in bad:
        with pytest.raises(MalformedPacket):
            keyset.parse(data)
        assert keyset.verify(PINNED_A, data, NOW) == keyset.MALFORMED


# --------------------------------------------------------------------------- a device's keys


def metric_values(trusted: TrustedKeys) -> dict[str, float]:
    return {f"{s.name}{sorted(s.labels.items())}": s.value
            for m in keys_metrics(trusted) for s in m.samples}


def test_a_device_trusts_its_pins_and_each_endorsed_set_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "state" / "keys"
    trusted = TrustedKeys([A.public], str(path))
    assert trusted.keyring.ids() == [A.id] and not path.exists()
    gate_keys = trusted.keyring  # what a media gate holds: the same object throughout
    assert trusted.offer(keyset.sign(A, [A.public, B.public], MS), NOW) == keyset.ACCEPTED
    assert gate_keys.ids() == sorted([A.id, B.id])
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert keyset.parse(base64.b64decode(path.read_text())).keys == (A.public, B.public)
    # the streamer switched to B and, restarted, endorses {B} with B: pushed keys endorse too
    assert trusted.offer(keyset.sign(B, [B.public, C.public], MS + 10), NOW) == keyset.ACCEPTED
    assert gate_keys.ids() == sorted([A.id, B.id, C.id])  # A stays: it is pinned
    # a push can never take the pinned key away
    assert trusted.offer(keyset.sign(B, [C.public], MS + 20), NOW) == keyset.ACCEPTED
    assert gate_keys.ids() == sorted([A.id, C.id])
    # refusals change nothing, and are counted
    assert trusted.offer(keyset.sign(B, [B.public], MS + 30), NOW) == keyset.UNENDORSED
    assert trusted.offer(keyset.sign(A, [B.public], MS + 5), NOW) == keyset.ROLLBACK
    assert trusted.offer(b"garbage", NOW) == keyset.MALFORMED
    # the set held, delivered again (retained, on every reconnect): nothing to do
    assert trusted.offer(keyset.sign(B, [C.public], MS + 20), NOW) == keyset.CURRENT
    assert trusted.offer(keyset.sign(C, [C.public], MS + 20), NOW) == keyset.ROLLBACK
    assert gate_keys.ids() == sorted([A.id, C.id])
    values = metric_values(trusted)
    assert values["loa_stream_keys_updates_total[('outcome', 'accepted')]"] == 3
    assert values["loa_stream_keys_updates_total[('outcome', 'unendorsed')]"] == 1
    assert values["loa_stream_keys_updates_total[('outcome', 'current')]"] == 1
    assert values["loa_stream_keys_updates_total[('outcome', 'rollback')]"] == 2
    assert values[f"loa_stream_key_trusted[('key_id', '{C.id:08x}'), ('source', 'pushed')]"] == 1
    assert values["loa_stream_keys_issued_seconds[]"] == (MS + 20) / 1000
    # the next start trusts the kept set at once, and goes on refusing rollbacks
    again = TrustedKeys([A.public], str(path))
    assert again.keyring.ids() == sorted([A.id, C.id])
    assert again.offer(keyset.sign(A, [B.public], MS + 15), NOW) == keyset.ROLLBACK


def test_a_keys_file_that_is_not_a_key_set_stops_the_device_at_start(
        tmp_path: Path) -> None:
    path = tmp_path / "keys"
    cfg = StreamTrustKeys(stream_keys=[A.public_text], keys_file=str(path))
    assert cfg.keyring is not None and cfg.keyring.ids() == [A.id]  # no file yet: fine
    path.write_text("not base64 !\n")
    with pytest.raises(ConfigError, match="keys_file"):
        cfg.trusted_keys()
    path.write_text(base64.b64encode(b"\x01" * 120).decode())
    with pytest.raises(ConfigError, match="keys_file"):
        cfg.trusted_keys()
    path.write_text(base64.b64encode(keyset.sign(A, [B.public], MS)).decode() + "\n")
    assert cfg.keyring is not None and cfg.keyring.ids() == sorted([A.id, B.id])
    assert StreamTrustKeys(stream_keys=[A.public_text], keys_file=str(path),
                           verify_media=False).keyring is None


# --------------------------------------------------------------------------- the streamer's set


def test_the_streamer_announces_the_next_key_then_endorses_the_switch_with_the_old() -> None:
    clock = [NOW]
    keys = KeyAnnouncer(A, wall=lambda: clock[0])
    device = TrustedKeys([A.public])  # pins A only

    def pushed() -> keyset.KeySet:
        ks = keyset.parse(keys.keyset())
        assert device.offer(ks.build(), clock[0]) == keyset.ACCEPTED
        return ks

    assert pushed().keys == (A.public,)
    assert keys.announce(B) and not keys.announce(B)
    ks = pushed()
    assert ks.keys == (A.public, B.public) and ks.endorser == A.id
    assert B.id in device.keyring.ids()  # trusted before the streamer signs with it
    assert keys.switched(B) and not keys.switched(B)
    ks = pushed()
    assert ks.keys == (B.public, A.public) and ks.endorser == A.id
    # a device that missed the announcement trusts the switched set too (A endorses it)
    late = TrustedKeys([A.public])
    assert late.offer(ks.build(), NOW) == keyset.ACCEPTED and B.id in late.keyring.ids()
    # the wall clock steps back: issued still grows
    clock[0] = NOW - 3600
    before = keys.issued_ms
    assert keys.announce(C)
    assert keyset.parse(keys.keyset()).issued_ms == before + 1
    # restarted with B (A forgotten): {B} endorsed by B, taken by devices that trust B
    restarted = KeyAnnouncer(B, B, wall=lambda: NOW + 60)
    assert restarted.next is None
    assert device.offer(restarted.keyset(), NOW + 60) == keyset.ACCEPTED
    assert device.keyring.ids() == sorted([A.id, B.id])
