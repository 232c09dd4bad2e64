"""Synchronised playout: every sample plays at its capture time + playout delay on the wall clock.

All speakers of a channel receive the same capture times (RTP header extension) and add the
same delay, so, with NTP-disciplined wall clocks, they play in step and neighbouring horns do not
echo. The output is one timeline anchored at wall time ``t0``: sample ``i`` plays at
``t0 + i / rate_hz``; a frame goes to ``round((capture_time + delay - t0) * rate_hz)`` (snapped to
the end of the previous frame when within ``slack`` samples, so stamp rounding never clicks),
holes are filled with zeros and audio arriving too late for its place is trimmed, never shifted.

Emergencies are forced in-band: a frame whose RTP priority is level 3 plays at the emergency
volume and unmuted, whatever the operator's volume and mute say (those are left as they are and
apply again from the first frame of lower priority), with a 10 ms glide between the two gains so
that the switch never clicks. The playout hands the decoded PCM of those frames to ``capture``
(the speaker's emergency cache, ``emergency.py``) and can replay such audio itself when the
stream is gone (:meth:`Playout.play_local`); any stream packet ends a local replay at once.

The core (:class:`Timeline`, :class:`Playout`) is sans-IO: wall times come in as arguments and it
never reads a clock, blocks, or lets a bad payload stop playback. The asyncio edge that wakes
it every packet time (or at each packet) is ``rhythm.py``.
"""

from __future__ import annotations

import ctypes
import functools
import math
import struct
from array import array
from collections.abc import Callable
from typing import Any, Protocol

from wire.packet import MalformedPacket, RtpPacket
from wire.priority import Priority

from .jitter import Arrival, Frame, FrameKind, JitterBuffer
from .output import Samples, Sink

RATE_HZ = 48_000
MAX_FRAME = 5_760  # 120 ms, the longest Opus packet
LEVEL_FLOOR_DBFS = -120.0
VOLUME_RANGE_DB = 50.0
FADE_MS = 10.0


class Decoder(Protocol):
    def decode(self, payload: bytes, frame_size: int, fec: bool = False) -> bytes:
        """int16 PCM; an empty payload asks for concealment; raises MalformedPacket."""
        ...

    def set_gain(self, gain: float) -> bool:
        """Apply the linear ``gain`` (0 < gain <= 1) to what is decoded from now on; False if
        this decoder cannot (the playout then applies it)."""
        ...


class OpusDecoder:
    """libopus (loaded by opuslib), mono 48 kHz, with its errors turned into MalformedPacket.

    ``opus_decode`` is called directly into one buffer kept for the decoder's life:
    ``opuslib.Decoder.decode`` allocates a new buffer per frame and turns the samples into a
    list of Python ints and back (a few thousand objects per frame, 50 times a second), the
    largest share of a speaker's CPU after the event loop itself.

    The volume is applied by libopus too (``OPUS_SET_GAIN``, in Q8 dB, i.e. to 1/256 dB): it
    scales the samples it makes anyway, where the playout would go over each sample again in
    Python (no numpy in a small speaker, ``docs/operations.md``)."""

    SET_GAIN = 4034  # OPUS_SET_GAIN_REQUEST (opus_defines.h)

    def __init__(self, rate_hz: int = RATE_HZ) -> None:
        import opuslib
        import opuslib.api.decoder

        self._error = opuslib.OpusError
        self._dec = opuslib.Decoder(rate_hz, 1)  # owns the libopus state, freed with it
        # the bare symbol, not opuslib's binding of it: that converts each argument through
        # its argtypes, and these are ints and pointers ctypes passes as they are
        self._opus_decode = opuslib.api.libopus["opus_decode"]
        self._opus_decode.restype = ctypes.c_int
        self._pcm = (ctypes.c_int16 * MAX_FRAME)()
        self._out = ctypes.cast(self._pcm, ctypes.POINTER(ctypes.c_int16))
        self._ctl = opuslib.api.decoder.libopus_ctl
        self._gain = 1.0
        self._gain_q8 = 0

    def decode(self, payload: bytes, frame_size: int, fec: bool = False) -> bytes:
        n = self._opus_decode(self._dec.decoder_state, payload, len(payload), self._out,
                              min(frame_size, MAX_FRAME), int(fec))
        if n < 0:
            raise MalformedPacket(f"opus: {self._error(n)}")
        return ctypes.string_at(self._pcm, 2 * n)

    def set_gain(self, gain: float) -> bool:
        if gain == self._gain:
            return True
        self._gain = gain
        q8 = max(-32768, min(32767, round(20.0 * math.log10(gain) * 256.0)))
        if q8 != self._gain_q8:
            err = self._ctl(self._dec.decoder_state, self.SET_GAIN, ctypes.c_int32(q8))
            if err < 0:
                raise ValueError(f"opus: {self._error(err)}")
            self._gain_q8 = q8
        return True


