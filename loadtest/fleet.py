"""Worker processes of simulated speakers that receive everything: loss, latency, jitter,
time-to-air, playout sync, and the decoded audio of a few of them.

``loadtest/simspeakers.py`` times emergencies and lets the kernel drop the rest of the stream;
``loa loadtest`` must account for every packet, so here each worker process owns a slice of the
fleet, one UDP socket per speaker, does the real subscribe handshake (``SubscribeClient``) with
its relay and reads all media. Reading one datagram per system call would cost more than the
relay under test, so a worker reads in rounds: every ``ROUND_S`` one ``recvmmsg`` per socket
(:class:`fanout.mmsg.RecvBatch`, up to ``SLOTS`` datagrams, each with the kernel's receive time)
copies the 32-byte headers into one ``[speakers, SLOTS, 32]`` array, and :class:`Reception`
turns the whole round into statistics with numpy, looping only over the slot column, never
over packets. What does not fit in a round stays queued in the socket for the next one; its
kernel time is still its arrival. Memory is bounded: latency goes into a histogram with
fixed logarithmic bins, the rest are per-speaker counters; only the decoded sample keeps
payloads, and only for a bounded number of packets per broadcast.

Per speaker and packet: loss from RTP sequence gaps (16-bit, extended across wraps, so
reordering and duplicates never count as loss), network latency = kernel arrival − the
abs-capture-time the streamer stamped (both on this machine's wall clock), RFC 3550
interarrival jitter, the first arrival of each broadcast id (time-to-air), the priority.

Playout sync is modelled, not played. Each simulated speaker has a clock of its own with an
error e(t): it boots ``initial_offset_ms`` off (normal, per speaker) and drifts at
``drift_ppm`` (normal, per speaker). With ``protocol`` (the default) it runs the clock sync as
``loa speaker`` does: TIME to its relay stamped with its own clock, the answer stamped with its
own clock at the kernel's receive time, and its estimate s(t) of the streamer's clock minus its
own, refreshed once a second; it plays a packet when its clock reads capture time +
``playout_delay_ms`` − s, that is at true time ``capture + delay − e − s``. Without
``protocol`` it syncs its own clock every ``sync_interval_s`` (at a phase of its own, uniform
over the first interval), after which its error is a fresh ``residual_ms`` draw (normal) plus
the drift since, and plays at ``capture + delay − e``. A packet that arrives after its play
instant is late (not played in step). Once per second of capture time per channel (the packet
whose capture time falls in the first ``ptime`` of the second, the same packet in every worker)
the workers report the earliest and latest true play instant among the speakers that had it
on time; the parent merges them, and the skew of that packet is latest − earliest across the
channel.

``python -m loadtest.fleet`` is one worker, driven like ``simspeakers`` by JSON lines: its
configuration on the first stdin line, then ``start`` (the measurement window opens: counters
reset), ``status``, ``report`` and ``quit``, each answered by one stdout line. It runs at nice
+10 so that it never takes a core from the stack it measures; its own delays do not count, the
kernel stamped the arrivals. :class:`FleetProcess` is the parent's handle.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import select
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.speaker.playout import MAX_FRAME, RATE_HZ, OpusDecoder
from device.streamer_time import StreamerTime
from fanout.mmsg import RecvBatch, timestamp_socket
from wire.packet import HEADER_LEN, MalformedPacket
from wire.subscribe import Addr, ClientState, SubscribeClient
from wire.timesync import Exchange

from .children import ask, quit_child, read_line
from .header import BROADCAST_AT, SEQ_AT, HeaderFields
from .simspeakers import (
    CHILD_LIFETIME_S,
    CHILD_NICE,
    HANDSHAKE_BATCH,
    RECEIVE_BUFFER,
    raise_fd_limit,
)
from .tokens import issue_all, load_key

ROUND_S = 0.1
TICK_S = 0.2
SLOTS = 32  # datagrams read per socket per round: 6 rounds' worth at 20 ms frames
#: latency histogram edges, seconds: 10 µs to 100 s, 2.3 % wide; below and above are counted
LATENCY_EDGES = np.geomspace(1e-5, 100.0, 701)
DECODE_PACKETS = 3000  # per decoded speaker and broadcast: 60 s at 20 ms
MAX_DATAGRAM = 1500


def wrap16(x: np.ndarray) -> np.ndarray:
    """A 16-bit difference as a signed number: -32768..32767."""
    return ((x + 32768) & 0xFFFF) - 32768


def wrap32(x: np.ndarray) -> np.ndarray:
    return ((x + (1 << 31)) & 0xFFFF_FFFF) - (1 << 31)


@dataclass(frozen=True)
class ClockSpec:
    initial_offset_ms: float
    drift_ppm: float
    sync_interval_s: float
    residual_ms: float
    playout_delay_ms: float
    protocol: bool = True


class ClockModel:
    """The wall-clock errors of a set of simulated speakers (see the module docstring); each
    speaker's draws depend on ``seed`` and its fleet-wide index only, not on which worker
    holds it. Times are Unix seconds; ``origin`` is when the clocks' story starts."""

    def __init__(self, spec: ClockSpec, indices: Sequence[int], seed: int, origin: float,
                 horizon_s: float) -> None:
        self.spec, self.origin = spec, origin
        self.epochs = int(horizon_s / spec.sync_interval_s) + 2
        n = len(indices)
        self.offset, self.drift, self.phase = np.zeros(n), np.zeros(n), np.zeros(n)
        self.residual = np.zeros((n, self.epochs))
        for row, index in enumerate(indices):
            rng = np.random.default_rng([seed, index])
            self.offset[row] = rng.normal(0.0, spec.initial_offset_ms / 1000)
            self.drift[row] = rng.normal(0.0, spec.drift_ppm * 1e-6)
            self.phase[row] = rng.uniform(0.0, spec.sync_interval_s)
            self.residual[row] = rng.normal(0.0, spec.residual_ms / 1000, self.epochs)
        #: the streamer's clock minus each speaker's, as its clock sync estimates it (s; 0
        #: without the protocol, or before its first answer): kept up to date by the Fleet
        self.shift = np.zeros(n)

    def error(self, rows: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Clock error (s, positive = ahead) of speaker ``rows[k]`` at true time ``t[k]``.
        With the clock sync (``protocol``) a speaker plays by a free-running clock, which
        nobody steps: its boot offset and its drift, nothing else."""
        elapsed = t - self.origin
        if self.spec.protocol:
            return self.offset[rows] + self.drift[rows] * elapsed
        since_first = elapsed - self.phase[rows]
        k = np.clip(np.floor(since_first / self.spec.sync_interval_s), 0, self.epochs - 1)
        last_sync = self.phase[rows] + k * self.spec.sync_interval_s
        synced = self.residual[rows, k.astype(np.int64)] + self.drift[rows] * (elapsed - last_sync)
        booted = self.offset[rows] + self.drift[rows] * elapsed
        return np.where(since_first >= 0, synced, booted)

    def error_one(self, row: int, t: float) -> float:
        """:meth:`error` of one speaker, without numpy (the clock sync reads it per message)."""
        elapsed = t - self.origin
        since_first = elapsed - self.phase[row]
        if self.spec.protocol or since_first < 0:
            return float(self.offset[row] + self.drift[row] * elapsed)
        k = min(int(since_first // self.spec.sync_interval_s), self.epochs - 1)
        last_sync = self.phase[row] + k * self.spec.sync_interval_s
        return float(self.residual[row, k] + self.drift[row] * (elapsed - last_sync))

    def play_time(self, rows: np.ndarray, capture: np.ndarray) -> np.ndarray:
        """True time at which each speaker plays the packet captured at ``capture``: when its
        own clock reads capture + delay − its estimate of the streamer's clock minus its own
        (``shift``), as ``clients/speaker/playout.py`` places a frame."""
        due = capture + self.spec.playout_delay_ms / 1000
        return due - self.error(rows, due) - self.shift[rows]


@dataclass
class SkewSample:
    """One sampled packet of one channel, as far as this worker saw it."""

    first_play: float = math.inf
    last_play: float = -math.inf
    on_time: int = 0
    late: int = 0


class Reception:
    """Per-speaker reception statistics of ``n`` speakers, fed one round at a time."""

    def __init__(self, n: int, channel_of: np.ndarray, clock: ClockModel, ptime_ms: int) -> None:
        self.n, self.channel_of, self.clock = n, channel_of, clock
        self.ptime_s = ptime_ms / 1000
        self.seen = np.zeros(n, dtype=bool)
        self.last_ext = np.zeros(n, dtype=np.int64)
        self.max_ext = np.zeros(n, dtype=np.int64)
        self.last_arrival = np.zeros(n)
        self.last_ts = np.zeros(n, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Open a measurement window: counters start again; sequence state carries on."""
        self.base_ext = self.max_ext + 1  # the next packet is the first one expected
        self.received = np.zeros(self.n, dtype=np.int64)
        self.late = np.zeros(self.n, dtype=np.int64)
        self.jitter_ts = np.zeros(self.n)  # RFC 3550 J, in RTP timestamp units
        self.latency_counts = np.zeros(len(LATENCY_EDGES) + 1, dtype=np.int64)
        self.latency_max = -math.inf
        self.first: dict[int, np.ndarray] = {}  # broadcast id -> first arrival per speaker
        self.skew: dict[tuple[int, int], SkewSample] = {}
        self.per_second: Counter[int] = Counter()
        self.priority = np.zeros(4, dtype=np.int64)
        self.control = self.rtcp = self.unreadable = 0

    def lost(self) -> np.ndarray:
        expected = np.where(self.seen, self.max_ext - self.base_ext + 1, 0)
        return np.maximum(expected - self.received, 0)

    def add(self, rows: np.ndarray, lengths: np.ndarray, arrival: np.ndarray) -> None:
        """One round: ``rows[i, j]`` is the header of speaker i's j-th datagram (``uint8``,
        ``HEADER_LEN`` wide), ``lengths[i, j]`` its length (0: no datagram), ``arrival[i, j]``
        its kernel receive time."""
        h = HeaderFields.of(rows, lengths)
        present = lengths > 0
        self.control += int(np.count_nonzero(h.control & present))
        self.rtcp += int(np.count_nonzero(h.rtcp & present))
        self.unreadable += int(np.count_nonzero(present & ~h.media & ~h.control & ~h.rtcp))
        for j in range(rows.shape[1]):
            self._sequence(h.media[:, j], h.seq[:, j], h.timestamp[:, j], arrival[:, j])
        m = h.media
        if not m.any():
            return
        who = np.broadcast_to(np.arange(self.n)[:, None], m.shape)[m]
        t, capture, bid = arrival[m], h.capture[m], h.broadcast_id[m]
        self._latency(t - capture)
        self._first_arrivals(who, t, bid)
        self._playout(who, t, capture)
        self.priority += np.bincount(np.clip(h.priority[m], 0, 3), minlength=4)
        sec, count = np.unique(np.floor(t).astype(np.int64), return_counts=True)
        self.per_second.update(dict(zip(sec.tolist(), count.tolist(), strict=True)))

    def _sequence(self, m: np.ndarray, seq: np.ndarray, ts: np.ndarray,
                  arrival: np.ndarray) -> None:
        if not m.any():
            return
        new = m & ~self.seen
        self.last_ext[new] = self.max_ext[new] = seq[new]
        self.base_ext[new] = seq[new]
        old = m & self.seen
        ext = self.last_ext + wrap16(seq - self.last_ext)
        self.last_ext[old] = ext[old]
        self.max_ext[old] = np.maximum(self.max_ext[old], ext[old])
        # RFC 3550 A.8: D = (Rj - Ri) - (Sj - Si) in timestamp units; J += (|D| - J) / 16
        d = (arrival - self.last_arrival) * RATE_HZ - wrap32(ts - self.last_ts)
        self.jitter_ts[old] += (np.abs(d[old]) - self.jitter_ts[old]) / 16
        self.last_arrival[m], self.last_ts[m] = arrival[m], ts[m]
        self.received[m] += 1
        self.seen |= m

    def _latency(self, seconds: np.ndarray) -> None:
        self.latency_counts += np.bincount(np.searchsorted(LATENCY_EDGES, seconds),
                                           minlength=len(self.latency_counts))
        self.latency_max = max(self.latency_max, float(seconds.max()))

    def _first_arrivals(self, who: np.ndarray, t: np.ndarray, bid: np.ndarray) -> None:
        for b in np.unique(bid[bid != 0]).tolist():
            first = self.first.setdefault(b, np.full(self.n, np.nan))
            mine = bid == b
            earliest = np.full(self.n, np.inf)
            np.minimum.at(earliest, who[mine], t[mine])
            fresh = np.isnan(first) & np.isfinite(earliest)
            first[fresh] = earliest[fresh]

    def _playout(self, who: np.ndarray, t: np.ndarray, capture: np.ndarray) -> None:
        play = self.clock.play_time(who, capture)
        late = t > play
        np.add.at(self.late, who[late], 1)
        sampled = np.nonzero(capture - np.floor(capture) < self.ptime_s)[0]
        for k in sampled.tolist():
            key = (int(self.channel_of[who[k]]), round(float(capture[k]) * 1000))
            s = self.skew.setdefault(key, SkewSample())
            if late[k]:
                s.late += 1
            else:
                s.on_time += 1
                s.first_play = min(s.first_play, float(play[k]))
                s.last_play = max(s.last_play, float(play[k]))


def dominant_hz(pcm: np.ndarray, rate_hz: int = RATE_HZ) -> float:
    """Frequency of the strongest FFT bin (Hann window); the tests' check of audio too."""
    pcm = np.asarray(pcm, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * rate_hz / len(pcm))


def decode(packets: list[tuple[int, bytes]]) -> dict[str, Any]:
    """Decode one speaker's packets of one broadcast (``(sequence, payload)``, any order, 16-bit
    sequence numbers) with libopus as a speaker would, and describe the second half of the
    audio, past any chime: dominant frequency and level."""
    seqs = np.array([s for s, _ in packets], dtype=np.int64)
    ext = seqs[0] + np.concatenate(([0], np.cumsum(wrap16(np.diff(seqs)))))
    decoder, pcm, errors = OpusDecoder(), [], 0
    for k in np.argsort(ext, kind="stable").tolist():
        try:
            pcm.append(np.frombuffer(decoder.decode(packets[k][1], MAX_FRAME), dtype=np.int16))
        except MalformedPacket:
            errors += 1
    audio = np.concatenate(pcm).astype(np.float64) / 32768 if pcm else np.zeros(0)
    tail = audio[len(audio) // 2:]
    level = float(20 * np.log10(np.sqrt(np.mean(tail * tail)) + 1e-12)) if len(tail) else None
    return {"packets": len(packets), "errors": errors, "seconds": len(audio) / RATE_HZ,
            "peak_hz": dominant_hz(tail) if len(tail) >= 1024 else None, "level_dbfs": level}


# --------------------------------------------------------------------------- the worker


@dataclass(frozen=True)
class WorkerConfig:
    """What the parent sends a worker on its first stdin line."""

    indices: list[int]  # fleet-wide speaker numbers
    channels: list[str]  # each speaker's channel
    channel_index: list[int]  # each speaker's channel as a number, the same in every worker
    relays: list[Addr]  # each speaker's relay
    decode: list[int]  # fleet-wide numbers of the speakers to decode
    clock: ClockSpec
    ptime_ms: int
    seed: int
    origin: float
    horizon_s: float
    handshake_timeout_s: float
    #: PEM file of the streamer's key, which signs each speaker's subscription token once at
    #: start ("": they present none, for relays that require no token)
    signing_key: str = ""

    def to_json(self) -> str:
        d = {k: v for k, v in self.__dict__.items() if k != "clock"}
        return json.dumps({**d, "clock": self.clock.__dict__}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        d = json.loads(text)
        d["relays"] = [(str(h), int(p)) for h, p in d["relays"]]
        return cls(**{**d, "clock": ClockSpec(**d["clock"])})


@dataclass
class Fleet:
    """One worker's speakers: sockets, handshakes, keepalives and reading rounds."""

    cfg: WorkerConfig
    socks: list[socket.socket] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg, n = self.cfg, len(self.cfg.indices)
        raise_fd_limit(n + 256)
        names = [f"loadtest-speaker-{i}" for i in cfg.indices]
        tokens = issue_all(load_key(cfg.signing_key), names, cfg.channels)
        self.clients = [SubscribeClient(name, ch, [relay], token=tok,
                                        media_timeout_s=math.inf, silence_s=math.inf,
                                        quiet_silence_s=math.inf)  # one relay
                        for name, ch, relay, tok in zip(names, cfg.channels, cfg.relays, tokens,
                                                        strict=True)]
        for relay in cfg.relays:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            timestamp_socket(s)
            s.bind(("127.0.0.1" if relay[0].startswith("127.") else "0.0.0.0", 0))
            # Connected: the kernel delivers only the relay's datagrams, so every message
            # read here comes from the client's upstream (recvmmsg is not asked for senders).
            s.connect(relay)
            s.setblocking(False)
        clock = ClockModel(cfg.clock, cfg.indices, cfg.seed, cfg.origin, cfg.horizon_s)
        self.clock = clock
        self.reception = Reception(n, np.array(cfg.channel_index), clock, cfg.ptime_ms)
        # the clock sync, as a speaker runs it, on each speaker's modelled clock: the answer's
        # arrival is the kernel's receive time on that clock (``_control``)
        self.times: list[StreamerTime] = []
        self._t4 = 0
        self._shift_at = -math.inf
        if cfg.clock.protocol:
            for row, client in enumerate(self.clients):
                st = StreamerTime(lambda row=row: self._local_ns(row, time.time()))
                client.on_time = lambda t1, t2, t3, st=st: st.timeline.add(
                    Exchange(t1, t2, t3, self._t4))
                self.times.append(st)
        self.batch = RecvBatch(SLOTS, MAX_DATAGRAM)
        self.rows = np.zeros((n, SLOTS, HEADER_LEN), dtype=np.uint8)
        self.lengths = np.zeros((n, SLOTS), dtype=np.int64)
        self.arrival = np.zeros((n, SLOTS))
        decoded = set(cfg.decode)
        self.decode_rows = {row for row, i in enumerate(cfg.indices) if i in decoded}
        self.payloads: dict[tuple[int, int], list[tuple[int, bytes]]] = {}
        self.recv_errors = 0
        self.started = self.acked = 0

    def _local_ns(self, row: int, t: float) -> int:
        """Speaker ``row``'s clock at true time ``t``, ns (the clock model's error added)."""
        return round((t + self.clock.error_one(row, t)) * 1e9)

    def subscribed(self) -> int:
        return sum(1 for c in self.clients if c.state is ClientState.SUBSCRIBED)

    def round(self, now: float) -> None:
        """Read what each socket has (up to ``SLOTS``), handle handshake replies, and feed
        the media to the statistics."""
        self.lengths[:] = 0
        batch, used = self.batch, 0
        for i, s in enumerate(self.socks):
            try:
                k = batch.recv(s.fileno())
            except OSError:  # an ICMP error from an earlier send (relay gone): count, go on
                self.recv_errors += 1
                continue
            if not k:
                continue
            used = max(used, k)
            self.rows[i, :k] = batch.data[:k, :HEADER_LEN]
            self.lengths[i, :k] = batch.lengths[:k]
            self.arrival[i, :k] = batch.times[:k]
            if b"L" in batch.data[:k, 0].tobytes():  # "LOA1": a handshake message
                self._control(i, k, now)
            if i in self.decode_rows:
                self._keep_payloads(i, k)
        if used:
            self.reception.add(self.rows[:, :used], self.lengths[:, :used],
                               self.arrival[:, :used])

    def _control(self, i: int, k: int, now: float) -> None:
        client, b = self.clients[i], self.batch
        for j in np.nonzero(b.data[:k, 0] == ord("L"))[0].tolist():
            was = client.state
            if self.times:  # a TIMEREPLY's arrival, on this speaker's clock
                self._t4 = self._local_ns(i, float(b.times[j]))
            try:
                out = client.handle(b.data[j, :b.lengths[j]].tobytes(), client.upstream, now)
            except (MalformedPacket, ValueError):
                continue  # not a message this speaker can read: a real one would drop it too
            self._send(i, out)
            if was is not ClientState.SUBSCRIBED and client.state is ClientState.SUBSCRIBED:
                self.acked += 1

    def _keep_payloads(self, i: int, k: int) -> None:
        b = self.batch
        for j in range(k):
            n = int(b.lengths[j])
            row = b.data[j]
            bid = int.from_bytes(row[BROADCAST_AT:BROADCAST_AT + 4].tobytes(), "big")
            if n <= HEADER_LEN or row[0] != 0x90 or bid == 0:
                continue
            kept = self.payloads.setdefault((i, bid), [])
            if len(kept) < DECODE_PACKETS:
                seq = int.from_bytes(row[SEQ_AT:SEQ_AT + 2].tobytes(), "big")
                kept.append((seq, row[HEADER_LEN:n].tobytes()))

    def _send(self, i: int, out: list[tuple[bytes, Addr]]) -> None:
        for data, _ in out:  # always to the connected relay, the client's only upstream
            try:
                self.socks[i].send(data)
            except OSError:
                pass  # a full send buffer or an ICMP error: the client's retry sends it again

    def tick(self, now: float) -> None:
        """Start handshakes (``HANDSHAKE_BATCH`` in flight), retries and keepalives."""
        while self.started < len(self.clients) and self.started - self.acked < HANDSHAKE_BATCH:
            self._send(self.started, self.clients[self.started].start(now))
            self.started += 1
        for i in range(self.started):
            self._send(i, self.clients[i].tick(now))
        if not self.times:
            return
        for i in range(self.started):
            c = self.clients[i]
            if c.state is ClientState.SUBSCRIBED and (t1 := self.times[i].due(now)) is not None:
                self._send(i, c.ask_time(t1))
        if now - self._shift_at >= 1.0:  # what each plays by, from its estimate, once a second
            self._shift_at = now
            self.clock.shift[:] = [st.shift_s() for st in self.times]

    def report(self) -> dict[str, Any]:
        r = self.reception
        first = {str(b): [None if math.isnan(x) else x for x in arr.tolist()]
                 for b, arr in r.first.items()}
        return {
            "indices": self.cfg.indices, "received": r.received.tolist(),
            "lost": r.lost().tolist(), "late": r.late.tolist(),
            "jitter_ms": (r.jitter_ts / RATE_HZ * 1000).tolist(),
            "latency_counts": r.latency_counts.tolist(),
            "latency_max_s": None if math.isinf(r.latency_max) else r.latency_max,
            "first": first,
            "skew": [[ch, key, s.first_play, s.last_play, s.on_time, s.late]
                     for (ch, key), s in r.skew.items()],
            "per_second": {str(k): v for k, v in r.per_second.items()},
            "priority": r.priority.tolist(), "control": r.control, "rtcp": r.rtcp,
            "unreadable": r.unreadable, "recv_errors": self.recv_errors,
            "ports": [s.getsockname()[1] for s in self.socks],
            "decoded": [{"speaker": self.cfg.indices[i], "broadcast_id": bid, **decode(p)}
                        for (i, bid), p in sorted(self.payloads.items())],
        }

    def reset(self) -> None:
        self.reception.reset()
        self.payloads.clear()

    def close(self) -> None:
        for i, c in enumerate(self.clients):
            if c.state is ClientState.SUBSCRIBED:
                self._send(i, c.close())
        for s in self.socks:
            s.close()


def _out(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def serve(cfg: WorkerConfig) -> int:
    """The worker's loop: a reading round every ``ROUND_S``, handshakes and keepalives every
    ``TICK_S``, and one answer per command line on stdin."""
    fleet = Fleet(cfg)
    t0 = now = time.monotonic()
    next_round = next_tick = now
    announced = False
    try:
        while now - t0 < CHILD_LIFETIME_S:
            ready, _, _ = select.select([sys.stdin], [], [], max(0.0, next_round - now))
            now = time.monotonic()
            if ready:
                words = sys.stdin.readline().split()
                if not words or words[0] == "quit":
                    return 0
                _out(_command(fleet, words[0]))
            if now >= next_tick:
                fleet.tick(now)
                next_tick = now + TICK_S
            if now >= next_round:
                fleet.round(now)
                next_round = max(next_round + ROUND_S, now)
            if not announced and (fleet.subscribed() == len(fleet.clients)
                                  or now - t0 > cfg.handshake_timeout_s):
                _out({"subscribed": fleet.subscribed(), "seconds": round(now - t0, 2)})
                announced = True
        return 1  # the parent forgot us
    finally:
        fleet.close()


def _command(fleet: Fleet, cmd: str) -> dict[str, Any]:
    if cmd == "start":
        fleet.reset()
        return {"started": time.time()}
    if cmd == "status":
        return {"subscribed": fleet.subscribed(),
                "received": int(fleet.reception.received.sum())}
    if cmd == "report":
        fleet.round(time.monotonic())  # what arrived since the last round counts too
        return fleet.report()
    return {"error": f"unknown command {cmd!r}"}


def main() -> int:
    os.nice(CHILD_NICE)
    try:
        return serve(WorkerConfig.from_json(sys.stdin.readline()))
    except (ValueError, TypeError, KeyError, OSError) as e:
        print(f"loadtest worker: {e}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- the parent's handle


class FleetProcess:
    """One worker (``python -m loadtest.fleet``); always stopped by :meth:`close`."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.subscribed = 0
        self.handshake_s = math.nan

    @classmethod
    async def spawn(cls, cfg: WorkerConfig, stderr: Any = None) -> FleetProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtest.fleet", cwd=Path(__file__).resolve().parents[1],
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            limit=1 << 27)
        assert proc.stdin is not None
        proc.stdin.write(cfg.to_json().encode() + b"\n")
        return cls(proc)

    async def ready(self, timeout_s: float) -> None:
        """Wait for the worker's handshakes (all, or as many as its timeout allowed)."""
        line = await read_line(self.proc, timeout_s)
        self.subscribed, self.handshake_s = int(line["subscribed"]), float(line["seconds"])

    async def ask(self, command: str, timeout_s: float = 60.0) -> dict[str, Any]:
        return await ask(self.proc, command, timeout_s, "loadtest worker")

    async def close(self) -> None:
        await quit_child(self.proc)


if __name__ == "__main__":
    sys.exit(main())
