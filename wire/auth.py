"""Signed media: only the streamer's key can make a speaker play.

The streamer signs each channel's RTP packets in batches. A batch is up to ``frames`` packets
of consecutive sequence numbers at one priority level; when it closes, the streamer sends an
RTCP APP packet named ``LOAS`` on the channel (RFC 3550 6.7; plain RTP receivers ignore it)
carrying an Ed25519 signature over the 16-byte truncated SHA-256 of every packet of the batch
(the whole datagram: header, so sequence, timestamp, capture time, broadcast id and priority,
and payload). The hashes themselves do not travel: a receiver hashes the packets it got. What
travels is two parity blocks over them, P and Q (the two syndromes of RAID 6 over GF(2^8)), so
that a receiver missing up to two packets of a batch recovers their hashes and still verifies
the rest, and that one holding two candidates for a sequence number (a forged packet beside
the genuine one) finds which combination the streamer signed. ``docs/protocol.md`` has the
byte table, the timing and the reasons a packet or a LOAS is refused.

Receivers hold packets in a :class:`MediaGate` until a LOAS vouches for them; a relay forwards
packets at once (so no hop adds a batch's delay) but forwards a LOAS only once it has verified
it, so forged traffic never becomes playable past the first honest relay.

Pure code: no sockets, no clock reads (callers pass ``now``). Ed25519 comes from
``cryptography`` (OpenSSL); only the parity arithmetic is written here, because no maintained
Python library erasure-codes 16-byte symbols at this size without a per-byte Python loop:
RAID 6 needs one multiplication table per coefficient, which ``bytes.translate`` applies to a
whole hash in C.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import itertools
import struct
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .packet import MalformedPacket
from .rtcp import PT_APP

APP_NAME = b"LOAS"
APP_SUBTYPE = 0  # the layout's version
HASH_LEN = 16
SIG_LEN = 64
KEY_LEN = 32
MAX_BATCH = 64
#: how long a batch lasts, whatever the frame time: the longest a receiver waits for a LOAS
BATCH_MS = 240
DEFAULT_BATCH_FRAMES = BATCH_MS // 20  # 12: ~8.5 % of a 32 kbit/s RTP stream (BENCHMARKS.md)
MAX_CANDIDATES = 2  # packets kept per sequence number: the genuine one and one impostor
MAX_COMBOS = 4096  # candidate combinations tried for one batch (2 candidates at 12 positions)
MAX_SIGNATURE_TRIES = 16  # combinations checked with Ed25519 when parity cannot filter (~1.6 ms)
SEQ_MOD = 1 << 16
_DOMAIN = b"loa/LOAS/1\x00"
_HEAD = struct.Struct("!BBHI4sIHBB")  # RTCP APP header, then key id, first seq, count, 0
HEAD_LEN = _HEAD.size  # 20
LOAS_LEN = HEAD_LEN + 2 * HASH_LEN + SIG_LEN  # 116

T = TypeVar("T")


class BadKey(ValueError):
    """A key that cannot be read."""


# ---------------------------------------------------------------------- keys


def key_id(public: bytes) -> int:
    """The 32-bit id of a raw Ed25519 public key: the first four bytes of its SHA-256."""
    return int.from_bytes(hashlib.sha256(public).digest()[:4], "big")


def encode_public(public: bytes) -> str:
    """A public key as configuration text: base64 of its 32 raw bytes."""
    return base64.b64encode(public).decode()


def decode_public(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadKey("not base64") from None
    if len(raw) != KEY_LEN:
        raise BadKey(f"an Ed25519 public key is {KEY_LEN} bytes, this is {len(raw)}")
    return raw


@dataclass(frozen=True)
class SigningKey:
    """The streamer's private key and its id."""

    private: Ed25519PrivateKey
    public: bytes
    id: int

    @classmethod
    def generate(cls) -> SigningKey:
        return cls.of(Ed25519PrivateKey.generate())

    @classmethod
    def of(cls, private: Ed25519PrivateKey) -> SigningKey:
        public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw)
        return cls(private, public, key_id(public))

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        """A PKCS#8 PEM private key, as ``openssl genpkey -algorithm ed25519`` writes it."""
        try:
            private = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as e:
            raise BadKey(f"not a PEM private key: {e}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise BadKey("not an Ed25519 key")
        return cls.of(private)

    def to_pem(self) -> bytes:
        return self.private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())

    @property
    def public_text(self) -> str:
        return encode_public(self.public)