def volume_gain(volume_pct: float) -> float:
    """Volume percent to linear gain, dB law: 100 % is 0 dB, each percent below it 0.5 dB less
    (50 % = -25 dB, 1 % = -49.5 dB), 0 % is silence. Ears hear loudness in dB, so equal steps of
    the knob sound like equal steps."""
    v = min(max(volume_pct, 0.0), 100.0)
    if v == 0.0:
        return 0.0
    return float(10.0 ** ((v - 100.0) * (VOLUME_RANGE_DB / 100.0) / 20.0))


class GainFade:
    """The gain applied to the output. A change announced with :meth:`glide` moves linearly
    over ``fade_samples`` instead of jumping: a muted or 20 % horn going to full volume within
    one sample clicks as loud as the alarm itself. Other changes (the operator's volume and
    mute) apply from the next frame, as they always have.

    Samples are int16 in Python sequences (a ``memoryview`` cast to ``h``, an ``array``): no
    numpy in the playout. The steady state does no per-sample Python work: at the gain the
    decoder already applied the samples pass through, muted they are zeros; only a glide or a
    gain the decoder could not apply goes over each sample (one multiply, truncated to int16
    as before)."""

    def __init__(self, gain: float, fade_samples: int) -> None:
        self.gain = gain  # the gain of the last sample written
        self.fade_samples = max(1, fade_samples)
        self._from = gain
        self._left = 0  # samples of the glide still to go

    @property
    def gliding(self) -> bool:
        return self._left > 0

    def glide(self) -> None:
        """Reach the next target gradually, starting from the gain of the last sample."""
        self._from = self.gain
        self._left = self.fade_samples

    def apply(self, src: Samples, target: float, applied: float = 1.0) -> Samples:
        """``src`` times the gain, gliding towards ``target`` if asked to. ``src`` already
        carries the gain ``applied`` (the decoder's)."""
        k = min(self._left, len(src))
        if not k:
            self.gain = target
            if target == applied:
                return src
            if target == 0.0:
                return array("h", bytes(2 * len(src)))
            r = target / applied
            return array("h", [int(x * r) for x in src])
        done = self.fade_samples - self._left
        step = (target - self._from) / self.fade_samples
        base = self._from + step * done
        inv = 1.0 / applied
        out = array("h", [int(x * (base + step * (i + 1)) * inv) for i, x in enumerate(src[:k])])
        r = target * inv
        out.extend([int(x * r) for x in src[k:]])
        self._left -= k
        self.gain = base + step * k if k == len(src) else target
        return out


def sum_of_squares(pcm: Samples) -> float:
    """The sum of the squares of int16 samples (``math.hypot`` loops in C; a compiled
    ``struct`` makes the samples' ints faster than iterating a memoryview does)."""
    return math.hypot(*_int16s(len(pcm)).unpack(pcm)) ** 2


@functools.lru_cache(maxsize=16)
def _int16s(n: int) -> struct.Struct:
    return struct.Struct(f"{n}h")


