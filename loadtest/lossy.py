"""A lossy last hop, in process: a UDP forwarder between a relay and a speaker that drops
datagrams with a seeded loss model, for the loss-recovery test and benchmark (issue 13).

``tc netem`` in a network namespace would be the real thing, but the build machine's kernel has
no netem (a namespace can be made, ``tc qdisc add dev lo root netem`` answers "Specified qdisc
kind is unknown"); the forwarder drops the same way for every process that talks through it
and counts what crosses each way, which is what the measurement needs.
The speaker subscribes to the forwarder's address as if it were the relay.

Loss model (:func:`gilbert`): each datagram is lost with probability ``p`` on average, in runs
of ``burst`` on average (a two-state Gilbert chain). Independent random loss is
``burst = 1 / (1 - p)`` (each datagram lost with probability ``p`` whatever became of the one
before); ``burst=1`` is not, it makes every run exactly
one datagram long, so that a lost datagram is never followed by another, which flatters
anything sent twice in a row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

Addr = tuple[str, int]
IP_UDP = 28  # IPv4 + UDP header bytes per datagram, for bytes "on the wire"


class Uniform(Protocol):
    """``random.Random`` or ``numpy.random.Generator``: a uniform number in [0, 1)."""

    def random(self) -> float: ...


def gilbert(p: float, burst: float, rng: Uniform) -> Callable[[], bool]:
    """A loss model: True for a lost datagram, ``p`` of them on average, in runs averaging
    ``burst`` (P(bad → good) = 1/burst; P(good → bad) chosen so the bad state's share is p)."""
    leave = 1.0 / burst
    enter = p * leave / (1.0 - p)
    bad = False

    def lost() -> bool:
        nonlocal bad
        bad = rng.random() < (1.0 - leave if bad else enter)
        return bad
    return lost


def never() -> bool:
    return False


class _Side(asyncio.DatagramProtocol):
    def __init__(self, received: Callable[[bytes, Any], None]) -> None:
        self.received = received

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received(data, addr)


class Direction:
    """What one direction carried: datagrams and bytes offered (before loss) and dropped."""

    def __init__(self) -> None:
        self.datagrams = self.bytes = self.dropped = 0
        self.rtp_seqs: set[int] = set()  # distinct RTP sequence numbers offered (down only)

    def wire_bytes(self) -> int:
        return self.bytes + IP_UDP * self.datagrams


class LossyLink:
    """Forwards speaker ⇄ relay. While ``lossy`` is set, a datagram relay→speaker is dropped
    when ``down()`` says so and one speaker→relay when ``up()`` says so; ``down_stats`` and
    ``up_stats`` count what was offered while ``counting`` is set. ``delay_s``: each way, what
    is not dropped is sent on that much later (half a 4G round trip), in order."""

    def __init__(self, relay: Addr, down: Callable[[], bool] = never,
                 up: Callable[[], bool] = never, delay_s: float = 0.0) -> None:
        self.relay, self.down_loss, self.up_loss = relay, down, up
        self.delay_s = delay_s
        self.lossy = False
        self.counting = False
        self.down_stats, self.up_stats = Direction(), Direction()
        self.speaker: Any = None
        self._down: asyncio.DatagramTransport | None = None
        self._up: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._down, _ = await loop.create_datagram_endpoint(
            lambda: _Side(self._from_speaker), local_addr=("127.0.0.1", 0))
        self._up, _ = await loop.create_datagram_endpoint(
            lambda: _Side(self._from_relay), local_addr=("127.0.0.1", 0))

    @property
    def addr(self) -> str:
        assert self._down is not None
        return "{}:{}".format(*self._down.get_extra_info("sockname")[:2])

    def reset(self) -> None:
        self.down_stats, self.up_stats = Direction(), Direction()

    def _from_speaker(self, data: bytes, addr: Any) -> None:
        self.speaker = addr
        if self.counting:
            self.up_stats.datagrams += 1
            self.up_stats.bytes += len(data)
        if self.lossy and self.up_loss():
            self.up_stats.dropped += 1
            return
        assert self._up is not None
        self._send(self._up, data, self.relay)

    def _from_relay(self, data: bytes, addr: Any) -> None:
        if self.speaker is None:
            return
        if self.counting:
            s = self.down_stats
            s.datagrams += 1
            s.bytes += len(data)
            if len(data) >= 12 and data[0] >> 6 == 2 and not 192 <= data[1] <= 223:
                s.rtp_seqs.add(data[2] << 8 | data[3])
        if self.lossy and self.down_loss():
            self.down_stats.dropped += 1
            return
        assert self._down is not None
        self._send(self._down, data, self.speaker)

    def _send(self, transport: asyncio.DatagramTransport, data: bytes, to: Any) -> None:
        if self.delay_s > 0:
            asyncio.get_running_loop().call_later(self.delay_s, _send_open, transport, data, to)
        else:
            transport.sendto(data, to)

    def close(self) -> None:
        for t in (self._down, self._up):
            if t is not None:
                t.close()


def _send_open(transport: asyncio.DatagramTransport, data: bytes, to: Any) -> None:
    if not transport.is_closing():  # the link closed while the datagram was on its way
        transport.sendto(data, to)