class Keyring:
    """The streamer public keys a receiver trusts (pinned), by key id. Two at once during a
    rotation: the old one and the next."""

    def __init__(self, publics: Iterable[bytes] = ()) -> None:
        self._keys: dict[int, Ed25519PublicKey] = {}
        for raw in publics:
            self.add(raw)

    @classmethod
    def from_text(cls, texts: Iterable[str]) -> Keyring:
        return cls(decode_public(t) for t in texts)

    def add(self, public: bytes) -> int:
        kid = key_id(public)
        self._keys[kid] = Ed25519PublicKey.from_public_bytes(public)
        return kid

    def replace(self, publics: Iterable[bytes]) -> None:
        """Trust exactly ``publics`` from now on (a pushed key set, ``device/trust.py``): the
        gates and token checks that hold this keyring see the change at their next lookup."""
        keys = {key_id(raw): Ed25519PublicKey.from_public_bytes(raw) for raw in publics}
        self._keys = keys  # one assignment: a lookup sees the old set or the new, never half

    def get(self, kid: int) -> Ed25519PublicKey | None:
        return self._keys.get(kid)

    def ids(self) -> list[int]:
        return sorted(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


# ---------------------------------------------------------------------- parity over GF(2^8)

_EXP = [0] * 512
_LOG = [0] * 256
_x = 1
for _i in range(255):
    _EXP[_i] = _x
    _LOG[_x] = _i
    _x <<= 1
    if _x & 0x100:
        _x ^= 0x11D  # the RAID 6 field polynomial; 2 generates it
for _i in range(255, 512):
    _EXP[_i] = _EXP[_i - 255]


def _mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else _EXP[_LOG[a] + _LOG[b]]


@functools.cache
def _times(s: int) -> bytes:
    """The ``bytes.translate`` table that multiplies every byte by ``s``."""
    return bytes(_mul(s, b) for b in range(256))


def _coef(i: int) -> int:
    """Q's coefficient of position ``i``: 2^i."""
    return _EXP[i % 255]


def _inverse(s: int) -> int:
    return _EXP[255 - _LOG[s]]


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(HASH_LEN, "big")


def parity(hashes: Sequence[bytes]) -> tuple[bytes, bytes]:
    """P (the XOR of the hashes) and Q (the XOR of 2^i times hash i)."""
    p = q = 0
    for i, h in enumerate(hashes):
        p ^= int.from_bytes(h, "big")
        q ^= int.from_bytes(h.translate(_times(_coef(i))), "big")
    return p.to_bytes(HASH_LEN, "big"), q.to_bytes(HASH_LEN, "big")


def packet_hash(datagram: bytes | bytearray | memoryview) -> bytes:
    """What a batch signs for one packet: SHA-256 of the whole datagram, first 16 bytes."""
    return hashlib.sha256(datagram).digest()[:HASH_LEN]


# ---------------------------------------------------------------------- the LOAS packet


@dataclass(frozen=True, slots=True)
class Loas:
    ssrc: int
    key_id: int
    first_seq: int
    count: int
    p: bytes
    q: bytes
    signature: bytes

    def build(self) -> bytes:
        words = LOAS_LEN // 4 - 1
        return (_HEAD.pack(0x80 | APP_SUBTYPE, PT_APP, words, self.ssrc, APP_NAME, self.key_id,
                           self.first_seq, self.count, 0)
                + self.p + self.q + self.signature)

    def seqs(self) -> list[int]:
        return [(self.first_seq + i) % SEQ_MOD for i in range(self.count)]


def is_loas(data: bytes) -> bool:
    """An RTCP datagram that is (or starts with) a LOAS."""
    return len(data) >= 12 and data[1] == PT_APP and data[8:12] == APP_NAME


def parse_loas(data: bytes) -> Loas:
    """A LOAS datagram (alone, not in a compound packet); raises :class:`MalformedPacket`."""
    if len(data) != LOAS_LEN:
        raise MalformedPacket(f"a LOAS is {LOAS_LEN} bytes, not {len(data)}")
    b0, pt, words, ssrc, name, kid, first, count, zero = _HEAD.unpack_from(data)
    if b0 != 0x80 | APP_SUBTYPE or pt != PT_APP or name != APP_NAME:
        raise MalformedPacket("not a LOAS version 0")
    if words != LOAS_LEN // 4 - 1:
        raise MalformedPacket("LOAS length field")
    if not 1 <= count <= MAX_BATCH or zero:
        raise MalformedPacket(f"LOAS count {count}")
    i = HEAD_LEN
    return Loas(ssrc, kid, first, count, bytes(data[i : i + HASH_LEN]),
                bytes(data[i + HASH_LEN : i + 2 * HASH_LEN]), bytes(data[i + 2 * HASH_LEN :]))


def signed_message(channel: str, kid: int, first_seq: int, hashes: Sequence[bytes]) -> bytes:
    name = channel.encode()
    if len(name) > 255:
        raise ValueError("channel name longer than 255 bytes")
    return b"".join((_DOMAIN, bytes((len(name),)), name,
                     struct.pack("!IHBB", kid, first_seq, len(hashes), 0), *hashes))


def sign_batch(key: SigningKey, channel: str, ssrc: int, first_seq: int,
               hashes: Sequence[bytes]) -> Loas:
    if not 1 <= len(hashes) <= MAX_BATCH:
        raise ValueError(f"a batch is 1 to {MAX_BATCH} packets")
    p, q = parity(hashes)
    sig = key.private.sign(signed_message(channel, key.id, first_seq, hashes))
    return Loas(ssrc, key.id, first_seq % SEQ_MOD, len(hashes), p, q, sig)


# ---------------------------------------------------------------------- verifying a batch


def _recover(p: int, q: int, picked: Sequence[tuple[int, int] | None]) -> list[bytes] | None:
    """The batch's hashes, the absent ones (at most two) solved from P and Q, or None when
    what was picked does not satisfy the parity (a wrong candidate). ``picked[i]`` is the
    hash at position ``i`` and its term of Q as integers, or None where it is absent."""
    absent = []
    for i, term in enumerate(picked):
        if term is None:
            absent.append(i)
        else:
            p ^= term[0]
            q ^= term[1]
    out = [b"" if t is None else t[0].to_bytes(HASH_LEN, "big") for t in picked]
    if not absent:
        return out if p == 0 and q == 0 else None
    pb, qb = p.to_bytes(HASH_LEN, "big"), q.to_bytes(HASH_LEN, "big")
    if len(absent) == 1:
        j = absent[0]
        if pb.translate(_times(_coef(j))) != qb:  # Q must be 2^j times the one absent hash
            return None
        out[j] = pb
        return out
    j, k = absent
    gj, gk = _coef(j), _coef(k)
    # gj*Hj + gk*Hk = Q' and Hj + Hk = P'  →  Hj = (Q' + gk*P') / (gj + gk)
    hj = _xor(qb, pb.translate(_times(gk))).translate(_times(_inverse(gj ^ gk)))
    out[j], out[k] = hj, _xor(pb, hj)
    return out


def _picks(candidates: Sequence[Sequence[bytes]]) -> Iterable[tuple[int, ...]]:
    """Candidate choices (index per position, -1 for absent), fewest erasures first: the
    received packets as they are, then with one or two of them taken for altered (read as
    lost) as long as at most two are absent in all."""
    missing = {i for i, c in enumerate(candidates) if not c}
    present = [i for i, c in enumerate(candidates) if c]
    for extra in range(3 - len(missing)):
        for erased in itertools.combinations(present, extra):
            gone = missing.union(erased)
            yield from itertools.product(*(range(-1, 0) if i in gone else range(len(c))
                                           for i, c in enumerate(candidates)))


def verify_batch(keys: Keyring, channel: str, loas: Loas,
                 candidates: Sequence[Sequence[bytes]]) -> tuple[list[int], list[bytes]] | str:
    """Which candidate hash at each position (-1: none) the streamer signed, with every hash
    of the batch (the absent ones recovered from the parity), or why none: ``unknown_key``,
    ``unverifiable`` (more than two missing) or ``bad_signature`` (no combination of what was
    received within ``MAX_COMBOS`` verifies). ``candidates[i]`` are the hashes received for
    position ``i``."""
    public = keys.get(loas.key_id)
    if public is None:
        return "unknown_key"
    if sum(1 for c in candidates if not c) > 2:
        return "unverifiable"
    terms = [[(int.from_bytes(h, "big"), int.from_bytes(h.translate(_times(_coef(i))), "big"))
              for h in c] for i, c in enumerate(candidates)]
    p, q = int.from_bytes(loas.p, "big"), int.from_bytes(loas.q, "big")
    tries = 0
    for pick in itertools.islice(_picks(candidates), MAX_COMBOS):
        hashes = _recover(p, q, [None if j < 0 else terms[i][j] for i, j in enumerate(pick)])
        if hashes is None:
            continue
        tries += 1
        try:
            public.verify(loas.signature,
                          signed_message(channel, loas.key_id, loas.first_seq, hashes))
        except InvalidSignature:
            if tries >= MAX_SIGNATURE_TRIES:
                break
            continue
        return list(pick), hashes
    return "bad_signature"


# ---------------------------------------------------------------------- the receiver's gate

#: why a LOAS was not accepted (``loa_media_auth_loas_total{outcome}`` at every receiver); a
#: LOAS still waiting for packets of its batch is counted once it is settled
LOAS_OUTCOMES = ("verified", "unknown_key", "unverifiable", "bad_signature", "malformed",
                 "duplicate")
#: why a media packet was not played (``loa_media_auth_dropped_total{reason}``)
DROP_REASONS = ("forged", "unverified", "replayed", "candidates", "stale", "reordered")
#: ``MediaGate.last`` for a LOAS kept until more packets of its batch arrive (not counted yet)
PENDING = "pending"
#: in a gate's ``loas`` counters beside the outcomes: LOAS asked for again (``overdue``)
REQUESTED = "requested"
#: a packet held this long after its arrival has lost its LOAS: a batch's first packet waits a
#: batch less one frame for it, plus its transit
OVERDUE_S = BATCH_MS / 1000 + 0.04
#: a packet's batch has surely closed (and its LOAS gone out) once a packet this many past the
#: longest batch verified so far has come; the one more is room for a LOAS overtaken by the
#: next packet. It makes a lost LOAS overdue 20-40 ms sooner than ``OVERDUE_S`` does.
CLOSED_AFTER = 1
ASK_EVERY_S = 0.1  # the same LOAS is asked for again at most this often
MAX_PENDING = 4  # LOAS kept per channel while packets of their batch are still missing
MAX_PENDING_TRIES = 4  # signature attempts for a kept LOAS (each up to MAX_SIGNATURE_TRIES)
MAX_KNOWN = 64  # hashes kept per channel of packets a verified batch proved before they came


@dataclass(slots=True)
class _Slot(Generic[T]):
    born: float
    hashes: list[bytes] = field(default_factory=list)
    items: list[T] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    """A LOAS that came before enough of its batch to be checked."""
    loas: Loas
    data: bytes
    born: float
    why: str = "unverifiable"  # what it is counted as if it never verifies
    tries: int = 0


class MediaGate(Generic[T]):
    """Packets of one channel held by sequence number until a LOAS vouches for them.

    ``hold`` keeps a packet's hash (and ``item``, whatever the caller wants back: the parsed
    packet at a speaker, nothing at a relay); ``vouch`` checks a LOAS against what is held and
    returns the items it proves, in sequence order; ``expire`` forgets what no LOAS vouched
    for in time. Counters by reason are in ``dropped`` and ``loas``.

    Arrival order does not matter within the hold time. A LOAS that comes before three or
    more packets of its batch is kept (``last == PENDING``) and checked again as they arrive;
    a packet that comes after its batch was verified without it is checked against the hash
    the parity recovered. What such late arrivals prove is collected for the caller, who
    takes it with ``take_late`` whenever ``late`` is true after a ``hold``.
    """

    def __init__(self, channel: str, keys: Keyring, *, max_candidates: int = MAX_CANDIDATES,
                 capacity: int = 1024, remember: int = 512,
                 dropped: dict[str, int] | None = None, loas: dict[str, int] | None = None
                 ) -> None:
        """``dropped`` and ``loas``: counters to add to, shared by the gates of a process
        (new ones by default)."""
        self.channel = channel
        self.keys = keys
        self.max_candidates = max_candidates
        self.capacity = capacity
        self._held: OrderedDict[int, _Slot[T]] = OrderedDict()  # seq → slot, oldest first
        self._seen: deque[bytes] = deque(maxlen=remember)  # hashes already vouched for
        self._seen_set: set[bytes] = set()
        self._signatures: deque[bytes] = deque(maxlen=16)  # of the LOAS verified last
        # by the whole datagram, not its signature: a forged copy of a genuine LOAS (the
        # signature under other fields) kept first must not make the genuine one a duplicate
        self._pending: OrderedDict[bytes, _Pending] = OrderedDict()
        self._known: OrderedDict[int, tuple[bytes, float]] = OrderedDict()  # seq → hash, born
        self._late_items: list[T] = []
        self._late_loas: list[bytes] = []
        self.late = False  # something proven by a late arrival waits in ``take_late``
        self._asked = (-1, float("-inf"))  # the last seq ``overdue`` gave, and when
        self._newest = -1  # the highest seq held so far (-1: none)
        self._jump = -1  # a seq far from it, believed when the next one confirms it
        self._batch = 0  # the most packets a verified LOAS covered: the batch length
        self.dropped = dict.fromkeys(DROP_REASONS, 0) if dropped is None else dropped
        self.loas = dict.fromkeys(LOAS_OUTCOMES, 0) if loas is None else loas
        self.last = ""  # the outcome of the last LOAS

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, seq: int, datagram: bytes, item: T, now: float) -> bool:
        """Keep a packet until its batch is vouched for; False (and counted) if it is dropped
        now: a replay of a packet already played, one candidate too many for its seq, or not
        the packet a verified batch signed at its seq."""
        h = packet_hash(datagram)
        self._note_newest(seq)
        if h in self._seen_set:
            self.dropped["replayed"] += 1
            return False
        known = self._known.get(seq)
        if known is not None:
            if known[0] != h:
                self.dropped["forged"] += 1
                return False
            del self._known[seq]
            self._remember(h)
            self._late_items.append(item)
            self.late = True
            return True
        slot = self._held.get(seq)
        if slot is None:
            slot = self._held[seq] = _Slot(now)
            if len(self._held) > self.capacity:
                self._forget(*self._held.popitem(last=False))
        elif h in slot.hashes:
            return False  # the same packet twice: the jitter buffer would drop it anyway
        elif len(slot.hashes) >= self.max_candidates:
            self.dropped["candidates"] += 1
            return False
        slot.hashes.append(h)
        slot.items.append(item)
        if self._pending:
            self._retry(seq, now)
        return True

    def vouch(self, data: bytes, now: float) -> list[T]:
        """Verify a LOAS against the held packets; the packets it proves, in sequence order
        (the others of its seqs are counted as forged and forgotten). ``self.last`` is the
        outcome (a ``LOAS_OUTCOMES`` name, or ``PENDING``)."""
        try:
            loas = parse_loas(data)
        except MalformedPacket:
            return self._outcome("malformed", [])
        data = bytes(data)
        if loas.signature in self._signatures or data in self._pending:
            return self._outcome("duplicate", [])
        result = self._check(loas, now)
        if isinstance(result, list):
            return self._outcome("verified", result)
        if result == "unknown_key" or not self._missing(loas):
            return self._outcome(result, [])
        # packets of the batch are still to come: keep it (the oldest kept one makes room)
        if len(self._pending) >= MAX_PENDING:
            self._give_up(self._pending.popitem(last=False)[1])
        self._pending[data] = _Pending(loas, data, now, result)
        self.last = PENDING
        return []

    def overdue(self, now: float) -> int | None:
        """A sequence number whose batch's LOAS is overdue, to ask the upstream for again
        (``RESEND``, ``wire/subscribe.py``): that of the oldest packet held for over
        ``OVERDUE_S``, or whose batch has closed (a packet a batch and ``CLOSED_AFTER`` past
        it has come), that no kept LOAS is waiting for, or None; the same one at most every
        ``ASK_EVERY_S``. Cheap enough to call on every packet. Counted as ``REQUESTED``."""
        before = now - OVERDUE_S
        for seq, slot in self._held.items():
            ahead = (self._newest - seq) % SEQ_MOD
            closed = self._batch and self._batch + CLOSED_AFTER <= ahead < SEQ_MOD // 2
            if slot.born >= before and not closed:
                return None
            if any((seq - p.loas.first_seq) % SEQ_MOD < p.loas.count
                   for p in self._pending.values()):
                continue
            if seq == self._asked[0] and now - self._asked[1] < ASK_EVERY_S:
                return None
            self._asked = (seq, now)
            self.loas[REQUESTED] = self.loas.get(REQUESTED, 0) + 1
            return seq
        return None

    def _note_newest(self, seq: int) -> None:
        """Follow the highest seq held, a little at a time: a packet more than 64 ahead or
        any behind (a restart, a failover, or a forgery, which must not make every held
        packet look overdue) moves it only once the next packet confirms the jump."""
        if self._newest < 0 or 0 < (seq - self._newest) % SEQ_MOD < 64:
            self._newest, self._jump = seq, -1
        elif seq != self._newest:
            if self._jump >= 0 and (seq - self._jump) % SEQ_MOD == 1:
                self._newest, self._jump = seq, -1
            else:
                self._jump = seq

    def take_late(self) -> tuple[list[T], list[bytes]]:
        """What late arrivals proved since the last call: packets, in the order they were
        proven, and the LOAS datagrams verified late (a relay forwards them on)."""
        out = self._late_items, self._late_loas
        self._late_items, self._late_loas, self.late = [], [], False
        return out

    def expire(self, before: float) -> int:
        """Forget packets held since before ``before`` (no LOAS vouched for them in time),
        and LOAS and recovered hashes kept as long; returns how many packets."""
        n = 0
        while self._held:
            seq, slot = next(iter(self._held.items()))
            if slot.born >= before:
                break
            del self._held[seq]
            n += self._forget(seq, slot)
        while self._pending:
            pending = next(iter(self._pending.values()))
            if pending.born >= before:
                break
            self._give_up(self._pending.popitem(last=False)[1])
        while self._known and next(iter(self._known.values()))[1] < before:
            self._known.popitem(last=False)
        return n

    def clear(self) -> None:
        for seq, slot in list(self._held.items()):
            self._forget(seq, slot)
        self._held.clear()
        while self._pending:
            self._give_up(self._pending.popitem(last=False)[1])
        self._known.clear()
        self.take_late()

    def _check(self, loas: Loas, now: float) -> list[T] | str:
        """Verify ``loas`` against what is held: the proven items (their slots and those of
        the forged candidates beside them forgotten; the hashes of the absent ones kept), or
        why not."""
        seqs = loas.seqs()
        slots = [self._held.get(s) for s in seqs]
        candidates = [s.hashes if s is not None else [] for s in slots]
        result = verify_batch(self.keys, self.channel, loas, candidates)
        if isinstance(result, str):
            return result
        picks, hashes = result
        released: list[T] = []
        for seq, slot, pick, h in zip(seqs, slots, picks, hashes, strict=True):
            if slot is not None:
                del self._held[seq]
                self.dropped["forged"] += len(slot.hashes) - (pick >= 0)
            if pick < 0:
                self._known[seq] = (h, now)  # it may still come: the genuine one will play
                if len(self._known) > MAX_KNOWN:
                    self._known.popitem(last=False)
                continue
            assert slot is not None
            released.append(slot.items[pick])
            self._remember(h)
        self._signatures.append(loas.signature)
        self._batch = max(self._batch, loas.count)
        return released

    def _missing(self, loas: Loas) -> bool:
        return any(s not in self._held for s in loas.seqs())

    def _retry(self, seq: int, now: float) -> None:
        """A packet came for ``seq``: check the kept LOAS whose batch it belongs to again."""
        for key, pending in self._pending.items():
            if (seq - pending.loas.first_seq) % SEQ_MOD >= pending.loas.count:
                continue
            result = self._check(pending.loas, now)
            if isinstance(result, list):
                del self._pending[key]
                self.loas["verified"] += 1
                self._late_items += result
                self._late_loas.append(pending.data)
                self.late = True
            elif result != "unverifiable":
                pending.why = result
                pending.tries += 1
                if pending.tries >= MAX_PENDING_TRIES or not self._missing(pending.loas):
                    del self._pending[key]
                    self._give_up(pending)
            return

    def _give_up(self, pending: _Pending) -> None:
        self.loas[pending.why] += 1

    def _remember(self, h: bytes) -> None:
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(h)
        self._seen_set.add(h)

    def _forget(self, seq: int, slot: _Slot[T]) -> int:
        self.dropped["unverified"] += len(slot.hashes)
        return len(slot.hashes)

    def _outcome(self, outcome: str, released: list[T]) -> list[T]:
        self.loas[outcome] += 1
        self.last = outcome
        return released


