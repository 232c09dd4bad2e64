"""The downstream half of every media sender: one UDP socket that fans each channel out.

The streamer and every relay own one :class:`FanoutEndpoint`. It answers the subscribe
handshake (``wire.subscribe.SubscribeServer``), keeps a :class:`DestinationTable` per
channel (handshaken subscribers plus static unicast/multicast destinations), and
:meth:`FanoutEndpoint.publish` sends one RTP or RTCP datagram, unchanged, to every destination
of its channel and to in-process listeners (listen-in). ``publish`` is the hot path, per
packet × per destination: it must never allocate per destination, parse the packet, build
JSON, log, or look anything up but the channel. Each channel's destinations are a prebuilt
``sendmmsg`` batch (``fanout/mmsg.py``), rebuilt at the first packet after subscribers change,
so one packet to 5,000 speakers is five system calls. A short ring of each channel's recent packets
(``fanout/ring.py``) is replayed to a subscriber when it joins, so it starts playing at once;
the same ring answers a subscriber that asks again for packets it lost (``RESEND`` kind 2,
``wire/retransmit.py``) with the very datagrams, never more bytes than the request. With
``loas_repeats`` set (a relay whose speakers are on a lossy last hop), each ``LOAS`` goes to
the subscribers again, once or more, within the next few packets (``fanout/repeat.py``).

A subscriber is dropped (and counted, by reason) when its keepalives stop (``expired``) or
when the kernel reports ICMP errors for its address for ``UNREACHABLE_S`` (``unreachable``:
the box is gone or its NAT binding closed; without this the relay would send it every packet
until its keepalive window ran out). When the kernel has no room for a packet (the uplink is
saturated) the destinations that miss it are counted as ``backlog``, never queued: a late
packet is worth nothing to a speaker. Bad datagrams on the socket are counted and dropped,
never raised; media arriving on this socket is dropped too, because nothing downstream may
inject into a channel. A KEEPALIVE or BYE without its subscription's cookie (forged) changes
nothing and is counted in ``loa_fanout_control_dropped_total``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from wire import retransmit, subscribe, token
from wire.auth import LOAS_LEN, Keyring, is_loas
from wire.packet import MalformedPacket, is_rtcp
from wire.subscribe import (
    Addr,
    Dropped,
    Message,
    MsgType,
    Resend,
    Subscribed,
    SubscribeServer,
    TimeAsked,
    Unsubscribed,
)

from . import udp
from .mmsg import SendBatch, sockaddr
from .repeat import LoasRepeats
from .ring import PacketRing

log = logging.getLogger(__name__)

Listener = Callable[[bytes], None]
EXPIRE_EVERY_S = 1.0
RECEIVE_BUFFER = 4 * 1024 * 1024
SEND_BUFFER = 4 * 1024 * 1024
# ICMP errors for an address over this long (the kernel rate-limits them to about one a
# second) mean nobody is there any more: one error alone may be a reboot or a route flap.
UNREACHABLE_S = 2.0
CONTROL_DRAIN = 256  # control datagrams read per wake-up beyond asyncio's one
MAX_CONTROL = 2048
BURST_S = 0.2  # below the speakers' default 300 ms playout delay (docs/protocol.md)
_NO_BATCH = SendBatch(())
# Linux values; Python 3.11's socket module exports neither.
IP_RECVERR = 11
IPV6_RECVERR = 25


class DestinationTable:
    """Per channel, the batch of addresses a packet goes to; rebuilt on change, never per packet.

    Subscribers and static destinations are kept apart (a static destination survives a
    subscriber leaving from the same address), and ``get`` returns one ready ``SendBatch``.
    A change only marks the channel stale; the batch is rebuilt by the next ``get``, so a
    storm of thousands of handshakes (every speaker after a relay restart) costs one rebuild
    per packet sent, not one per handshake.
    """

    __slots__ = ("_subs", "_static", "_out", "_out_subs", "_out_static", "_stale")

    def __init__(self) -> None:
        self._subs: dict[str, dict[Addr, bytes]] = {}  # address → its C sockaddr, in order
        self._static: dict[str, list[Addr]] = {}
        self._out: dict[str, SendBatch] = {}
        # a relay that verifies sends these apart (FanoutEndpoint.publish_subscribers/_plain)
        self._out_subs: dict[str, SendBatch] = {}
        self._out_static: dict[str, SendBatch] = {}
        self._stale: set[str] = set()

    def get(self, channel: str) -> SendBatch:
        """Every destination: subscribers and static ones."""
        if channel in self._stale:
            self._rebuild(channel)
        return self._out.get(channel, _NO_BATCH)

    def get_subscribers(self, channel: str) -> SendBatch:
        if channel in self._stale:
            self._rebuild(channel)
        return self._out_subs.get(channel, _NO_BATCH)

    def get_static(self, channel: str) -> SendBatch:
        if channel in self._stale:
            self._rebuild(channel)
        return self._out_static.get(channel, _NO_BATCH)

    def add_subscriber(self, channel: str, addr: Addr) -> None:
        self._subs.setdefault(channel, {})[addr] = sockaddr(addr)
        self._stale.add(channel)

    def remove_subscriber(self, channel: str, addr: Addr) -> None:
        subs = self._subs.get(channel)
        if subs is not None and subs.pop(addr, None) is not None:
            if not subs:
                del self._subs[channel]
            self._stale.add(channel)

    def add_static(self, channel: str, addr: Addr) -> None:
        dests = self._static.setdefault(channel, [])
        if addr not in dests:
            dests.append(addr)
            self._stale.add(channel)

    def remove_static(self, channel: str, addr: Addr) -> None:
        dests = self._static.get(channel)
        if dests and addr in dests:
            dests.remove(addr)
            if not dests:
                del self._static[channel]
            self._stale.add(channel)

    def clear_subscribers(self, channel: str) -> list[Addr]:
        gone = list(self._subs.pop(channel, {}))
        self._stale.add(channel)
        return gone

    def subscribers(self, channel: str) -> int:
        return len(self._subs.get(channel, ()))

    def has_destinations(self, channel: str) -> bool:
        return channel in self._subs or channel in self._static

    def statics(self, channel: str) -> tuple[Addr, ...]:
        return tuple(self._static.get(channel, ()))

    def channels(self) -> set[str]:
        return set(self._subs) | set(self._static)

    def _rebuild(self, channel: str) -> None:
        self._stale.discard(channel)
        # A subscriber at the same address as a static destination gets each packet once.
        static = {a: sockaddr(a) for a in self._static.get(channel, ())}
        subs = self._subs.get(channel, {})
        _put(self._out, channel, {**static, **subs})
        _put(self._out_subs, channel, subs)
        _put(self._out_static, channel, static)


def _put(batches: dict[str, SendBatch], channel: str, dests: dict[Addr, bytes]) -> None:
    if dests:
        batches[channel] = SendBatch(tuple(dests), b"".join(dests.values()))
    else:
        batches.pop(channel, None)


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
    dropped: Counter = field(init=False)
    handshakes: Counter = field(init=False)
    control_dropped: Counter = field(init=False)
    batches: Counter = field(init=False)
    burst: Counter = field(init=False)
    retransmits: Counter = field(init=False)
    loas_copies: Counter = field(init=False)

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
        self.send_errors = Counter("loa_fanout_send_errors", "Downstream datagrams not sent: "
                                   "the kernel had no room (backlog) or refused the destination",
                                   (*p, "reason"), registry=r)
        self.dropped = Counter("loa_fanout_dropped_subscribers", "Subscribers dropped, by reason",
                               (*p, "reason"), registry=r)
        self.batches = Counter("loa_fanout_batches", "sendmmsg system calls", p, registry=r)
        self.burst = Counter("loa_fanout_burst_packets", "Packets replayed from a channel's "
                             "ring to new subscribers", p, registry=r)
        self.retransmits = Counter(
            "loa_fanout_retransmits", "Packets subscribers asked for again (RESEND kind 2), "
            "by outcome: sent, unknown (no longer kept), too_big (more than the request), off",
            (*p, "outcome"), registry=r)
        self.loas_copies = Counter(
            "loa_fanout_loas_copies", "LOAS datagrams sent to subscribers again "
            "(loas_repeats), once per subscriber set", p, registry=r)
        self.handshakes = Counter("loa_fanout_handshakes", "Control messages by outcome",
                                  (*p, "outcome"), registry=r)
        self.control_dropped = Counter(
            "loa_fanout_control_dropped", "KEEPALIVE, BYE, RESEND and TIME messages ignored: "
            "malformed (e.g. no cookie) or without their subscription's cookie (forged)",
            (*p, "type", "reason"), registry=r)


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
        burst_s: float = BURST_S,
        tokens: Keyring | None = None,
        wall: Callable[[], float] = time.time,
        timeline: Callable[[], int | None] = time.time_ns,
        retransmit: bool = True,
        loas_repeats: int = 0,
    ) -> None:
        """``tokens``: subscribers must present a token signed by one of these keys
        (``wire/token.py``); None lets anyone subscribe. ``wall``: the clock tokens are
        checked on. ``timeline``: the streamer's time now, ns (the streamer's own clock; a
        relay's estimate of it, None until it has one), which TIME asks for. ``retransmit``: answer
        subscribers that ask for lost packets again (``docs/operations.md``, "Loss recovery").
        ``loas_repeats``: send subscribers each LOAS this many times more (0-3,
        ``fanout/repeat.py``)."""
        LoasRepeats.copies(loas_repeats)  # 0 to MAX_REPEATS, or ValueError now
        self.process = process
        self.registry = registry
        self.ptime_ms = ptime_ms
        self.on_change = on_change
        self.multicast_ttl = multicast_ttl
        self.burst_s = burst_s
        self.retransmit = retransmit
        self.loas_repeats = loas_repeats
        self._clock = clock
        self._timeline = timeline
        # The cookie secret is random per process: cookies need no sharing, only to survive
        # COOKIE_TTL_S, and a restart simply makes subscribers handshake again.
        self.server = SubscribeServer(
            secret=os.urandom(32), channel_ssrc=channel_ssrc, keepalive_s=keepalive_s,
            ptime_ms=ptime_ms, expire_s=expire_s, max_subscribers=max_subscribers,
            check_token=None if tokens is None else token_checker(tokens, wall),
        )
        self.table = DestinationTable()
        self._listeners: dict[str, tuple[Listener, ...]] = {}
        self._chan_metrics: dict[str, _ChannelMetrics] = {}
        self._rings: dict[str, PacketRing] = {}
        self._repeats: dict[str, LoasRepeats] = {}  # only with loas_repeats
        self._unreachable: dict[Addr, float] = {}  # address → first ICMP error of this spell
        self.metrics = _Metrics(process, registry)
        m = self.metrics
        self._bad = m.bad.labels(process)
        self._backlog = m.send_errors.labels(process, "backlog")
        self._refused = m.send_errors.labels(process, "refused")
        self._batches = m.batches.labels(process)
        self._copies = m.loas_copies.labels(process)
        self._transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None
        self._fd = -1
        self._expire_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.local_addr: Addr | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int) -> Addr:
        """Bind the socket and start expiring silent subscribers; returns the bound address."""
        loop = self._loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        sock = transport.get_extra_info("socket")
        set_receive_buffer(sock)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except OSError:
            pass  # capped by net.core.wmem_max; backlog drops are counted either way
        if sock.family == socket.AF_INET:
            # Unconnected UDP sockets hear about ICMP errors only with IP_RECVERR, and then
            # with the destination they were for (see error_received).
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            # Static multicast destinations: a TTL that crosses a few routers on a LAN, and
            # loopback on so that a receiver on the same host (and the tests) hears it.
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.multicast_ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        elif sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, self.multicast_ttl)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
        name = sock.getsockname()
        self.local_addr = (name[0], name[1])
        # asyncio hands out a wrapper without recvmsg: a duplicate descriptor of the same
        # socket reads the error queue and the control backlog, and is what sendmmsg uses.
        # close() closes it.
        self._sock = udp.duplicate(transport)
        self._fd = self._sock.fileno()
        self._expire_task = asyncio.create_task(self._expire_loop())
        return self.local_addr

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # _SelectorDatagramTransport does not subclass DatagramTransport: cast, not assert
        self._transport = cast(asyncio.DatagramTransport, transport)

    def close(self) -> None:
        if self._expire_task is not None:
            self._expire_task.cancel()
            self._expire_task = None
        self._fd = -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # ------------------------------------------------------------------ hot path

    def publish(self, channel: str, packet: bytes) -> None:
        """Send ``packet`` (RTP or RTCP, unchanged) to every destination and listener of
        ``channel``. Never raises for a destination; never allocates per destination."""
        ring = self._rings.get(channel)
        if ring is not None:
            ring.add(packet, self._clock())
        self._send_batch(channel, packet, self.table.get(channel))
        if self._repeats:
            self._repeat(channel, packet)
        listeners = self._listeners.get(channel)
        if listeners:
            self._tell(channel, listeners, packet)

    def publish_subscribers(self, channel: str, packet: bytes) -> None:
        """Send ``packet`` to the handshaken subscribers of ``channel`` only (and keep it for
        the burst to new ones). A relay that verifies sends media this way at once, before
        its batch is proven: subscribers are Loa receivers and verify it themselves."""
        ring = self._rings.get(channel)
        if ring is not None:
            ring.add(packet, self._clock())
        self._send_batch(channel, packet, self.table.get_subscribers(channel))
        if self._repeats:
            self._repeat(channel, packet)

    def publish_plain(self, channel: str, packet: bytes) -> None:
        """Send ``packet`` to the static destinations and listeners of ``channel`` only: plain
        RTP devices and listen-in cannot verify, so a relay that verifies hands them media
        once its LOAS has proven it."""
        self._send_batch(channel, packet, self.table.get_static(channel))
        listeners = self._listeners.get(channel)
        if listeners:
            self._tell(channel, listeners, packet)

    def _repeat(self, channel: str, packet: bytes) -> None:
        """A LOAS just sent is kept to send again; an RTP packet may make copies due. Copies
        go to the subscribers only: plain RTP destinations cannot use a LOAS."""
        repeats = self._repeats.get(channel)
        if repeats is None:
            return
        if is_rtcp(packet):
            if not (len(packet) == LOAS_LEN and is_loas(packet)):
                return
            copies = repeats.loas(packet)
        else:
            copies = repeats.packet()
        if copies:
            batch = self.table.get_subscribers(channel)
            for copy in copies:
                self._send_batch(channel, copy, batch)
            if batch:
                self._copies.inc(len(copies))

    def _send_batch(self, channel: str, packet: bytes, batch: SendBatch) -> None:
        if batch:
            if self._fd < 0:
                self._backlog.inc(len(batch))
            else:
                self._sent(channel, len(packet), len(batch), *batch.send(self._fd, packet))

    def pause(self, channels: Sequence[str]) -> None:
        """The mixer's channels that fell quiet: nothing to do here (their heartbeats are
        sender reports, which go out like any datagram)."""

    def publish_block(self, channels: Sequence[str], block: np.ndarray) -> None:
        """Row i of ``block`` (uint8, C-contiguous, shape ``(len(channels), packet_len)``) is
        the datagram of ``channels[i]``: the streamer's one program packetised for all its
        channels at once. Rows are read now; no reference is kept."""
        length = block.shape[1]
        base = block.ctypes.data
        rings, table, listeners = self._rings, self.table, self._listeners
        for i, channel in enumerate(channels):
            batch = table.get(channel)
            if batch:
                if self._fd < 0:
                    self._backlog.inc(len(batch))
                else:
                    self._sent(channel, length, len(batch),
                               *batch.send_at(self._fd, base + i * length, length))
            if channel in rings or channel in listeners:
                packet = block[i].tobytes()  # only channels that keep or hand out packets
                ring = rings.get(channel)
                if ring is not None:
                    ring.add(packet, self._clock())
                if channel in listeners:
                    self._tell(channel, listeners[channel], packet)

    def _sent(self, channel: str, size: int, n: int, calls: int, backlog: int,
              refused: int) -> None:
        self._batches.inc(calls)
        if backlog:
            self._backlog.inc(backlog)
        if refused:
            self._refused.inc(refused)
        m = self._chan_metrics[channel]
        delivered = n - backlog - refused
        m.packets.inc(delivered)
        m.octets.inc(delivered * size)

    @staticmethod
    def _tell(channel: str, listeners: tuple[Listener, ...], packet: bytes) -> None:
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
        the fan-out path (in the streamer, the playout thread): it must only enqueue, never
        block or do I/O. May be called from another thread than the endpoint's loop."""
        if self._on_other_thread(self.add_listener, channel, callback):
            return
        self._listeners[channel] = (*self._listeners.get(channel, ()), callback)
        self._changed(channel)

    def remove_listener(self, channel: str, callback: Listener) -> None:
        if self._on_other_thread(self.remove_listener, channel, callback):
            return
        left = tuple(cb for cb in self._listeners.get(channel, ()) if cb is not callback)
        if left:
            self._listeners[channel] = left
        else:
            self._listeners.pop(channel, None)
        self._changed(channel)

    def _on_other_thread(self, method: Callable[..., None], *args: object) -> bool:
        """Called from a thread other than the endpoint's loop (the streamer's HTTP side,
        while playout owns the endpoint): hand the call to that loop, so the tables the hot
        path reads only ever change on its own thread."""
        loop = self._loop
        if loop is None or loop.is_closed() or _running_loop() is loop:
            return False
        loop.call_soon_threadsafe(method, *args)
        return True

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
        self._control(data, addr)
        # A relay busy fanning out takes one upstream packet (milliseconds of sendmmsg) per
        # wake-up, so keepalives would be read at the frame rate and overflow the socket
        # after a restart: read what has queued meanwhile too, boundedly. An ICMP error
        # report (IP_RECVERR) ends the round.
        if self._sock is not None:
            udp.drain(self._sock, self._control, CONTROL_DRAIN, MAX_CONTROL, self.error_received)

    def _control(self, data: bytes, addr: tuple[str, int]) -> None:
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
            kind = _KEEPALIVE_BYE.get(data[4]) if len(data) > 4 else None
            if kind is not None:
                self.metrics.control_dropped.labels(self.process, kind, "malformed").inc()
            return
        except Exception:  # never let a datagram take the endpoint down; say why, count it
            log.exception("unexpected error on a control datagram from %s", addr)
            self._bad.inc()
            return
        if isinstance(event, Dropped):  # a forged KEEPALIVE, BYE or RESEND: it changes nothing
            self.metrics.handshakes.labels(self.process, "dropped").inc()
            self.metrics.control_dropped.labels(self.process, event.type, event.reason).inc()
            return
        if isinstance(event, Resend):
            self._resend(event, len(data))
            return
        if isinstance(event, TimeAsked):
            self._time(event)
            return
        self.metrics.handshakes.labels(self.process, _outcome(data, reply)).inc()
        self._unreachable.pop(src, None)  # it speaks, so it is there
        if reply is not None:
            self._send(reply, src)
        if isinstance(event, Subscribed):
            self.table.add_subscriber(event.channel, event.addr)
            self._changed(event.channel)
            self._burst(event.channel, event.addr)
        elif isinstance(event, Unsubscribed):
            self.table.remove_subscriber(event.channel, event.addr)
            self._changed(event.channel)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error arrived (IP_RECVERR): read which destinations the kernel heard about
        from the socket's error queue (which must be drained, or the socket stays readable)
        and drop subscribers that have been unreachable for ``UNREACHABLE_S``."""
        if self._sock is None:
            return
        now = self._clock()
        for _ in range(1024):  # bounded: a flood of errors must not hold the loop
            try:
                _, _, _, dest = self._sock.recvmsg(1, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    log.debug("error queue: %s", e)
                break
            if dest:
                self._unreachable_from((dest[0], dest[1]), now)

    def _unreachable_from(self, addr: Addr, now: float) -> None:
        since = self._unreachable.setdefault(addr, now)
        if now - since < UNREACHABLE_S:
            return
        del self._unreachable[addr]
        channels = self.server.drop(addr)
        if channels:
            self._drop(addr, channels, "unreachable")

    # ------------------------------------------------------------------ internals

    def _send(self, data: bytes, addr: Addr) -> None:
        if self._transport is not None:
            try:
                self._transport.sendto(data, addr)
            except (OSError, RuntimeError):
                self._refused.inc()

    def _resend(self, event: Resend, asked_with: int) -> None:
        """A subscriber lost a LOAS: send it again if it is still kept (never more bytes than
        the request, which RESEND's padding ensures); or lost packets (kind 2): those kept,
        as long as they fit in the request's bytes."""
        ring = self._rings.get(event.channel)
        if event.kind == subscribe.RESEND_PACKETS:
            self._retransmit(event, ring, asked_with)
            return
        loas = ring.loas_for(event.seq) if ring is not None else None
        if loas is None or len(loas) > asked_with:
            self.metrics.handshakes.labels(self.process, "resend_unknown").inc()
            return
        self.metrics.handshakes.labels(self.process, "resend").inc()
        self._send(loas, event.addr)

    def _retransmit(self, event: Resend, ring: PacketRing | None, asked_with: int) -> None:
        self.metrics.handshakes.labels(self.process, "nack").inc()
        m, seqs = self.metrics.retransmits, event.seqs
        if not self.retransmit or ring is None:
            m.labels(self.process, "off" if not self.retransmit else "unknown").inc(len(seqs))
            return
        packets, unknown, too_big = retransmit.answer(seqs, asked_with, ring.packet)
        chan = self._chan_metrics.get(event.channel)
        for packet in packets:
            self._send(packet, event.addr)
            if chan is not None:  # bytes sent downstream, like the stream's own
                chan.packets.inc()
                chan.octets.inc(len(packet))
        for outcome, n in (("sent", len(packets)), ("unknown", unknown), ("too_big", too_big)):
            if n:
                m.labels(self.process, outcome).inc(n)

    def _time(self, event: TimeAsked) -> None:
        """A subscriber asks for the time: our timeline when the request was handled, as
        both receive and send time (microseconds apart here; time a request waited in the
        socket lengthens its round trip, and the asker trusts the shortest ones)."""
        try:
            now = self._timeline()
        except Exception:  # never let the time take the endpoint down; say why
            log.exception("the timeline failed to answer a TIME")
            now = None
        if now is None:  # a relay not yet in step with its upstream: better silent than wrong
            self.metrics.handshakes.labels(self.process, "time_unsynced").inc()
            return
        self.metrics.handshakes.labels(self.process, "time").inc()
        self._send(Message(MsgType.TIMEREPLY, event.channel, t1=event.t1, t2=now,
                           t3=now).build(), event.addr)

    def _burst(self, channel: str, addr: Addr) -> None:
        ring = self._rings.get(channel)
        if ring is None:
            return
        n = 0
        for packet in ring.burst(self._clock()):
            self._send(packet, addr)
            n += 1
        self.metrics.burst.labels(self.process).inc(n)

    def _drop(self, addr: Addr, channels: Sequence[str], reason: str) -> None:
        self.metrics.dropped.labels(self.process, reason).inc(len(channels))
        for ch in channels:
            self.table.remove_subscriber(ch, addr)
        for ch in set(channels):
            self._changed(ch)

    def _changed(self, channel: str) -> None:
        n = self.consumers(channel)
        m = self.metrics
        if n:
            m.subscribers.labels(self.process, channel).set(self.table.subscribers(channel))
            if self.table.has_destinations(channel) and channel not in self._chan_metrics:
                self._chan_metrics[channel] = _ChannelMetrics(
                    m.packets.labels(self.process, channel),
                    m.octets.labels(self.process, channel),
                )
            if channel not in self._rings:
                self._rings[channel] = PacketRing(self.burst_s, self.ptime_ms / 1000)
            if self.loas_repeats and channel not in self._repeats:
                self._repeats[channel] = LoasRepeats.copies(self.loas_repeats)
        else:
            # Forget the series of a channel nobody consumes: channel names come from the
            # network (a relay accepts any name upstream has not refused), so label sets
            # must not grow without bound.
            self._chan_metrics.pop(channel, None)
            self._rings.pop(channel, None)
            self._repeats.pop(channel, None)
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
            now = self._clock()
            for ev in self.server.expire(now):
                self._drop(ev.addr, (ev.channel,), ev.why)
            # Errors that stopped (the box came back) are forgotten.
            for addr in [a for a, t in self._unreachable.items() if now - t > 4 * UNREACHABLE_S]:
                del self._unreachable[addr]


def token_checker(keys: Keyring, wall: Callable[[], float] = time.time
                  ) -> Callable[[str, str, bytes], float | str]:
    """``SubscribeServer.check_token`` for tokens signed by ``keys``: seconds of validity
    left, or why the token is refused."""
    def check(identity: str, channel: str, data: bytes) -> float | str:
        now = wall()
        verdict = token.check(keys, data, identity, channel, now)
        return verdict if isinstance(verdict, str) else verdict.expires - now
    return check


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


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


_KEEPALIVE_BYE = {int(subscribe.MsgType.KEEPALIVE): "keepalive", int(subscribe.MsgType.BYE): "bye",
                  int(subscribe.MsgType.RESEND): "resend", int(subscribe.MsgType.TIME): "time"}


def _outcome(request: bytes, reply: bytes | None) -> str:
    kind = {1: "hello", 3: "subscribe", 5: "keepalive", 6: "bye", 8: "resend",
            9: "time"}.get(request[4], "ignored")
    if reply is None:
        return kind
    if reply[4] == subscribe.MsgType.REJECT:
        try:
            return "reject_" + subscribe.RejectReason(reply[-1]).name.lower()
        except ValueError:
            return "reject"
    return kind
