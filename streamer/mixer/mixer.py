"""The mixer: every leaf channel's program, rendered, limited, encoded and packetized per frame.

``start``/``stop`` change which items reach which channels; ``tick(k)`` produces frame ``k``
of every channel and hands the datagrams to a :class:`PacketSink` (the fan-out). A start may be
booked for a later frame (a schedule fires on the frame that matches its wall-clock time) and
given an end frame (a relay window is cut at its end); both are applied at the top of ``tick``,
before the frame is mixed, so they are exact to the sample whatever the event loop's timing.
Channels that play the same thing share one :class:`Program` and so one mix, one Opus encode
and one packet. A province-wide broadcast puts a thousand channels in one program, so nothing
here may loop in Python per channel per frame: each channel's RTP state (timestamp origin,
SSRC, octet count) is a row of mixer-wide numpy arrays, and a program's packets are built as
one block (the packet copied to every row, then the timestamp and SSRC columns written at
once) handed to the sink in one call; the sender reports every ``SR_INTERVAL_FRAMES`` frames
are built the same way. Each channel's sequence number and packet count are columns too.
Channels come and go at run time (``add_channels``, ``remove_channels``: a zone edit) between
two frames: a new channel's row is appended, a removed one's dropped and the rows after it
move up, and no channel that stays sees a change in its RTP stream. Only a channel with
nothing on air, waiting or booked may go.

Idle costs nothing (``idle_heartbeat_ms``, the streamer's default): a channel with nothing on
air sends ``QUIET_TAIL_FRAMES`` frames of silence after its last item (the fade and the
decoder's tail), then no media at all, only a sender report now and then, the heartbeat
(the first at once, then every ``idle_heartbeat_ms``, phased by channel so that a thousand
quiet channels do not beat on one frame). This is RFC 7587's discontinuous transmission
decided by the mixer, which knows that nothing is on air, rather than by Opus's voice
detector: sequence numbers stay contiguous, the timestamp jumps over the pause, and the first
packet after it carries the RTP marker bit (RFC 3551 4.1); its report's timestamp later
than the last packet's tells a receiver "quiet, not lost" (``docs/protocol.md``, "Quiet
channels"). A programme none of whose channels sends is neither rendered nor encoded. The
first frame of a broadcast goes out on the frame it starts, as before. Without
``idle_heartbeat_ms`` every channel sends every frame (plain RTP receivers that do not
expect DTX; most tests of the mix).
Sans-IO: the caller owns the clock and the sockets (``streamer/app.py``). The caller may also
tick from a thread of its own (``streamer/playout.py``): ``tick`` and every command hold
``lock`` while they run, so a command lands between two frames, never inside one.

Every core: distinct programmes are encoded in parallel by a pool of encoder threads
(``pool.py``; libopus releases the GIL). Only the encodes: programmes are rendered one after
another on the ticking thread, because forked programmes share items, and a live item's
source keeps state between reads; each programme's packets are built and handed over on that
thread too, so what every channel receives is byte for byte what one thread would send, in the
same order. That order puts emergency, then priority programmes first, in every frame: they
are rendered, encoded and sent before any lower level, and when the host is over capacity the
deadline guard (``guard.py``) makes the lower levels' encodes cheaper, never theirs.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.opus import OpusEncoder, OpusSettings
from wire.packet import HEADER_LEN, ssrc_for, unix_to_ntp64, write_header
from wire.priority import Priority
from wire.rtcp import SenderReport

from .clock import FrameClock
from .guard import CHEAP_COMPLEXITY, DeadlineGuard
from .loudness import Limiter
from .pool import EncoderPool
from .program import Item, Program

SR_INTERVAL_FRAMES = 50
#: frames of silence a channel still sends after its last item: the 10 ms fade-out, then the
#: decoder's lookahead and the limiter's release come out, so the horn ends cleanly
QUIET_TAIL_FRAMES = 5
_U32 = 0xFFFF_FFFF
ENCODE_BUCKETS_S = (50e-6, 100e-6, 200e-6, 300e-6, 500e-6, 750e-6, 1e-3, 1.5e-3, 2e-3, 3e-3,
                    5e-3, 10e-3, 20e-3)
TIME_TO_AIR_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
                         1.0, 2.0, 5.0, 10.0)
TICK_BUCKETS_S = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.03, 0.04,
                  0.06, 0.1)
#: the level a programme with no item plays at (silence), below background
_SILENT = -1


class PacketSink(Protocol):
    """Where datagrams go (``fanout.endpoint.FanoutEndpoint``). RTP packets and sender reports
    alike go out a program at a time, so a block is all the mixer hands over."""

    def publish_block(self, channels: Sequence[str], block: np.ndarray) -> None:
        """Row i of ``block`` (uint8, C-contiguous) is the datagram of ``channels[i]``; read
        synchronously, no reference kept."""

    def pause(self, channels: Sequence[str]) -> None:
        """These channels fell quiet: they send no media from this frame on until a packet
        with the marker bit (only with ``idle_heartbeat_ms``)."""


F = TypeVar("F", bound=Callable[..., object])


def _locked(method: F) -> F:
    """Run the method under the mixer's lock (re-entrant: ``tick`` stops items it ends)."""
    @functools.wraps(method)
    def run(self: Mixer, *args: object, **kwargs: object) -> object:
        with self.lock:
            return method(self, *args, **kwargs)
    return run  # type: ignore[return-value]


