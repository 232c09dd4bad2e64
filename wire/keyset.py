"""Stream key sets: the streamer tells its devices which keys sign its media, so that a key
rotation needs no change on the devices (issue 18, "Trust").

A key set lists the streamer's Ed25519 public keys (1 to :data:`MAX_KEYS`) and when it was
issued, and carries a signature by an *endorser*: a key the device already trusts. The
streamer retains it on ``loa/v1/keys`` (``docs/mqtt.md``); a device that trusts the endorser
adds the set's keys to the ones its config pins and verifies media with all of them from then
on (``device/trust.py``). ``docs/protocol.md``, "Stream key sets", has the byte table.

The rules a receiver enforces (:func:`verify`):

- the endorser is a key the receiver trusts now, and its signature covers the whole set under
  the domain ``loa/keys/1``, so no LOAS, token or other Loa signature can pass for a key set;
- ``issued`` only grows: a set issued at or before the one held is refused (``rollback``), so
  an old set replayed from a broker's memory or a capture never brings back a retired key; the
  very set held, delivered again (a retained message on every reconnect), is ``current``;
- a set issued more than :data:`SKEW_S` ahead of the receiver's clock is refused
  (``future``): a set dated far ahead would otherwise shut out every later one.

Pure code: no I/O, no clock reads (callers pass ``now``). Ed25519 comes from ``cryptography``
through ``wire/auth.py``'s :class:`~wire.auth.SigningKey` and :class:`~wire.auth.Keyring`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature

from .auth import KEY_LEN, SIG_LEN, Keyring, SigningKey
from .packet import MalformedPacket

VERSION = 1
MAX_KEYS = 8
#: how far a set's ``issued`` may be ahead of the receiver's clock (clocks are NTP-disciplined)
SKEW_S = 300
_DOMAIN = b"loa/keys/1\x00"
_HEAD = struct.Struct("!BBIQ")  # version, key count, endorser's key id, issued (Unix ms)
HEAD_LEN = _HEAD.size  # 14
MIN_LEN = HEAD_LEN + KEY_LEN + SIG_LEN  # 110
MAX_LEN = HEAD_LEN + MAX_KEYS * KEY_LEN + SIG_LEN  # 334

#: what a receiver made of a key set (``loa_stream_keys_updates_total{outcome}``)
ACCEPTED, CURRENT = "accepted", "current"
MALFORMED, UNENDORSED, BAD_SIGNATURE = "malformed", "unendorsed", "bad_signature"
ROLLBACK, FUTURE = "rollback", "future"
OUTCOMES = (ACCEPTED, CURRENT, MALFORMED, UNENDORSED, BAD_SIGNATURE, ROLLBACK, FUTURE)


@dataclass(frozen=True, slots=True)
class KeySet:
    issued_ms: int
    keys: tuple[bytes, ...]
    endorser: int  # the key id of the key that signed the set
    signature: bytes = b""

    def body(self) -> bytes:
        return (_HEAD.pack(VERSION, len(self.keys), self.endorser, self.issued_ms)
                + b"".join(self.keys))

    def build(self) -> bytes:
        return self.body() + self.signature

    @property
    def issued(self) -> float:
        """``issued`` in Unix seconds."""
        return self.issued_ms / 1000


def sign(endorser: SigningKey, keys: Sequence[bytes], issued_ms: int) -> bytes:
    """The key set of ``keys`` (raw 32-byte public keys, distinct) issued at ``issued_ms``
    (Unix milliseconds), signed by ``endorser``; ValueError for a set that cannot be one."""
    if not 1 <= len(keys) <= MAX_KEYS:
        raise ValueError(f"a key set holds 1 to {MAX_KEYS} keys, not {len(keys)}")
    if any(len(k) != KEY_LEN for k in keys):
        raise ValueError(f"an Ed25519 public key is {KEY_LEN} bytes")
    if len(set(keys)) != len(keys):
        raise ValueError("a key set lists each key once")
    if not 0 <= issued_ms < 1 << 64:
        raise ValueError("issued_ms out of range")
    body = KeySet(issued_ms, tuple(keys), endorser.id).body()
    return body + endorser.private.sign(_DOMAIN + body)


def parse(data: bytes) -> KeySet:
    """The fields of a key set (not yet verified); :class:`MalformedPacket` if it is not one."""
    if not MIN_LEN <= len(data) <= MAX_LEN:
        raise MalformedPacket(f"a key set is {MIN_LEN} to {MAX_LEN} bytes, not {len(data)}")
    version, count, endorser, issued_ms = _HEAD.unpack_from(data)
    if version != VERSION:
        raise MalformedPacket(f"key set version {version}")
    if not 1 <= count <= MAX_KEYS:
        raise MalformedPacket(f"a key set holds 1 to {MAX_KEYS} keys, not {count}")
    if len(data) != HEAD_LEN + count * KEY_LEN + SIG_LEN:
        raise MalformedPacket(f"a key set of {count} keys is "
                              f"{HEAD_LEN + count * KEY_LEN + SIG_LEN} bytes, not {len(data)}")
    keys = tuple(bytes(data[HEAD_LEN + i * KEY_LEN: HEAD_LEN + (i + 1) * KEY_LEN])
                 for i in range(count))
    if len(set(keys)) != count:
        raise MalformedPacket("a key set lists a key twice")
    return KeySet(issued_ms, keys, endorser, bytes(data[-SIG_LEN:]))


def check_signature(endorsers: Keyring, ks: KeySet) -> str | None:
    """None when one of ``endorsers`` signed ``ks``; else ``unendorsed`` (its endorser is none
    of them) or ``bad_signature``."""
    public = endorsers.get(ks.endorser)
    if public is None:
        return UNENDORSED
    try:
        public.verify(ks.signature, _DOMAIN + ks.body())
    except InvalidSignature:
        return BAD_SIGNATURE
    return None


def verify(trusted: Keyring, data: bytes, now: float, held: KeySet | None = None
           ) -> KeySet | str:
    """The key set in ``data`` if a receiver that trusts ``trusted`` and holds ``held`` (None:
    no set yet) must take it; else why not, one of :data:`OUTCOMES` (``current`` for the very
    set held: nothing to do). ``now``: the receiver's clock, Unix seconds."""
    try:
        ks = parse(data)
    except MalformedPacket:
        return MALFORMED
    if held is not None and ks == held:
        return CURRENT
    why = check_signature(trusted, ks)
    if why is not None:
        return why
    if held is not None and ks.issued_ms <= held.issued_ms:
        return ROLLBACK
    if ks.issued_ms > (now + SKEW_S) * 1000:
        return FUTURE
    return ks