# ---------------------------------------------------------------------- the streamer's side


class ChannelSigner:
    """Batches one channel's packets and signs each batch as it closes.

    A batch closes after ``frames`` packets, at a gap in the sequence numbers, and at a change
    of priority level: the packets before the change are signed at once. The first packet of a
    higher level, and the first after a ``flush`` (a quiet channel's next broadcast), is signed
    alone, so that it is playable one packet later, not one batch later; the batches after it
    ramp up (``RAMP``: 2, then 4 packets) so the start of a broadcast does not spend its
    playout delay waiting for a signature when it is likeliest to be late (the streamer is
    busy starting it), then one batch shortened by ``phase`` puts the channel back on its own
    frame, so that channels which start together do not go on signing on the same frame.
    """

    __slots__ = ("key", "channel", "ssrc", "frames", "phase", "_hashes", "_first", "_level",
                 "_room", "_plan", "_fresh")

    #: the batch lengths after a packet signed alone, before the phased one
    RAMP = (2, 4)

    def __init__(self, key: SigningKey, channel: str, ssrc: int,
                 frames: int = DEFAULT_BATCH_FRAMES, phase: int = 0) -> None:
        if not 1 <= frames <= MAX_BATCH:
            raise ValueError(f"a batch is 1 to {MAX_BATCH} frames")
        self.key = key
        self.channel = channel
        self.ssrc = ssrc
        self.frames = frames
        self.phase = phase % frames
        self._hashes: list[bytes] = []
        self._first = 0
        self._level = 0
        self._room = frames
        self._plan: list[int] = []  # the next batch lengths, last first
        self._fresh = True  # the next packet starts the channel (or ends a pause)

    def add(self, datagram: bytes | bytearray | memoryview, seq: int, level: int) -> list[bytes]:
        """Record one packet just sent; the LOAS datagrams to send after it (0, 1 or 2)."""
        out: list[bytes] = []
        alone = self._fresh or level > self._level
        self._fresh = False
        if self._hashes and (level != self._level
                             or (self._first + len(self._hashes)) % SEQ_MOD != seq % SEQ_MOD):
            out.append(self._close())
        if not self._hashes:
            self._first = seq % SEQ_MOD
        self._level = level
        self._hashes.append(packet_hash(datagram))
        if alone:
            out.append(self._close())
            phased = self.frames - self.phase
            self._plan = [phased] + [min(n, self.frames) for n in reversed(self.RAMP)]
            self._room = self._plan.pop()
        elif len(self._hashes) >= self._room:
            out.append(self._close())
            self._room = self._plan.pop() if self._plan else self.frames
        return out

    def flush(self) -> list[bytes]:
        """Sign what is batched now (the channel pauses or stops, or the key changes); the next
        packet is signed alone."""
        self._fresh = True
        return [self._close()] if self._hashes else []

    def _close(self) -> bytes:
        loas = sign_batch(self.key, self.channel, self.ssrc, self._first, self._hashes)
        self._hashes = []
        return loas.build()
