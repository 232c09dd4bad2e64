"""The subscribe handshake (speaker→relay, relay→relay, relay→streamer), sans-IO.

HELLO → COOKIE → SUBSCRIBE (echoing the cookie) → SUBACK, then media; KEEPALIVE refreshes,
BYE leaves, REJECT says why not; RESEND asks again for a ``LOAS`` that did not arrive (a
subscriber holding packets its signature has not proven: ``wire/auth.py``), or for lost media
packets themselves (kind 2, a NACK: ``wire/retransmit.py`` decides what to ask for). The cookie is
stateless: an HMAC over the source address, channel, identity and issue time, so the upstream
keeps no state for a HELLO and a spoofed source address never receives media. The upstream
never answers with more bytes than it received (no amplification). ``docs/protocol.md`` has
the byte tables.

KEEPALIVE, BYE and RESEND carry the cookie the subscription was made with; the upstream keeps
it with the subscription and ignores (reports as :class:`Dropped`) one whose cookie differs,
so that someone who only knows or guesses a subscriber's address and channel cannot
unsubscribe it with a spoofed BYE, keep a dead one alive with spoofed KEEPALIVEs, or have
signatures sent to it with spoofed RESENDs.

This module never touches a socket or reads a clock: callers pass bytes, addresses and ``now``
(seconds, any monotonic origin for the server; cookies use whole seconds of it).
"""

from __future__ import annotations

import hashlib
import hmac
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from .packet import MalformedPacket

MAGIC = b"LOA1"
HELLO_MIN_LEN = 96  # HELLOs are padded so that no reply is larger than its request
RESEND_MIN_LEN = 128  # and RESENDs, so that the LOAS sent back (116 bytes) is not either
RESEND_LOAS = 1  # what a RESEND asks for: the LOAS whose batch holds ``seq``
RESEND_PACKETS = 2  # or the RTP packets ``seq`` and those its ``mask`` adds (a NACK)
RESEND_KINDS = (RESEND_LOAS, RESEND_PACKETS)
COOKIE_LEN = 24  # 4-byte issue time + 20-byte truncated HMAC-SHA256
COOKIE_TTL_S = 30
MAX_NAME = 128
MAX_TOKEN = 1024

Addr = tuple[str, int]


class MsgType(IntEnum):
    HELLO = 1
    COOKIE = 2
    SUBSCRIBE = 3
    SUBACK = 4
    KEEPALIVE = 5
    BYE = 6
    REJECT = 7
    RESEND = 8
    TIME = 9
    TIMEREPLY = 10


class RejectReason(IntEnum):
    UNKNOWN_CHANNEL = 1
    BAD_COOKIE = 2
    BAD_TOKEN = 3  # none, malformed, or not signed by a pinned streamer key
    NOT_SUBSCRIBED = 4
    FULL = 5
    EXPIRED_TOKEN = 6  # signed, but not valid now
    FORBIDDEN = 7  # signed and valid, for another identity or other channels
    #: a streamer that is the standby of another (``docs/operations.md``, "A standby
    #: streamer"): alive, and about to take over if the active one dies; try the next upstream
    STANDBY = 8


#: ``check_token``'s refusals → the REJECT reason (``wire/token.py`` names them)
TOKEN_REJECTS = {"bad_token": RejectReason.BAD_TOKEN, "expired_token": RejectReason.EXPIRED_TOKEN,
                 "forbidden": RejectReason.FORBIDDEN}


def is_control(data: bytes) -> bool:
    return data.startswith(MAGIC)


