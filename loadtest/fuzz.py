"""Fuzzing every parser that reads bytes from the network or another process, with hypothesis.

Each entry of :data:`TARGETS` is a strategy (random bytes, and valid messages with mutated
fields and bytes, so that inputs get past the header checks) and a check that feeds one input
to the parser and says what must hold: no exception but the parser's documented one
(``MalformedPacket``, ``BadPayload``, ``CapError``, ``ValueError``), no injected line, and at
the edges that read datagrams (the fan-out endpoint, the speaker) no exception at all, only a
counted drop. ``tests/test_fuzz.py`` runs every target with 10,000 inputs in ``make test``; the
long run (``docs/BENCHMARKS.md``, "Fuzzing") is this module's ``main``::

    nice -n 19 python -m loadtest.fuzz --examples 1000000 [--target NAME]

To add a parser: write a strategy and a check, and add one :class:`Target` line to
:data:`TARGETS`. A check must not depend on the date or the hour, and must be cheap: the test
runs it 10,000 times.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import gc
import json
import logging
import math
import random
import struct
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from clients.capdates import move_to_today
from clients.speaker.latency import Latency
from clients.speaker.net import Speaker
from clients.speaker.output import NullSink
from clients.speaker.playout import OpusDecoder, Playout
from device.trust import TrustedKeys
from fanout.endpoint import FanoutEndpoint
from streamer.control import cap
from streamer.control.models import GeoPoint, Zone
from streamer.control.schemas import MAX_TTS_CHARS
from streamer.zones import ZoneTree
from wire import auth, keyset, messages, packet, rtcp, sdp, subscribe, token
from wire.auth import Keyring, SigningKey, packet_hash, sign_batch
from wire.packet import MalformedPacket, RtpPacket, ssrc_for
from wire.retransmit import LossTracker
from wire.subscribe import MAGIC, Message, MsgType

Check = Callable[[Any], None]


class Target(NamedTuple):
    """One parser under fuzz: what to feed it, and what must hold for every input."""

    #: lists of inputs, one list per hypothesis example (:func:`fuzz_bytes`)
    strategy: st.SearchStrategy[list[Any]]
    check: Check
    #: inputs that once broke the parser: always run first (hypothesis ``@example``)
    regressions: tuple[Any, ...] = ()


# --------------------------------------------------------------------------- fuzz bytes

#: text that tries to break out of a line, a field or an encoding
HOSTILE_CHARS = ("\r", "\n", "\r\n", "\x00", "\t", " ", "\x0b", "\x0c", "\x1c", "\x85",
                 "\u2028", "\u2029", "\ufeff", "\ud800", "<", ">", "&", ";", '"', "'", "=", ":",
                 "/", ",", "%", "é", "\U0001f4a9", "a=x")


class Fuzz:
    """Choices read from one byte string, as libFuzzer's FuzzedDataProvider does: hypothesis
    draws bytes (see :func:`fuzz_bytes`) and a target builds valid-looking messages from them,
    so that one cheap draw gives a structured input. Past the end every read is 0."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def more(self) -> bool:
        return self.pos < len(self.data)

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1] if self.pos <= len(self.data) else 0

    def below(self, n: int) -> int:
        """0 … n-1 (n up to 65536)."""
        if n <= 256:
            return self.byte() % n
        return (self.byte() << 8 | self.byte()) % n

    def u32(self) -> int:
        return int.from_bytes(self.take(4).ljust(4, b"\0"), "big")

    def i64(self) -> int:
        return int.from_bytes(self.take(8).ljust(8, b"\0"), "big", signed=True)

    def pick(self, options: Sequence[Any]) -> Any:
        return options[self.below(len(options))]

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def blob(self, max_len: int) -> bytes:
        return self.take(self.below(max_len + 1))

    def raw(self) -> bytes:
        """Random bytes, short (under a header) or long."""
        return self.blob(self.pick((12, 40, 255)))

    def text(self, max_len: int = 24) -> str:
        """Hostile text: line breaks, NUL, lone surrogates, markup, any code point."""
        out = []
        for _ in range(self.below(max_len + 1)):
            b = self.byte()
            if b < len(HOSTILE_CHARS):
                out.append(HOSTILE_CHARS[b])
            elif b >= 0xF0:
                out.append(chr((self.byte() << 8 | self.byte()) + (b & 0x0F) * 0x10000))
            else:
                out.append(chr(b))
        return "".join(out)

    def mutate(self, data: bytes, max_ops: int = 3) -> bytes:
        """``data`` with a few bytes set, inserted, deleted, or the tail cut."""
        buf = bytearray(data)
        for _ in range(self.below(max_ops + 1)):
            op, pos = self.below(4), self.below(len(buf) + 1)
            if op == 0 and pos < len(buf):
                buf[pos] = self.byte()
            elif op == 1:
                buf[pos:pos] = self.blob(6)
            elif op == 2:
                del buf[pos : pos + 1 + self.below(6)]
            elif op == 3:
                del buf[pos:]
        return bytes(buf)


#: inputs per hypothesis example: its engine costs about 1 ms an example whatever the strategy,
#: most of a cheap target's time, and one example of ten inputs hardly more than one of one
BATCH = 10


def fuzz_bytes(build: Callable[[Fuzz], Any], drawn: int = 48,
               size: int = 256) -> st.SearchStrategy[list[Any]]:
    """:data:`BATCH` inputs, each built by ``build`` from ``size`` fuzz bytes. Hypothesis draws
    the first ``drawn`` of each (the early choices: kinds, lengths) and they seed a PRNG for the
    rest: hypothesis's own cost grows with what it draws, and a byte string left to its own
    size is a few bytes long, too short to build a message from. The batch's heads are one
    draw cut in ``drawn``-byte pieces: a list of draws repeats elements (hypothesis does that
    on purpose), which left one input in seven distinct; this leaves 997 in 1,000."""

    def expand(heads: bytes) -> list[Any]:
        return [build(Fuzz(head + random.Random(head).randbytes(size - drawn)))
                for head in (heads[k : k + drawn] for k in range(0, len(heads), drawn))]

    return st.binary(min_size=drawn * BATCH, max_size=drawn * BATCH).map(expand)


# --------------------------------------------------------------------------- RTP and Opus