@functools.cache
def _rtp_columns(packet_len: int) -> np.dtype:
    """Sequence number, timestamp and SSRC (bytes 2-11 of an RTP header), big-endian, in a
    row ``packet_len`` bytes long."""
    return np.dtype({"names": ["seq", "ts", "ssrc"], "formats": [">u2", ">u4", ">u4"],
                     "offsets": [2, 4, 8], "itemsize": packet_len})


# An RTCP sender report (RFC 3550 6.4.1, no report blocks): SSRC, then after the NTP time
# the RTP timestamp, the packet count and the octet count.
_SR_COLUMNS = np.dtype({"names": ["ssrc", "ts", "packets", "octets"],
                        "formats": [">u4", ">u4", ">u4", ">u4"],
                        "offsets": [4, 16, 20, 24], "itemsize": 28})
_MARKER = 0x80  # the marker bit, in byte 1 of an RTP header


@dataclass(eq=False, slots=True)
class _Booking:
    """A start booked for a later frame."""

    at_frame: int
    item: Item
    channel_ids: list[str]
    end_frame: int | None


@dataclass(eq=False, slots=True)
class Channel:
    id: str
    ssrc: int
    program: Program
    #: this channel's row in the mixer's RTP state arrays
    row: int


@dataclass(eq=False, slots=True)
class _RtpRows:
    """Every channel's RTP state, one row per channel in the mixer's row order; uint32 wraps
    as RTP's fields do. Rows are made by ``fresh`` only, and appended or dropped whole, so a
    channel's state is never split between two rows."""

    ssrc: np.ndarray
    #: a fixed random-looking timestamp origin per channel
    ts0: np.ndarray
    #: payload octets each channel sent
    octets: np.ndarray
    #: the sequence number of each channel's next packet
    seq: np.ndarray
    #: packets each channel sent
    count: np.ndarray
    #: frames each channel has had nothing on air (past QUIET_TAIL_FRAMES: quiet)
    idle: np.ndarray
    #: the frame offset of each channel's heartbeat, so that a thousand quiet channels do not
    #: beat on one frame; kept when rows move, so no channel's beat jumps
    phase: np.ndarray

    @classmethod
    def fresh(cls, ids: Sequence[str], first_row: int) -> _RtpRows:
        """The state of new channels that take rows ``first_row`` on: nothing sent yet."""
        n = len(ids)
        ssrc = np.fromiter(map(ssrc_for, ids), np.uint32, n)
        return cls(ssrc=ssrc, ts0=ssrc * np.uint32(7919), octets=np.zeros(n, np.uint32),
                   seq=np.zeros(n, np.uint16), count=np.zeros(n, np.uint32),
                   idle=np.zeros(n, np.int64), phase=np.arange(first_row, first_row + n))

    def joined(self, more: _RtpRows) -> _RtpRows:
        """These rows, then ``more``."""
        return _RtpRows(*(np.concatenate((getattr(self, f.name), getattr(more, f.name)))
                          for f in fields(self)))

    def kept(self, keep: np.ndarray) -> _RtpRows:
        """The rows where ``keep`` (a mask, one per row) is true, in order."""
        return _RtpRows(*(getattr(self, f.name)[keep] for f in fields(self)))


@dataclass(eq=False, slots=True)
class _Rows:
    """A program's channels as rows of the RTP state arrays, in row order."""

    ids: list[str]
    #: a slice when the rows are contiguous (a view, no gather), else their indices
    at: slice | np.ndarray
    #: rows whose packet this frame ends a pause (the marker bit), by position in ``ids``
    resumed: np.ndarray | None = None


