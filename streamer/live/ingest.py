"""The RTP ingest: one UDP port where studios, hardware encoders and ffmpeg send live Opus,
each input authenticated by SRTP (RFC 3711) under its own master key.

The key is the credential: ffmpeg (``-srtp_out_params``), GStreamer and many hardware encoders
speak SRTP natively, so no Loa-specific handshake is needed. A packet from an unknown (source
address, SSRC) is tried against every input's SRTP session; the first that authenticates it
claims that sender, and later packets go straight to that session. Each input has one long-lived
session (libsrtp clones a stream per SSRC from an ``SSRC_ANY_INBOUND`` template only after a
packet authenticates), so replay protection holds across senders and addresses: a captured
packet sent again, from anywhere, is refused. An input has one live sender at a time; a second
sender with the same key and another SSRC is refused as ``busy`` until the first ends (the same
SSRC from a new address is the same sender behind a rebinding NAT, and is followed). SRTCP
(rtcp-mux, RFC 5761) is unprotected and a BYE ends the input at once; without one the input
ends after ``idle_s`` without packets. ``docs/ingest.md`` has the sender side.

Decoding keeps the timeline: the RTP timestamp says where each packet's audio starts, and a gap
(lost packets, or a sender that skipped time) is filled with Opus in-band FEC from the packet
that follows it and packet-loss concealment before that, so ``on_audio`` receives as many
samples as the sender sent (a gap over ``MAX_GAP_SAMPLES`` is a pause or a restart, and is not
filled). There is no reorder buffer (it would add its depth to every live
voice's latency): a packet older than one already decoded is dropped as late, its place having
been concealed. Jitter is absorbed downstream by the mixer's ``LiveBuffer`` reader.

Work per unknown source is bounded: at most ``TRIALS_PER_PEER_S`` packets a second from one
address, and ``TRIALS_PER_S`` from all addresses, are tried against the keys; the rest are
refused as ``flood`` without any cryptography. ``on_refused`` is called at most once per source
address per ``REPORT_EVERY_S`` and ``MAX_REPORTS`` times in that window overall, so a flood
(even from spoofed addresses) cannot fill an audit log. No datagram raises: garbage is
counted, and one bad datagram (or a callback's bug) is logged, never allowed to close the port.

Metrics (prometheus):

============================================  =================================================
``loa_ingest_packets_total{input}``           authenticated media packets decoded
``loa_ingest_lost_total{input}``              packets missing from the sequence (concealed)
``loa_ingest_late_total{input}``              packets dropped because a later one was decoded
``loa_ingest_active{input}``                  1 while the input has a live sender
``loa_ingest_refused_total{reason}``          datagrams refused; ``reason`` is a
                                              :class:`Refusal` value
============================================  =================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

import numpy as np
import opuslib
import pylibsrtp
from prometheus_client import CollectorRegistry, Counter, Gauge

from wire.ingest import DYNAMIC_PT, parse_key
from wire.packet import (
    RTP_VERSION,
    MalformedPacket,
    RtpPacket,
    is_rtcp,
    opus_samples,
    parse,
    peek_ssrc,
)
from wire.rtcp import Bye, parse_compound

log = logging.getLogger(__name__)

Addr = tuple[str, int]

RATE_HZ = 48_000
MIN_LEN = 22  # the shortest SRTCP packet: 8-byte BYE + 4-byte index + 10-byte tag
IDLE_S = 2.0
MAX_GAP_SAMPLES = RATE_HZ  # a longer gap is a pause or a restart: start afresh, do not fill it
MAX_FRAME = 5_760  # 120 ms, the longest Opus packet
PLC_STEP = 120  # libopus conceals in multiples of 2.5 ms
TRIALS_PER_PEER_S = 20
TRIALS_PER_S = 200
REPORT_EVERY_S = 60.0
MAX_REPORTS = 60
MAX_PEERS = 4_096


class Refusal(StrEnum):
    SHORT = "short"
    MALFORMED = "malformed"
    AUTH = "auth"
    REPLAY = "replay"
    PAYLOAD = "payload"
    BUSY = "busy"
    FLOOD = "flood"


_WHY = {
    Refusal.SHORT: "shorter than any SRTP or SRTCP packet",
    Refusal.MALFORMED: "not a well-formed RTP or RTCP packet",
    # An SRTP packet's header is plain RTP: without a key that verifies its tag, a wrong key and
    # a sender that forgot SRTP look the same.
    Refusal.AUTH: "authentication failed: no input's key verifies the packet "
                  "(a wrong key, or plain RTP sent without SRTP)",
    Refusal.REPLAY: "replayed: SRTP has already accepted this packet",
    Refusal.PAYLOAD: "not Opus/48000 in a dynamic payload type (96-127)",
    Refusal.BUSY: "the input is already live from another sender",
    Refusal.FLOOD: "too many unauthenticated packets from this address: dropped untried",
}


class _Budget:
    """At most ``n`` events per window of ``window_s``: a fixed-window counter, which is all
    a bound on work needs."""

    __slots__ = ("n", "window_s", "start", "used")

    def __init__(self, n: int, window_s: float) -> None:
        self.n = n
        self.window_s = window_s
        self.start = -window_s
        self.used = 0

    def take(self, now: float) -> bool:
        if now - self.start >= self.window_s:
            self.start, self.used = now, 0
        if self.used >= self.n:
            return False
        self.used += 1
        return True


@dataclass(slots=True)
class _Peer:
    """What the ingest remembers of one source address: its budgets."""

    seen: float
    trials: _Budget
    reports: _Budget


class _Stream:
    """One sender's packets in, PCM out, with every gap concealed so no audio shifts."""

    def __init__(self, addr: Addr, ssrc: int, now: float) -> None:
        self.addr = addr
        self.ssrc = ssrc
        self.last_packet = now
        self._decoder = opuslib.Decoder(RATE_HZ, 1)
        self._seq: int | None = None  # extended sequence number of the last packet decoded
        self._next_ts = 0  # RTP timestamp where the next packet's audio should start

    def push(self, pkt: RtpPacket, samples: int) -> tuple[np.ndarray, int] | None:
        """The PCM of ``pkt`` (``samples`` long) after the concealment of any gap before it,
        and how many packets were lost; None for a duplicate or late packet."""
        lost = gap = 0
        if self._seq is not None:
            seq = self._extend(pkt.seq)
            if seq <= self._seq:
                return None
            lost = seq - self._seq - 1
            gap = (pkt.ts - self._next_ts + 2**31) % 2**32 - 2**31
            if not 0 <= gap <= MAX_GAP_SAMPLES:
                lost = gap = 0  # a restarted clock or a long pause: nothing to fill
            self._seq = seq
        else:
            self._seq = pkt.seq
        self._next_ts = pkt.ts + samples
        pcm: list[np.ndarray] = []
        if gap:
            # libopus rebuilds the packet just before this one from its FEC (or conceals it
            # when there is none); older gaps can only be concealed.
            fec_n = samples if lost and gap >= samples else 0
            pcm += self._conceal(gap - fec_n)
            if fec_n:
                pcm.append(self._fec(pkt.payload, fec_n))
        try:
            pcm.append(self._opus(pkt.payload, MAX_FRAME))
        except opuslib.OpusError:
            lost += 1  # a packet libopus cannot read is as good as lost
            pcm += self._conceal(samples)
        return (pcm[0] if len(pcm) == 1 else np.concatenate(pcm)), lost

    def _extend(self, seq: int) -> int:
        assert self._seq is not None
        delta = (seq - self._seq) % 65536
        return self._seq + (delta - 65536 if delta >= 32768 else delta)

    def _conceal(self, n: int) -> list[np.ndarray]:
        out = []
        while n >= PLC_STEP:
            k = min(n - n % PLC_STEP, MAX_FRAME)
            out.append(self._opus(b"", k))
            n -= k
        if n:
            out.append(np.zeros(n, dtype=np.float32))
        return out

    def _fec(self, payload: bytes, n: int) -> np.ndarray:
        """The ``n`` samples before ``payload``, from its in-band FEC."""
        try:
            return self._opus(payload, n, fec=True)
        except opuslib.OpusError:
            return np.concatenate(self._conceal(n))

    def _opus(self, payload: bytes, n: int, fec: bool = False) -> np.ndarray:
        return np.frombuffer(self._decoder.decode_float(payload, n, decode_fec=fec),
                             dtype=np.float32)