def rtp_bytes(f: Fuzz) -> bytes:
    """RTP of any shape the parser accepts: CSRCs, padding, one-byte and other extensions,
    with lengths that agree with the body or not."""
    cc, flags = f.below(16), f.byte()
    pad, ext = flags & 1, flags >> 1 & 1
    b0 = (2 if flags & 0x1C else flags >> 6) << 6 | pad << 5 | ext << 4 | cc
    out = struct.pack("!BBHI", b0, f.byte(), f.below(65536), f.u32()) + f.take(4).ljust(4, b"\0")
    out += f.take(4 * cc)
    if ext:
        elements = b""
        for _ in range(f.below(5)):
            ext_id, length = f.below(16), f.pick((1, 4, 8, 16, 1 + f.below(16)))
            elements += bytes((ext_id << 4 | (length - 1),)) + f.take(f.pick((length, length,
                                                                             f.below(17))))
            elements += bytes(f.below(3))  # padding bytes between elements
        words = (len(elements) + 3) // 4 if f.below(4) else f.below(65536)
        elements += bytes(-len(elements) % 4)
        profile = f.pick((packet.EXT_PROFILE_ONE_BYTE, packet.EXT_PROFILE_ONE_BYTE, 0x1000,
                          f.below(65536)))
        out += struct.pack("!HH", profile, words) + elements
    out += f.blob(24)
    if pad:
        out += f.blob(6) + bytes((f.byte(),))
    return out


def loa_rtp(f: Fuzz, ssrc: int | None = None) -> RtpPacket:
    return RtpPacket(ssrc=f.u32() if ssrc is None else ssrc, seq=f.below(65536), ts=f.u32(),
                     payload=f.blob(24), pt=f.below(128), marker=bool(f.below(2)),
                     capture_ntp=f.u32() << 32 | f.u32(), broadcast_id=f.u32(),
                     priority=f.byte())


def rtp_input(f: Fuzz) -> bytes | RtpPacket:
    kind = f.below(5)
    if kind == 0:
        return f.raw()
    if kind == 1:
        return loa_rtp(f)
    data = rtp_bytes(f)
    return f.mutate(data) if kind == 2 else data


def check_rtp(value: bytes | RtpPacket) -> None:
    """``parse`` and ``peek_ssrc``, and ``opus_samples`` on what a packet carries."""
    if isinstance(value, RtpPacket):  # Loa's own layout reads back exactly
        assert packet.parse(value.build()) == value
        return
    try:
        ssrc = packet.peek_ssrc(value)
    except MalformedPacket:
        assert len(value) < 12
    _check_opus(value[12:])
    try:
        pkt = packet.parse(value)
    except MalformedPacket:
        return
    assert pkt.ssrc == ssrc and len(pkt.payload) <= len(value) - 12
    _check_opus(pkt.payload)


def _check_opus(payload: bytes) -> None:
    try:
        samples = packet.opus_samples(payload)
    except MalformedPacket:
        return
    assert 0 < samples <= 48_000 * 120 // 1000


# --------------------------------------------------------------------------- RTCP


def rtcp_chunk(f: Fuzz) -> bytes:
    body = f.blob(40)
    if f.below(2):
        body += bytes(-len(body) % 4)
    words = len(body) // 4 if f.below(3) else f.below(65536)
    version = f.pick((2, 2, 2, 0, 1, 3))
    pt = f.pick((rtcp.PT_SR, rtcp.PT_RR, rtcp.PT_SDES, rtcp.PT_BYE, rtcp.PT_APP, f.byte()))
    return struct.pack("!BBH", version << 6 | f.below(64), pt, words) + body


def rtcp_packet(f: Fuzz) -> rtcp.RtcpPacket:
    kind = f.below(3)
    if kind == 0:
        return rtcp.SenderReport(f.u32(), f.u32() << 32 | f.u32(), f.u32(), f.u32(), f.u32())
    if kind == 1:
        return rtcp.Bye(f.u32())
    body = f.blob(8)
    return rtcp.App(f.u32(), f.take(4).ljust(4, b"x"), f.below(32), body + bytes(-len(body) % 4))


def rtcp_input(f: Fuzz) -> bytes | list[rtcp.RtcpPacket]:
    kind = f.below(4)
    if kind == 0:
        return f.raw()
    if kind == 1:
        return [rtcp_packet(f) for _ in range(1 + f.below(4))]
    data = b"".join(rtcp_chunk(f) for _ in range(1 + f.below(4)))
    return f.mutate(data) if kind == 2 else data


def check_rtcp(value: bytes | list[rtcp.RtcpPacket]) -> None:
    if isinstance(value, list):  # what Loa sends reads back exactly
        assert rtcp.parse_compound(b"".join(p.build() for p in value)) == value
        return
    try:
        rtcp.parse_compound(value)
    except MalformedPacket:
        pass


# --------------------------------------------------------------------------- subscribe

CHANNELS = ("ch", "other", "ünïcode")
LONG_NAME = "x" * subscribe.MAX_NAME


def name(f: Fuzz) -> str:
    kind = f.below(8)
    if kind == 0:
        return LONG_NAME[: subscribe.MAX_NAME - f.below(2)]
    if kind == 1:
        return f.text(8).encode("utf-8", "replace").decode()
    return CHANNELS[kind % 3]


def control_message(f: Fuzz) -> Message:
    """A well-formed control message of any type, with the fields that type carries."""
    t, ch = f.pick(tuple(MsgType)), name(f)
    if t is MsgType.HELLO:
        return Message(t, ch, identity=name(f), token=f.blob(40))
    if t is MsgType.SUBSCRIBE:
        return Message(t, ch, identity=name(f), token=f.blob(40),
                       cookie=f.take(subscribe.COOKIE_LEN).ljust(subscribe.COOKIE_LEN, b"\0"))
    if t is MsgType.SUBACK:
        return Message(t, ch, ssrc=f.u32(), keepalive_s=f.below(65536), ptime_ms=f.below(65536))
    if t is MsgType.REJECT:
        return Message(t, ch, reason=f.byte())
    if t is MsgType.TIMEREPLY:  # times are signed 64-bit ns: any, negative and huge too
        return Message(t, ch, t1=f.i64(), t2=f.i64(), t3=f.i64())
    cookie = f.take(subscribe.COOKIE_LEN).ljust(subscribe.COOKIE_LEN, b"\0")
    if t is MsgType.TIME:
        return Message(t, ch, cookie=cookie, t1=f.i64())
    if t is MsgType.RESEND:
        if f.below(2):  # lost packets (a NACK): a first seq and a mask of the next 16
            return Message(t, ch, cookie=cookie, seq=f.below(65536),
                           kind=subscribe.RESEND_PACKETS, mask=f.below(65536))
        return Message(t, ch, cookie=cookie, seq=f.below(65536))
    return Message(t, ch, cookie=cookie)