@dataclass(eq=False, slots=True)
class _Output:
    """What one program needs to go out: its limiter, its encoder and its channels' rows
    (``None`` after its channels changed: rebuilt on the next frame)."""

    limiter: Limiter
    encoder: OpusEncoder
    rows: _Rows | None = None
    #: the encoder's own complexity, read the first time the deadline guard lowers it
    own_complexity: int | None = None
    #: encoded at the guard's cheap setting
    cheap: bool = False

    def set_cheap(self, cheap: bool) -> None:
        # The guard only lowers this one knob for a while and puts it back, so it keeps the
        # encoder (and its state: no click, no reset) rather than make a second one.
        enc = self.encoder
        if self.own_complexity is None:
            self.own_complexity = int(enc.complexity)
        enc.complexity = min(CHEAP_COMPLEXITY, self.own_complexity) if cheap else \
            self.own_complexity
        self.cheap = cheap


@dataclass(eq=False, slots=True)
class _Job:
    """One programme's frame on its way out: rendered and limited on the ticking thread, encoded
    on any encoder thread (``encode`` touches only this job and its programme's encoder),
    packetized and sent on the ticking thread."""

    program: Program
    out: _Output
    #: the channels it goes to this frame (the programme's, less those that are quiet)
    rows: _Rows
    pcm: np.ndarray
    payload: bytes = b""
    encode_s: float = 0.0
    error: Exception | None = None
    #: encoded, and the ticking thread knows it
    done: bool = False

    def encode(self) -> None:
        t0 = time.perf_counter()
        try:
            self.payload = self.out.encoder.encode(self.pcm)
        except Exception as exc:  # raised on the ticking thread, when its turn to go out comes
            self.error = exc
        self.encode_s = time.perf_counter() - t0


@dataclass(eq=False, slots=True)
class _Frame:
    """What every programme's packets of one frame share, and what the guard is told."""

    k: int
    capture_ntp: int
    ts_offset: np.uint32
    send_sr: bool
    full_s: float = 0.0
    full_n: int = 0
    cheap_s: float = 0.0
    cheap_n: int = 0


class MixerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.frames = Counter("loa_mixer_frames_total", "Frames produced", registry=registry)
        self.encodes = Counter("loa_mixer_encodes_total", "Opus encodes", registry=registry)
        self.encodes_per_frame = Gauge(
            "loa_mixer_encodes_per_frame", "Distinct programs encoded in the last frame",
            registry=registry)
        self.programs = Gauge("loa_mixer_programs", "Distinct programs", registry=registry)
        self.items = Gauge("loa_mixer_items", "Broadcast items in the mixer", registry=registry)
        self.booked = Gauge("loa_mixer_booked_items", "Items booked to start on a later frame",
                            registry=registry)
        self.late_starts = Counter(
            "loa_mixer_late_starts_total",
            "Items booked for a frame that had already passed when they were started",
            registry=registry)
        self.encode_seconds = Histogram(
            "loa_mixer_encode_seconds", "Time of one Opus encode of one program's frame",
            buckets=ENCODE_BUCKETS_S, registry=registry)
        self.time_to_air = Histogram(
            "loa_time_to_air_seconds",
            "From the request for an item reaching the streamer (or, without a request, its "
            "start in the mixer) to its first frame handed to the fan-out",
            ["priority"], buckets=TIME_TO_AIR_BUCKETS_S, registry=registry)
        self.tick_seconds = Histogram(
            "loa_mixer_tick_seconds",
            "Wall time of one frame of every programme: render, encode, packets (the deadline "
            "guard's measure)", buckets=TICK_BUCKETS_S, registry=registry)
        self.encoder_threads = Gauge(
            "loa_mixer_encoder_threads", "Threads that encode (the ticking thread included)",
            registry=registry)
        self.degraded = Gauge(
            "loa_mixer_degraded",
            "1 while the host is over capacity and normal and background programmes are encoded "
            "at the cheap setting", registry=registry)
        self.degraded_frames = Counter(
            "loa_mixer_degraded_frames_total",
            "Frames produced with normal and background programmes at the cheap setting",
            registry=registry)
        self.degraded_programs = Gauge(
            "loa_mixer_degraded_programs",
            "Programmes encoded at the cheap setting in the last frame", registry=registry)
        for level in Priority:  # every level is a series from the start, at zero
            self.time_to_air.labels(level.name.lower())


