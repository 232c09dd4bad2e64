"""The mixer: every leaf channel's program, rendered, limited, encoded and packetized per frame.

``start``/``stop`` change which items reach which channels; ``tick(k)`` produces frame ``k``
of every channel and hands each RTP datagram to ``publish``. A start may be booked for a later
frame (a schedule fires on the frame that matches its wall-clock time) and given an end frame (a
relay window is cut at its end); both are applied at the top of ``tick``, before the frame is
mixed, so they are exact to the sample whatever the event loop's timing. Channels that play
the same thing share one :class:`Program` and so one mix, one Opus encode and one packet; per
channel only the sequence number, timestamp and SSRC are patched in before the datagram is
copied out.
Sans-IO: the caller owns the clock and the sockets (``streamer/app.py``).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from streamer.rtp.packet import HEADER_LEN, ssrc_for, unix_to_ntp64, write_header
from streamer.rtp.rtcp import SenderReport

from .clock import FrameClock
from .encoder import OpusEncoder
from .loudness import Limiter
from .program import Item, Program

Publish = Callable[[str, bytes], None]
SR_INTERVAL_FRAMES = 50
_SEQ_TS_SSRC = struct.Struct("!HII")  # bytes 2-11 of the RTP header


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
    ts0: int
    seq: int = 0
    packets: int = 0
    octets: int = 0


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


class Mixer:
    def __init__(
        self,
        channels: Iterable[str],
        clock: FrameClock,
        publish: Publish,
        *,
        bitrate: int = 32_000,
        fade_ms: int = 10,
        registry: CollectorRegistry | None = None,
        on_finished: Callable[[int], None] = lambda item_id: None,
    ) -> None:
        self.clock = clock
        self.publish = publish
        self.bitrate = bitrate
        self.on_finished = on_finished
        self.metrics = MixerMetrics(registry or CollectorRegistry())
        silence = Program(fade_samples=48 * fade_ms)
        self.programs: list[Program] = [silence]
        self._encoders: dict[Program, OpusEncoder] = {}
        self._limiters: dict[Program, Limiter] = {}
        self.channels: dict[str, Channel] = {}
        for cid in channels:
            ssrc = ssrc_for(cid)
            self.channels[cid] = Channel(cid, ssrc, silence, ts0=ssrc * 7919 & 0xFFFF_FFFF)
            silence.channels.add(cid)
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
        self.codec_delay_s = OpusEncoder(clock.frame_samples).lookahead_samples / 48_000

    # ------------------------------------------------------------------ commands

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
            self.programs.append(forked)
        if by_program:
            self.items[item.id] = item
            if end_frame is not None:
                self._ends[item.id] = end_frame
                if self._ends_first is None or end_frame < self._ends_first:
                    self._ends_first = end_frame
        return sum(len(c) for _, c in by_program.values())

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
        return True

    def booked(self, item_id: int) -> int | None:
        """The frame an item is booked to start on, or None if it is not waiting to start."""
        b = self._booked.get(item_id)
        return None if b is None else b.at_frame

    def end_frame(self, item_id: int) -> int | None:
        """The frame an item is booked to end on (None: it plays until it runs out)."""
        b = self._booked.get(item_id)
        return b.end_frame if b is not None else self._ends.get(item_id)

    def channels_of(self, item_id: int) -> list[str]:
        """Channels the item is in (playing or waiting), or booked for."""
        b = self._booked.get(item_id)
        if b is not None:
            return list(b.channel_ids)
        return sorted(c for p in self.programs if item_id in p.items for c in p.channels)

    def on_air(self, item_id: int) -> list[str]:
        """Channels where the item is the one playing now."""
        return sorted(c for p in self.programs if p.current == item_id for c in p.channels)

    # ------------------------------------------------------------------ frames

    def tick(self, k: int) -> None:
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
        ts_offset = k * n
        send_sr = k % SR_INTERVAL_FRAMES == 0
        for program in self.programs:
            pcm = program.render(n, finished)
            limiter = self._limiters.get(program)
            if limiter is None:
                limiter = self._limiters[program] = Limiter()
            encoder = self._encoders.get(program)
            if encoder is None:
                encoder = self._encoders[program] = OpusEncoder(n, self.bitrate)
            payload = encoder.encode(limiter.process(pcm))
            # One packet per program: only sequence number, timestamp and SSRC differ between
            # its channels, so those 10 bytes are all that is written per channel.
            packet = bytearray(HEADER_LEN + len(payload))
            cur = program.current
            write_header(packet, 0, 0, 0, capture_ntp, cur or 0,
                         priority=program.items[cur].priority if cur in program.items else 0)
            packet[HEADER_LEN:] = payload
            octets = len(payload)
            channels, publish, pack = self.channels, self.publish, _SEQ_TS_SSRC.pack_into
            for cid in program.channels:
                ch = channels[cid]
                pack(packet, 2, ch.seq, (ch.ts0 + ts_offset) & 0xFFFF_FFFF, ch.ssrc)
                ch.seq = (ch.seq + 1) & 0xFFFF
                ch.packets += 1
                ch.octets += octets
                publish(cid, bytes(packet))
            if send_sr:
                for cid in program.channels:
                    ch = channels[cid]
                    ts = (ch.ts0 + ts_offset) & 0xFFFF_FFFF
                    publish(cid, SenderReport(ch.ssrc, capture_ntp, ts, ch.packets,
                                              ch.octets).build())
        self.metrics.frames.inc()
        self.metrics.encodes.inc(len(self.programs))
        self.metrics.encodes_per_frame.set(len(self.programs))
        self._merge()
        self.metrics.programs.set(len(self.programs))
        self.metrics.items.set(len(self.items))
        if finished:
            self._settle(finished)

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
        if len(keep) != len(self.programs):
            for gone in set(self.programs) - set(keep):
                self._encoders.pop(gone, None)
                self._limiters.pop(gone, None)
            self.programs = keep

    def _settle(self, finished: list[int]) -> None:
        still = {i for p in self.programs for i in p.items}
        for item_id in set(finished):
            if item_id not in still and self.items.pop(item_id, None) is not None:
                self._ends.pop(item_id, None)
                self.on_finished(item_id)