@dataclass(slots=True, frozen=True)
class Message:
    type: MsgType
    channel: str
    identity: str = ""
    token: bytes = b""
    cookie: bytes = b""
    ssrc: int = 0
    keepalive_s: int = 0
    ptime_ms: int = 0
    reason: int = 0
    seq: int = 0  # RESEND: a sequence number of the batch whose LOAS is asked for
    # RESEND kind 2: the packets ``seq`` and seq + 1 + i for each bit i of ``mask`` (RFC 4585's
    # generic NACK); ``build`` pads it to ``size`` bytes, at least the answer's (parsing leaves
    # size 0: what counts is the datagram's length)
    kind: int = RESEND_LOAS
    mask: int = 0
    size: int = 0
    # TIME, TIMEREPLY (ns since the Unix epoch, ``wire/timesync.py``): t1 the asker's clock
    # when it asked; t2, t3 the upstream's timeline when the request came and the answer left
    t1: int = 0
    t2: int = 0
    t3: int = 0

    def build(self) -> bytes:
        ch = _str8(self.channel)
        head = MAGIC + bytes((self.type, 0))
        t = self.type
        if t is MsgType.HELLO:
            body = head + ch + _str8(self.identity) + _bytes16(self.token)
            # pad so that the COOKIE (or REJECT) answer is never larger than this request
            floor = max(HELLO_MIN_LEN, len(head) + len(ch) + COOKIE_LEN)
            return body + bytes(max(0, floor - len(body)))
        if t is MsgType.COOKIE:
            return head + ch + _fixed(self.cookie, COOKIE_LEN)
        if t is MsgType.SUBSCRIBE:
            return (head + ch + _str8(self.identity) + _bytes16(self.token)
                    + _fixed(self.cookie, COOKIE_LEN))
        if t is MsgType.SUBACK:
            return head + ch + struct.pack("!IHH", self.ssrc, self.keepalive_s, self.ptime_ms)
        if t is MsgType.REJECT:
            return head + ch + bytes((self.reason,))
        if t is MsgType.RESEND:
            body = head + ch + _fixed(self.cookie, COOKIE_LEN)
            if self.kind == RESEND_PACKETS:
                body += struct.pack("!BHH", RESEND_PACKETS, self.seq, self.mask)
                return body + bytes(max(0, self.size - len(body)))
            body += struct.pack("!BH", RESEND_LOAS, self.seq)
            return body + bytes(max(0, RESEND_MIN_LEN - len(body)))
        if t is MsgType.TIME:  # 8 bytes longer than the answer: no amplification
            return head + ch + _fixed(self.cookie, COOKIE_LEN) + struct.pack("!q", self.t1)
        if t is MsgType.TIMEREPLY:
            return head + ch + struct.pack("!qqq", self.t1, self.t2, self.t3)
        # KEEPALIVE, BYE: the subscription's cookie (it also leaves room for a REJECT answer)
        return head + ch + _fixed(self.cookie, COOKIE_LEN)


def parse(data: bytes) -> Message:
    """Parse a control message; raise :class:`MalformedPacket` on anything off."""
    if len(data) < 7 or data[:4] != MAGIC:
        raise MalformedPacket("not a Loa control message")
    try:
        t = MsgType(data[4])
    except ValueError:
        raise MalformedPacket(f"unknown control type {data[4]}") from None
    r = _Reader(data, 6)
    channel = r.str8()
    if t is MsgType.HELLO:
        return Message(t, channel, identity=r.str8(), token=r.bytes16())
    if t is MsgType.COOKIE:
        return Message(t, channel, cookie=r.take(COOKIE_LEN))
    if t is MsgType.SUBSCRIBE:
        return Message(t, channel, identity=r.str8(), token=r.bytes16(), cookie=r.take(COOKIE_LEN))
    if t is MsgType.SUBACK:
        ssrc, keepalive_s, ptime_ms = struct.unpack("!IHH", r.take(8))
        return Message(t, channel, ssrc=ssrc, keepalive_s=keepalive_s, ptime_ms=ptime_ms)
    if t is MsgType.REJECT:
        return Message(t, channel, reason=r.take(1)[0])
    if t is MsgType.RESEND:
        cookie = r.take(COOKIE_LEN)
        what, seq = struct.unpack("!BH", r.take(3))
        if what == RESEND_PACKETS:
            (mask,) = struct.unpack("!H", r.take(2))
            return Message(t, channel, cookie=cookie, seq=seq, kind=what, mask=mask)
        if what != RESEND_LOAS:
            raise MalformedPacket(f"RESEND of unknown kind {what}")
        return Message(t, channel, cookie=cookie, seq=seq)
    if t is MsgType.TIME:
        cookie = r.take(COOKIE_LEN)
        (t1,) = struct.unpack("!q", r.take(8))
        return Message(t, channel, cookie=cookie, t1=t1)
    if t is MsgType.TIMEREPLY:
        t1, t2, t3 = struct.unpack("!qqq", r.take(24))
        return Message(t, channel, t1=t1, t2=t2, t3=t3)
    return Message(t, channel, cookie=r.take(COOKIE_LEN))  # KEEPALIVE, BYE