class Mixer:
    def __init__(
        self,
        channels: Iterable[str],
        clock: FrameClock,
        sink: PacketSink,
        *,
        wall: Callable[[], float],
        opus: OpusSettings | None = None,
        fade_ms: int = 10,
        registry: CollectorRegistry | None = None,
        on_finished: Callable[[int], None] = lambda item_id: None,
        workers: int | None = None,
        guard: DeadlineGuard | None = None,
        idle_heartbeat_ms: int | None = None,
    ) -> None:
        """``wall``: the wall clock (Unix seconds) that time to air is measured on; the caller
        owns it (the app passes ``time.time``, a test may pass a fake). ``workers``: threads
        that encode, the ticking one included (None: one per core; 1: everything on the
        ticking thread). ``guard``: the deadline guard (default: its thresholds at this
        clock's frame time). ``idle_heartbeat_ms``: quiet channels send a sender report this
        often and no media (None: every channel sends every frame)."""
        workers = (os.cpu_count() or 1) if workers is None else workers
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers = workers
        self._pool: EncoderPool[_Job] | None = EncoderPool(workers - 1) if workers > 1 else None
        self.guard = guard or DeadlineGuard(clock.ptime_s)
        self.clock = clock
        self.sink = sink
        self.wall = wall
        self.opus = opus or OpusSettings()
        self.lock = threading.RLock()
        self.on_finished = on_finished
        self.metrics = MixerMetrics(registry or CollectorRegistry())
        self.metrics.encoder_threads.set(workers)
        self._fade_samples = 48 * fade_ms
        self.programs: list[Program] = []
        self._outputs: dict[Program, _Output] = {}
        self.channels: dict[str, Channel] = {}
        self._ids: list[str] = []  # row -> channel id
        self._rtp = _RtpRows.fresh([], 0)
        self._row_numbers = np.arange(0)
        self._heartbeat: int | None = None
        self.set_idle_heartbeat(idle_heartbeat_ms)
        self.items: dict[int, Item] = {}
        #: the frame the next ``tick`` produces (one past the last one produced)
        self.next_frame = 0
        self._booked: dict[int, _Booking] = {}
        self._booked_first: int | None = None  # earliest booked frame: one compare per tick
        self._ends: dict[int, int] = {}  # item id -> end frame
        self._ends_first: int | None = None
        # Arrival order decides between items of one level (first come, first served), so it
        # is taken when an item reaches the channels, not when it was booked.
        self._arrivals = itertools.count(1)
        #: started items that have not aired yet -> wall time their time-to-air counts from
        self._unaired: dict[int, float] = {}
        self.codec_delay_s = OpusEncoder(clock.frame_samples, self.opus).lookahead_samples / 48_000
        self.add_channels(channels)

    @_locked
    def set_idle_heartbeat(self, ms: int | None) -> None:
        """Quiet channels beat every ``ms`` from the next frame on (None or 0: every channel
        sends every frame); a channel quiet now falls quiet again after its tail."""
        self._heartbeat = max(1, round(ms / self.clock.ptime_ms)) if ms else None
        self._rtp.idle[:] = 0

    def close(self) -> None:
        """Stop the encoder threads (a mixer that ticks again starts them again)."""
        if self._pool is not None:
            self._pool.close()

    # ------------------------------------------------------------------ channels

    @_locked
    def add_channels(self, ids: Iterable[str]) -> list[str]:
        """Add the channels not here yet; returns them, in order. Each takes a new row at the
        end, so no other channel's row moves, with the state a new mixer gives it (nothing
        sent yet, its timestamp origin from its SSRC, the heartbeat phase of its row), and
        joins the silent programme: it sends from the next frame on, as a new mixer's would."""
        new = [cid for cid in dict.fromkeys(ids) if cid not in self.channels]
        if not new:
            return []
        silence = Program(fade_samples=self._fade_samples)
        into = next((p for p in self.programs if p.signature() == silence.signature()), None)
        if into is None:
            into = silence
            self.programs.append(silence)
        first = len(self._ids)
        rows = _RtpRows.fresh(new, first)
        for i, cid in enumerate(new):
            self.channels[cid] = Channel(cid, int(rows.ssrc[i]), into, first + i)
        into.channels.update(new)
        self._ids += new
        self._rtp = self._rtp.joined(rows)
        self._row_numbers = np.arange(len(self._ids))
        self._find_rows([into])
        return new

    @_locked
    def remove_channels(self, ids: Iterable[str]) -> list[str]:
        """Remove these channels; returns those that were here (the others are ignored). All
        or nothing: a channel that an item is playing, waiting, fading out or booked to start
        on is not removed, and neither is any other (:class:`ValueError` names the channel
        and the item). The rows after a removed one move up; every channel that stays keeps
        its RTP state and its heartbeat phase, and a removed one sends nothing more."""
        gone = [cid for cid in dict.fromkeys(ids) if cid in self.channels]
        booked = {cid: b for b in self._booked.values() for cid in b.channel_ids}
        for cid in gone:
            if (why := self._holding(cid, booked.get(cid))) is not None:
                raise ValueError(f"channel {cid} cannot be removed: {why}")
        if not gone:
            return []
        keep = np.ones(len(self._ids), dtype=bool)
        for cid in gone:
            ch = self.channels.pop(cid)
            keep[ch.row] = False
            ch.program.channels.discard(cid)
        self._ids = [cid for cid in self._ids if cid in self.channels]
        for row, cid in enumerate(self._ids):
            self.channels[cid].row = row
        self._rtp = self._rtp.kept(keep)
        self._row_numbers = np.arange(len(self._ids))
        for emptied in [p for p in self.programs if not p.channels]:
            self.programs.remove(emptied)
            self._outputs.pop(emptied, None)
        self._find_rows(self.programs)
        return gone

    def _holding(self, cid: str, booking: _Booking | None) -> str | None:
        """What keeps a channel from being removed (None: nothing)."""
        program = self.channels[cid].program
        if program.tail is not None:
            return f"item {program.tail[0].id} is fading out on it"
        if (top := program.top()) is not None:
            return f"item {top.id} is {'on air' if top.id == program.current else 'waiting'} on it"
        if booking is not None:
            return f"item {booking.item.id} is booked to start on it at frame {booking.at_frame}"
        return None

    def _find_rows(self, programs: Iterable[Program]) -> None:
        """These programmes' channels changed rows: find them now, between frames, rather than
        in the next one."""
        for program in programs:
            out = self._outputs.get(program)
            if out is not None:
                out.rows = self._rows_of(program)

    # ------------------------------------------------------------------ commands

    @_locked
    def start(self, item: Item, channel_ids: Iterable[str], at_frame: int | None = None,
              end_frame: int | None = None) -> int:
        """Put ``item`` into the given channels; returns how many channels it reaches.

        With ``at_frame`` the item's first sample is the first sample of that frame (or it
        starts at once, counted late, if that frame has passed). With ``end_frame`` it is taken
        out at the start of that frame (fading out over ``fade_ms``) and ``on_finished`` is
        called, as when a source runs out.
        """
        ids = list(dict.fromkeys(channel_ids))
        for cid in ids:
            if cid not in self.channels:
                raise KeyError(cid)
        first = self.next_frame if at_frame is None else max(at_frame, self.next_frame)
        if end_frame is not None and end_frame <= first:
            raise ValueError(f"end frame {end_frame} is not after the start frame {first}")
        if at_frame is not None and at_frame > self.next_frame:
            self._booked[item.id] = _Booking(at_frame, item, ids, end_frame)
            if self._booked_first is None or at_frame < self._booked_first:
                self._booked_first = at_frame
            self.metrics.booked.set(len(self._booked))
            return len(ids)
        if at_frame is not None and at_frame < self.next_frame:
            self.metrics.late_starts.inc()
        return self._start_now(item, ids, end_frame)

    def _start_now(self, item: Item, channel_ids: list[str], end_frame: int | None) -> int:
        by_program: dict[int, tuple[Program, list[Channel]]] = {}
        for cid in channel_ids:
            ch = self.channels[cid]
            by_program.setdefault(id(ch.program), (ch.program, []))[1].append(ch)
        if by_program and item.id not in self.items:
            item.order = next(self._arrivals)
        for program, chans in by_program.values():
            if len(chans) == len(program.channels):
                program.add(item)  # every channel of the program: change it in place
                continue
            forked = program.fork()
            forked.add(item)
            for ch in chans:
                program.channels.discard(ch.id)
                forked.channels.add(ch.id)
                ch.program = forked
            self._regrouped(program)
            self.programs.append(forked)
        if by_program:
            self.items[item.id] = item
            if item.aired_at is None and item.id not in self._unaired:
                self._unaired[item.id] = (self.wall() if item.requested_at is None
                                          else item.requested_at)
            if end_frame is not None:
                self._ends[item.id] = end_frame
                if self._ends_first is None or end_frame < self._ends_first:
                    self._ends_first = end_frame
        return sum(len(c) for _, c in by_program.values())

    @_locked
    def stop(self, item_id: int) -> bool:
        """Take an item out of every channel (it fades out where it was playing), or cancel
        its booking if it has not started yet."""
        if self._booked.pop(item_id, None) is not None:
            self._booked_first = min((b.at_frame for b in self._booked.values()), default=None)
            self.metrics.booked.set(len(self._booked))
            return True
        if item_id not in self.items:
            return False
        for program in self.programs:
            program.remove(item_id)
        del self.items[item_id]
        self._ends.pop(item_id, None)
        self._unaired.pop(item_id, None)
        return True

    @_locked
    def booked(self, item_id: int) -> int | None:
        """The frame an item is booked to start on, or None if it is not waiting to start."""
        b = self._booked.get(item_id)
        return None if b is None else b.at_frame

    @_locked
    def end_frame(self, item_id: int) -> int | None:
        """The frame an item is booked to end on (None: it plays until it runs out)."""
        b = self._booked.get(item_id)
        return b.end_frame if b is not None else self._ends.get(item_id)

    @_locked
    def channels_of(self, item_id: int) -> list[str]:
        """Channels the item is in (playing or waiting), or booked for."""
        b = self._booked.get(item_id)
        if b is not None:
            return list(b.channel_ids)
        return sorted(c for p in self.programs if item_id in p.items for c in p.channels)

    @_locked
    def on_air(self, item_id: int) -> list[str]:
        """Channels where the item is the one playing now."""
        return sorted(c for p in self.programs if p.current == item_id for c in p.channels)

    # ------------------------------------------------------------------ frames

    @_locked
    def tick(self, k: int) -> None:
        started = time.perf_counter()
        n = self.clock.frame_samples
        finished: list[int] = []
        # Ends before starts: a window that ends where the next one begins hands over cleanly.
        if self._ends_first is not None and self._ends_first <= k:
            self._end_due(k)
        if self._booked_first is not None and self._booked_first <= k:
            self._start_due(k)
        self.next_frame = k + 1
        # Stamp what a packet *decodes* to: the decoder's output lags the encoder's input by
        # the lookahead, so its first sample was captured that much earlier. Speakers (and any
        # abs-capture-time receiver) then place audio exactly, with no codec knowledge.
        capture_ntp = unix_to_ntp64(self.clock.capture_wall(k) - self.codec_delay_s)
        frame = _Frame(k, capture_ntp, np.uint32(k * n & _U32), k % SR_INTERVAL_FRAMES == 0)
        degraded = self.guard.degraded
        pool = self._pool if len(self.programs) > 1 else None
        if self._pool is not None:  # a frame that failed may have left jobs in the pool
            self._pool.settle()
        jobs: list[_Job] = []
        encoded = 0
        sent = 0  # jobs[:sent] have gone out
        for level, program in self._by_level():
            out = self._outputs.get(program)
            if out is None:
                out = self._outputs[program] = _Output(Limiter(), OpusEncoder(n, self.opus))
            if out.rows is None:
                out.rows = self._rows_of(program)
            rows: _Rows | None = out.rows
            if self._heartbeat is not None:
                rows = self._sending(program, out.rows, frame)
                if rows is None:
                    continue  # every channel of it is quiet: nothing to render or encode
            cheap = degraded and level < Priority.PRIORITY
            if cheap != out.cheap:
                out.set_cheap(cheap)
            job = _Job(program, out, rows, out.limiter.process(program.render(n, finished)))
            encoded += 1
            if pool is None:
                job.encode()
                self._send(job, frame)
                continue
            jobs.append(job)
            pool.submit(job)
            # What is encoded already goes out now: the emergency first, early in the frame.
            while (done := pool.poll()) is not None:
                done.done = True
            while sent < len(jobs) and jobs[sent].done:
                self._send(jobs[sent], frame)
                sent += 1
        if pool is not None:
            self._send_rest(pool, jobs, sent, frame)
        self.metrics.frames.inc()
        self.metrics.encodes.inc(encoded)
        self.metrics.encodes_per_frame.set(encoded)
        self._merge()
        self.metrics.programs.set(len(self.programs))
        self.metrics.items.set(len(self.items))
        if finished:
            self._settle(finished)
        self._guard(time.perf_counter() - started, frame, degraded)

    def _send_rest(self, pool: EncoderPool[_Job], jobs: list[_Job], sent: int,
                   frame: _Frame) -> None:
        """The jobs not sent yet, in order; this thread encodes what no encoder thread has
        taken yet."""
        while sent < len(jobs):
            if jobs[sent].done:
                self._send(jobs[sent], frame)
                sent += 1
            elif (own := pool.steal()) is not None:
                own.encode()
                own.done = True
            else:
                pool.wait().done = True

    def _by_level(self) -> list[tuple[int, Program]]:
        """The programmes with the level of their top item, highest first; the same order for
        the same programmes every frame (a stable sort of ``programs``)."""
        levels = [(_SILENT if (top := p.top()) is None else int(top.priority), p)
                  for p in self.programs]
        levels.sort(key=lambda lp: -lp[0])
        return levels

    def _send(self, job: _Job, frame: _Frame) -> None:
        """A programme's packets (and sender reports) to every channel of it."""
        if job.error is not None:
            raise job.error
        self.metrics.encode_seconds.observe(job.encode_s)
        out, program, payload = job.out, job.program, job.payload
        if out.cheap:
            frame.cheap_s += job.encode_s
            frame.cheap_n += 1
        else:
            frame.full_s += job.encode_s
            frame.full_n += 1
        rows = job.rows
        cur = program.current
        packet = bytearray(HEADER_LEN + len(payload))
        write_header(packet, 0, 0, 0, frame.capture_ntp, cur or 0,
                     priority=program.items[cur].priority if cur in program.items else 0)
        packet[HEADER_LEN:] = payload
        self.sink.publish_block(rows.ids, self._packets_of(rows, packet, frame.ts_offset))
        if cur in self._unaired:
            self._aired(program.items[cur])
        if frame.send_sr:
            self.sink.publish_block(rows.ids,
                                    self._reports_of(rows, frame.capture_ntp, frame.ts_offset))

    def _sending(self, program: Program, rows: _Rows, frame: _Frame) -> _Rows | None:
        """The channels of ``program`` that send media this frame (None: none of them), with
        those that end a pause marked; quiet ones get their heartbeat when it is due, and
        those that fall quiet now are paused at the sink. Numpy over the rows: a province
        falls quiet together."""
        at, rtp = rows.at, self._rtp
        if not program.idle:
            idle = rtp.idle[at]  # a view when ``at`` is a slice: read it before zeroing it
            if not idle.any():
                return rows
            resumed = np.flatnonzero(idle > QUIET_TAIL_FRAMES)
            rtp.idle[at] = 0
            return _Rows(rows.ids, at, resumed) if len(resumed) else rows
        run = rtp.idle[at] + 1
        rtp.idle[at] = run
        sending = run <= QUIET_TAIL_FRAMES
        if sending.all():
            return rows
        assert self._heartbeat is not None
        falling = run == QUIET_TAIL_FRAMES + 1
        beat = falling | (~sending & ((frame.k + rtp.phase[at]) % self._heartbeat == 0))
        if beat.any():
            beating = self._subset(rows, beat)
            self.sink.publish_block(beating.ids, self._reports_of(
                beating, frame.capture_ntp, frame.ts_offset))
        if falling.any():
            self.sink.pause(self._subset(rows, falling).ids)
        return self._subset(rows, sending) if sending.any() else None

    def _subset(self, rows: _Rows, mask: np.ndarray) -> _Rows:
        picked = np.flatnonzero(mask)
        return _Rows([rows.ids[i] for i in picked], self._row_numbers[rows.at][picked])

    def _guard(self, tick_s: float, frame: _Frame, degraded: bool) -> None:
        m = self.metrics
        m.tick_seconds.observe(tick_s)
        if degraded:
            m.degraded_frames.inc()
        m.degraded_programs.set(frame.cheap_n)
        m.degraded.set(self.guard.record(
            tick_s, full_s=frame.full_s, full_n=frame.full_n, cheap_s=frame.cheap_s,
            cheap_n=frame.cheap_n, threads=max(1, min(self.workers, frame.full_n + frame.cheap_n))))

    def _rows_of(self, program: Program) -> _Rows:
        rows = np.sort(np.fromiter((self.channels[c].row for c in program.channels), np.intp,
                                   len(program.channels)))
        ids = [self._ids[r] for r in rows]
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
            return _Rows(ids, slice(int(rows[0]), int(rows[-1]) + 1))
        return _Rows(ids, rows)

    def _packets_of(self, rows: _Rows, packet: bytearray, ts_offset: np.uint32) -> np.ndarray:
        """One datagram per channel: ``packet`` with each channel's timestamp and SSRC;
        counts the octets for the sender reports."""
        block = np.empty((len(rows.ids), len(packet)), dtype=np.uint8)
        block[:] = np.frombuffer(packet, dtype=np.uint8)
        columns = block.view(_rtp_columns(len(packet)))[:, 0]
        at, rtp = rows.at, self._rtp
        columns["seq"] = rtp.seq[at]
        columns["ts"] = rtp.ts0[at] + ts_offset
        columns["ssrc"] = rtp.ssrc[at]
        rtp.seq[at] += np.uint16(1)  # wraps at 2^16, as RTP's does
        rtp.count[at] += np.uint32(1)
        rtp.octets[at] += np.uint32(len(packet) - HEADER_LEN)
        if rows.resumed is not None:
            block[rows.resumed, 1] |= _MARKER
        return block

    def _reports_of(self, rows: _Rows, capture_ntp: int, ts_offset: np.uint32) -> np.ndarray:
        """One RTCP sender report per channel, for the frame just sent."""
        report = np.frombuffer(SenderReport(0, capture_ntp, 0, 0, 0).build(), dtype=np.uint8)
        block = np.empty((len(rows.ids), len(report)), dtype=np.uint8)
        block[:] = report
        columns = block.view(_SR_COLUMNS)[:, 0]
        at, rtp = rows.at, self._rtp
        columns["ssrc"] = rtp.ssrc[at]
        columns["ts"] = rtp.ts0[at] + ts_offset
        columns["packets"] = rtp.count[at]
        columns["octets"] = rtp.octets[at]
        return block

    def _aired(self, item: Item) -> None:
        now = self.wall()
        since = self._unaired.pop(item.id)
        item.aired_at = now
        self.metrics.time_to_air.labels(item.priority.name.lower()).observe(now - since)

    def _end_due(self, k: int) -> None:
        due = [iid for iid, f in self._ends.items() if f <= k]
        for iid in due:
            del self._ends[iid]
            if self.stop(iid):
                self.on_finished(iid)
        self._ends_first = min(self._ends.values(), default=None)

    def _start_due(self, k: int) -> None:
        due = sorted((b for b in self._booked.values() if b.at_frame <= k),
                     key=lambda b: b.at_frame)  # stable: same frame keeps booking order
        for b in due:
            del self._booked[b.item.id]
            if b.at_frame < k:  # the clock skipped over its frame after a stall
                self.metrics.late_starts.inc()
            if b.end_frame is not None and b.end_frame <= k:
                self.on_finished(b.item.id)  # its whole window was skipped over
                continue
            self._start_now(b.item, b.channel_ids, b.end_frame)
        self._booked_first = min((b.at_frame for b in self._booked.values()), default=None)
        self.metrics.booked.set(len(self._booked))

    def _merge(self) -> None:
        """Programs that became identical (e.g. all back to silence) share one encode again."""
        alive = [p for p in self.programs if p.channels]
        by_sig: dict[tuple[object, ...], Program] = {}
        keep: list[Program] = []
        for p in sorted(alive, key=lambda p: -len(p.channels)):
            sig = p.signature()
            into = by_sig.get(sig)
            if into is None:
                by_sig[sig] = p
                keep.append(p)
                continue
            for cid in p.channels:
                self.channels[cid].program = into
            into.channels |= p.channels
            p.channels.clear()
            self._regrouped(into)
        if len(keep) != len(self.programs):
            for gone in set(self.programs) - set(keep):
                self._outputs.pop(gone, None)
            self.programs = keep

    def _regrouped(self, program: Program) -> None:
        """``program`` gained or lost channels: its rows are found again next frame."""
        out = self._outputs.get(program)
        if out is not None:
            out.rows = None

    def _settle(self, finished: list[int]) -> None:
        still = {i for p in self.programs for i in p.items}
        for item_id in set(finished):
            if item_id not in still and self.items.pop(item_id, None) is not None:
                self._ends.pop(item_id, None)
                self._unaired.pop(item_id, None)
                self.on_finished(item_id)
