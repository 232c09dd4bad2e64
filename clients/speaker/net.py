"""The speaker's UDP edge: one socket carries the subscribe handshake and the media from the
current upstream; :class:`Speaker` demultiplexes every datagram (control, RTCP, RTP) and hands
it to the sans-IO parts (:class:`~wire.subscribe.SubscribeClient`,
:class:`~clients.speaker.playout.Playout`); :func:`tick` and :func:`emergency_tick` are the
periodic jobs that go with it (run from the speaker's one rhythm, ``rhythm.py``). The socket
is read when the rhythm says (at each playing beat, every few packets, or as a datagram comes
while the speaker listens), each datagram dated by the kernel's receive timestamp: everything
below sees when a datagram came, never when it was read.

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
from typing import Any

from common.config import Addr, ConfigError
from device.streamer_time import StreamerTime
from device.trust import TokenFile
from fanout import udp
from wire import auth, packet, rtcp, subscribe
from wire import token as wire_token
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
DRAIN = 128  # datagrams read per wake-up at most (2.5 s of stream at 20 ms)
MAX_DATAGRAM = 65535  # never truncate: a cut packet would be read as a malformed one
NS = 1_000_000_000
#: after asking for a packet or a LOAS again, listen this long for the answer (a 4G round
#: trip and a retry: ``wire/retransmit.py``, ``RETRY_S``)
ANSWER_S = 0.2


class Speaker:
    """Demultiplexes the speaker's socket into the handshake and the playout.

    The socket is read in two ways (``rhythm.py``): while the speaker **listens**
    (:meth:`listen`: nothing to play, a quiet channel), a datagram wakes the process and is
    read at once, and the rhythm's beat follows it (``nudge``); while it plays, nothing wakes
    it but the beat, which reads everything queued (:meth:`drain`) a few packets at a time.
    Either way each datagram carries its arrival time from the kernel (``SO_TIMESTAMPNS``,
    ``fanout/udp.py``), turned into this process's monotonic clock: what the failover, the
    loss tracker, the latency and the clock sync see is when a datagram came, not when it was
    read (a TIMEREPLY read 40 ms late still gives the clock sync its true t4)."""

    def __init__(self, client: subscribe.SubscribeClient, playout: Playout,
                 latency: Latency, gate: auth.MediaGate[tuple[RtpPacket, float]] | None,
                 streamer_time: StreamerTime | None = None,
                 recovery: LossTracker | None = None) -> None:
        self.client = client
        #: the streamer's timeline, from TIME exchanges with the upstream (``clock.py``)
        self.time = streamer_time or StreamerTime(LocalClock().now_ns)
        client.on_time = self._answered
        self.playout = playout
        self.latency = latency
        #: holds packets until their LOAS; None plays unsigned media (verify_media = false)
        self.gate = gate
        #: what to ask the upstream for again; None asks for nothing (retransmit = false)
        self.recovery = recovery
        #: the token file, read again when it changes (None: no token)
        self.tokens: TokenFile | None = None
        self.ssrc = packet.ssrc_for(client.channel)
        #: of the last packet played or heartbeat of a quiet channel; the start until then
        self.last_media = time.monotonic()
        self.bad = dict.fromkeys(BAD_REASONS, 0)
        self.control = 0
        self.rtcp = 0
        self.octets = 0  # UDP payload bytes from the current upstream
        self.datagrams = 0
        self._error_logged = float("-inf")
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: a datagram wakes the process (:meth:`listen`)
        self.listening = False
        #: the kernel stamps arrivals (``fanout/udp.py``); else a datagram came when read
        self.stamped = False
        #: when a packet or a LOAS was last asked for again (monotonic)
        self.asked_at = float("-inf")
        #: arrival (monotonic) of the newest LOAS read (of the newest packet, unsigned media):
        #: the rhythm's beat is set to follow it (``main.py``); None once taken
        self.anchor: float | None = None
        # the clocks when the socket was last read, to date each datagram read then
        self._read_mono = 0.0
        self._read_real_ns = 0
        self._max_age_ns = 0  # since the read before: nothing read now is older
        self._streamer_at: tuple[float, float] | None = None  # (monotonic, streamer time)
        self._stamp_ns = 0  # the kernel's stamp of the datagram being handled (0: none)
        #: called after the socket was read on a wake-up of its own: the rhythm's nudge,
        #: which plays what is due in the same wake-up
        self.nudge: Callable[[], None] = lambda: None

    def attach(self, sock: socket.socket) -> None:
        """Read and send through ``sock`` (bound, non-blocking; the caller closes it), and
        listen to it (from the running event loop)."""
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self.stamped = udp.stamp_arrivals(sock)
        if not self.stamped:
            log.warning("no kernel receive timestamps: arrivals are dated when read")
        self.listen(True)

    def detach(self) -> None:
        self.listen(False)
        self._sock = None

    def listen(self, on: bool) -> None:
        """Whether a datagram wakes the process (else only the beat reads the socket)."""
        if on is self.listening or self._sock is None or self._loop is None:
            return
        if on:
            self._loop.add_reader(self._sock.fileno(), self._readable)
        else:
            self._loop.remove_reader(self._sock.fileno())
        self.listening = on

    def _readable(self) -> None:
        self.drain()
        self.nudge()

    def send(self, out: Iterable[tuple[bytes, Addr]]) -> None:
        sock = self._sock
        if sock is None:
            return
        for data, addr in out:
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                pass  # the send buffer is full: dropped, as the network may drop it
            except OSError as e:  # unreachable (an ICMP error report), no route
                self.error_received(e)

    def drain(self) -> None:
        """Read what has queued on the socket: every beat while playing, each wake-up while
        listening. After a pause (this CPU taken for a second) the backlog reaches the
        playout before its next turn, not at one datagram per wake-up (the playout would
        find a second of stream missing, end the broadcast and start it again)."""
        if self._sock is not None:
            mono = time.monotonic()
            self._max_age_ns = int((mono - self._read_mono) * NS)
            self._read_mono = mono
            self._streamer_at = None
            self._read_real_ns = time.time_ns()
            udp.drain_stamped(self._sock, self._datagram, DRAIN, MAX_DATAGRAM,
                              self.error_received)
            self._stamp_ns = 0

    def _reading(self, mono: float) -> None:
        self._max_age_ns = int((mono - self._read_mono) * NS)
        self._read_mono = mono
        self._streamer_at = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """One datagram that arrives now (a caller without a socket: tests, the fuzzer)."""
        self._reading(time.monotonic())
        self._datagram(data, addr)

    def _datagram(self, data: bytes, addr: Any, real_ns: int = 0) -> None:
        try:
            # When it came: the kernel's stamp on the monotonic clock, between the read before
            # and this one (a wall clock stepped meanwhile cannot date it elsewhere).
            self._stamp_ns = real_ns
            age_ns = self._read_real_ns - real_ns if real_ns else 0
            age_ns = 0 if age_ns < 0 else min(age_ns, self._max_age_ns)
            self._receive(data, (addr[0], addr[1]), self._read_mono - age_ns / NS)
        except MalformedPacket:
            self.bad["malformed"] += 1
        except Exception:
            # A bug, not bad input: an exception escaping here must not stop the speaker's
            # reading. Count it and log at most once a minute.
            self.bad["error"] += 1
            now = time.monotonic()
            if now - self._error_logged > 60:
                self._error_logged = now
                log.exception("datagram from %s failed", addr)

    def _answered(self, t1: int, t2: int, t3: int) -> None:
        """A TIMEREPLY: the clock sync's t4 is when it came, not when it was read."""
        since_read_ns = int((time.monotonic() - self._read_mono) * NS)
        stamp = self._stamp_ns
        age_ns = time.time_ns() - stamp if stamp else since_read_ns
        self.time.answered(t1, t2, t3,
                           min(max(age_ns, 0), self._max_age_ns + since_read_ns))

    def _receive(self, data: bytes, addr: Addr, mono: float) -> None:
        """A datagram that arrived at ``mono`` (monotonic)."""
        client = self.client
        if addr != client.upstream:  # cheapest filter first: only the current upstream talks
            self.bad["foreign_source"] += 1
            return
        self.octets += len(data)
        self.datagrams += 1
        if subscribe.is_control(data):
            self.control += 1
            before = client.index
            self.send(client.handle(data, addr, mono))
            if client.index != before:
                log.warning("upstream %s refused us; trying %s", addr, client.upstream)
            return
        if packet.is_rtcp(data):
            client.heard(mono)  # the upstream is alive, whatever its packets prove
            self.rtcp += 1
            if self.gate is not None and auth.is_loas(data):
                if packet.peek_rtcp_ssrc(data) != self.ssrc:
                    self.bad["foreign_ssrc"] += 1
                    return
                self.anchor = mono
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
        # the streamer's time when it came (the streamer's clock read once per read)
        if (read := self._streamer_at) is None:
            read = self._streamer_at = (time.monotonic(), self.time.now())
        now = read[1] - (read[0] - mono)
        gate = self.gate
        if capture_time is None or abs(now - capture_time) > CAPTURE_WINDOW_S:
            self.bad["bad_capture_time"] += 1
            if capture_time is not None and gate is not None:
                gate.dropped["stale"] += 1
            return
        self.latency.observe(max(0.0, now - capture_time))
        if gate is None:
            self.anchor = mono
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
        client = self.client
        client.on_media(now)
        playout = self.playout
        if playout.receive(pkt, capture_time) is Arrival.LATE and self.gate is not None:
            self.gate.dropped["reordered"] += 1
        # Only a packet newer than the newest heard ends a pause (the client's ``quiet``):
        # one heard before the heartbeat and proven after it (its LOAS resent or reordered)
        # plays, but the playout must not conceal past it into the next broadcast's numbers.
        playout.quiet = client.quiet

    def renew_token(self, token: bytes) -> None:
        """A token from the control plane: kept in the token file (if any, for the next start)
        and presented upstream now."""
        if self.tokens is not None:
            self.tokens.write(token)
        self.present_token(token)

    def present_token(self, token: bytes) -> None:
        """Renew the subscription with ``token``, unless it is for other channels only: the
        streamer issues a moved speaker its new channel's token, which may come before the
        config that moves it, and the channel it still plays would refuse it. Such a token
        is kept for the handshake of the move (:meth:`move`)."""
        client = self.client
        if not token_allows(token, client.channel):
            log.info("a token for other channels than %s: kept for a move", client.channel)
            client.token = token
            return
        self.send(client.set_token(token, time.monotonic()))

    def move(self, channel: str) -> None:
        """Play ``channel`` from now on (the speaker was moved to another zone): BYE the old
        one, handshake for the new one on the same upstreams with the token held, and let
        only the new channel's media through (its SSRC, its signatures). The playout keeps
        playing what it holds of the old channel and takes the new SSRC as a new stream."""
        client = self.client
        if channel == client.channel:
            return
        log.info("moving from channel %s to %s", client.channel, channel)
        out = client.move(channel, time.monotonic())
        self.ssrc = packet.ssrc_for(channel)
        if (gate := self.gate) is not None:  # its counters go on
            self.gate = auth.MediaGate[tuple[RtpPacket, float]](
                channel, gate.keys, dropped=gate.dropped, loas=gate.loas)
        if self.recovery is not None:  # the new channel's sequence numbers are its own
            self.recovery = LossTracker(deadline_s=self.recovery.deadline_s)
        self.send(out)

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
            self.asked_at = now
            self.send(self.client.nack(seq, mask, size))

    def _ask_overdue(self, now: float) -> None:
        """A lost LOAS would lose its whole batch: ask the upstream for it again."""
        assert self.gate is not None
        seq = self.gate.overdue(now)
        if seq is not None:
            self.asked_at = now
            self.send(self.client.resend(seq))

    def awaiting(self, now: float) -> bool:
        """Whether an answer to a request (a packet or a LOAS asked for again) may be on its
        way: the speaker then listens, so that what comes back is read at once and each
        try has the time it had when every datagram woke the process."""
        return now - self.asked_at < ANSWER_S

    def error_received(self, exc: Exception) -> None:
        log.debug("socket error (ICMP from a dead upstream?): %s", exc)


