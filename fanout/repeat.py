"""A channel's ``LOAS`` signatures sent again on the last hop: beside each, and a packet or two on.

A speaker holds every packet of a 240 ms batch until the batch's ``LOAS`` proves it
(``wire/auth.py``). When that one datagram is lost, the first packets of the batch can only be
proven by asking for it again, a round trip after the speaker notices, which at the default
300 ms playout delay is past their play time (``docs/BENCHMARKS.md``, "Loss recovery on the
last hop"). Lost media packets are asked for again in time; the signature is the problem. So a
relay may send each ``LOAS`` it forwards again, right after it or after the channel's next
RTP packets (``AFTER``): early enough that a copy beats the batch's first packet to its play
time, and spaced so that one burst of loss does not take the original and every copy. A copy
is the very datagram: a receiver that has the original already counts it as ``duplicate``
without checking a signature.

Counted in packets, not time, so that the hot path reads no clock and nothing runs between
packets: a copy is due after the n-th packet following its original. A channel that stops
after its last batch sends no copy of that batch's LOAS (the speakers ask for it). Per packet:
one comparison when nothing is due; never more than ``MAX_WAITING`` copies wait.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

#: after how many of the channel's next RTP packets each copy of a LOAS goes (0: right after
#: the original), for 1, 2 and 3 copies. At a 300 ms playout delay and a 60 ms round trip a
#: LOAS must leave within 30 ms of the original (by the next packet) to prove the batch's
#: first frame in time: one copy goes after the next packet (20 ms away from the original),
#: a second at once beside the original, so that the first frame needs all three lost; no
#: three datagrams in a row hold them all, so a burst of three leaves one. A third goes after
#: the second packet: in time for all but the first frame. ``loadtest/bench_loss.py``
#: measures these choices (``docs/BENCHMARKS.md``).
AFTER = (1, 0, 2)
MAX_REPEATS = len(AFTER)
MAX_WAITING = 64  # copies waiting per channel: a LOAS per packet (emergencies) for a while
_NONE: tuple[bytes, ...] = ()


class LoasRepeats:
    """Copies of one channel's LOAS datagrams, due after a number of its RTP packets.

    ``loas(data)`` after sending a LOAS returns the copies to send at once; ``packet()`` after
    sending an RTP packet returns the copies due now (oldest first).
    """

    __slots__ = ("after", "_count", "_order", "_due")

    def __init__(self, after: Sequence[int]) -> None:
        after = tuple(after)
        if any(a < 0 for a in after) or len(set(after)) != len(after):
            raise ValueError(f"copies go after 0 or more packets, each count once: {after}")
        self.after = tuple(sorted(after))
        self._count = 0  # RTP packets seen
        self._order = 0  # ties between copies due after the same packet: the older first
        self._due: list[tuple[int, int, bytes]] = []  # (packet count, order, LOAS), a heap

    @classmethod
    def copies(cls, n: int) -> LoasRepeats:
        """``n`` copies of each LOAS, at the spacing ``AFTER`` gives."""
        if not 0 <= n <= MAX_REPEATS:
            raise ValueError(f"0 to {MAX_REPEATS} copies of a LOAS, not {n}")
        return cls(AFTER[:n])

    def loas(self, data: bytes) -> Sequence[bytes]:
        now: list[bytes] = []
        for a in self.after:
            if a == 0:
                now.append(data)
            elif len(self._due) < MAX_WAITING:  # else the oldest still go, this one less
                self._order += 1
                heapq.heappush(self._due, (self._count + a, self._order, data))
        return now

    def packet(self) -> Sequence[bytes]:
        self._count += 1
        due = self._due
        if not due or due[0][0] > self._count:
            return _NONE
        out = []
        while due and due[0][0] <= self._count:
            out.append(heapq.heappop(due)[2])
        return out

    def __len__(self) -> int:
        return len(self._due)
