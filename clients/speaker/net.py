"""The speaker's UDP edge: one socket carries the subscribe handshake and the media from the
current upstream; :class:`Speaker` demultiplexes every datagram (control, RTCP, RTP) and hands
it to the sans-IO parts (:class:`~wire.subscribe.SubscribeClient`,
:class:`~clients.speaker.playout.Playout`); :func:`tick` and :func:`emergency_tick` are the
periodic jobs that go with it (run from the speaker's one rhythm, ``rhythm.py``).

Nothing plays unless the streamer signed it (``wire/auth.py``): each RTP packet waits in a
:class:`~wire.auth.MediaGate` until the ``LOAS`` of its batch proves it, and only then reaches
the playout; the wait counts against the playout delay. Media that no LOAS proves is counted
by reason (``loa_media_auth_dropped_total``) and never heard, and it does not count as media
for failover either: an upstream that sends only forged or altered packets is left after
``media_timeout_s`` (3 s). Any RTP or RTCP datagram from the current upstream shows it is alive
(``SubscribeClient.heard``): one that sends nothing for ``silence_ms`` is left at the next tick.
A quiet channel sends no media, only a heartbeat (a sender report whose timestamp has moved
on, ``SubscribeClient.heard_report``): the speaker then waits 1.5 s for one before it
leaves, the playout plays out what it holds and is silent without concealing, and the
emergency path counts the stream as alive (``last_media``).

A packet that does not arrive is asked for again (``RESEND`` kind 2): a
:class:`~wire.retransmit.LossTracker` sees every packet of the channel as it comes and says
which sequence numbers are missing; the upstream sends back the original datagrams, which the
gate proves like any other.

This edge must never let a datagram, however malformed, stop the process: each one is counted
under ``loa_speaker_bad_datagrams_total{reason}`` and dropped.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from common.config import Addr, ConfigError
from device.streamer_time import StreamerTime
from device.trust import TokenFile
from fanout import udp
from wire import auth, packet, rtcp, subscribe
from wire.packet import MalformedPacket, RtpPacket
from wire.retransmit import LossTracker

from .clock import LocalClock
from .config import SpeakerConfig
from .emergency import EmergencyPath, stream_lost
from .jitter import Arrival
from .latency import Latency
from .playout import Playout

log = logging.getLogger("loa.speaker")

TICK_S = 0.1  # the handshake's tick: a dead upstream is noticed within silence_ms + TICK_S
EMERGENCY_TICK_S = 0.2
BAD_REASONS = ("malformed", "foreign_source", "foreign_ssrc", "bad_capture_time", "error")
# A capture time further than this from our wall clock cannot be placed on the timeline: the
# sender is broken or hostile (clocks are NTP-disciplined to well under a second).
CAPTURE_WINDOW_S = 10.0
HOLD_SLACK_S = 0.2  # a held packet is kept this much beyond the playout delay
DRAIN = 128  # queued datagrams read per wake-up beyond asyncio's one (2.5 s at 20 ms)
#: a datagram this long after the one before may have a backlog behind it (the process was
#: paused); closer ones come as the stream sends them, and reading the socket once more for
#: each (to find it empty) was a tenth of a playing speaker's Python time
STALL_S = 0.1
MAX_DATAGRAM = 65535  # never truncate: a cut packet would be read as a malformed one


class Speaker(asyncio.DatagramProtocol):
    """Demultiplexes the speaker's socket into the handshake and the playout."""

    def __init__(self, client: subscribe.SubscribeClient, playout: Playout,
                 latency: Latency, gate: auth.MediaGate[tuple[RtpPacket, float]] | None,
                 streamer_time: StreamerTime | None = None,
                 recovery: LossTracker | None = None) -> None:
        self.client = client
        #: the streamer's timeline, from TIME exchanges with the upstream (``clock.py``)
        self.time = streamer_time or StreamerTime(LocalClock().now_ns)
        client.on_time = self.time.answered
        self.playout = playout
        self.latency = latency
        #: holds packets until their LOAS; None plays unsigned media (verify_media = false)
        self.gate = gate
        #: what to ask the upstream for again; None asks for nothing (retransmit = false)
        self.recovery = recovery
        #: the token file, read again when it changes (None: no token)
        self.tokens: TokenFile | None = None
        self.ssrc = packet.ssrc_for(client.channel)
        self.transport: asyncio.DatagramTransport | None = None
        #: of the last packet played or heartbeat of a quiet channel; the start until then
        self.last_media = time.monotonic()
        self.bad = dict.fromkeys(BAD_REASONS, 0)
        self.control = 0
        self.rtcp = 0
        self.octets = 0  # UDP payload bytes from the current upstream
        self.datagrams = 0
        self._error_logged = float("-inf")
        self._sock: socket.socket | None = None  # reads the backlog (fanout/udp.py)
        self._received = float("-inf")  # monotonic time of the last datagram_received
        #: called after each datagram asyncio hands over (and the backlog behind it) is
        #: handled: the rhythm's nudge, which plays what is due in the same wake-up
        self.nudge: Callable[[], None] = lambda: None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the selector loop's UDP transport does not subclass DatagramTransport (3.11)
        self.transport = cast(asyncio.DatagramTransport, transport)
        self._sock = udp.duplicate(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, out: Iterable[tuple[bytes, Addr]]) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for data, addr in out:
            self.transport.sendto(data, addr)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = time.monotonic()
        stalled = now - self._received > STALL_S
        self._received = now
        self._datagram(data, addr)
        if stalled:
            self.drain()
        self.nudge()

    def drain(self) -> None:
        """Read what has queued on the socket. After a pause (this CPU taken for a second),
        the backlog must reach the playout before its next turn: at asyncio's one datagram
        per wake-up it would find a second of stream missing and end the broadcast, then
        start it again."""
        if self._sock is not None:
            udp.drain(self._sock, self._datagram, DRAIN, MAX_DATAGRAM, self.error_received)

    def _datagram(self, data: bytes, addr: Any) -> None:
        try:
            self._receive(data, (addr[0], addr[1]))
        except MalformedPacket:
            self.bad["malformed"] += 1
        except Exception:
            # A bug, not bad input: an exception escaping here would make asyncio close the
            # socket, i.e. silence the speaker. Count it and log at most once a minute.
            self.bad["error"] += 1
            now = time.monotonic()
            if now - self._error_logged > 60:
                self._error_logged = now
                log.exception("datagram from %s failed", addr)

    def _receive(self, data: bytes, addr: Addr) -> None:
        client = self.client
        if addr != client.upstream:  # cheapest filter first: only the current upstream talks
            self.bad["foreign_source"] += 1
            return
        self.octets += len(data)
        self.datagrams += 1
        if subscribe.is_control(data):
            self.control += 1
            before = client.index
            self.send(client.handle(data, addr, time.monotonic()))
            if client.index != before:
                log.warning("upstream %s refused us; trying %s", addr, client.upstream)
            return
        mono = time.monotonic()
        client.heard(mono)  # the upstream is alive, whatever its packets prove
        if packet.is_rtcp(data):
            self.rtcp += 1
            if self.gate is not None and auth.is_loas(data):
                if packet.peek_rtcp_ssrc(data) != self.ssrc:
                    self.bad["foreign_ssrc"] += 1
                    return
                for proven, at in self.gate.vouch(data, mono):
                    self._play(proven, at, mono)
            elif (ts := rtcp.report_ts(data)) is not None:
                if packet.peek_rtcp_ssrc(data) != self.ssrc:
                    self.bad["foreign_ssrc"] += 1
                    return
                client.heard_report(mono, ts)
                if client.quiet:
                    self.last_media = mono
                    self.playout.quiet = True
            else:
                rtcp.parse_compound(data)
            return
        if not packet.is_rtp(data):
            raise MalformedPacket("neither control, RTCP nor RTP")
        pkt = packet.parse(data)
        if pkt.ssrc != self.ssrc:
            self.bad["foreign_ssrc"] += 1
            return
        client.heard_packet(mono, pkt.ts)
        if self.recovery is not None:
            self.recovery.arrived(pkt.seq, len(data), mono)
            self._ask_lost(mono)
        capture_time = pkt.capture_time  # on the streamer's timeline
        now = self.time.now()
        gate = self.gate
        if capture_time is None or abs(now - capture_time) > CAPTURE_WINDOW_S:
            self.bad["bad_capture_time"] += 1
            if capture_time is not None and gate is not None:
                gate.dropped["stale"] += 1
            return
        self.latency.observe(max(0.0, now - capture_time))
        if gate is None:
            self._play(pkt, capture_time, mono)
        else:
            gate.hold(pkt.seq, data, (pkt, capture_time), mono)
            if gate.late:  # its batch's LOAS came first
                for proven, at in gate.take_late()[0]:
                    self._play(proven, at, mono)
            self._ask_overdue(mono)

    def _play(self, pkt: RtpPacket, capture_time: float, now: float) -> None:
        """Media that may play (proven, or verification is off), which came at ``now``
        (monotonic): it reaches the playout and shows the upstream is alive."""
        self.last_media = now
        self.client.on_media(now)
        if self.playout.receive(pkt, capture_time) is Arrival.LATE and self.gate is not None:
            self.gate.dropped["reordered"] += 1

    def renew_token(self, token: bytes) -> None:
        """A token from the control plane: kept in the token file (if any, for the next start)
        and presented upstream now."""
        if self.tokens is not None:
            self.tokens.write(token)
        self.send(self.client.set_token(token, time.monotonic()))

    def expire(self) -> None:
        """Forget held packets whose play time has passed with no LOAS proving them; ask
        again for a LOAS that is overdue."""
        if self.gate is not None:
            now = time.monotonic()
            self.gate.expire(now - self.playout.delay_s - HOLD_SLACK_S)
            self._ask_overdue(now)
        if self.recovery is not None:
            self._ask_lost(time.monotonic())

    def _ask_lost(self, now: float) -> None:
        """Packets that did not arrive: ask the upstream for them again, while they can
        still play."""
        assert self.recovery is not None
        for seq, mask, size in self.recovery.due(now):
            self.send(self.client.nack(seq, mask, size))

    def _ask_overdue(self, now: float) -> None:
        """A lost LOAS would lose its whole batch: ask the upstream for it again."""
        assert self.gate is not None
        seq = self.gate.overdue(now)
        if seq is not None:
            self.send(self.client.resend(seq))

    def error_received(self, exc: Exception) -> None:
        log.debug("socket error (ICMP from a dead upstream?): %s", exc)