def control_bytes(f: Fuzz) -> bytes:
    kind = f.below(4)
    if kind == 0:
        return f.blob(48)
    if kind == 1:
        return MAGIC + f.blob(48)
    return f.mutate(control_message(f).build())


def control_input(f: Fuzz) -> bytes | Message:
    return control_message(f) if f.below(4) == 0 else control_bytes(f)


def check_subscribe_parse(value: bytes | Message) -> None:
    if isinstance(value, Message):
        assert subscribe.parse(value.build()) == value
        return
    try:
        subscribe.parse(value)
    except MalformedPacket:
        pass


ADDRS: tuple[subscribe.Addr, ...] = (("192.0.2.1", 5004), ("192.0.2.2", 5004),
                                     ("2001:db8::1", 40000))
SERVER_CHANNELS = ("ch", "ch", "ch", "other", "ünïcode")
SERVER_TYPES = (MsgType.HELLO, MsgType.SUBSCRIBE, MsgType.SUBSCRIBE, MsgType.KEEPALIVE,
                MsgType.BYE, MsgType.COOKIE, MsgType.SUBACK, MsgType.REJECT, MsgType.RESEND)


def server_steps(f: Fuzz) -> list[tuple[Any, ...]]:
    """Datagrams to an upstream: raw bytes, or a message whose cookie is one the upstream gave
    that address (fresh from a HELLO, or the last one: to get past the cookie check), none, or
    random; with time passing."""
    steps: list[tuple[Any, ...]] = []
    while f.more() and len(steps) < 8:
        # mostly one address and channel, so that HELLO, SUBSCRIBE, KEEPALIVE and BYE meet
        addr, dt = f.pick((0, 0, 0, 1, 2)), f.pick((0, 0, 0, 1, 31))
        if f.below(5) == 0:
            steps.append(("raw", addr, dt, control_bytes(f)))
            continue
        cookie = f.pick(("hello", "hello", "jar", "jar", "zeros", "random"))
        identity = "spk-1" if f.below(4) else name(f)  # the cookie covers the identity
        steps.append(("msg", addr, dt, f.pick(SERVER_TYPES), f.pick(SERVER_CHANNELS), identity,
                      f.pick((b"", b"bad", b"t" * 40)), cookie, f.take(3), f.below(4) == 0))
    return steps


def _known(channel: str) -> int | None:
    return ssrc_for(channel) if channel != "other" else None


def check_subscribe_server(steps: list[tuple[Any, ...]]) -> None:
    """Invariants of the upstream: no amplification, every answer parses, the subscriber
    count is what the table holds and never above the maximum; nothing but ValueError."""
    server = subscribe.SubscribeServer(
        secret=b"k" * 32, channel_ssrc=_known, max_subscribers=2,
        # a token "bad" is refused; any other is good for 60 s (subscriptions then run out)
        check_token=lambda identity, channel, token: "bad_token" if token == b"bad" else 60.0)
    jar: dict[tuple[subscribe.Addr, str], bytes] = {}
    now = 1000.0
    for step in steps:
        addr, now = ADDRS[step[1]], now + step[2]
        if step[0] == "raw":
            data = step[3]
        else:
            _, _, _, t, ch, identity, token, source, noise, garble = step
            if source == "hello":  # a fresh cookie, as a subscriber gets it first
                hello = Message(MsgType.HELLO, ch, identity=identity, token=token).build()
                answer, _ = server.handle(hello, addr, now)
                if answer is not None and subscribe.parse(answer).type is MsgType.COOKIE:
                    jar[(addr, ch)] = subscribe.parse(answer).cookie
            cookie = jar.get((addr, ch), bytes(24)) if source in ("hello", "jar") else (
                bytes(24) if source == "zeros" else (noise * 24)[:24].ljust(24, b"\0"))
            if t is MsgType.HELLO:
                data = Message(t, ch, identity=identity, token=token).build()
            elif t is MsgType.SUBSCRIBE:
                data = Message(t, ch, identity=identity, token=token, cookie=cookie).build()
            elif t is MsgType.SUBACK:
                data = Message(t, ch, ssrc=1, keepalive_s=5, ptime_ms=20).build()
            elif t is MsgType.REJECT:
                data = Message(t, ch, reason=noise[0] if noise else 0).build()
            elif t is MsgType.RESEND:
                data = Message(t, ch, cookie=cookie, seq=int.from_bytes(noise, "big") % 65536
                               ).build()
            else:
                data = Message(t, ch, cookie=cookie).build()
            if garble:
                data = data[: len(data) - 1 - (noise[0] if noise else 0) % 8]
        try:
            reply, event = server.handle(data, addr, now)
        except ValueError:  # MalformedPacket
            continue
        if reply is not None:
            assert len(reply) <= len(data), "amplification"
            answer = subscribe.parse(reply)
            assert answer.type in (MsgType.COOKIE, MsgType.SUBACK, MsgType.REJECT)
            if answer.type is MsgType.COOKIE:
                jar[(addr, answer.channel)] = answer.cookie
        assert isinstance(event, subscribe.Subscribed | subscribe.Unsubscribed
                          | subscribe.Dropped | subscribe.Resend | None)
        if isinstance(event, subscribe.Resend):  # only a subscriber, with its cookie
            assert addr in server.subscribers.get(event.channel, {}), "resend to a stranger"
        server.expire(now)
        assert server.count == sum(len(s) for s in server.subscribers.values())
        assert 0 <= server.count <= server.max_subscribers


UPSTREAMS: list[subscribe.Addr] = [("192.0.2.1", 5004), ("192.0.2.2", 5004)]


def client_steps(f: Fuzz) -> list[tuple[Any, ...]]:
    """Datagrams to a subscriber: from its upstream (resolved when the step runs), the other
    upstream or a stranger; or time passing (retries, keepalives, failover)."""
    steps: list[tuple[Any, ...]] = []
    while f.more() and len(steps) < 8:
        kind = f.below(5)
        if kind == 0:
            steps.append(("tick", f.pick((0.3, 1.0, 3.5, 6.0))))
            continue
        src = f.pick((0, 0, 0, 1, 2))
        if kind == 1:
            steps.append(("raw", src, control_bytes(f)))
        else:  # mostly for the channel it wants
            msg = control_message(f)
            if kind > 2:
                msg = Message(**{**_fields(msg), "channel": "ch"})
            steps.append(("msg", src, msg))
    return steps


