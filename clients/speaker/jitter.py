"""The speaker's jitter buffer: RTP packets in by sequence number, frames out in play order.

Packets are kept in preallocated slot arrays indexed by extended sequence number modulo the
capacity, so that storing a packet allocates nothing beyond the payload the parser already made.
``pop`` hands out the next frame in sequence: the packet itself, or, when it is missing, what
the decoder should do instead (Opus in-band FEC from the following packet, or PLC). Each frame
carries its broadcast id and priority level (RTP extensions); a missing frame inherits the
priority of the last packet handed out, so that a lost packet in an emergency is concealed at
the emergency volume rather than dropping to the operator's volume for 20 ms. Late and
duplicate packets are dropped and counted. A jump in sequence or a new SSRC (upstream restart or
failover to a relay with its own numbering) is believed only when the next packet confirms it
(RFC 3550 appendix A.1 probation), so that one stray packet cannot flush the buffer. A packet
numbered a little behind the last one played is late only if it was captured no more than
``RESTART_GAP_S`` after the newest one held: one captured later still is a restarted sender
numbering from 0 again (a quiet channel sends few packets, so a new stream can land within
the buffer's reach of the old), and goes on probation like any jump.

Sans-IO: no sockets, no clock reads; times are whatever the caller stores (capture times).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

SEQ_MOD = 1 << 16
_HALF = 1 << 15
_EMPTY = -1
#: a packet "behind" captured this long after the newest held is a new stream, not a late one
#: (a late packet worth anything is at most a playout delay behind; a sender restarts in more)
RESTART_GAP_S = 1.0


class Arrival(IntEnum):
    """What ``push`` did with a packet."""

    STORED = 0
    DUPLICATE = 1  # already buffered: dropped
    LATE = 2  # its frame was already played or concealed: dropped
    HELD = 3  # sequence jump or new SSRC, waiting for the next packet to confirm it
    RESET = 4  # a confirmed jump: buffer cleared and restarted at this stream


class FrameKind(IntEnum):
    PACKET = 0  # decode ``payload``
    FEC = 1  # missing; decode ``payload`` (the following packet) with decode_fec=True
    PLC = 2  # missing and no following packet: decode with an empty payload (concealment)


@dataclass(slots=True)
class Frame:
    kind: FrameKind
    seq: int  # extended sequence number (no 16-bit wrap)
    payload: bytes
    broadcast_id: int
    capture_time: float | None  # None for concealed frames
    priority: int  # 0 background … 3 emergency (docs/protocol.md)


@dataclass(slots=True)
class _Held:
    ssrc: int
    seq: int
    ts: int
    capture_time: float
    payload: bytes
    broadcast_id: int
    priority: int


class JitterBuffer:
    """Reorders one RTP stream; ``capacity`` packets at most (size it well above the delay)."""

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._seq = [_EMPTY] * capacity  # extended seq held by each slot, or _EMPTY
        self._ts = [0] * capacity
        self._capture = [0.0] * capacity
        self._payload: list[bytes] = [b""] * capacity
        self._broadcast = [0] * capacity
        self._priority = [0] * capacity
        self.ssrc: int | None = None
        self.next_seq = 0  # extended seq of the next frame to hand out
        self.highest = 0  # highest extended seq received: the reference for unwrapping
        self.depth = 0  # packets buffered
        self.started = False  # a frame has been handed out since the last reset
        self.last_broadcast_id = 0
        self.last_priority = 0
        self._newest_capture = float("-inf")  # capture time of the newest packet stored
        self._held: _Held | None = None
        # counters (exported as metrics by the edge)
        self.received = 0
        self.duplicates = 0
        self.late = 0
        self.lost = 0  # frames handed out as FEC/PLC or skipped
        self.resets = 0
        self.held = 0

    # ------------------------------------------------------------------ input

    def push(
        self, ssrc: int, seq: int, ts: int, capture_time: float, payload: bytes,
        broadcast_id: int, priority: int = 0,
    ) -> Arrival:
        self.received += 1
        if self.ssrc is None:
            self._restart(ssrc, seq)
            self._store(self.next_seq, ts, capture_time, payload, broadcast_id, priority)
            return Arrival.STORED
        if ssrc != self.ssrc:
            return self._probation(ssrc, seq, ts, capture_time, payload, broadcast_id, priority)
        ext = self._extend(seq)
        if ext < self.next_seq:
            if not self.started and self.highest - ext < self.capacity:
                self.next_seq = ext  # reordered before the first frame played: start earlier
            elif (self.next_seq - ext <= self.capacity
                  and capture_time <= self._newest_capture + RESTART_GAP_S):
                self.late += 1
                return Arrival.LATE
            else:
                return self._probation(ssrc, seq, ts, capture_time, payload, broadcast_id,
                                       priority)
        elif ext - self.next_seq >= self.capacity:
            return self._probation(ssrc, seq, ts, capture_time, payload, broadcast_id, priority)
        if self._seq[ext % self.capacity] == ext:
            self.duplicates += 1
            return Arrival.DUPLICATE
        self._store(ext, ts, capture_time, payload, broadcast_id, priority)
        return Arrival.STORED

    def _extend(self, seq: int) -> int:
        """16-bit seq to the extended seq nearest the highest one seen."""
        delta = (seq - self.highest) % SEQ_MOD
        if delta >= _HALF:
            delta -= SEQ_MOD
        return self.highest + delta

    def _store(self, ext: int, ts: int, capture_time: float, payload: bytes, bid: int,
               priority: int) -> None:
        i = ext % self.capacity
        self._seq[i] = ext
        self._ts[i] = ts
        self._capture[i] = capture_time
        self._payload[i] = payload
        self._broadcast[i] = bid
        self._priority[i] = priority
        self.depth += 1
        if ext > self.highest:
            self.highest = ext
        if capture_time > self._newest_capture:
            self._newest_capture = capture_time

    def _probation(
        self, ssrc: int, seq: int, ts: int, capture_time: float, payload: bytes, bid: int,
        priority: int,
    ) -> Arrival:
        held = self._held
        if held is not None and held.ssrc == ssrc and (seq - held.seq) % SEQ_MOD == 1:
            self._held = None
            self.resets += 1
            self._restart(ssrc, held.seq)
            self._store(self.next_seq, held.ts, held.capture_time, held.payload,
                        held.broadcast_id, held.priority)
            self._store(self.next_seq + 1, ts, capture_time, payload, bid, priority)
            return Arrival.RESET
        self._held = _Held(ssrc, seq, ts, capture_time, payload, bid, priority)
        self.held += 1
        return Arrival.HELD

    def _restart(self, ssrc: int, seq: int) -> None:
        if self.depth:
            for i in range(self.capacity):
                self._seq[i] = _EMPTY
                self._payload[i] = b""
        self.ssrc = ssrc
        self.next_seq = self.highest = seq  # extended numbering restarts at the raw seq
        self.depth = 0
        self.started = False

    # ------------------------------------------------------------------ output

    def next_present(self) -> tuple[int, float] | None:
        """(missing frames before the next buffered packet, its capture time), or None if empty."""
        if not self.depth:
            return None
        ext = self.next_seq
        while self._seq[ext % self.capacity] != ext:  # depth > 0: ends within capacity
            ext += 1
        return ext - self.next_seq, self._capture[ext % self.capacity]

    def pop(self) -> Frame:
        """Hand out the next frame in sequence (always; a missing packet becomes FEC or PLC)."""
        ext = self.next_seq
        self.next_seq = ext + 1
        self.started = True
        i = ext % self.capacity
        if self._seq[i] == ext:
            self._seq[i] = _EMPTY
            payload, self._payload[i] = self._payload[i], b""
            self.depth -= 1
            self.last_broadcast_id = self._broadcast[i]
            self.last_priority = self._priority[i]
            return Frame(FrameKind.PACKET, ext, payload, self._broadcast[i], self._capture[i],
                         self._priority[i])
        self.lost += 1
        j = (ext + 1) % self.capacity
        if self._seq[j] == ext + 1:
            return Frame(FrameKind.FEC, ext, self._payload[j], self._broadcast[j], None,
                         self.last_priority)
        return Frame(FrameKind.PLC, ext, b"", self.last_broadcast_id, None, self.last_priority)

    def skip(self) -> int:
        """Jump over a hole to the next buffered packet; returns how many frames were skipped."""
        head = self.next_present()
        if head is None:
            return 0
        self.next_seq += head[0]
        self.lost += head[0]
        return head[0]
