"""An in-test upstream: the subscribe handshake, then Loa RTP/Opus every 20 ms to every
subscriber, standing in for the streamer where a test wants to own the audio frame by frame.
Subclasses say what frame ``n`` is (``frame``); ``serving`` runs one on a free port.
``ToneUpstream`` is the plainest: a steady 1 kHz tone on any channel."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import numpy as np
import opuslib
import opuslib.api.ctl
import opuslib.api.encoder

from fanout.ring import PacketRing
from wire.auth import ChannelSigner, SigningKey
from wire.packet import RtpPacket, ssrc_for, unix_to_ntp64
from wire.subscribe import RESEND_LOAS, Event, Resend, SubscribeServer, is_control

from .keys import TEST_KEY

RATE = 48_000
FRAME = 960
FRAME_S = FRAME / RATE


class RtpUpstream(asyncio.DatagramProtocol):
    def __init__(self, channel_ssrc: Callable[[str], int | None] = ssrc_for,
                 fec_loss_perc: int = 0, key: SigningKey | None = TEST_KEY) -> None:
        self.server = SubscribeServer(secret=os.urandom(16), channel_ssrc=channel_ssrc)
        #: signs each channel's batches as the streamer does (None: sends no LOAS)
        self.key = key
        self.signers: dict[str, ChannelSigner] = {}
        self.kept: dict[str, PacketRing] = {}  # each channel's last LOAS, for a RESEND
        self.events: list[Event] = []  # what the handshake server reported
        self.transport: asyncio.DatagramTransport | None = None
        #: set to stop sending anything, media and handshake answers (a lost network)
        self.cut = False
        self.start_wall = time.time()  # frame n is captured at start_wall + n * 20 ms
        self.first_frame: dict[tuple[str, int], int] = {}  # per subscriber address
        enc = opuslib.Encoder(RATE, 1, opuslib.APPLICATION_AUDIO)
        enc.bitrate = 64_000
        if fec_loss_perc:
            # opuslib's ``inband_fec`` setter drops its value (opuslib 3.0.1): call the ctl
            opuslib.api.encoder.encoder_ctl(enc.encoder_state, opuslib.api.ctl.set_inband_fec, 1)
            enc.packet_loss_perc = fec_loss_perc
        self.encoder = enc

    def frame(self, n: int) -> tuple[bytes, int, int]:
        """Frame ``n``: 16-bit PCM, its broadcast id and its priority level."""
        raise NotImplementedError

    @property
    def sockname(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the selector loop's UDP transport does not subclass DatagramTransport (3.11)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not is_control(data) or self.cut:
            return
        reply, event = self.server.handle(data, addr, time.monotonic())
        if reply and self.transport:
            self.transport.sendto(reply, addr)
        if isinstance(event, Resend) and event.kind == RESEND_LOAS:
            # a lost LOAS, asked for again (as the streamer answers); lost packets are not
            ring = self.kept.get(event.channel)
            loas = ring.loas_for(event.seq) if ring is not None else None
            if loas is not None and self.transport:
                self.transport.sendto(loas, addr)
        if event:
            self.events.append(event)

    def capture_time(self, n: int) -> float:
        return self.start_wall + n * FRAME_S

    async def send_forever(self) -> None:
        """Frame n is captured at wall time start + n * 20 ms and sent then (a frame clock)."""
        loop = asyncio.get_running_loop()
        self.start_wall, start_mono, n = time.time(), loop.time(), 0
        while not self.cut:
            await asyncio.sleep(max(0.0, start_mono + n * FRAME_S - loop.time()))
            pcm, broadcast_id, priority = self.frame(n)
            payload = self.encoder.encode(pcm, FRAME)
            for channel in list(self.server.subscribers):
                data = RtpPacket(ssrc_for(channel), n & 0xFFFF, n * FRAME, payload,
                                 capture_ntp=unix_to_ntp64(self.capture_time(n)),
                                 broadcast_id=broadcast_id, priority=priority).build()
                addrs = self.server.addresses(channel)
                for addr in addrs:
                    self.first_frame.setdefault(addr, n)
                    assert self.transport is not None
                    self.transport.sendto(data, addr)
                for loas in self.sign(channel, data, n, priority):
                    self.kept.setdefault(channel, PacketRing(0.0, FRAME_S)).add(loas, 0.0)
                    for addr in addrs:
                        assert self.transport is not None
                        self.transport.sendto(loas, addr)
            n += 1

    def rotate(self, key: SigningKey) -> None:
        """Sign with ``key`` from the next frame on, as the streamer does on SIGHUP: each
        channel's open batch is signed with the old key first."""
        self.key = key

    def sign(self, channel: str, data: bytes, n: int, priority: int) -> list[bytes]:
        """The LOAS to send after packet ``data`` of ``channel``."""
        if self.key is None:
            return []
        signer = self.signers.get(channel)
        if signer is None:
            signer = self.signers[channel] = ChannelSigner(self.key, channel, ssrc_for(channel))
        out: list[bytes] = []
        if signer.key is not self.key:  # rotated: the old batch closes under the old key
            out = signer.flush()
            signer.key = self.key
        return out + signer.add(data, n & 0xFFFF, priority)


U = TypeVar("U", bound=RtpUpstream)


@contextlib.asynccontextmanager
async def serving(factory: Callable[[], U]) -> AsyncIterator[U]:
    """``factory()`` on a free loopback port, sending until the block ends."""
    transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        factory, local_addr=("127.0.0.1", 0))
    task = asyncio.create_task(proto.send_forever())
    try:
        yield proto
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        transport.close()


TONE_PEAK = 0.3  # of full scale: -13.5 dBFS RMS
TONE_DBFS = 20 * math.log10(TONE_PEAK / math.sqrt(2))


class ToneUpstream(RtpUpstream):
    """A minimal streamer: the subscribe handshake for any channel, then a steady 1 kHz tone
    (broadcast ``broadcast_id``) in Loa RTP/Opus every 20 ms to every subscriber."""

    def __init__(self, fec_loss_perc: int = 0, bitrate: int = 64_000) -> None:
        super().__init__(fec_loss_perc=fec_loss_perc)
        self.encoder.bitrate = bitrate
        self.broadcast_id = 7
        # 20 ms of 1 kHz is 20 whole cycles: every frame is the same and the phase continuous
        self._tone = (TONE_PEAK * 32767 * np.sin(2 * np.pi * 1000 * np.arange(FRAME) / RATE)
                      ).astype("<i2").tobytes()

    @property
    def addr(self) -> str:
        return "{}:{}".format(*self.sockname)

    def frame(self, n: int) -> tuple[bytes, int, int]:
        return self._tone, self.broadcast_id, 0