def tick(speaker: Speaker, offbeat: Callable[[Callable[[], None]], None]) -> None:
    """Handshake retries, keepalives, failover and asking the time; every ``TICK_S``, from
    the rhythm's beat. The time is asked ``offbeat``, between two packets (``main.py``: at a
    playing beat, which follows the newest LOAS by half a packet time; half a period after
    a nudged beat, which follows a datagram). Right after a packet the upstream is busy
    forwarding it to its other subscribers: a TIME sent then waits behind that work on the way
    up, not on the way down, and the clock sync would take the difference for the clocks'
    offset."""
    client = speaker.client
    before = client.index
    speaker.expire()
    if speaker.tokens is not None and (token := speaker.tokens.poll()) is not None:
        log.info("a new subscription token: renewing the subscription")
        speaker.present_token(token)
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


def token_allows(token: bytes, channel: str) -> bool:
    """Whether ``token`` names ``channel`` (read, not verified: the upstream verifies it);
    one we cannot read is for the upstream to judge."""
    try:
        return wire_token.parse(token).allows(channel)
    except MalformedPacket:
        return True


async def resolve(addr: Addr, family: int) -> Addr:
    """SubscribeClient compares source addresses, so names must become the IPs replies use."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            addr[0], addr[1], family=family, type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise ConfigError("upstream", f"cannot resolve {addr[0]}: {e}") from None
    sockaddr = infos[0][4]
    return str(sockaddr[0]), int(sockaddr[1])