def check_subscribe_client(steps: list[tuple[Any, ...]]) -> None:
    """The subscriber sends only handshake messages to its upstreams, whatever it is told;
    nothing but MalformedPacket escapes."""
    client = subscribe.SubscribeClient(identity="spk-1", channel="ch", upstreams=list(UPSTREAMS),
                                       rng=random.Random(0))
    now = 100.0
    out = client.start(now)
    for step in steps:
        if step[0] == "tick":
            now += step[1]
            out = client.tick(now)
        else:
            addr = (client.upstream, UPSTREAMS[1 - client.index], ("203.0.113.9", 1))[step[1]]
            data = step[2] if step[0] == "raw" else step[2].build()
            try:
                out = client.handle(data, addr, now)
            except MalformedPacket:
                continue
        for reply, to in out:
            assert to in UPSTREAMS
            assert subscribe.parse(reply).type in (MsgType.HELLO, MsgType.SUBSCRIBE,
                                                   MsgType.KEEPALIVE, MsgType.BYE)
        assert 0 <= client.index < len(UPSTREAMS)
    client.close()


def _fields(msg: Message) -> dict[str, Any]:
    return {f: getattr(msg, f) for f in Message.__slots__}


# --------------------------------------------------------------------------- SDP

#: the lines of a channel's SDP, in order, by what they start with
SDP_LINES = ("v=0", "o=- ", "s=", "i=", "c=IN IP", "t=0 0", "m=audio ", "a=rtpmap:", "a=fmtp:",
             "a=ptime:", "a=recvonly", "a=rtcp-mux", "a=extmap:1 ", "a=extmap:2 ", "a=extmap:3 ",
             "a=ssrc:")
HOSTS = ("192.0.2.10", "0.0.0.0", "239.1.2.3", "ff02::1", "2001:db8::1", "relay.example",
         "fe80::1%eth0", "relay.example.", "a" * 63 + ".b")
BAD_HOSTS = ("fe80::1%", "1.2.3.4/8", "[::1]", "a..b", "-a", "x" * 254, "a" * 64 + ".b", "")


def sdp_args(f: Fuzz) -> tuple[Any, ...]:
    def host() -> str:
        kind = f.below(8)
        if kind == 0:
            return f.pick(HOSTS) + f.text(4)
        if kind == 1:
            return f.text()
        if kind == 2:
            return str(f.pick(BAD_HOSTS))
        return str(f.pick(HOSTS))

    return (f.text(), host(), f.pick((5004, 5004, 5004, 0, 65535, 65536, -1, f.below(65536))),
            f.pick((20, 40, 60)), f.pick((111, 96, 0, 127, 128, -1)), f.text(), host(),
            f.byte())


def check_sdp(args: tuple[Any, ...]) -> None:
    """Hostile strings never add a line or a field: the SDP has exactly its lines, in order."""
    channel, addr, port, ptime_ms, pt, session_name, origin, ttl = args
    try:
        text = sdp.channel_sdp(channel, addr, port, ptime_ms, pt, session_name, origin=origin,
                               ttl=ttl)
    except ValueError:
        return
    assert text.endswith("\r\n")
    lines = text[:-2].split("\r\n")
    assert len(lines) == len(SDP_LINES), lines
    for line, start in zip(lines, SDP_LINES, strict=True):
        assert line.startswith(start), (line, start)
        assert not any(c in line for c in "\r\n\x00"), line
    # the addresses are one field each: nothing can add a field either
    assert len(lines[1].split(" ")) == 6 and len(lines[4].split(" ")) == 3, lines
    assert len(lines[15].split(" ")) == 2, lines[15]


# --------------------------------------------------------------------------- MQTT

#: every model a payload is parsed into, by the topic leaf it arrives on (``DEVICE_TOPICS``,
#: and the zones' ``emergency`` and ``board`` topics); tests/test_fuzz.py checks that no leaf
#: is missing
MQTT_MODELS: dict[str, type[messages.Payload]] = {
    "status": messages.Status,
    "telemetry/speaker": messages.SpeakerTelemetry,
    "telemetry/relay": messages.RelayTelemetry,
    "ack": messages.Ack,
    "played": messages.Played,
    "cmd": messages.Command,
    "config": messages.DeviceConfig,
    "emergency": messages.EmergencyState,
    "token": messages.TokenGrant,
    "keys": messages.StreamKeys,
    "board": messages.BoardState,
}
#: a valid payload of each model, to mutate
MQTT_SAMPLES: dict[str, dict[str, Any]] = {
    "status": {"state": "online", "ts": 1.5, "zone": "a.b", "channel": "ch", "upstream": "r:1",
               "version": "1"},
    "telemetry/speaker": {"ts": 1.0, "buffer_ms": 300.0, "loss_ratio": 0.1, "level_dbfs": -20.0,
                          "volume": 80.0, "muted": False, "uptime_s": 5.0, "emergency": True},
    "telemetry/relay": {"ts": 1.0, "subscribers": 3, "channels": 1, "packets_out": 9,
                        "uptime_s": 5.0, "upstream": "r:1"},
    "ack": {"id": "c-1", "ok": True, "error": None, "state": {"volume": 50}},
    "played": {"broadcast": 7, "start": 1.0, "end": 2.0, "level_dbfs": -18.0, "local": False},
    "cmd": {"id": "c-1", "cmd": "set_volume", "args": {"volume": 50}},
    "config": {"volume": 50.0, "muted": False, "upstream": ["relay.example:5004"]},
    "emergency": {"id": 9, "active": True, "volume": 100.0, "repeat_s": 60.0, "started": 1.0,
                  "expires": 2.0, "label": "x"},
    "token": {"token": "AQAAAAA=", "expires": 1},
    "keys": {"keyset": "AQAAAAA="},
    "board": {"zone": "a.b", "ts": 1.0, "items": [
        {"id": "p-1", "zones": ["a.b"], "title": "x", "body": "y", "level": "emergency",
         "start": 1.0, "expires": 2.0, "broadcast": 7}]},
}
JSON_ATOMS: tuple[Any, ...] = (
    None, True, False, 0, 1, -1, 50, 2**32, 2**64, -(2**63), 10**400, 0.5, -0.0, 1e308, 1e-320,
    math.nan, math.inf, -math.inf, "", "50", "set_volume", "mute", "refresh_token", "online",
    "relay.example:5004", "[::1]:5004", "host:0", "host", "x" * 401, "a" * 1025, "c-1", "a.b")