@dataclass(eq=False, slots=True)
class _Input:
    id: str
    key: str
    session: pylibsrtp.Session
    stream: _Stream | None = None


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.packets = Counter("loa_ingest_packets_total", "Authenticated media packets decoded",
                               ["input"], registry=registry)
        self.lost = Counter("loa_ingest_lost_total", "Packets missing from the sequence",
                            ["input"], registry=registry)
        self.late = Counter("loa_ingest_late_total",
                            "Packets dropped because a later one was already decoded",
                            ["input"], registry=registry)
        self.active = Gauge("loa_ingest_active", "1 while the input has a live sender",
                            ["input"], registry=registry)
        self.refused = Counter("loa_ingest_refused_total", "Datagrams refused", ["reason"],
                               registry=registry)

    def forget(self, input_id: str) -> None:
        for metric in (self.packets, self.lost, self.late, self.active):
            with contextlib.suppress(KeyError):
                metric.remove(input_id)


class IngestServer(asyncio.DatagramProtocol):
    """The ingest port. ``keys()`` maps input id to base64 key and is read on every trial and
    every sweep (so keep it an in-memory map): a new input works at once, a removed or changed
    key ends its input. ``on_audio(input_id, pcm)`` gets 48 kHz mono float32 per packet."""

    def __init__(
        self,
        keys: Callable[[], Mapping[str, str]],
        on_audio: Callable[[str, np.ndarray], None],
        *,
        on_start: Callable[[str, Addr], None] = lambda input_id, addr: None,
        on_end: Callable[[str, str], None] = lambda input_id, reason: None,
        on_refused: Callable[[Addr, str], None] = lambda addr, reason: None,
        registry: CollectorRegistry | None = None,
        idle_s: float = IDLE_S,
    ) -> None:
        self.keys = keys
        self.on_audio = on_audio
        self.on_start = on_start
        self.on_end = on_end
        self.on_refused = on_refused
        self.idle_s = idle_s
        self.metrics = IngestMetrics(registry or CollectorRegistry())
        self.local_addr: Addr | None = None
        self._inputs: dict[str, _Input] = {}
        self._routes: dict[tuple[Addr, int], _Input] = {}  # (address, SSRC) of live senders
        self._peers: dict[Addr, _Peer] = {}
        self._bad_keys: set[tuple[str, str]] = set()
        self._trials = _Budget(TRIALS_PER_S, 1.0)
        self._reports = _Budget(MAX_REPORTS, REPORT_EVERY_S)
        self._transport: asyncio.DatagramTransport | None = None
        self._sweep_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int) -> Addr:
        """Bind the port (0: any free one) and start ending idle inputs; returns the bound
        address."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        name = transport.get_extra_info("sockname")
        self.local_addr = (name[0], name[1])
        self._sweep_task = asyncio.create_task(self._sweep_forever())
        return self.local_addr

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # _SelectorDatagramTransport does not subclass DatagramTransport: cast, not assert
        self._transport = cast(asyncio.DatagramTransport, transport)

    def close(self) -> None:
        """Stop listening; every live input ends with reason ``closed``."""
        if self._sweep_task is not None:
            self._sweep_task.cancel()
            self._sweep_task = None
        for inp in self._inputs.values():
            self._end(inp, "closed")
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.handle(data, (addr[0], addr[1]), time.monotonic())
        except Exception:  # never let one datagram (or a callback's bug) close the port
            log.exception("ingest: unexpected error on a datagram from %s", addr)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.idle_s / 4)
            try:
                self.sweep(time.monotonic())
            except Exception:
                log.exception("ingest: sweep failed")

    # ------------------------------------------------------------------ events

    def handle(self, data: bytes, addr: Addr, now: float) -> None:
        """One datagram from ``addr`` at monotonic time ``now``."""
        if len(data) < MIN_LEN:
            self._refuse(addr, Refusal.SHORT, now)
        elif data[0] >> 6 != RTP_VERSION:
            self._refuse(addr, Refusal.MALFORMED, now)
        elif is_rtcp(data):
            self._rtcp(data, addr, now)
        else:
            self._rtp(data, addr, now)

    def sweep(self, now: float) -> None:
        """End inputs silent for ``idle_s`` and inputs whose key went; forget quiet peers."""
        self._sync_inputs()
        for inp in self._inputs.values():
            if inp.stream is not None and now - inp.stream.last_packet > self.idle_s:
                self._end(inp, "idle")
        for addr in [a for a, p in self._peers.items() if now - p.seen > REPORT_EVERY_S]:
            del self._peers[addr]

    # ------------------------------------------------------------------ internals

    def _rtp(self, data: bytes, addr: Addr, now: float) -> None:
        found = self._authenticate(data, addr, now, self._routes.get((addr, peek_ssrc(data))))
        if found is None:
            return
        inp, plain = found
        try:
            pkt = parse(plain)
            samples = opus_samples(pkt.payload)
        except MalformedPacket:
            self._refuse(addr, Refusal.PAYLOAD, now)
            return
        if pkt.pt not in DYNAMIC_PT:
            self._refuse(addr, Refusal.PAYLOAD, now)
            return
        stream = self._stream_for(inp, addr, pkt.ssrc, now)
        if stream is None:
            self._refuse(addr, Refusal.BUSY, now)
            return
        stream.last_packet = now
        out = stream.push(pkt, samples)
        if out is None:
            self.metrics.late.labels(inp.id).inc()
            return
        pcm, lost = out
        self.metrics.packets.labels(inp.id).inc()
        if lost:
            self.metrics.lost.labels(inp.id).inc(lost)
        self.on_audio(inp.id, pcm)

    def _rtcp(self, data: bytes, addr: Addr, now: float) -> None:
        # ffmpeg sends RTCP from its own port: find the live sender by SSRC, not by address.
        ssrc = int.from_bytes(data[4:8], "big")
        live = next((i for i in self._inputs.values()
                     if i.stream is not None and i.stream.ssrc == ssrc), None)
        found = self._authenticate(data, addr, now, live, rtcp=True)
        if found is None:
            return
        inp, plain = found
        try:
            packets = parse_compound(plain)
        except MalformedPacket:
            self._refuse(addr, Refusal.MALFORMED, now)
            return
        stream = inp.stream
        if stream is not None and any(isinstance(p, Bye) and p.ssrc == stream.ssrc
                                      for p in packets):
            self._end(inp, "bye")

    def _authenticate(self, data: bytes, addr: Addr, now: float, known: _Input | None,
                      rtcp: bool = False) -> tuple[_Input, bytes] | None:
        """The input whose key verifies ``data``, and the plain packet; None when refused.
        ``known`` is the input this sender already belongs to, if any: only its key is tried."""
        candidates: Iterable[_Input]
        if known is not None:
            candidates = (known,)
        elif self._may_try(addr, now):
            self._sync_inputs()
            candidates = list(self._inputs.values())
        else:
            self._refuse(addr, Refusal.FLOOD, now)
            return None
        refusal = Refusal.AUTH
        for inp in candidates:
            try:
                unprotect = inp.session.unprotect_rtcp if rtcp else inp.session.unprotect
                return inp, unprotect(data)
            except pylibsrtp.Error as e:
                if "replay" in str(e):
                    refusal = Refusal.REPLAY
        self._refuse(addr, refusal, now)
        return None

    def _may_try(self, addr: Addr, now: float) -> bool:
        return self._peer(addr, now).trials.take(now) and self._trials.take(now)

    def _stream_for(self, inp: _Input, addr: Addr, ssrc: int, now: float) -> _Stream | None:
        """The input's live stream for this sender, started if the input was idle; None when
        another sender holds the input."""
        stream = inp.stream
        if stream is None:
            stream = inp.stream = _Stream(addr, ssrc, now)
            self._routes[(addr, ssrc)] = inp
            self.metrics.active.labels(inp.id).set(1)
            self.on_start(inp.id, addr)
        elif stream.ssrc != ssrc:
            return None
        elif stream.addr != addr:  # the same sender behind a NAT that rebound: follow it
            del self._routes[(stream.addr, ssrc)]
            stream.addr = addr
            self._routes[(addr, ssrc)] = inp
        return stream

    def _end(self, inp: _Input, reason: str) -> None:
        stream = inp.stream
        if stream is None:
            return
        del self._routes[(stream.addr, stream.ssrc)]
        inp.stream = None
        self.metrics.active.labels(inp.id).set(0)
        self.on_end(inp.id, reason)

    def _sync_inputs(self) -> None:
        """Bring the sessions in line with ``keys()``; a changed or removed key ends its input
        at once."""
        wanted = self.keys()
        for inp in [i for i in self._inputs.values() if wanted.get(i.id) != i.key]:
            self._end(inp, "revoked")
            del self._inputs[inp.id]
            if inp.id not in wanted:
                self.metrics.forget(inp.id)
        for input_id, key in wanted.items():
            if input_id not in self._inputs and (input_id, key) not in self._bad_keys:
                try:
                    policy = pylibsrtp.Policy(key=parse_key(key),
                                              ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
                except ValueError as e:
                    log.warning("ingest: input %s skipped: %s", input_id, e)
                    self._bad_keys.add((input_id, key))
                    continue
                self._inputs[input_id] = _Input(input_id, key, pylibsrtp.Session(policy))

    def _peer(self, addr: Addr, now: float) -> _Peer:
        peer = self._peers.get(addr)
        if peer is None:
            if len(self._peers) >= MAX_PEERS:
                del self._peers[next(iter(self._peers))]  # the oldest: dicts keep insertion order
            peer = self._peers[addr] = _Peer(now, _Budget(TRIALS_PER_PEER_S, 1.0),
                                             _Budget(1, REPORT_EVERY_S))
        peer.seen = now
        return peer

    def _refuse(self, addr: Addr, refusal: Refusal, now: float) -> None:
        self.metrics.refused.labels(refusal.value).inc()
        if self._peer(addr, now).reports.take(now) and self._reports.take(now):
            self.on_refused(addr, f"{refusal.value}: {_WHY[refusal]}")
