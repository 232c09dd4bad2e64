"""A handshaking receiver, as a speaker subscribes: it collects the Opus payloads of its
channel and counts RTCP, so that a test can judge a relay or fan-out by what arrives. It
presents a token signed with the session's key unless the test gives another (``b""``: none)."""

from __future__ import annotations

import asyncio
import time
from typing import cast

from tests.harness.keys import token_for
from wire import subscribe
from wire.packet import is_rtcp, is_rtp, parse
from wire.rtcp import report_ts
from wire.subscribe import SubscribeClient


class Subscriber(asyncio.DatagramProtocol):
    """A handshaking receiver (what a speaker does), collecting Opus payloads."""

    def __init__(self, channel: str, upstreams: list[tuple[str, int]], *,
                 identity: str = "test-speaker", token: bytes | None = None) -> None:
        self.client = SubscribeClient(identity=identity, channel=channel, upstreams=upstreams,
                                      token=token_for(identity) if token is None else token)
        self.payloads: list[bytes] = []
        self.rejects: list[int] = []  # the reason of every REJECT received
        self.rtcp = 0
        self.media: list[bytes] = []  # every RTP and RTCP datagram, in order of arrival
        self.transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self._send(self.client.start(time.monotonic()))
        self._task = asyncio.create_task(self._tick())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        if subscribe.is_control(data):
            msg = subscribe.parse(data)
            if msg.type is subscribe.MsgType.REJECT:
                self.rejects.append(msg.reason)
            self._send(self.client.handle(data, addr, time.monotonic()))
        elif is_rtcp(data):
            self.rtcp += 1
            self.media.append(data)
            if (ts := report_ts(data)) is not None:  # a quiet channel's heartbeat, perhaps
                self.client.heard_report(time.monotonic(), ts)
        elif is_rtp(data):
            pkt = parse(data)
            self.media.append(data)
            if pkt.ssrc == self.client.ssrc:
                self.client.heard_packet(time.monotonic(), pkt.ts)
                self.client.on_media(time.monotonic())
                self.payloads.append(pkt.payload)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            self._send(self.client.tick(time.monotonic()))

    def _send(self, out: list[tuple[bytes, tuple[str, int]]]) -> None:
        assert self.transport is not None
        for data, addr in out:
            self.transport.sendto(data, addr)

    async def wait_packets(self, n: int, timeout: float = 4.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.payloads) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.payloads)} packets after {timeout} s, "
                                     f"wanted {n}; client state {self.client.state.name}")
            await asyncio.sleep(0.05)

    def close(self) -> None:
        if self._task:
            self._task.cancel()
        if self.transport:
            if self.client.state is subscribe.ClientState.SUBSCRIBED:
                self._send(self.client.close())
            self.transport.close()