MQTT_LARGE = (b"[" * 100_000, b"{}" * 40_000, b"1" * 5000, b"\xff", b"\xef\xbb\xbf{}",
              b"x" * (messages.MAX_PAYLOAD + 1), b'{"a":' * 30_000)


def json_value(f: Fuzz, depth: int = 0) -> Any:
    kind = f.below(8)
    if kind < 4 or depth > 2:
        return f.pick(JSON_ATOMS)
    if kind == 4:
        return f.text()
    if kind == 5:
        return [json_value(f, depth + 1) for _ in range(f.below(4))]
    if kind == 6:
        return (f.u32() - 2**31) / (1 + f.byte())
    return {f.text(6): json_value(f, depth + 1) for _ in range(f.below(4))}


def mqtt_message(f: Fuzz) -> tuple[str, str, bytes | str]:
    """A topic, the model of the leaf, and a payload: random, any JSON, or the leaf's sample
    with fields changed, dropped or added; then maybe garbled."""
    leaf = f.pick(tuple(MQTT_MODELS))
    topic = f.pick(("loa/v1/speakers/s-1/", "loa/v1/relays/r1/", "loa/v1/zones/a/", f.text(),
                    "loa/v1/speakers/+/", "loa/v1/speakers/#/", "/", "loa/v1//"))
    topic += leaf.split("/")[0] if f.below(4) else f.text(6)
    kind = f.below(8)
    if kind == 0:
        return topic, leaf, f.raw()
    if kind == 1:
        return topic, leaf, f.pick(MQTT_LARGE)
    doc: Any = dict(MQTT_SAMPLES[leaf])
    if kind == 2:
        doc = json_value(f)
    else:
        for _ in range(1 + f.below(3)):
            key = f.pick((*doc, "args", f.text(6))) if doc else f.text(6)
            if f.below(5) == 0:
                doc.pop(key, None)
            else:
                doc[key] = json_value(f)
    text = json.dumps(doc, allow_nan=True)  # NaN and Infinity: parse must refuse them
    if kind == 3:
        return topic, leaf, f.mutate(text.encode("utf-8", "surrogatepass"))
    return topic, leaf, text.encode("utf-8", "surrogatepass") if kind == 4 else text


def check_mqtt(value: tuple[str, str, bytes | str]) -> None:
    """The topic split (``BadPayload`` reason ``bad_topic``), the payload parse into the leaf's
    model (``BadPayload`` of a known reason), the command arguments and the correlation id of
    a broken command; what parses encodes and parses back the same."""
    topic, leaf, payload = value
    try:
        kind, device_id, topic_leaf = messages.split_device_topic(topic)
        assert messages.device_topic(kind, device_id, topic_leaf) == topic
    except messages.BadPayload as e:
        assert e.reason == "bad_topic"
    model = MQTT_MODELS[leaf]
    if isinstance(payload, bytes):
        messages.correlation_id_of(payload)  # the device's last resort must not raise either
    try:
        obj = messages.parse(model, payload)
    except messages.BadPayload as e:
        assert e.reason in messages.BAD_REASONS
        return
    assert messages.parse(model, messages.encode(obj)) == obj  # what we accept, we can send
    if isinstance(obj, messages.Command):
        for table in (messages.SPEAKER_COMMANDS, messages.RELAY_COMMANDS):
            try:
                messages.command_args(table, obj)
            except messages.BadPayload as e:
                assert e.reason == "invalid_fields"


# --------------------------------------------------------------------------- CAP

CAP_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier>
  <sender>{sender}</sender>
  <sent>{sent}</sent>
  <status>{status}</status>
  <msgType>{msgType}</msgType>
  <scope>{scope}</scope>
  <references>{references}</references>
  <info>
    <language>{language}</language>
    <category>{category}</category>
    <event>{event}</event>
    <urgency>{urgency}</urgency>
    <severity>{severity}</severity>
    <certainty>{certainty}</certainty>
    <headline>{headline}</headline>
    <description>{description}</description>
    <expires>{expires}</expires>
    <area><areaDesc>{areaDesc}</areaDesc>
      <polygon>{polygon}</polygon><circle>{circle}</circle>
      <geocode><valueName>{valueName}</valueName><value>{value}</value></geocode>
    </area>
  </info>