def tick(speaker: Speaker, offbeat: Callable[[Callable[[], None]], None]) -> None:
    """Handshake retries, keepalives, failover and asking the time; every ``TICK_S``, from
    the rhythm's beat. The time is asked ``offbeat``: half a packet time later, between two
    packets. The beat follows a packet (``rhythm.py``), when the upstream is busy forwarding
    it to its other subscribers: a TIME sent then waits behind that work on the way up, not
    on the way down, and the clock sync would take the difference for the clocks' offset."""
    client = speaker.client
    before = client.index
    speaker.expire()
    if speaker.tokens is not None and (token := speaker.tokens.poll()) is not None:
        log.info("a new subscription token: renewing the subscription")
        speaker.send(client.set_token(token, time.monotonic()))
    speaker.send(client.tick(time.monotonic()))
    if client.index != before:
        log.warning("failing over to upstream %s:%d", *client.upstream)
    if client.state is subscribe.ClientState.SUBSCRIBED and speaker.time.is_due(
            time.monotonic()):
        offbeat(lambda: ask_time(speaker))


def ask_time(speaker: Speaker) -> None:
    """A TIME to the upstream, if subscribed and due (``device/streamer_time.py``)."""
    client = speaker.client
    if client.state is subscribe.ClientState.SUBSCRIBED and (
            t1 := speaker.time.due(time.monotonic())):
        speaker.send(client.ask_time(t1))


def emergency_tick(emergency: EmergencyPath, speaker: Speaker, cfg: SpeakerConfig) -> None:
    """Offline replay decisions; every ``EMERGENCY_TICK_S``. The rhythm logs a failure (once
    a minute at most) and goes on: a bug here must never stop the rest."""
    silent_s = time.monotonic() - speaker.last_media
    subscribed = speaker.client.state is subscribe.ClientState.SUBSCRIBED
    emergency.tick(time.time(), stream_lost(silent_s, subscribed, cfg.offline_after_s,
                                            cfg.failover_s))


async def resolve(addr: Addr, family: int) -> Addr:
    """SubscribeClient compares source addresses, so names must become the IPs replies use."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            addr[0], addr[1], family=family, type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise ConfigError("upstream", f"cannot resolve {addr[0]}: {e}") from None
    sockaddr = infos[0][4]
    return str(sockaddr[0]), int(sockaddr[1])