def _str8(s: str) -> bytes:
    b = s.encode()
    if len(b) > MAX_NAME:
        raise ValueError(f"name longer than {MAX_NAME} bytes")
    return bytes((len(b),)) + b


def _bytes16(b: bytes) -> bytes:
    if len(b) > MAX_TOKEN:
        raise ValueError(f"token longer than {MAX_TOKEN} bytes")
    return struct.pack("!H", len(b)) + b


def _fixed(b: bytes, n: int) -> bytes:
    if len(b) != n:
        raise ValueError(f"expected {n} bytes")
    return b


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MalformedPacket("truncated control message")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def str8(self) -> str:
        n = self.take(1)[0]
        if n > MAX_NAME:
            raise MalformedPacket("name too long")
        try:
            return self.take(n).decode()
        except UnicodeDecodeError:
            raise MalformedPacket("name is not UTF-8") from None

    def bytes16(self) -> bytes:
        n = int.from_bytes(self.take(2), "big")
        if n > MAX_TOKEN:
            raise MalformedPacket("token too long")
        return self.take(n)


# --------------------------------------------------------------------------- upstream side


def make_cookie(secret: bytes, addr: Addr, channel: str, identity: str, now_s: int) -> bytes:
    t = struct.pack("!I", now_s & 0xFFFF_FFFF)
    parts = (addr[0], str(addr[1]), channel, identity)
    msg = b"|".join((t, *(p.encode() for p in parts)))
    return t + hmac.new(secret, msg, hashlib.sha256).digest()[:20]


def check_cookie(
    secret: bytes, cookie: bytes, addr: Addr, channel: str, identity: str, now_s: int
) -> bool:
    if len(cookie) != COOKIE_LEN:
        return False
    issued = int.from_bytes(cookie[:4], "big")
    if not 0 <= (now_s - issued) & 0xFFFF_FFFF <= COOKIE_TTL_S:
        return False
    return hmac.compare_digest(cookie, make_cookie(secret, addr, channel, identity, issued))


@dataclass(slots=True, frozen=True)
class Subscribed:
    addr: Addr
    channel: str
    identity: str


@dataclass(slots=True, frozen=True)
class Unsubscribed:
    addr: Addr
    channel: str
    why: str  # "bye" | "expired" | "token_expired"


@dataclass(slots=True, frozen=True)
class Dropped:
    """A KEEPALIVE or BYE for a subscription, ignored because its cookie is not that
    subscription's: forged (or from an older session). Nothing changed; count it."""

    addr: Addr
    channel: str
    type: str  # "keepalive" | "bye" | "resend" | "time"
    reason: str  # "bad_cookie"


@dataclass(slots=True, frozen=True)
class Resend:
    """A subscriber asks for the LOAS of the batch holding ``seq`` again (``kind`` 1), or for
    the RTP packets ``seqs`` (kind 2); the caller sends them from what it keeps
    (``fanout/ring.py``), never more bytes than the request's own."""

    addr: Addr
    channel: str
    seq: int
    kind: int = RESEND_LOAS
    mask: int = 0

    @property
    def seqs(self) -> list[int]:
        """Kind 2: the sequence numbers asked for, in order."""
        return [self.seq] + [(self.seq + 1 + i) & 0xFFFF for i in range(16)
                             if self.mask >> i & 1]


@dataclass(slots=True, frozen=True)
class TimeAsked:
    """A subscriber asks for the time: the caller answers TIMEREPLY with its own timeline
    (this module reads no clock), echoing ``t1``."""

    addr: Addr
    channel: str
    t1: int


Event = Subscribed | Unsubscribed | Dropped | Resend | TimeAsked


@dataclass(slots=True)
class _Sub:
    identity: str
    last_seen: float
    cookie: bytes  # the cookie of the SUBSCRIBE that made (or last renewed) the subscription
    until: float = float("inf")  # when its token runs out (``now``'s clock)