</alert>"""
CAP_VALID = {
    "identifier": "T-1", "sender": "canhbao@brvt.gov.vn", "sent": "2024-11-24T05:30:00+07:00",
    "status": "Actual", "msgType": "Update", "scope": "Public",
    "references": "a@b,T-0,2024-11-24T05:00:00-00:00", "language": "vi-VN",
    "category": "Met", "event": "Bão", "urgency": "Immediate", "severity": "Severe",
    "certainty": "Likely", "headline": "Bão số 9. Sơ tán!", "description": "Gió mạnh. " * 20,
    "expires": "2024-11-25T05:30:00+07:00", "areaDesc": "Vùng ven biển",
    "polygon": "10.3,107.0 10.4,107.0 10.4,107.1 10.3,107.0", "circle": "10.35,107.05 5.5",
    "valueName": "loa:zone", "value": "brvt.vung-tau",
}
CAP_FIELDS = tuple(CAP_VALID)
CAP_VALUES = (
    "", "2024-02-30T05:30:00+07:00", "2024-11-24T05:30:00+99:00", "2024-11-24T05:30:00Z",
    "٢٠٢٤-١١-٢٤T05:30:00+07:00", "9999-12-31T23:59:59-23:59", "1e999,1 2,3",
    "91,0 0,0 0,0 91,0", "10,10 1e400", "10,10 20001", "١٠,١٠ ٥", "a,b,c d,e", ",,", "Private",
    "Restricted", "Cancel", "Ack", "Alert", "Extreme", "Expected", "Geo", "&amp;&lt;",
    "<![CDATA[x]]>", "<x/>", "&bogus;", "&#0;", "&#xD800;", "&#x10FFFF;", "1" * 5000,
    "a. " * 400, "x" * 2000,
)
CAP_HOSTILE = (
    # billion laughs, external entities, parameter entities: a DTD is refused before expansion
    b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;">]><alert>&c;</alert>',
    b'<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b"<alert>&x;</alert>",
    b'<?xml version="1.0"?><!DOCTYPE alert SYSTEM "http://192.0.2.1/x.dtd"><alert/>',
    b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY % p SYSTEM "http://192.0.2.1/p">%p;]><a/>',
    b'<?xml version="1.0" encoding="bogus-8"?><alert/>',
    b'<?xml version="1.0" encoding="UTF-16"?><alert/>',
    '<?xml version="1.0" encoding="UTF-16"?><alert/>'.encode("utf-16"),
    b'<?xml version="1.0" encoding="latin-1"?><alert xmlns="urn:oasis:names:tc:emergency:cap:'
    b'1.2"><identifier>\xe9</identifier></alert>',
    b"\xef\xbb\xbf<alert/>", b"\xff\xfe<\x00a\x00/\x00>\x00", b"<alert>\xc3\x28</alert>",
    b"<" + b"a>" * 60_000,  # deep nesting, under the size limit
    b"<a>" * 60_000 + b"</a>" * 60_000,
    b"<alert " + b" ".join(b"a%d='x'" % i for i in range(10_000)) + b"/>",
    b"x" * (cap.MAX_CAP_BYTES + 1),
    b"", b"<", b"<?xml?>", b"<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'/>",
)


def cap_document(f: Fuzz) -> bytes:
    """Random bytes, a known attack, or a valid alert with fields replaced by awkward or
    hostile values, maybe garbled."""
    kind = f.below(8)
    if kind == 0:
        return f.raw()
    if kind == 1:
        return f.pick(CAP_HOSTILE)
    fields = dict(CAP_VALID)
    for _ in range(f.below(4)):
        fields[f.pick(CAP_FIELDS)] = f.pick(CAP_VALUES) if f.below(2) else f.text()
    data = CAP_TEMPLATE.format(**fields).encode("utf-8", "surrogatepass")
    return f.mutate(data, 2) if kind == 2 else data


#: ``loa ctl cap --today`` moves dates as if it ran at this instant
CAP_TODAY = datetime(2025, 3, 1, 2, 30, tzinfo=timezone(timedelta(hours=7)))


@functools.cache
def _sample_zones() -> dict[str, Zone]:
    """The sample tree with its locations and boundaries, as the control plane holds it."""
    return {z.id: Zone(id=z.id, name=z.name, parent=z.parent, code=z.code, boundary=z.boundary,
                       location=None if z.location is None else GeoPoint(lat=z.location[0],
                                                                         lon=z.location[1]))
            for z in ZoneTree.load().zones.values()}


def check_cap(data: bytes) -> None:
    """``parse_cap`` raises only ``CapError``; what it accepts, the API can classify, speak
    and map to zones of the sample tree (by their places: no speaker has a position); and
    ``move_to_today`` raises only ``ValueError``, keeping an accepted alert accepted."""
    try:
        moved: bytes | None = move_to_today(data, CAP_TODAY)[0]
    except ValueError:
        moved = None
    try:
        alert = cap.parse_cap(data)
    except cap.CapError:
        return
    try:
        cap.classify(alert)
        assert len(cap.speech_text(alert)) <= MAX_TTS_CHARS
    except cap.CapError as e:
        assert e.field == "alert.info"
    cap.expires(alert)
    zones = _sample_zones()
    assert cap.resolve_areas(alert, zones, []).zones <= set(zones)
    if moved is not None:
        cap.parse_cap(moved)


# --------------------------------------------------------------------------- the UDP edges


class _Errors(logging.Handler):
    """Counts what an edge logs as an unexpected error: a bug it survived, not bad input."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


class _Edges:
    """The fan-out endpoint and the speaker, built once (as a long-running process has them)
    and fed datagrams by calling their receive methods: no socket is needed for that."""

    def __init__(self) -> None:
        self.errors = _Errors()
        logging.getLogger("fanout.endpoint").addHandler(self.errors)
        logging.getLogger("loa.speaker").addHandler(self.errors)
        self.registry = CollectorRegistry()
        self.fanout = FanoutEndpoint(channel_ssrc=_known, registry=self.registry,
                                     process="fuzz", max_subscribers=1000)
        client = subscribe.SubscribeClient(identity="spk-1", channel="ch",
                                           upstreams=list(UPSTREAMS), rng=random.Random(0))
        playout = Playout(NullSink(), OpusDecoder(), time.time())
        # verifying, as every speaker does: media waits in the gate for a LOAS
        self.speaker = Speaker(client, playout, Latency(),
                               auth.MediaGate("ch", FUZZ_KEYS),
                               recovery=LossTracker(deadline_s=0.26))

    def counted(self) -> float:
        """Datagrams dropped as bad plus control messages by outcome, so far."""
        m = self.fanout.metrics
        return sum(s.value for c in (m.bad, m.handshakes) for family in c.collect()
                   for s in family.samples if s.name.endswith("_total"))


_edges: _Edges | None = None


def edges() -> _Edges:
    global _edges
    if _edges is None:
        _edges = _Edges()
        # drop them before interpreter teardown, when opuslib's destructor could not run
        atexit.register(globals().update, _edges=None)
    return _edges


def datagram(f: Fuzz) -> bytes:
    """Anything a UDP socket may read: random, control, RTP, RTCP, well-formed or garbled."""
    kind = f.below(5)
    if kind == 0:
        return f.raw()
    if kind == 1:
        return control_bytes(f)
    if kind == 2:
        return control_message(f).build()
    if kind == 3:
        return f.mutate(rtp_bytes(f)) if f.below(2) else rtp_bytes(f)
    return f.mutate(b"".join(rtcp_chunk(f) for _ in range(1 + f.below(3))))


def fanout_datagram(f: Fuzz) -> tuple[bytes, tuple[str, int]]:
    addr = f.pick(ADDRS) if f.below(4) else (f"198.51.100.{f.byte()}", f.below(65536))
    return datagram(f), addr


def check_fanout_endpoint(value: tuple[bytes, tuple[str, int]]) -> None:
    """The endpoint only counts: nothing escapes ``datagram_received``, nothing reaches its
    catch-all for bugs, and every datagram moves a counter."""
    e = edges()
    data, addr = value
    counted, errors = e.counted(), e.errors.count
    e.fanout.datagram_received(data, addr)
    assert e.errors.count == errors, "the endpoint logged an unexpected error"
    # dropped as bad (a malformed control message also under its handshake outcome), or
    # handled as a control message
    assert e.counted() - counted in (1, 2)


