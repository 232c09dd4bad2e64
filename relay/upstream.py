"""The upstream half of a relay: one UDP socket, one subscription per wanted channel.

For every channel that has a consumer downstream, a ``SubscribeClient`` handshakes with the
first live upstream of an ordered list (streamer or another relay) and fails over along it.
All subscriptions share ONE socket; incoming RTP and RTCP are demultiplexed by SSRC (every
process derives a channel's SSRC from its name, so no lookup table needs to be exchanged) and
handed, unchanged, to the fan-out. A channel is unsubscribed
(BYE) ``linger_s`` after its last consumer leaves, so that a speaker rebooting does not churn
the upstream. When every upstream rejects a channel as unknown, the relay remembers it for
``unknown_ttl_s`` and rejects it downstream too. The media path (``datagram_received``) must
never parse more than the SSRC, allocate per packet or log; datagrams from anyone but the
channel's current upstream are dropped, so nobody can inject through this socket.

Signed media (``wire/auth.py``): each packet goes on to the subscribers at once, so that no hop
adds a batch's delay, and its hash is held in the channel's :class:`~wire.auth.MediaGate`. A
``LOAS`` is forwarded only once it verifies against what arrived: a forged or altered stream
never becomes playable past this relay. Plain RTP destinations and listen-in cannot verify, so
they get each packet only once its LOAS has proven it. Only proven media counts as media for
failover: an upstream sending forged or altered packets is left after ``media_timeout_s``.
Any RTP or RTCP datagram of the channel from its upstream shows that upstream alive
(``SubscribeClient.heard``); one silent for ``silence_s`` is left at the next tick, as a
speaker leaves a silent relay (``docs/protocol.md``, "Failover"). A quiet channel's heartbeat
(a sender report whose timestamp has moved on) is forwarded like any report and tells the
subscription to allow 1.5 s between heartbeats instead (``SubscribeClient.heard_report``).

Lost packets are asked for again (``RESEND`` kind 2, ``wire/retransmit.py``) unless
``retransmit`` is off: a packet the relay lost is lost for every subscriber, so one request
here saves one from each of them; the packet that comes back goes on like any other.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge

from device.streamer_time import RELAY_EVERY_S, FreeClock, StreamerTime
from device.trust import TokenFile
from fanout.endpoint import FanoutEndpoint, set_receive_buffer
from wire import subscribe
from wire.auth import DROP_REASONS, LOAS_OUTCOMES, Keyring, MediaGate, is_loas
from wire.packet import MalformedPacket, is_rtcp, is_rtp, ssrc_for
from wire.retransmit import LossTracker
from wire.rtcp import report_ts
from wire.subscribe import Addr, ClientState, SubscribeClient

log = logging.getLogger(__name__)

TICK_S = 0.1  # a dead upstream is noticed within silence_s + TICK_S
#: a packet no LOAS has proven after this long never will be (a batch lasts 240 ms)
HOLD_S = 1.0
#: how long a lost packet is worth asking for: the speakers' default playout delay
RECOVER_S = 0.3


@dataclass
class _Subscription:
    client: SubscribeClient
    ssrc: int
    gate: MediaGate[bytes] | None = None
    unwanted_since: float | None = None
    unknown_rejects: int = 0
    recovery: LossTracker | None = None


class Upstream(asyncio.DatagramProtocol):
    """Subscriptions to the upstream list, feeding ``fanout``. Call :meth:`want` from
    ``FanoutEndpoint.on_change``."""

    def __init__(
        self,
        fanout: FanoutEndpoint,
        upstreams: list[Addr],
        *,
        identity: str,
        registry: CollectorRegistry,
        process: str = "relay",
        token: bytes = b"",
        linger_s: float = 3.0,
        failover_s: float = subscribe.FAILOVER_S,
        silence_s: float = subscribe.SILENCE_S,
        media_timeout_s: float = subscribe.MEDIA_TIMEOUT_S,
        unknown_ttl_s: float = 60.0,
        on_unknown: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        keys: Keyring | None = None,
        token_source: TokenFile | None = None,
        retransmit: bool = True,
    ) -> None:
        """``keys``: the streamer keys media must be signed with (None: forward everything
        unverified, ``verify_media = false``). ``token_source``: the file the relay's token
        is read from again when it changes. ``retransmit``: ask the upstream again for lost
        packets."""
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        self.fanout = fanout
        self.upstreams = list(upstreams)
        self.identity = identity
        self.token = token
        self.linger_s = linger_s
        self.failover_s = failover_s
        self.silence_s = silence_s
        self.media_timeout_s = media_timeout_s
        self.unknown_ttl_s = unknown_ttl_s
        self.on_unknown = on_unknown
        self._clock = clock
        self.keys = keys
        self.token_source = token_source
        self.retransmit = retransmit
        #: the streamer's timeline, from TIME exchanges on whichever subscription is up; the
        #: relay's own subscribers' TIMEs are answered from it (``fanout_timeline``)
        self.time = StreamerTime(FreeClock().now_ns, every_s=RELAY_EVERY_S)
        #: what every channel's gate counted (``loa_media_auth_*``, relay/main.py)
        self.auth_dropped = dict.fromkeys(DROP_REASONS, 0)
        self.auth_loas = dict.fromkeys(LOAS_OUTCOMES, 0)
        self._wanted: set[str] = set()
        self._subs: dict[str, _Subscription] = {}
        self._by_ssrc: dict[int, _Subscription] = {}
        self._unknown_until: dict[str, float] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._tick_task: asyncio.Task[None] | None = None
        p = (process,)
        self._m_packets = Counter("loa_upstream_packets_in", "Datagrams received from upstream",
                                  ("process",), registry=registry).labels(*p)
        self._m_octets = Counter("loa_upstream_bytes_in", "Bytes received from upstream",
                                 ("process",), registry=registry).labels(*p)
        self._m_failovers = Counter("loa_upstream_failovers", "Moves to the next upstream",
                                    ("process",), registry=registry).labels(*p)
        self._m_subscribed = Gauge("loa_upstream_channels", "Channels subscribed upstream, "
                                   "by handshake state", ("process", "state"), registry=registry)
        self._m_nacks = Counter("loa_upstream_retransmit_requests", "Requests for lost packets "
                                "sent upstream (RESEND kind 2)", ("process",),
                                registry=registry).labels(*p)
        self._process = process
        self._bad = fanout.metrics.bad.labels(process)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str | None = None) -> Addr:
        """Resolve the upstream list, bind the shared socket, start ticking."""
        loop = asyncio.get_running_loop()
        resolved: list[Addr] = []
        for h, port in self.upstreams:
            infos = await loop.getaddrinfo(h, port, type=socket.SOCK_DGRAM)
            infos.sort(key=lambda i: i[0] != socket.AF_INET)
            sa = infos[0][4]
            resolved.append((str(sa[0]), int(sa[1])))
        # Addresses must compare equal to what recvfrom reports, hence numeric hosts.
        self.upstreams = resolved
        family = socket.AF_INET6 if ":" in resolved[0][0] else socket.AF_INET
        bind = host or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(bind, 0))
        set_receive_buffer(transport.get_extra_info("socket"))  # every channel arrives here
        name = transport.get_extra_info("sockname")
        self._tick_task = asyncio.create_task(self._tick_loop())
        return (name[0], name[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # _SelectorDatagramTransport does not subclass DatagramTransport: cast, not assert
        self._transport = cast(asyncio.DatagramTransport, transport)

    def close(self) -> None:
        """BYE every upstream subscription and close the socket."""
        if self._tick_task is not None:
            self._tick_task.cancel()
            self._tick_task = None
        for ch in list(self._subs):
            self._drop(ch)
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # ------------------------------------------------------------------ demand

    def want(self, channel: str, n_consumers: int) -> None:
        """Fan-out demand changed: subscribe now, or schedule the BYE after ``linger_s``."""
        now = self._clock()
        if n_consumers > 0:
            self._wanted.add(channel)
            sub = self._subs.get(channel)
            if sub is not None:
                sub.unwanted_since = None
            elif not self.is_unknown(channel, now):
                self._subscribe(channel, now)
        else:
            self._wanted.discard(channel)
            sub = self._subs.get(channel)
            if sub is not None and sub.unwanted_since is None:
                sub.unwanted_since = now

    def is_unknown(self, channel: str, now: float | None = None) -> bool:
        """Upstream said recently that ``channel`` does not exist."""
        until = self._unknown_until.get(channel)
        if until is None:
            return False
        if (self._clock() if now is None else now) >= until:
            del self._unknown_until[channel]
            return False
        return True

    def subscribed(self) -> dict[str, str]:
        """Channel → handshake state, for health reports."""
        return {ch: s.client.state.name.lower() for ch, s in self._subs.items()}

    # ------------------------------------------------------------------ socket input

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            if is_rtp(data):
                # RTCP carries its sender SSRC at offset 4, RTP at offset 8.
                off = 4 if is_rtcp(data) else 8
                sub = self._by_ssrc.get(int.from_bytes(data[off : off + 4], "big"))
                if sub is None:
                    self._bad.inc()
                    return
                up = sub.client.upstream
                if addr[0] != up[0] or addr[1] != up[1]:
                    self._bad.inc()  # not our upstream for this channel: no injection
                    return
                self._m_packets.inc()
                self._m_octets.inc(len(data))
                now = self._clock()
                if off == 8:  # alive, whatever the packet proves
                    sub.client.heard_packet(now, int.from_bytes(data[4:8], "big"))
                elif (ts := report_ts(data)) is not None:
                    sub.client.heard_report(now, ts)
                else:
                    sub.client.heard(now)
                if off == 8 and sub.recovery is not None:
                    self._recover(sub, data)
                if sub.gate is None:
                    sub.client.on_media(now)
                    self.fanout.publish(sub.client.channel, data)
                elif off == 8:
                    self._media(sub, sub.gate, data)
                elif is_loas(data):
                    self._loas(sub, sub.gate, data)
                else:
                    self.fanout.publish_subscribers(sub.client.channel, data)
            elif subscribe.is_control(data):
                self._control(data, (addr[0], addr[1]))
            else:
                self._bad.inc()
        except (MalformedPacket, ValueError, struct.error, IndexError):
            self._bad.inc()
        except Exception:
            log.exception("unexpected error on an upstream datagram from %s", addr)
            self._bad.inc()

    def renew_token(self, token: bytes) -> None:
        """A token from the control plane: kept in the token file (if any) and presented
        upstream now, on every subscription."""
        if self.token_source is not None:
            self.token_source.write(token)
        self._use_token(token)

    def _use_token(self, token: bytes) -> None:
        log.info("a new subscription token: renewing %d upstream subscriptions", len(self._subs))
        self.token = token
        now = self._clock()
        for sub in self._subs.values():
            self._send_all(sub.client.set_token(token, now))

    def _media(self, sub: _Subscription, gate: MediaGate[bytes], data: bytes) -> None:
        """An RTP packet: on to the subscribers now, held for the LOAS of its batch (or proven
        at once, if its batch's LOAS came first)."""
        now = self._clock()
        if gate.hold(int.from_bytes(data[2:4], "big"), data, data, now):
            self.fanout.publish_subscribers(sub.client.channel, data)
            if gate.late:
                self._proven(sub, *gate.take_late())
        self._ask_overdue(sub, gate, now)

    def _recover(self, sub: _Subscription, data: bytes) -> None:
        """Note an RTP packet's arrival; ask for those missing before it."""
        assert sub.recovery is not None
        now = self._clock()
        sub.recovery.arrived(data[2] << 8 | data[3], len(data), now)
        for seq, mask, size in sub.recovery.due(now):
            self._m_nacks.inc()
            self._send_all(sub.client.nack(seq, mask, size))

    def _ask_overdue(self, sub: _Subscription, gate: MediaGate[bytes], now: float) -> None:
        """A lost LOAS would lose its batch here and at every subscriber: ask again."""
        seq = gate.overdue(now)
        if seq is not None:
            self._send_all(sub.client.resend(seq))

    def _loas(self, sub: _Subscription, gate: MediaGate[bytes], data: bytes) -> None:
        """A LOAS: forwarded only if it proves what arrived (or once it does, if packets of
        its batch are still to come); the proven packets then go to the plain destinations
        and listeners."""
        proven = gate.vouch(data, self._clock())
        if gate.last == "verified":
            self._proven(sub, proven, [data])

    def _proven(self, sub: _Subscription, packets: list[bytes], loases: list[bytes]) -> None:
        channel = sub.client.channel
        sub.client.on_media(self._clock())
        for loas in loases:
            self.fanout.publish_subscribers(channel, loas)
        for packet in packets:
            self.fanout.publish_plain(channel, packet)

    def _control(self, data: bytes, addr: Addr) -> None:
        msg = subscribe.parse(data)
        sub = self._subs.get(msg.channel)
        if sub is None or addr != sub.client.upstream:
            return
        now = self._clock()
        unknown = subscribe.RejectReason.UNKNOWN_CHANNEL
        if msg.type is subscribe.MsgType.REJECT and msg.reason == unknown:
            sub.unknown_rejects += 1
            if sub.unknown_rejects >= len(self.upstreams):
                # Every upstream in turn said so: believe it for a while, and tell downstream.
                log.info("upstream does not know channel %s", msg.channel)
                self._unknown_until[msg.channel] = now + self.unknown_ttl_s
                self._drop(msg.channel, bye=False)
                if self.on_unknown is not None:
                    self.on_unknown(msg.channel)
                return
        before = sub.client.failovers
        out = sub.client.handle(data, addr, now)
        if sub.client.state is ClientState.SUBSCRIBED:
            sub.unknown_rejects = 0
        self._m_failovers.inc(sub.client.failovers - before)
        self._send_all(out)

    def error_received(self, exc: Exception) -> None:
        # An unreachable upstream (ICMP port unreachable): the client's timers fail over.
        log.debug("upstream socket error: %s", exc)

    # ------------------------------------------------------------------ internals

    def _subscribe(self, channel: str, now: float) -> None:
        client = SubscribeClient(
            identity=self.identity, channel=channel, upstreams=self.upstreams, token=self.token,
            failover_s=self.failover_s, silence_s=self.silence_s,
            media_timeout_s=self.media_timeout_s, on_time=self.time.answered,
        )
        gate = None if self.keys is None else MediaGate[bytes](
            channel, self.keys, dropped=self.auth_dropped, loas=self.auth_loas)
        sub = _Subscription(client, ssrc_for(channel), gate,
                            recovery=LossTracker(RECOVER_S) if self.retransmit else None)
        self._subs[channel] = sub
        self._by_ssrc[sub.ssrc] = sub
        self._send_all(client.start(now))

    def _drop(self, channel: str, bye: bool = True) -> None:
        sub = self._subs.pop(channel, None)
        if sub is None:
            return
        self._by_ssrc.pop(sub.ssrc, None)
        if bye and sub.client.state is ClientState.SUBSCRIBED:
            self._send_all(sub.client.close())

    def _send_all(self, out: list[tuple[bytes, Addr]]) -> None:
        t = self._transport
        if t is None:
            return
        for data, addr in out:
            try:
                t.sendto(data, addr)
            except (OSError, RuntimeError) as e:
                log.debug("send to upstream %s failed: %s", addr, e)

    def timeline_ns(self) -> int | None:
        """The streamer's time now, ns, for this relay's subscribers' TIMEs; None until the
        first answer from upstream (the relay's estimate survives its subscriptions: it keeps
        offset and drift while no channel is wanted)."""
        return self.time.now_ns()

    def tick(self) -> None:
        """Retries, keepalives, failover, lingering BYEs, the time; called every ``TICK_S``."""
        now = self._clock()
        if self.token_source is not None and (new := self.token_source.poll()) is not None:
            self._use_token(new)
        for ch, sub in list(self._subs.items()):
            if sub.gate is not None:
                sub.gate.expire(now - HOLD_S)
                self._ask_overdue(sub, sub.gate, now)
            if sub.unwanted_since is not None and now - sub.unwanted_since >= self.linger_s:
                self._drop(ch)
                continue
            before = sub.client.failovers
            self._send_all(sub.client.tick(now))
            if sub.client.failovers != before:
                self._m_failovers.inc(sub.client.failovers - before)
                log.info("channel %s: failing over to upstream %s:%d", ch, *sub.client.upstream)
        # The time, asked on one subscription that is up (each answers for the same streamer)
        up = next((s.client for s in self._subs.values()
                   if s.client.state is ClientState.SUBSCRIBED), None)
        if up is not None and (t1 := self.time.due(now)) is not None:
            self._send_all(up.ask_time(t1))
        # Wanted channels whose "unknown" mark has run out: try again.
        for ch in self._wanted:
            if ch not in self._subs and not self.is_unknown(ch, now):
                self._subscribe(ch, now)
        states: dict[str, int] = {}
        for sub in self._subs.values():
            k = sub.client.state.name.lower()
            states[k] = states.get(k, 0) + 1
        for st in ClientState:
            k = st.name.lower()
            self._m_subscribed.labels(self._process, k).set(states.get(k, 0))

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tick()
            except Exception:  # a bug in one tick must not stop keepalives forever
                log.exception("upstream tick failed")
