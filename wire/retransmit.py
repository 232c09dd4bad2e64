"""Loss recovery on the last hop: a receiver asks its upstream again for the RTP packets that
did not arrive (``RESEND`` kind 2, a NACK), and the upstream sends the very datagrams it sent
the first time, from the ring it keeps (``fanout/ring.py``).

Why retransmission and not RFC 2198 RED or delayed duplicates (``docs/protocol.md``, "Loss
recovery", has the figures): a 4G speaker pays for every byte, and redundancy is paid on every
packet whether it is lost or not (RED depth 2 or a duplicate: +100-120 % of the stream, and
still 0.1-1 % of frames lost at 10 % random loss), while a NACK costs a request and one copy
per packet actually lost (+2x the loss rate). A retransmitted packet is the original datagram
byte for byte, so it verifies against its batch's ``LOAS`` like the original would
(``wire/auth.py``: a late packet of a verified batch is checked against the hash the parity
recovered); a RED block would have to be rebuilt into the original datagram first. The cost is
time: a round trip per try, which the playout delay must leave room for (400-500 ms on 4G).

Rules of :class:`LossTracker` (the receiver's side):

- A packet is *missing* when a later one arrives. A jump of more than ``MAX_GAP`` sequence
  numbers is a restart or a failover, not loss: nothing is asked for and counting restarts
  there.
- A missing packet is asked for at once, then again every ``retry_s`` while it stays missing,
  at most ``max_tries`` times, and never once ``deadline_s`` have passed since it was found
  missing (it would arrive after its play time): then it is *abandoned* (Opus FEC or PLC).
- Everything due at one moment goes out in as few requests as possible: one per run of 17
  sequence numbers (the first and a 16-bit mask of the following ones, as RFC 4585's generic
  NACK).
- A request is padded to the bytes its answer will take, estimated as the largest datagram of
  the last ``SIZE_WINDOW`` received times the packets asked for: the upstream never sends more
  than it was sent (no amplification), so a packet larger than the estimate is not sent back.
- A packet that arrives is crossed off whether it was asked for or only reordered.

Pure code: no sockets, no clock reads (callers pass ``now``, seconds on any monotonic clock).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

SEQ_MOD = 1 << 16
_HALF = 1 << 15
MAX_GAP = 32  # more missing at once is a restart or failover: 640 ms at 20 ms frames
MASK_BITS = 16
RETRY_S = 0.08  # a 4G round trip and a little: a try that got no answer by then is lost
MAX_TRIES = 6
SIZE_WINDOW = 64  # datagrams whose largest size sizes a request's padding
MIN_REQUEST = 64  # bytes a request is padded to at least (a packet is never smaller)


@dataclass(slots=True)
class _Missing:
    found: float
    next_at: float
    tries: int = 0


class LossTracker:
    """Which packets of one stream to ask the upstream for again, and when.

    ``arrived`` for every RTP packet of the stream (before any other check: a packet that
    came is not asked for again, whatever becomes of it); ``due`` returns the requests to send
    now as ``(seq, mask, size)``, for ``SubscribeClient.nack``. Counters: ``asked`` (sequence
    numbers asked for, every try), ``recovered`` (packets that came after being asked for),
    ``abandoned`` (missing packets given up).
    """

    def __init__(self, deadline_s: float, retry_s: float = RETRY_S,
                 max_tries: int = MAX_TRIES) -> None:
        self.deadline_s = deadline_s
        self.retry_s = retry_s
        self.max_tries = max_tries
        self._highest: int | None = None  # extended seq of the highest packet that came
        self._missing: OrderedDict[int, _Missing] = OrderedDict()  # extended seq → its asking
        self._sizes: deque[int] = deque(maxlen=SIZE_WINDOW)
        self.asked = 0
        self.recovered = 0
        self.abandoned = 0
        self.requests = 0
        self.request_bytes = 0

    def arrived(self, seq: int, size: int, now: float) -> None:
        self._sizes.append(size)
        if self._highest is None:
            self._highest = seq
            return
        delta = (seq - self._highest) % SEQ_MOD
        if delta >= _HALF:
            delta -= SEQ_MOD
        ext = self._highest + delta
        if delta <= 0:
            asked = self._missing.pop(ext, None)
            if asked is not None and asked.tries:
                self.recovered += 1
            return
        if delta > MAX_GAP:  # a restart or another upstream: start over from here
            self.abandoned += len(self._missing)
            self._missing.clear()
            self._highest = ext
            return
        for s in range(self._highest + 1, ext):
            self._missing[s] = _Missing(now, now)
        self._highest = ext

    def due(self, now: float) -> list[tuple[int, int, int]]:
        """The requests to send now: ``(first seq, mask, bytes to pad to)`` each."""
        if not self._missing:
            return []
        asks: list[int] = []
        for ext, m in list(self._missing.items()):
            if now < m.next_at:
                continue
            if m.tries >= self.max_tries or now - m.found > self.deadline_s:
                del self._missing[ext]
                self.abandoned += 1
                continue
            m.tries += 1
            m.next_at = now + self.retry_s
            asks.append(ext)
        if not asks:
            return []
        largest = max(self._sizes)
        out: list[tuple[int, int, int]] = []
        first, mask, n = asks[0], 0, 1
        for ext in asks[1:]:
            bit = ext - first - 1
            if bit < MASK_BITS:
                mask |= 1 << bit
                n += 1
                continue
            out.append(self._request(first, mask, n, largest))
            first, mask, n = ext, 0, 1
        out.append(self._request(first, mask, n, largest))
        self.asked += len(asks)
        return out

    def _request(self, first: int, mask: int, n: int, largest: int) -> tuple[int, int, int]:
        size = max(MIN_REQUEST, n * largest)
        self.requests += 1
        self.request_bytes += size
        return first % SEQ_MOD, mask, size

    def __len__(self) -> int:
        return len(self._missing)


def answer(seqs: list[int], size: int, packet: Callable[[int], bytes | None]
           ) -> tuple[list[bytes], int, int]:
    """The upstream's side: of the packets ``seqs`` asked for in a request of ``size`` bytes,
    those to send back (``packet(seq)`` gives what is kept, or None), in order, never more
    bytes in all than ``size``; and how many were not kept and how many did not fit."""
    out: list[bytes] = []
    unknown = too_big = 0
    left = size
    for seq in seqs:
        data = packet(seq)
        if data is None:
            unknown += 1
        elif len(data) > left:
            too_big += 1
        else:
            out.append(data)
            left -= len(data)
    return out, unknown, too_big