def speaker_datagram(f: Fuzz) -> tuple[Any, ...]:
    """From the speaker's upstream mostly (anything else is dropped at once); media of its
    channel is stamped with a capture time near now when the check runs, so that it reaches
    the playout's jitter buffer."""
    src = f.pick((0, 0, 0, 1))
    if f.below(3) == 0:
        pkt = loa_rtp(f, ssrc=ssrc_for("ch"))
        return ("live", src, pkt, (f.byte() - 128) / 10, f.below(4) == 0)
    return ("raw", src, datagram(f))


def check_speaker(value: tuple[Any, ...]) -> None:
    """``Speaker._datagram`` raises nothing and counts no unexpected error."""
    speaker = edges().speaker
    addr = (speaker.client.upstream, ("203.0.113.9", 5004))[value[1]]
    if value[0] == "live":
        _, _, pkt, offset_s, cut = value
        pkt.capture_ntp = packet.unix_to_ntp64(time.time() + offset_s)
        data = pkt.build()
        if cut:  # a cut header, still aimed at the playout
            data = data[: 12 + pkt.seq % 24]
    else:
        data = value[2]
    before = sum(speaker.bad.values()) + speaker.control + speaker.rtcp
    speaker._datagram(data, addr)  # raises nothing, whatever the bytes
    assert speaker.bad["error"] == 0, "the speaker hit an unexpected error"
    # dropped and counted, or read (control, RTCP, or media for the playout); a malformed
    # control message counts as both control and malformed
    assert sum(speaker.bad.values()) + speaker.control + speaker.rtcp - before <= 2


# --------------------------------------------------------------------------- registry

# --------------------------------------------------------------------------- signed media, tokens

