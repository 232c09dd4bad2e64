"""A channel's most recent packets, replayed to a subscriber the moment it joins.

Icecast gives a new listener a burst from its queue so that playback starts at once; a Loa
speaker needs the same less badly (it plays every packet at capture time + playout delay, so
the first packet it gets plays one playout delay later) but a burst still helps: packets
captured up to ``burst_s`` ago are still ahead of their play time, so a speaker that joins
mid-bulletin starts ``burst_s`` sooner and does not lose the bulletin's last words. The burst
must stay shorter than the playout delay, or its first packets arrive already too late.

RTP media is kept, and the ``LOAS`` signatures that prove it (``wire/auth.py``); of the sender
reports only the last, and only while no packet has come since: the heartbeat of a quiet
channel, which tells a subscriber joining it that the silence is a pause, not a dead upstream
(``docs/protocol.md``, "Quiet channels"). The last ``KEEP_LOAS``
signatures are also kept apart, whatever the burst, for a subscriber that lost one and asks
again (``RESEND``, ``wire/subscribe.py``), and so are the last ``KEEP_PACKETS`` RTP packets,
by sequence number, for a subscriber that lost some (``RESEND`` kind 2, ``wire/retransmit.py``).
Per packet: one tuple appended to a bounded deque and one slot of a list set, no copy of the
packet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from wire.auth import LOAS_LEN, SEQ_MOD, is_loas
from wire.packet import is_rtcp
from wire.rtcp import PT_SR

KEEP_LOAS = 8  # about 2 s of a channel's signatures at 240 ms batches
KEEP_PACKETS = 64  # 1.28 s of packets at 20 ms: longer than any playout delay leaves to ask


class PacketRing:
    __slots__ = ("burst_s", "_packets", "_loas", "_recent", "_report")

    def __init__(self, burst_s: float, ptime_s: float) -> None:
        self.burst_s = burst_s
        # Room for the burst at the shortest frame, a LOAS per four frames at most, and a
        # little for bursty upstream arrival.
        self._packets: deque[tuple[float, bytes]] = deque(
            maxlen=max(1, int(burst_s / ptime_s * 1.25) + 6) if burst_s > 0 else 1)
        self._loas: deque[bytes] = deque(maxlen=KEEP_LOAS)
        self._recent: list[bytes | None] = [None] * KEEP_PACKETS  # by seq modulo its length
        self._report: bytes | None = None  # the last sender report, if no packet came since

    def add(self, packet: bytes, now: float) -> None:
        if is_rtcp(packet):
            if not is_loas(packet):
                if packet[1] == PT_SR:
                    self._report = packet
                return
            if len(packet) == LOAS_LEN:
                self._loas.append(packet)
        elif len(packet) >= 12:
            self._recent[(packet[2] << 8 | packet[3]) % KEEP_PACKETS] = packet
            self._report = None
        if self.burst_s > 0:
            self._packets.append((now, packet))

    def loas_for(self, seq: int) -> bytes | None:
        """The kept LOAS whose batch holds ``seq`` (the newest such), or None."""
        for loas in reversed(self._loas):
            # first seq and count at their fixed offsets (wire/auth.py, "the LOAS packet")
            if (seq - int.from_bytes(loas[16:18], "big")) % SEQ_MOD < loas[18]:
                return loas
        return None

    def packet(self, seq: int) -> bytes | None:
        """The RTP packet ``seq`` as it was sent, if it is among the last ``KEEP_PACKETS``."""
        packet = self._recent[seq % KEEP_PACKETS]
        if packet is None or (packet[2] << 8 | packet[3]) != seq:
            return None
        return packet

    def burst(self, now: float) -> Iterator[bytes]:
        """The packets that arrived within ``burst_s`` before ``now``, oldest first, then the
        heartbeat if the channel is quiet."""
        if self.burst_s > 0:
            since = now - self.burst_s
            for t, packet in self._packets:
                if t >= since:
                    yield packet
        if self._report is not None:
            yield self._report

    def __len__(self) -> int:
        return len(self._packets)