class Timeline:
    """Wall time to output sample index, and the write cursor of the sink."""

    def __init__(self, t0: float, rate_hz: int = RATE_HZ, slack: int = 24) -> None:
        self.rate_hz = rate_hz
        self.t0 = round(t0 * rate_hz) / rate_hz  # on a sample, so two files align exactly
        self.slack = slack
        self.cursor = 0  # next sample index the sink will receive

    def index(self, t: float) -> int:
        return round((t - self.t0) * self.rate_hz)

    def time(self, index: int) -> float:
        return self.t0 + index / self.rate_hz

    def place(self, t: float, n: int) -> tuple[int, int]:
        """For ``n`` samples due at wall time ``t``: (samples to write first, samples to
        trim). Within ``slack`` of the cursor a frame stays contiguous, and the difference is
        taken up one sample per frame (one sample repeated or dropped: inaudible, unlike a
        gap), which is how two clocks a few ppm apart stay within a sample of each other
        without a click; further off, the hole is silence or the late part is trimmed."""
        d = self.index(t) - self.cursor
        if d == 0:
            return 0, 0
        if abs(d) <= self.slack:
            return (1, 0) if d > 0 else (0, 1)
        if d > 0:
            return d, 0
        return 0, min(-d, n)


class Playout:
    """Jitter buffer + Opus decoder + volume + timeline + broadcast tracking for one channel.

    ``on_event`` receives play-log records: ``play_start`` when a broadcast id starts playing and
    ``play`` (start, end, RMS level) when it stops, changes, or the stream goes quiet for
    ``broadcast_gap_s``. Both carry the broadcast's ``priority`` level, and ``local: true`` for
    a replay the speaker made on its own. Broadcast 0 (nothing on air) is not logged. The level
    is measured after volume, i.e. what the speaker really played, in dB relative to a
    full-scale square wave (a full-scale sine reads -3 dBFS).

    ``capture(broadcast_id, pcm)`` receives the decoded int16 PCM (before volume) of every
    level-3 frame, for the emergency cache.

    ``measure_level=False`` leaves the level out of the ``play`` records, for a speaker where
    nobody reads it (no play log, no MQTT link): the sum of squares of every frame is a good
    part of a playing speaker's CPU.
    """

    def __init__(
        self,
        sink: Sink,
        decoder: Decoder,
        t0: float,
        delay_ms: float = 300.0,
        rate_hz: int = RATE_HZ,
        volume_pct: float = 100.0,
        muted: bool = False,
        max_conceal: int = 5,
        capacity: int = 512,
        slack: int = 24,
        broadcast_gap_s: float = 1.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        emergency_volume_pct: float = 100.0,
        capture: Callable[[int, bytes], None] | None = None,
        measure_level: bool = True,
    ) -> None:
        self.sink = sink
        self.decoder = decoder
        self.delay_s = delay_ms / 1000.0
        self.rate_hz = rate_hz
        self.timeline = Timeline(t0, rate_hz, slack)
        self.jitter = JitterBuffer(capacity)
        self.max_conceal = max_conceal
        self.broadcast_gap_s = broadcast_gap_s
        self.on_event = on_event or (lambda event: None)
        self.muted = muted
        self.volume_pct = volume_pct
        self._gain = volume_gain(volume_pct)
        self.emergency_volume_pct = emergency_volume_pct
        self._emergency_gain = volume_gain(emergency_volume_pct)
        self._fade = GainFade(0.0 if muted else self._gain, round(FADE_MS * rate_hz / 1000))
        self._forced = False  # the last samples went out at the emergency volume
        self.capture = capture or (lambda broadcast_id, pcm: None)
        self.measure_level = measure_level
        # a sink that meters what it is given takes our measurement (``mqtt.ToneOverlay``)
        self._tell_sink = measure_level and hasattr(sink, "measured")
        # cached emergency audio the speaker replays on its own (see play_local)
        self._local: Samples | None = None
        self._local_pos = 0
        self.local_broadcast_id = 0
        self.local_priority = 0
        self.frame_samples = rate_hz // 50  # 20 ms until a packet says otherwise
        self._next_play: float | None = None  # nominal play time after the last frame
        #: the channel fell quiet (its upstream's heartbeat said so, ``net.py``) and no packet
        #: has come since: once what is buffered has played there is nothing to conceal
        self.quiet = False
        self._concealed = 0  # consecutive concealed frames
        #: set by :meth:`tick`: when to tick again for a missing frame it waits for
        self.wake_at: float | None = None
        self._applied = 1.0  # the gain the decoder applied to the frame being played
        self._last = 0  # the last sample written
        # the broadcast on air and its running level
        self.broadcast_id = 0
        self._bc_priority = 0
        self._bc_local = False
        self._bc_start = 0.0
        self._bc_end = 0.0
        self._bc_sumsq = 0.0
        self._bc_samples = 0
        # counters
        self.frames = 0
        self.fec = 0
        self.plc = 0
        self.bad_payloads = 0
        self.late_samples = 0

    @property
    def ptime_s(self) -> float:
        return self.frame_samples / self.rate_hz

    def set_volume(self, volume_pct: float) -> None:
        self.volume_pct = volume_pct
        self._gain = volume_gain(volume_pct)

    def set_emergency_volume(self, volume_pct: float) -> None:
        self.emergency_volume_pct = volume_pct
        self._emergency_gain = volume_gain(volume_pct)

    @property
    def emergency_playing(self) -> bool:
        """An emergency is on the horn: level-3 frames of the stream, or a local replay."""
        return self.broadcast_id != 0 and self._bc_priority == Priority.EMERGENCY

    @property
    def local_playing(self) -> bool:
        return self._local is not None

    @property
    def idle(self) -> bool:
        """Nothing to play until a packet comes: the channel is quiet, what it sent has
        played, and no local replay runs (the speaker may then beat less often)."""
        return self.quiet and not self.jitter.depth and self._local is None

    # ------------------------------------------------------------------ input

    def receive(self, pkt: RtpPacket, capture_time: float) -> Arrival:
        if self._local is not None:
            self.stop_local()  # the network stream wins over the speaker's own replay
        self.quiet = False
        return self.jitter.push(pkt.ssrc, pkt.seq, pkt.ts, capture_time, pkt.payload,
                                pkt.broadcast_id, pkt.priority)

    def play_local(self, pcm: Samples, broadcast_id: int,
                   priority: int = Priority.EMERGENCY) -> None:
        """Replay ``pcm`` (int16, cached emergency audio or a stored clip) from the next tick
        on, logged as ``broadcast_id`` at ``priority`` with ``local: true``; an emergency at
        the emergency volume and unmuted, anything else as the stream would play it. It ends
        by itself, with :meth:`stop_local`, or at the first stream packet."""
        self.stop_local()
        self._local, self._local_pos, self.local_broadcast_id = pcm, 0, broadcast_id
        self.local_priority = priority

    def stop_local(self) -> None:
        if self._local is None:
            return
        self._local, self.local_broadcast_id, self.local_priority = None, 0, 0
        if self._bc_local:
            self._end_broadcast()

    # ------------------------------------------------------------------ output

    def tick(self, now: float, shift_s: float = 0.0, ahead_s: float = 0.0) -> int:
        """Emit every frame whose play time is within one packet time (or ``ahead_s``, if
        longer: the time to the next tick) of ``now``; returns the number of frames emitted.
        Then pads the output with silence up to ``now``. ``shift_s``: the streamer's clock
        minus ours (capture times are the streamer's; a frame plays at capture + delay -
        shift on ours).

        A missing frame is concealed only once it is within one packet time of ``now``, as
        if ticks came every packet time: the frames before it are written ``ahead_s`` ahead,
        and :attr:`wake_at` says when to tick again to conceal it (or play it, if its packet
        came meanwhile: one held for its batch's LOAS, or asked for again)."""
        must = now + self.ptime_s  # written one packet time ahead so the sink never starves
        horizon = now + ahead_s if ahead_s > self.ptime_s else must
        self.wake_at = None
        emitted = 0
        jb = self.jitter
        while True:
            head = jb.next_present()
            if head is None:
                if self.quiet:  # a pause, not a loss: silence, and the next packet starts anew
                    self._next_play = None
                    break
                # Nothing buffered: conceal a few frames (the stream may only have hiccuped),
                # then fall silent; a stopped stream must not be "concealed" for ever.
                if (self._next_play is None or self._concealed >= self.max_conceal
                        or self._next_play > horizon):
                    break
                if self._next_play > must:  # its packet may still come: wait for it
                    self.wake_at = self._next_play - self.ptime_s
                    break
                self._play(jb.pop(), self._next_play)
            else:
                gap, capture_time = head
                if gap and self._next_play is None:
                    jb.skip()  # nothing played yet: start at the first packet
                    continue
                play_time = capture_time - shift_s + self.delay_s - gap * self.ptime_s
                if play_time > horizon:
                    break
                # A hole is concealed a frame at a time, each when it is due, so that packets
                # still to come for it (a batch whose signature is late, a packet sent again)
                # play if they make it; past max_conceal frames it is silence, not PLC.
                if gap and self._concealed >= self.max_conceal:
                    jb.skip()
                    continue
                if gap and play_time > must:
                    self.wake_at = play_time - self.ptime_s
                    break
                self._play(jb.pop(), play_time)
            emitted += 1
        if self._local is not None:
            self._play_local(horizon)
        pad = self.timeline.index(now) - self.timeline.cursor
        if pad > 0:
            self.sink.write_silence(pad)
            self.timeline.cursor += pad
            self._last = 0
        if self.broadcast_id and now - self._bc_end > self.broadcast_gap_s:
            self._end_broadcast()
        return emitted

    def close(self, now: float) -> None:
        """Stop playing: pad to ``now`` and log the broadcast on air. The caller closes the sink."""
        pad = self.timeline.index(now) - self.timeline.cursor
        if pad > 0:
            self.sink.write_silence(pad)
            self.timeline.cursor += pad
        self._local = None
        self._end_broadcast()

    def _decode(self, frame: Frame) -> bytes:
        n = self.frame_samples
        if frame.kind is FrameKind.PACKET:
            try:
                pcm = self.decoder.decode(frame.payload, MAX_FRAME)
                if pcm:
                    self.frame_samples = len(pcm) // 2
                    self._concealed = 0
                    return pcm
            except MalformedPacket:
                pass
            self.bad_payloads += 1
        elif frame.kind is FrameKind.FEC:
            try:
                pcm = self.decoder.decode(frame.payload, n, fec=True)
                if pcm:
                    self.fec += 1
                    self._concealed += 1
                    return pcm
            except MalformedPacket:
                pass
        self.plc += 1
        self._concealed += 1
        try:
            return self.decoder.decode(b"", n) or bytes(2 * n)
        except MalformedPacket:
            return bytes(2 * n)

    def _play(self, frame: Frame, play_time: float) -> None:
        forced = frame.priority == Priority.EMERGENCY
        # the volume in the decoder when it can, except where the playout needs the PCM as
        # decoded: an emergency's (captured before volume), a glide, a mute
        target = self._target(forced)
        gain = (target if target and not forced and forced == self._forced
                and not self._fade.gliding else 1.0)
        self._applied = gain if self.decoder.set_gain(gain) else 1.0
        raw = self._decode(frame)
        pcm = memoryview(raw).cast("h")[:MAX_FRAME]
        n = len(pcm)
        zeros, trim = self.timeline.place(play_time, n)
        if zeros == 1:  # a sample short of the timeline: the last one written, again
            self.sink.write(array("h", [self._last]))
            self.timeline.cursor += 1
        elif zeros:
            self.sink.write_silence(zeros)
            self.timeline.cursor += zeros
            self._last = 0
        sumsq = self._write(pcm, forced, skip=trim)
        self.late_samples += trim if trim > 1 else 0  # one dropped sample is a clock step
        self.frames += 1
        self._next_play = play_time + n / self.rate_hz
        self._track(frame.broadcast_id, frame.priority, play_time, n, sumsq)
        if forced and frame.broadcast_id:  # after _track has closed the previous broadcast
            self.capture(frame.broadcast_id, raw)

    def _play_local(self, until: float) -> None:
        """Write the local replay up to wall time ``until``, a frame at a time; end it when
        the audio runs out."""
        assert self._local is not None
        local = self._local
        while True:
            left = len(local) - self._local_pos
            if left <= 0:
                self.stop_local()
                return
            n = min(self.timeline.index(until) - self.timeline.cursor, MAX_FRAME, left)
            if n <= 0:
                return
            start = self.timeline.time(self.timeline.cursor)
            chunk = local[self._local_pos : self._local_pos + n]
            self._local_pos += n
            self._applied = 1.0
            priority = self.local_priority
            sumsq = self._write(chunk, forced=priority == Priority.EMERGENCY)
            self._track(self.local_broadcast_id, priority, start, n, sumsq, local=True)

    def _target(self, forced: bool) -> float:
        return self._emergency_gain if forced else 0.0 if self.muted else self._gain

    def _write(self, pcm: Samples, forced: bool, skip: int = 0) -> float:
        """Apply the gain to int16 ``pcm`` (which carries the decoder's gain ``_applied``
        already) and write all but its first ``skip`` samples at the cursor; returns the sum
        of squares after gain (0 unless ``measure_level``). ``forced`` (an emergency) means
        the emergency volume, unmuted, glided into and out of."""
        n = len(pcm)
        if forced != self._forced:
            self._forced = forced
            self._fade.glide()
        out = self._fade.apply(pcm, self._target(forced), self._applied)
        sumsq = sum_of_squares(out) if self.measure_level else 0.0
        if skip < n:  # gain <= 1: no clipping needed
            if self._tell_sink and not skip:  # a level meter (``mqtt.py``) need not sum it
                self.sink.measured = sumsq  # type: ignore[attr-defined]
            self.sink.write(out[skip:])
            self._last = out[-1]
        self.timeline.cursor += n - skip
        return sumsq

    # ------------------------------------------------------------------ play log

    def _track(self, broadcast_id: int, priority: int, start: float, n: int, sumsq: float,
               local: bool = False) -> None:
        if broadcast_id != self.broadcast_id or local != self._bc_local or (
            broadcast_id and start - self._bc_end > self.broadcast_gap_s
        ):
            self._end_broadcast()
            if broadcast_id:
                self.broadcast_id = broadcast_id
                self._bc_priority, self._bc_local = priority, local
                self._bc_start = start
                self._bc_sumsq, self._bc_samples = 0.0, 0
                self.on_event(self._record("play_start", start=start))
        if self.broadcast_id:
            self._bc_end = start + n / self.rate_hz
            self._bc_sumsq += sumsq
            self._bc_samples += n

    def _end_broadcast(self) -> None:
        if not self.broadcast_id:
            return
        level = ({"level_dbfs": level_dbfs(self._bc_sumsq, self._bc_samples)}
                 if self.measure_level else {})
        self.on_event(self._record("play", start=self._bc_start, end=self._bc_end, **level))
        self.broadcast_id = self._bc_priority = 0
        self._bc_local = False

    def _record(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, "broadcast": self.broadcast_id, **fields,
                  "priority": self._bc_priority}
        if self._bc_local:
            record["local"] = True
        return record


def level_dbfs(sumsq: float, samples: int) -> float:
    """RMS level of int16 samples in dBFS (full-scale square wave = 0 dB), floored."""
    if samples <= 0 or sumsq <= 0.0:
        return LEVEL_FLOOR_DBFS
    db = 10.0 * math.log10(sumsq / samples / (32768.0 * 32768.0))
    return round(max(db, LEVEL_FLOOR_DBFS), 2)
