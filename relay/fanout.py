"""The downstream half of every media sender: one UDP socket that fans each channel out.

The streamer and every relay own one :class:`FanoutEndpoint`. It answers the subscribe
handshake (``streamer.rtp.subscribe.SubscribeServer``), keeps a :class:`DestinationTable` per
channel (handshaken subscribers plus static unicast/multicast destinations), and
:meth:`FanoutEndpoint.publish` sends one RTP or RTCP datagram, unchanged, to every destination
of its channel and to in-process listeners (listen-in). ``publish`` is the hot path, per
packet × per destination: it must never allocate per destination, parse the packet, build
JSON, log, or look anything up but the channel; destination tuples are rebuilt only when
subscribers change. Bad datagrams on the socket are counted and dropped, never raised; media
arriving on this socket is dropped too, because nothing downstream may inject into a channel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge

from streamer.rtp import subscribe
from streamer.rtp.packet import MalformedPacket
from streamer.rtp.subscribe import Addr, Subscribed, SubscribeServer, Unsubscribed

log = logging.getLogger(__name__)

Listener = Callable[[bytes], None]
# Past this many bytes queued in the transport the kernel is not keeping up: drop, never grow.
MAX_WRITE_BUFFER = 4 * 1024 * 1024
EXPIRE_EVERY_S = 1.0
RECEIVE_BUFFER = 4 * 1024 * 1024


class DestinationTable:
    """Per channel, the tuple of addresses a packet goes to; rebuilt on change, never per packet.

    Subscribers and static destinations are kept apart (a static destination survives a
    subscriber leaving from the same address), and ``get`` returns one ready tuple.
    """

    __slots__ = ("_subs", "_static", "_out")

    def __init__(self) -> None:
        self._subs: dict[str, dict[Addr, None]] = {}  # insertion-ordered set
        self._static: dict[str, list[Addr]] = {}
        self._out: dict[str, tuple[Addr, ...]] = {}

    def get(self, channel: str) -> tuple[Addr, ...]:
        return self._out.get(channel, ())

    def add_subscriber(self, channel: str, addr: Addr) -> None:
        self._subs.setdefault(channel, {})[addr] = None
        self._rebuild(channel)

    def remove_subscriber(self, channel: str, addr: Addr) -> None:
        subs = self._subs.get(channel)
        if subs is not None and subs.pop(addr, 0) is None:
            if not subs:
                del self._subs[channel]
            self._rebuild(channel)

    def add_static(self, channel: str, addr: Addr) -> None:
        dests = self._static.setdefault(channel, [])
        if addr not in dests:
            dests.append(addr)
            self._rebuild(channel)

    def remove_static(self, channel: str, addr: Addr) -> None:
        dests = self._static.get(channel)
        if dests and addr in dests:
            dests.remove(addr)
            if not dests:
                del self._static[channel]
            self._rebuild(channel)

    def clear_subscribers(self, channel: str) -> list[Addr]:
        gone = list(self._subs.pop(channel, {}))
        self._rebuild(channel)
        return gone

    def subscribers(self, channel: str) -> int:
        return len(self._subs.get(channel, ()))

    def statics(self, channel: str) -> tuple[Addr, ...]:
        return tuple(self._static.get(channel, ()))

    def channels(self) -> set[str]:
        return set(self._subs) | set(self._static)

    def _rebuild(self, channel: str) -> None:
        # A subscriber at the same address as a static destination gets each packet once.
        out = dict.fromkeys(self._static.get(channel, ()))
        out.update(self._subs.get(channel, {}))
        if out:
            self._out[channel] = tuple(out)
        else:
            self._out.pop(channel, None)


@dataclass(slots=True)
class _ChannelMetrics:
    packets: Counter
    octets: Counter


@dataclass
class _Metrics:
    process: str
    registry: CollectorRegistry
    bad: Counter = field(init=False)
    subscribers: Gauge = field(init=False)
    packets: Counter = field(init=False)
    octets: Counter = field(init=False)
    send_errors: Counter = field(init=False)
    expired: Counter = field(init=False)
    handshakes: Counter = field(init=False)

    def __post_init__(self) -> None:
        r, p = self.registry, ("process",)
        self.bad = Counter("loa_bad_datagrams", "Datagrams dropped as malformed or not allowed",
                           p, registry=r)
        self.subscribers = Gauge("loa_fanout_subscribers", "Handshaken subscribers per channel",
                                 (*p, "channel"), registry=r)
        self.packets = Counter("loa_fanout_packets_out", "Datagrams sent downstream",
                               (*p, "channel"), registry=r)
        self.octets = Counter("loa_fanout_bytes_out", "Bytes sent downstream",
                              (*p, "channel"), registry=r)
        self.send_errors = Counter("loa_fanout_send_errors", "Downstream sends that failed or "
                                   "were dropped because the socket was backed up", p, registry=r)
        self.expired = Counter("loa_fanout_expired_subscribers", "Subscribers dropped for silence",
                               p, registry=r)
        self.handshakes = Counter("loa_fanout_handshakes", "Control messages by outcome",
                                  (*p, "outcome"), registry=r)


class FanoutEndpoint(asyncio.DatagramProtocol):
    """One downstream UDP socket: handshake answers, destination tables and ``publish``.

    ``channel_ssrc`` says which channels exist (the owner knows: the streamer its channels, a
    relay anything upstream has not rejected). ``on_change(channel, n_consumers)`` is called
    whenever the number of consumers of a channel (subscribers + static destinations +
    listeners) changes, so that a relay can subscribe upstream on demand.
    """

    def __init__(
        self,
        *,
        channel_ssrc: Callable[[str], int | None],
        registry: CollectorRegistry,
        process: str,
        ptime_ms: int = 20,
        keepalive_s: int = 5,
        expire_s: float = 15.0,
        max_subscribers: int = 100_000,
        on_change: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        multicast_ttl: int = 16,
    ) -> None:
        self.process = process
        self.registry = registry
        self.ptime_ms = ptime_ms
        self.on_change = on_change
        self.multicast_ttl = multicast_ttl
        self._clock = clock
        # The cookie secret is random per process: cookies need no sharing, only to survive
        # COOKIE_TTL_S, and a restart simply makes subscribers handshake again.
        self.server = SubscribeServer(
            secret=os.urandom(32), channel_ssrc=channel_ssrc, keepalive_s=keepalive_s,
            ptime_ms=ptime_ms, expire_s=expire_s, max_subscribers=max_subscribers,
        )
        self.table = DestinationTable()
        self._listeners: dict[str, tuple[Listener, ...]] = {}
        self._chan_metrics: dict[str, _ChannelMetrics] = {}
        self.metrics = _Metrics(process, registry)
        self._bad = self.metrics.bad.labels(process)
        self._send_errors = self.metrics.send_errors.labels(process)
        self._transport: asyncio.DatagramTransport | None = None
        self._buffered: Callable[[], int] = lambda: 0
        self._expire_task: asyncio.Task[None] | None = None
        self.local_addr: Addr | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int) -> Addr:
        """Bind the socket and start expiring silent subscribers; returns the bound address."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        sock = transport.get_extra_info("socket")
        set_receive_buffer(sock)
        if sock.family == socket.AF_INET:
            # Static multicast destinations: a TTL that crosses a few routers on a LAN, and
            # loopback on so that a receiver on the same host (and the tests) hears it.
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.multicast_ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        elif sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, self.multicast_ttl)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
        name = sock.getsockname()
        self.local_addr = (name[0], name[1])
        self._expire_task = asyncio.create_task(self._expire_loop())
        return self.local_addr

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # _SelectorDatagramTransport does not subclass DatagramTransport: cast, not assert
        self._transport = cast(asyncio.DatagramTransport, transport)
        # Selector transports report their queued bytes; typeshed's DatagramTransport omits it.
        self._buffered = cast(Callable[[], int],
                              getattr(transport, "get_write_buffer_size", lambda: 0))

    def close(self) -> None:
        if self._expire_task is not None:
            self._expire_task.cancel()
            self._expire_task = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # ------------------------------------------------------------------ hot path

    def publish(self, channel: str, packet: bytes) -> None:
        """Send ``packet`` (RTP or RTCP, unchanged) to every destination and listener of
        ``channel``. Never raises for a destination; never allocates per destination."""
        dests = self.table.get(channel)
        if dests:
            t = self._transport
            if t is None or self._buffered() > MAX_WRITE_BUFFER:
                self._send_errors.inc(len(dests))
            else:
                sendto = t.sendto
                try:
                    for d in dests:
                        sendto(packet, d)
                except (OSError, RuntimeError):
                    self._send_errors.inc()
                m = self._chan_metrics[channel]
                m.packets.inc(len(dests))
                m.octets.inc(len(dests) * len(packet))
        listeners = self._listeners.get(channel)
        if listeners:
            for cb in listeners:
                try:
                    cb(packet)
                except Exception:  # a broken listener must not stop the fan-out
                    log.exception("listener of %s failed", channel)

    # ------------------------------------------------------------------ destinations

    def add_static(self, channel: str, addr: Addr) -> None:
        """Push ``channel`` to ``addr`` (numeric unicast or multicast) without a handshake."""
        self.table.add_static(channel, _numeric(addr))
        self._changed(channel)

    def remove_static(self, channel: str, addr: Addr) -> None:
        self.table.remove_static(channel, _numeric(addr))
        self._changed(channel)

    def statics(self, channel: str) -> tuple[Addr, ...]:
        return self.table.statics(channel)

    def add_listener(self, channel: str, callback: Listener) -> None:
        """Call ``callback(packet)`` for every datagram published on ``channel``. It runs on
        the fan-out path: it must only enqueue, never block or do I/O."""
        self._listeners[channel] = (*self._listeners.get(channel, ()), callback)
        self._changed(channel)

    def remove_listener(self, channel: str, callback: Listener) -> None:
        left = tuple(cb for cb in self._listeners.get(channel, ()) if cb is not callback)
        if left:
            self._listeners[channel] = left
        else:
            self._listeners.pop(channel, None)
        self._changed(channel)

    def consumers(self, channel: str) -> int:
        """Subscribers + static destinations + listeners of ``channel``."""
        return (self.table.subscribers(channel) + len(self.table.statics(channel))
                + len(self._listeners.get(channel, ())))

    def channels(self) -> set[str]:
        """Channels with at least one consumer."""
        return self.table.channels() | set(self._listeners)

    def channel_known(self, channel: str) -> bool:
        return self.server.channel_ssrc(channel) is not None

    def reject_channel(self, channel: str) -> None:
        """Drop every subscriber of ``channel`` with REJECT(unknown channel), e.g. when the
        relay learns from upstream that the channel does not exist."""
        self.server.drop_channel(channel)
        reject = subscribe.Message(subscribe.MsgType.REJECT, channel,
                                   reason=subscribe.RejectReason.UNKNOWN_CHANNEL).build()
        for addr in self.table.clear_subscribers(channel):
            self._send(reject, addr)
        self._changed(channel)

    # ------------------------------------------------------------------ socket input

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            if not subscribe.is_control(data):
                # Random bytes, or media: nothing downstream may inject into a channel.
                self._bad.inc()
                return
            src = (addr[0], addr[1])
            reply, event = self.server.handle(data, src, self._clock())
        except (MalformedPacket, ValueError, struct.error, IndexError):
            self._bad.inc()
            self.metrics.handshakes.labels(self.process, "malformed").inc()
            return
        except Exception:  # never let a datagram take the endpoint down; say why, count it
            log.exception("unexpected error on a control datagram from %s", addr)
            self._bad.inc()
            return
        self.metrics.handshakes.labels(self.process, _outcome(data, reply)).inc()
        if reply is not None:
            self._send(reply, src)
        if isinstance(event, Subscribed):
            self.table.add_subscriber(event.channel, event.addr)
            self._changed(event.channel)
        elif isinstance(event, Unsubscribed):
            self.table.remove_subscriber(event.channel, event.addr)
            self._changed(event.channel)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from a gone subscriber land here (Linux, connected or IP_RECVERR sockets).
        self._send_errors.inc()

    # ------------------------------------------------------------------ internals

    def _send(self, data: bytes, addr: Addr) -> None:
        if self._transport is not None:
            try:
                self._transport.sendto(data, addr)
            except (OSError, RuntimeError):
                self._send_errors.inc()

    def _changed(self, channel: str) -> None:
        n = self.consumers(channel)
        m = self.metrics
        if n:
            m.subscribers.labels(self.process, channel).set(self.table.subscribers(channel))
            if self.table.get(channel) and channel not in self._chan_metrics:
                self._chan_metrics[channel] = _ChannelMetrics(
                    m.packets.labels(self.process, channel),
                    m.octets.labels(self.process, channel),
                )
        else:
            # Forget the series of a channel nobody consumes: channel names come from the
            # network (a relay accepts any name upstream has not refused), so label sets
            # must not grow without bound.
            self._chan_metrics.pop(channel, None)
            for metric in (m.subscribers, m.packets, m.octets):
                try:
                    metric.remove(self.process, channel)
                except KeyError:
                    pass
        if self.on_change is not None:
            self.on_change(channel, n)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_EVERY_S)
            gone = self.server.expire(self._clock())
            if not gone:
                continue
            self.metrics.expired.labels(self.process).inc(len(gone))
            for ev in gone:
                self.table.remove_subscriber(ev.channel, ev.addr)
            for ch in {ev.channel for ev in gone}:
                self._changed(ch)


def set_receive_buffer(sock: socket.socket, size: int = RECEIVE_BUFFER) -> int:
    """Ask for a large receive buffer: handshakes and keepalives of thousands of subscribers
    arrive in bursts (after a relay restart they all start together) and the default ~208 KB
    overflows, silently expiring live subscribers. Returns what the kernel granted."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except OSError:
        pass  # the kernel caps it at net.core.rmem_max; what we get is still better
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def _numeric(addr: Addr) -> Addr:
    """Resolve a destination once, when configured, so that ``sendto`` never resolves."""
    host, port = addr
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    # Prefer IPv4 when a name has both: the default socket is IPv4.
    infos.sort(key=lambda i: i[0] != socket.AF_INET)
    sa = infos[0][4]
    return (str(sa[0]), int(sa[1]))


def _outcome(request: bytes, reply: bytes | None) -> str:
    kind = {1: "hello", 3: "subscribe", 5: "keepalive", 6: "bye"}.get(request[4], "ignored")
    if reply is None:
        return kind
    if reply[4] == subscribe.MsgType.REJECT:
        try:
            return "reject_" + subscribe.RejectReason(reply[-1]).name.lower()
        except ValueError:
            return "reject"
    return kind