#: a fixed key (the fuzz run is deterministic), its keyring, and one genuine signed batch
FUZZ_KEY = SigningKey.of(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
FUZZ_KEYS = Keyring([FUZZ_KEY.public])
LOAS_CHANNEL = "fuzz.ch"
LOAS_PACKETS = [RtpPacket(ssrc_for(LOAS_CHANNEL), 65530 + i, 960 * i, bytes([0xF8, i]) * 10,
                          capture_ntp=1 << 40, priority=i % 4).build() for i in range(12)]
LOAS_GENUINE = sign_batch(FUZZ_KEY, LOAS_CHANNEL, ssrc_for(LOAS_CHANNEL), 65530,
                          [packet_hash(p) for p in LOAS_PACKETS]).build()


def loas_input(f: Fuzz) -> tuple[list[bytes], bytes]:
    """What a receiver's gate holds (the genuine packets, some lost, some altered, a few
    impostors beside them) and a LOAS (the genuine one, mutated, or random bytes)."""
    held: list[bytes] = []
    for p in LOAS_PACKETS:
        kind = f.below(8)
        if kind == 0:
            continue  # lost
        held.append(f.mutate(p, 2) if kind == 1 else p)
        if kind == 2 and sum(1 for h in held if h not in LOAS_PACKETS) < 3:
            held.append(f.mutate(p, 2))  # an impostor for the same sequence number
    loas = f.pick((LOAS_GENUINE, f.mutate(LOAS_GENUINE), f.raw()))
    return held, loas


def check_loas(value: tuple[list[bytes], bytes]) -> None:
    """Only the streamer's packets are ever released, whatever is held and whatever the LOAS;
    the parser raises nothing but ``MalformedPacket``; every outcome is a counted one."""
    held, data = value
    try:
        auth.parse_loas(data)
    except MalformedPacket:
        pass
    gate: auth.MediaGate[bytes] = auth.MediaGate(LOAS_CHANNEL, FUZZ_KEYS)
    early, late = held[: len(held) // 3], held[len(held) // 3 :]
    for p in early:
        gate.hold(int.from_bytes(p[2:4], "big"), p, p, 0.0)
    released = gate.vouch(data, 0.0)
    assert gate.last in (*auth.LOAS_OUTCOMES, auth.PENDING)
    assert released == sorted(released, key=LOAS_PACKETS.index)
    for p in late:  # the rest arrive after the LOAS: what it proves comes out of take_late
        gate.hold(int.from_bytes(p[2:4], "big"), p, p, 0.0)
        if gate.late:
            more, loases = gate.take_late()
            released += more
            assert all(x == data for x in loases)
    assert all(p in LOAS_PACKETS for p in released), "a packet the streamer did not sign"
    assert len(set(released)) == len(released), "a packet released twice"
    gate.expire(1.0)
    assert sum(gate.loas.values()) == 1, "a LOAS counted twice or never"


TOKEN_NOW = 1_900_000_000
TOKEN_GENUINE = token.issue(FUZZ_KEY, "spk-1", [LOAS_CHANNEL, "brvt"], TOKEN_NOW, 3600)


def token_input(f: Fuzz) -> bytes | str:
    return f.pick((TOKEN_GENUINE, f.mutate(TOKEN_GENUINE, 4), f.raw(), f.blob(1100),
                   f.text(40)))


def check_token(value: bytes | str) -> None:
    """Only the genuine token is accepted, for its identity and channels; nothing raises but
    ``MalformedPacket`` from the parser; a URL form of anything decodes or is empty."""
    data = token.from_url(value) if isinstance(value, str) else value
    try:
        token.parse(data)
    except MalformedPacket:
        pass
    verdict = token.check(FUZZ_KEYS, data, "spk-1", LOAS_CHANNEL, TOKEN_NOW + 10)
    assert isinstance(verdict, token.Token) == (data == TOKEN_GENUINE), verdict
    assert isinstance(token.check_listen(FUZZ_KEYS, data, LOAS_CHANNEL, TOKEN_NOW),
                      (token.Token, str))


KEYSET_NOW = 1_900_000_000
KEYSET_OTHER = SigningKey.of(Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))
KEYSET_GENUINE = keyset.sign(FUZZ_KEY, [KEYSET_OTHER.public, FUZZ_KEY.public], KEYSET_NOW * 1000)
#: the set a device holds already: the genuine one is newer
KEYSET_HELD = keyset.parse(keyset.sign(FUZZ_KEY, [FUZZ_KEY.public], KEYSET_NOW * 1000 - 1))


def keyset_input(f: Fuzz) -> bytes:
    return f.pick((KEYSET_GENUINE, f.mutate(KEYSET_GENUINE, 4), f.raw(), f.blob(400),
                   KEYSET_GENUINE[: f.below(len(KEYSET_GENUINE))]))


def check_keyset(data: bytes) -> None:
    """Only the genuine set is ever taken; the parser raises nothing but ``MalformedPacket``
    and what it parses builds back to the same bytes; every refusal is a counted outcome, and
    a device's keys change only with the genuine set."""
    try:
        assert keyset.parse(data).build() == data
    except MalformedPacket:
        pass
    verdict = keyset.verify(FUZZ_KEYS, data, KEYSET_NOW, KEYSET_HELD)
    assert isinstance(verdict, keyset.KeySet) == (data == KEYSET_GENUINE), verdict
    assert isinstance(verdict, keyset.KeySet) or verdict in keyset.OUTCOMES
    device = TrustedKeys([FUZZ_KEY.public])
    outcome = device.offer(data, KEYSET_NOW)
    assert outcome in keyset.OUTCOMES and device.outcomes[outcome] == 1
    expected = [FUZZ_KEY.id, KEYSET_OTHER.id] if data == KEYSET_GENUINE else [FUZZ_KEY.id]
    assert device.keyring.ids() == sorted(expected)


TARGETS: dict[str, Target] = {
    "rtp": Target(fuzz_bytes(rtp_input), check_rtp),
    "rtcp": Target(fuzz_bytes(rtcp_input), check_rtcp),
    "subscribe-parse": Target(fuzz_bytes(control_input), check_subscribe_parse),
    "subscribe-server": Target(fuzz_bytes(server_steps), check_subscribe_server),
    "subscribe-client": Target(fuzz_bytes(client_steps), check_subscribe_client,
                               regressions=(
        # a SUBACK before any COOKIE: subscribed with no cookie, the KEEPALIVE raised
        [("msg", 0, Message(MsgType.SUBACK, "ch", ssrc=1)), ("tick", 3.5)],
    )),
    "sdp": Target(fuzz_bytes(sdp_args), check_sdp, regressions=(
        # ipaddress takes any text as an IPv6 scope: it went into the c= line verbatim
        ("a", "fe80::1%x\r\na=sendonly", 5004, 20, 111, "s", "0.0.0.0", 16),
        ("a", "10.0.0.1", 5004, 20, 111, "s\x00", "fe80::1%\n", 16),
    )),
    "mqtt": Target(fuzz_bytes(mqtt_message), check_mqtt, regressions=(
        # a lone surrogate in a free-form field: accepted, then encode() raised
        ("loa/v1/speakers/s-1/ack", "ack", b'{"id": "c-1", "ok": true, "state": "\\ud800"}'),
        ("loa/v1/speakers/s-1/ack", "ack", '{"id": "c-1", "ok": true, "state": {"\ud800": 1}}'),
    )),
    "cap": Target(fuzz_bytes(cap_document), check_cap, regressions=(
        b'<?xml version="" encoding="b"?>',  # LookupError from the codec lookup
        b'<?xml version="1.0" encoding="utf-32"?><alert/>',  # ValueError from expat
    )),
    "fanout-endpoint": Target(fuzz_bytes(fanout_datagram), check_fanout_endpoint),
    "speaker": Target(fuzz_bytes(speaker_datagram), check_speaker),
    "loas": Target(fuzz_bytes(loas_input), check_loas),
    "token": Target(fuzz_bytes(token_input), check_token),
    "keyset": Target(fuzz_bytes(keyset_input, size=400), check_keyset),
}


class Ran(NamedTuple):
    inputs: int
    #: the most CPU time any one input took, garbage collections left out: a hang shows
    #: here (CPU, not wall time: on a shared machine a process at nice 19 waits for the CPU)
    slowest_s: float
    #: the longest garbage collection during a check: it walks hypothesis's memory of the
    #: run as well, so it grows with the chunk, whatever the parser
    longest_gc_s: float


def run(target: Target, examples: int, *, seed_value: int | None = None) -> Ran:
    """Feed ``examples`` inputs to ``target`` (its regressions first), in hypothesis examples
    of :data:`BATCH` inputs. Deterministic unless ``seed_value`` is given (the long run's
    chunks, each with its own seed)."""
    count, slowest, gc_s, longest_gc = 0, 0.0, 0.0, 0.0
    gc_started = 0.0

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        nonlocal gc_started, gc_s, longest_gc
        if phase == "start":
            gc_started = time.process_time()
        else:
            pause = time.process_time() - gc_started
            gc_s, longest_gc = gc_s + pause, max(longest_gc, pause)

    def counted(values: list[Any]) -> None:
        nonlocal count, slowest
        for value in values:
            count += 1
            t, gc_before = time.process_time(), gc_s
            target.check(value)
            slowest = max(slowest, time.process_time() - t - (gc_s - gc_before))

    test = given(target.strategy)(counted)
    for value in target.regressions:
        test = example([value])(test)
    test = settings(
        max_examples=-(-examples // BATCH), deadline=None, derandomize=seed_value is None,
        database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                              HealthCheck.large_base_example],
    )(test)
    if seed_value is not None:
        test = seed(seed_value)(test)
    gc.callbacks.append(on_gc)
    try:
        test()
    finally:
        gc.callbacks.remove(on_gc)
    return Ran(count, slowest, longest_gc)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.fuzz",
                                 description="Fuzz Loa's parsers (docs/BENCHMARKS.md, Fuzzing).")
    ap.add_argument("--examples", type=int, default=1_000_000, help="inputs per target")
    ap.add_argument("--target", action="append", choices=sorted(TARGETS),
                    help="only this target (repeatable); default: all")
    ap.add_argument("--chunk", type=int, default=50_000,
                    help="inputs per hypothesis run: each chunk is a fresh run with its own "
                         "seed, which keeps the engine's memory of tried inputs bounded")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first chunk")
    args = ap.parse_args(argv)
    for name in args.target or list(TARGETS):
        target, done, chunk, started = TARGETS[name], 0, 0, time.monotonic()
        slowest = longest_gc = 0.0
        while done < args.examples:
            ran = run(target, min(args.chunk, args.examples - done), seed_value=args.seed + chunk)
            done, chunk = done + ran.inputs, chunk + 1
            slowest, longest_gc = max(slowest, ran.slowest_s), max(longest_gc, ran.longest_gc_s)
            print(f"  {name}: {done} inputs, {time.monotonic() - started:.0f} s", file=sys.stderr,
                  flush=True)
        print(f"{name}: {done} inputs, seeds {args.seed}..{args.seed + chunk - 1}, "
              f"{time.monotonic() - started:.0f} s, slowest input {slowest * 1000:.1f} ms CPU "
              f"(longest garbage collection {longest_gc * 1000:.0f} ms), no failure", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