@dataclass
class SubscribeServer:
    """Upstream half of the handshake: who is subscribed to which channel, and what to answer.

    ``channel_ssrc`` says whether a channel exists (its SSRC) or not (None).
    ``check_token(identity, channel, token)`` judges a SUBSCRIBE's token (``wire/token.py``):
    the seconds it stays valid, or why it is refused (a ``TOKEN_REJECTS`` key); None accepts
    every subscriber. A subscription ends when its token runs out, unless a SUBSCRIBE with a
    newer token renewed it.
    """

    secret: bytes
    channel_ssrc: Callable[[str], int | None]
    keepalive_s: int = 5
    ptime_ms: int = 20
    expire_s: float = 15.0
    max_subscribers: int = 100_000
    check_token: Callable[[str, str, bytes], float | str] | None = None
    subscribers: dict[str, dict[Addr, _Sub]] = field(default_factory=dict)
    count: int = 0
    #: a standby streamer's: every HELLO and SUBSCRIBE is answered REJECT ``STANDBY``
    standby: bool = False

    def handle(self, data: bytes, addr: Addr, now: float) -> tuple[bytes | None, Event | None]:
        """One control datagram in; the reply to send back (or None) and what changed."""
        msg = parse(data)
        reply: bytes | None = None
        event: Event | None = None
        ch = msg.channel
        if self.standby and msg.type in (MsgType.HELLO, MsgType.SUBSCRIBE):
            reply = Message(MsgType.REJECT, ch, reason=RejectReason.STANDBY).build()
        elif msg.type is MsgType.HELLO:
            if self.channel_ssrc(ch) is None:
                reply = Message(MsgType.REJECT, ch, reason=RejectReason.UNKNOWN_CHANNEL).build()
            else:
                cookie = make_cookie(self.secret, addr, ch, msg.identity, int(now))
                reply = Message(MsgType.COOKIE, ch, cookie=cookie).build()
        elif msg.type is MsgType.SUBSCRIBE:
            reply, event = self._subscribe(msg, addr, now)
        elif msg.type is MsgType.KEEPALIVE:
            sub = self.subscribers.get(ch, {}).get(addr)
            if sub is None:
                # Changes nothing, whoever sent it; tells a genuine subscriber (the upstream
                # restarted) to handshake again.
                reply = Message(MsgType.REJECT, ch, reason=RejectReason.NOT_SUBSCRIBED).build()
            elif not hmac.compare_digest(sub.cookie, msg.cookie):
                event = Dropped(addr, ch, "keepalive", "bad_cookie")  # no answer: silence
            else:
                sub.last_seen = now
        elif msg.type is MsgType.BYE:
            subs = self.subscribers.get(ch, {})
            sub = subs.get(addr)
            if sub is None:
                pass  # nothing to leave
            elif not hmac.compare_digest(sub.cookie, msg.cookie):
                event = Dropped(addr, ch, "bye", "bad_cookie")
            else:
                del subs[addr]
                self.count -= 1
                event = Unsubscribed(addr, ch, "bye")
        elif msg.type is MsgType.RESEND:
            sub = self.subscribers.get(ch, {}).get(addr)
            if sub is None:
                pass  # only subscribers get media, and so signatures
            elif not hmac.compare_digest(sub.cookie, msg.cookie):
                event = Dropped(addr, ch, "resend", "bad_cookie")
            else:
                event = Resend(addr, ch, msg.seq, msg.kind, msg.mask)
        elif msg.type is MsgType.TIME:
            sub = self.subscribers.get(ch, {}).get(addr)
            if sub is None:
                pass  # the time is for subscribers: no reflector for anyone else
            elif not hmac.compare_digest(sub.cookie, msg.cookie):
                event = Dropped(addr, ch, "time", "bad_cookie")
            else:
                event = TimeAsked(addr, ch, msg.t1)
        # COOKIE, SUBACK, REJECT and TIMEREPLY are for subscribers: an upstream ignores them.
        if reply is not None and len(reply) > len(data):
            reply = None  # never amplify
        return reply, event

    def _subscribe(self, msg: Message, addr: Addr, now: float) -> tuple[bytes, Event | None]:
        ch = msg.channel
        ssrc = self.channel_ssrc(ch)
        if ssrc is None:
            return Message(MsgType.REJECT, ch, reason=RejectReason.UNKNOWN_CHANNEL).build(), None
        if not check_cookie(self.secret, msg.cookie, addr, ch, msg.identity, int(now)):
            return Message(MsgType.REJECT, ch, reason=RejectReason.BAD_COOKIE).build(), None
        until = float("inf")
        if self.check_token is not None:
            verdict = self.check_token(msg.identity, ch, msg.token)
            if isinstance(verdict, str):
                reason = TOKEN_REJECTS.get(verdict, RejectReason.BAD_TOKEN)
                return Message(MsgType.REJECT, ch, reason=reason).build(), None
            until = now + verdict
        subs = self.subscribers.setdefault(ch, {})
        event: Event | None = None
        sub = subs.get(addr)
        if sub is not None:
            # a renewed handshake (e.g. after a REJECT, or a new token): its cookie and token
            # are the ones that count now
            sub.last_seen, sub.identity, sub.cookie, sub.until = (now, msg.identity, msg.cookie,
                                                                  until)
        else:
            if self.count >= self.max_subscribers:
                return Message(MsgType.REJECT, ch, reason=RejectReason.FULL).build(), None
            subs[addr] = _Sub(msg.identity, now, msg.cookie, until)
            self.count += 1
            event = Subscribed(addr, ch, msg.identity)
        ack = Message(MsgType.SUBACK, ch, ssrc=ssrc, keepalive_s=self.keepalive_s,
                      ptime_ms=self.ptime_ms)
        return ack.build(), event

    def expire(self, now: float) -> list[Unsubscribed]:
        """Drop subscribers silent for longer than ``expire_s`` (``expired``), and those whose
        token ran out (``token_expired``)."""
        gone: list[Unsubscribed] = []
        for ch, subs in self.subscribers.items():
            stale = [(a, "expired" if now - s.last_seen > self.expire_s else "token_expired")
                     for a, s in subs.items()
                     if now - s.last_seen > self.expire_s or now >= s.until]
            for a, why in stale:
                del subs[a]
                gone.append(Unsubscribed(a, ch, why))
        self.count -= len(gone)
        return gone

    def drop_channel(self, channel: str) -> list[Addr]:
        """Forget every subscriber of ``channel`` (e.g. upstream says it does not exist)."""
        subs = self.subscribers.pop(channel, {})
        self.count -= len(subs)
        return list(subs)

    def drop(self, addr: Addr) -> list[str]:
        """Forget ``addr`` on every channel (e.g. it is unreachable); the channels it was on."""
        channels = [ch for ch, subs in self.subscribers.items() if subs.pop(addr, None)]
        self.count -= len(channels)
        return channels

    def addresses(self, channel: str) -> list[Addr]:
        return list(self.subscribers.get(channel, ()))


# --------------------------------------------------------------------------- subscriber side


#: the subscriber's failover timing (``SubscribeClient`` says why these values)
SILENCE_S = 0.3  # no datagram of the stream for this long: the upstream is dead (15 frames)
#: the same for a quiet channel, which sends a heartbeat every 500 ms at most: two may be lost
QUIET_SILENCE_S = 1.5
TS_MOD = 1 << 32  # RTP timestamps wrap
REORDER_TS = 10 * 48_000  # a packet at most this far behind the newest is an old one, late
RETRY_S = 0.15  # HELLO and SUBSCRIBE are sent again after this long without an answer
FAILOVER_S = 0.5  # a handshake step unanswered this long: the next upstream
MAX_HANDSHAKE_S = 4.0  # the longest a handshake step is given after rounds without a SUBACK
MEDIA_TIMEOUT_S = 3.0  # no proven media for this long: the upstream sends only forgeries


class ClientState(IntEnum):
    HELLO = 1
    SUBSCRIBING = 2
    SUBSCRIBED = 3


@dataclass
class SubscribeClient:
    """Subscriber half: handshake, keepalives, and failover along an ordered upstream list.

    It moves to the next upstream (after the last, back to the first) when:

    - the stream stops: no datagram of it (RTP or RTCP, :meth:`heard`) from the upstream for
      ``silence_s``. A stream with something on air is continuous, so 15 missing frames mean
      a dead upstream, not jitter; a single late packet never does. A quiet channel sends no
      media, only a sender report every 500 ms at most (its heartbeat, :meth:`heard_report`,
      ``docs/protocol.md`` "Quiet channels"): while the channel is ``quiet``, and from the
      SUBACK until the first RTP packet, the bound is ``quiet_silence_s`` (1.5 s) instead, so
      a dead upstream is still told from a quiet channel within 2 s;
    - a handshake makes no progress (no COOKIE, then no SUBACK) for ``failover_s``; each time
      the list wraps around without a SUBACK that time (and ``retry_s``) doubles, up to
      ``MAX_HANDSHAKE_S``, so that a slow link still completes a handshake and dead
      upstreams are knocked at less often;
    - no *proven* media (:meth:`on_media`: what the signature gate let through) for
      ``media_timeout_s``: an upstream that sends only forged or altered packets;
    - a REJECT other than 2 and 4. A REJECT 8 (``STANDBY``: a standby streamer, which takes
      over when the active one dies) moves on too, but shows the list alive: the handshake
      time goes back to ``failover_s``, so that the active streamer, dead or not, is asked
      again within ``failover_s`` and the standby as soon as that runs out.

    Call :meth:`tick` more often than ``silence_s``: a tick that comes ``silence_s`` late
    means this process was stalled (or the whole machine was), so the silence it measured is
    its own and its clock starts again instead.

    Why these defaults: with a 300 ms playout delay and a 200 ms join burst, a primary that
    dies is heard as ``silence_s`` (0.3 s) + up to one tick (0.1 s at the speaker and relay)
    + two round trips of handshake − the 200 ms the new upstream's join burst replays, about
    0.2 s on a LAN; a signed stream may lose the LOAS batch (240 ms) the dead upstream never
    finished. If the next upstream is dead too, ``failover_s`` (0.5 s: a HELLO at 0, 150,
    300 and 450 ms) adds its time, still under 1 s of audio lost. 0.5 s is a round trip of
    HELLO→COOKIE (or SUBSCRIBE→SUBACK) with room for a poor 4G link; a worse link gets
    the doubled time of the next round.
    """

    identity: str
    channel: str
    upstreams: list[Addr]
    token: bytes = b""
    retry_s: float = RETRY_S
    failover_s: float = FAILOVER_S
    silence_s: float = SILENCE_S
    quiet_silence_s: float = QUIET_SILENCE_S
    media_timeout_s: float = MEDIA_TIMEOUT_S
    state: ClientState = ClientState.HELLO
    index: int = 0
    ssrc: int | None = None
    ptime_ms: int = 20
    keepalive_s: float = 5.0
    failovers: int = 0
    #: the upstream's last sender report said the channel has nothing on air: its timestamp
    #: is not the newest packet's (the sender's clock moved on without packets)
    quiet: bool = False
    #: told of each TIMEREPLY that answers one of our last TIMEs: (t1, t2, t3), the caller
    #: adds its own receive time t4 (``wire/timesync.py``)
    on_time: Callable[[int, int, int], None] | None = None
    #: keepalives go out after 75-100 % of the interval, so that subscribers that started
    #: together (after a relay restart) do not hit the upstream in one burst forever
    rng: random.Random = field(default_factory=random.Random)
    _keepalive_due: float = 0.0
    _cookie: bytes = b""
    _phase_since: float = 0.0
    _last_sent: float = float("-inf")
    _last_media: float = 0.0
    _last_heard: float = 0.0  # the last datagram of the stream from the current upstream
    _newest_ts: int | None = None  # RTP timestamp of the newest packet of this subscription
    _last_packet: float = float("-inf")  # when the last RTP packet of the stream came
    _last_tick: float | None = None
    _rounds: int = 0  # whole rounds of the upstream list without a SUBACK
    _times_asked: list[int] = field(default_factory=list)  # t1 of the last TIMEs, newest last

    @property
    def upstream(self) -> Addr:
        return self.upstreams[self.index]

    def start(self, now: float) -> list[tuple[bytes, Addr]]:
        self.state = ClientState.HELLO
        self._phase_since = now
        return self._send_hello(now)

    def handle(self, data: bytes, addr: Addr, now: float) -> list[tuple[bytes, Addr]]:
        """A control message from an upstream; returns what to send."""
        if addr != self.upstream:
            return []
        msg = parse(data)
        if msg.channel != self.channel:
            return []
        if msg.type is MsgType.COOKIE and self.state is ClientState.HELLO:
            self._cookie = msg.cookie
            self.state = ClientState.SUBSCRIBING
            self._phase_since = now
            return self._send_subscribe(now)
        # A SUBACK answers our SUBSCRIBE, sent after a COOKIE: one out of turn (a stray, or a
        # forgery from the upstream's address) would make us subscribed with no cookie to
        # send KEEPALIVE and BYE with.
        if msg.type is MsgType.SUBACK and self.state is ClientState.SUBSCRIBING:
            self.state = ClientState.SUBSCRIBED
            self.ssrc = msg.ssrc
            self.ptime_ms = msg.ptime_ms or self.ptime_ms
            self.keepalive_s = float(msg.keepalive_s or self.keepalive_s)
            self._keepalive_due = self.keepalive_s * self.rng.uniform(0.75, 1.0)
            self._phase_since = now
            self._last_media = self._last_heard = now
            self._rounds = 0
            self.quiet, self._newest_ts = False, None
            return []
        if msg.type is MsgType.TIMEREPLY:
            # only an answer to a TIME we sent counts: t1 is our clock in ns, which nobody
            # off the path can guess, so a forged answer cannot move our timeline
            if msg.t1 in self._times_asked and self.on_time is not None:
                self._times_asked.remove(msg.t1)
                self.on_time(msg.t1, msg.t2, msg.t3)
            return []
        if msg.type is MsgType.REJECT:
            if msg.reason in (RejectReason.NOT_SUBSCRIBED, RejectReason.BAD_COOKIE):
                return self.start(now)  # upstream restarted or cookie aged: handshake again
            if msg.reason == RejectReason.STANDBY:
                # a standby streamer: alive, and the active one (the next upstream) is dead
                # or about to be replaced; its answer is no reason to knock less often
                self._rounds = 0
                return self._failover(now, count_round=False)
            return self._failover(now)
        return []

    def heard(self, now: float) -> None:
        """A datagram of the stream (RTP or RTCP) came from the current upstream: it is alive,
        whether or not what it sent proves genuine. Cheap: call it for every packet."""
        self._last_heard = now

    def heard_packet(self, now: float, ts: int) -> None:
        """An RTP packet of the stream, with RTP timestamp ``ts``, whatever it proves: the
        upstream is alive and, if it is the newest, the channel is not quiet."""
        self._last_heard = self._last_packet = now
        newest = self._newest_ts
        if newest is not None:
            behind = (newest - ts) % TS_MOD
            if behind < REORDER_TS:  # the newest again, or an older one sent again
                return
        # newer, or so far from it that the stream started again (its sender restarted)
        self._newest_ts = ts
        self.quiet = False

    def heard_report(self, now: float, ts: int) -> None:
        """A sender report of the stream, stamped ``ts``: with any other timestamp than the
        newest packet's, the sender's clock has moved on without sending media (a heartbeat
        of a quiet channel; a report whose frame was lost says so for the 20 ms until the
        next packet). A quiet channel is alive and has nothing to prove, so it counts as
        media for ``media_timeout_s`` too, but only while no packet comes: heartbeats are not
        signed, and an upstream sending forged packets between them must still be left."""
        self._last_heard = now
        if ts != self._newest_ts:
            self.quiet = True
            if now - self._last_packet > self.silence_s:
                self._last_media = now

    def on_media(self, now: float) -> None:
        """Media that may play came from the current upstream (proven by its signature, or
        verification is off); it was heard too."""
        self._last_media = self._last_heard = now

    def set_token(self, token: bytes, now: float) -> list[tuple[bytes, Addr]]:
        """A new token (refreshed before the old one runs out): the handshake again, so the
        upstream renews the subscription with it; media keeps flowing meanwhile."""
        if token == self.token:
            return []
        self.token = token
        return self.start(now) if self.state is not ClientState.HELLO else []

    def move(self, channel: str, now: float) -> list[tuple[bytes, Addr]]:
        """Leave the current channel (BYE, if subscribed) and handshake for ``channel`` with
        the same upstream and token: the speaker was moved to another zone. A new channel is
        a new subscription: the rounds without a SUBACK start again from the first."""
        if channel == self.channel:
            return []
        out = self.close()
        self.channel = channel
        self.ssrc = None
        self._rounds = 0
        self._times_asked = []
        return out + self.start(now)

    def tick(self, now: float) -> list[tuple[bytes, Addr]]:
        """Call every 100 ms or so (the silence is noticed at the first tick after
        ``silence_s``): retries, keepalives, failover."""
        stalled = self._last_tick is not None and now - self._last_tick > self.silence_s
        self._last_tick = now
        if self.state is ClientState.SUBSCRIBED:
            if stalled:  # our own stall, not the upstream's silence: measure again from now
                self._last_heard = now
            # a quiet channel, or a new subscription before its first packet (the upstream's
            # next heartbeat may be 500 ms away): the longer bound
            quiet = self.quiet or self._newest_ts is None
            silence_s = self.quiet_silence_s if quiet else self.silence_s
            if (now - self._last_heard > silence_s
                    or now - self._last_media > self.media_timeout_s):
                return self._failover(now)
            if now - self._last_sent >= self._keepalive_due:
                self._last_sent = now
                self._keepalive_due = self.keepalive_s * self.rng.uniform(0.75, 1.0)
                msg = Message(MsgType.KEEPALIVE, self.channel, cookie=self._cookie)
                return [(msg.build(), self.upstream)]
            return []
        backoff = self._backoff()
        if now - self._phase_since > self.failover_s * backoff:
            return self._failover(now)
        if now - self._last_sent >= self.retry_s * backoff:
            if self.state is ClientState.HELLO:
                return self._send_hello(now)
            return self._send_subscribe(now)
        return []

    def resend(self, seq: int) -> list[tuple[bytes, Addr]]:
        """Ask the upstream again for the LOAS of the batch holding ``seq`` (nothing unless
        subscribed: a RESEND needs the subscription's cookie)."""
        if self.state is not ClientState.SUBSCRIBED:
            return []
        msg = Message(MsgType.RESEND, self.channel, cookie=self._cookie, seq=seq)
        return [(msg.build(), self.upstream)]

    def nack(self, seq: int, mask: int, size: int) -> list[tuple[bytes, Addr]]:
        """Ask the upstream to send the packets ``seq`` and ``seq + 1 + i`` for each bit ``i``
        of ``mask`` again (RESEND kind 2), padded to ``size`` bytes: at least what they take,
        or the upstream sends only those that fit. Nothing unless subscribed."""
        if self.state is not ClientState.SUBSCRIBED:
            return []
        msg = Message(MsgType.RESEND, self.channel, cookie=self._cookie, seq=seq,
                      kind=RESEND_PACKETS, mask=mask, size=size)
        return [(msg.build(), self.upstream)]

    def ask_time(self, t1: int) -> list[tuple[bytes, Addr]]:
        """A TIME for the upstream, stamped ``t1`` (our clock, ns); nothing unless subscribed
        (a TIME needs the subscription's cookie). The last 8 asked are remembered, so that
        late answers still count and unasked ones do not."""
        if self.state is not ClientState.SUBSCRIBED:
            return []
        self._times_asked = [*self._times_asked[-7:], t1]
        msg = Message(MsgType.TIME, self.channel, cookie=self._cookie, t1=t1)
        return [(msg.build(), self.upstream)]

    def close(self) -> list[tuple[bytes, Addr]]:
        """The BYE to send when leaving (nothing unless subscribed: a BYE needs the cookie
        the subscription was made with)."""
        if self.state is not ClientState.SUBSCRIBED:
            return []
        msg = Message(MsgType.BYE, self.channel, cookie=self._cookie)
        return [(msg.build(), self.upstream)]

    def _backoff(self) -> float:
        """How many times ``failover_s`` (and ``retry_s``) a handshake step is given now: 1,
        doubled each time the list wrapped around without a SUBACK, up to
        ``MAX_HANDSHAKE_S``."""
        return float(min(1 << min(self._rounds, 16), max(1.0, MAX_HANDSHAKE_S / self.failover_s)))

    def _failover(self, now: float, count_round: bool = True) -> list[tuple[bytes, Addr]]:
        out = self.close() if self.state is ClientState.SUBSCRIBED else []
        self.index = (self.index + 1) % len(self.upstreams)
        if count_round and self.index == 0 and self.state is not ClientState.SUBSCRIBED:
            self._rounds += 1  # a whole round of handshakes that came to nothing
        self.failovers += 1
        self.ssrc = None
        return out + self.start(now)

    def _send_hello(self, now: float) -> list[tuple[bytes, Addr]]:
        self._last_sent = now
        msg = Message(MsgType.HELLO, self.channel, identity=self.identity, token=self.token)
        return [(msg.build(), self.upstream)]

    def _send_subscribe(self, now: float) -> list[tuple[bytes, Addr]]:
        self._last_sent = now
        msg = Message(MsgType.SUBSCRIBE, self.channel, identity=self.identity, token=self.token,
                      cookie=self._cookie)
        return [(msg.build(), self.upstream)]
