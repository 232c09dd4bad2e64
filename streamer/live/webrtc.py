"""Browser studio voice: one aiortc peer connection per studio session, feeding a LiveBuffer.

The studio page sends its microphone as WebRTC (Opus over DTLS-SRTP), the only way a browser
sends live audio. Each :class:`StudioSession` answers one browser offer, receives the one audio
track, decodes it (aiortc), turns every frame into 48 kHz mono float32 with PyAV's resampler and
writes it into a :class:`~streamer.mixer.sources.live.LiveBuffer`; the broadcast logic reads the
buffer like any live input. Signalling is non-trickle: the browser waits for its ICE gathering to
finish and posts the whole offer, and the answer returned here already holds our candidates, so
one HTTP round trip sets up the call. No STUN or TURN server is configured by default: the
studio and the streamer share a LAN, where host candidates connect.

This module knows nothing of HTTP (SDP strings in, SDP strings out) and must never let a bad
offer create anything: the offer is checked whole before a peer connection exists, and any
failure after that closes what was made. Sessions that never connect, or whose connection
fails or closes, are closed by themselves so that a closed browser tab frees its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import MediaDescription, SessionDescription

from streamer.mixer.sources.base import RATE_HZ
from streamer.mixer.sources.live import LiveBuffer

log = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 30.0
MAX_SESSIONS_PER_OWNER = 2
MAX_SESSIONS = 16
LEVEL_WINDOW_S = 0.3
#: no audio for this long and the level reads as silence (the browser stopped sending)
LEVEL_STALE_S = 0.5
SILENCE_DBFS = -120.0


class SdpError(ValueError):
    """An offer we cannot answer; ``field`` names the request field it came from, and the
    message reads after it ("sdp: offers no Opus …")."""

    def __init__(self, message: str, field: str = "sdp") -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class TooManySessions(Exception):
    """The owner, or the whole studio, already has as many sessions as allowed."""


class StudioSession:
    """One browser's microphone: its peer connection and the buffer its audio lands in."""

    def __init__(self, owner: str, pc: RTCPeerConnection) -> None:
        self.id = secrets.token_urlsafe(16)
        self.owner = owner
        self.created = time.time()
        self.pc = pc
        self.buffer = LiveBuffer()
        self.answer_sdp = ""
        self.tasks: list[asyncio.Task[None]] = []
        self.expiry: asyncio.TimerHandle | None = None

    @property
    def connected(self) -> bool:
        """ICE and DTLS are up (media can flow)."""
        return self.pc.connectionState == "connected"

    def level_dbfs(self) -> float:
        """RMS of the last ``LEVEL_WINDOW_S`` received, in dBFS; -120 if nothing arrives.

        Read from the ring rather than with ``LiveBuffer.take_level_dbfs`` so that polling the
        level here does not reset the level that someone else (metrics) takes."""
        buf = self.buffer
        if not buf.last_write or time.monotonic() - buf.last_write > LEVEL_STALE_S:
            return SILENCE_DBFS
        n = min(int(LEVEL_WINDOW_S * RATE_HZ), buf.written)
        recent = np.zeros(n, dtype=np.float32)
        buf.copy(buf.written - n, n, recent)
        power = float(np.dot(recent, recent)) / max(n, 1)
        return max(10 * math.log10(power), SILENCE_DBFS) if power > 0 else SILENCE_DBFS

    async def receive(self, track: MediaStreamTrack) -> None:
        """Decode the browser's audio track into the buffer until the track ends."""
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE_HZ)
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = cast(av.AudioFrame, await track.recv())  # an audio track's frames
                for mono in resampler.resample(frame):
                    self.buffer.write(mono.to_ndarray()[0])


OnClose = Callable[[StudioSession], Awaitable[object]]


class StudioSessions:
    """The open studio sessions, by id, with per-owner and total limits."""

    def __init__(
        self,
        *,
        ice_servers: Sequence[RTCIceServer] = (),
        max_per_owner: int = MAX_SESSIONS_PER_OWNER,
        max_total: int = MAX_SESSIONS,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        on_close: OnClose | None = None,
    ) -> None:
        self.ice_servers = list(ice_servers)
        self.max_per_owner = max_per_owner
        self.max_total = max_total
        self.connect_timeout_s = connect_timeout_s
        #: awaited after a session closed, for whatever reason (e.g. to end its broadcast)
        self.on_close = on_close
        self.sessions: dict[str, StudioSession] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.sessions)

    def get(self, id: str) -> StudioSession | None:
        return self.sessions.get(id)

    async def open(self, offer_sdp: str, owner: str) -> StudioSession:
        """Answer a browser's complete (non-trickle) offer; raises :class:`SdpError` for an
        offer we cannot take and :class:`TooManySessions` when the limits are reached."""
        check_offer(offer_sdp)
        self._check_limits(owner)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self.ice_servers or None))
        session = StudioSession(owner, pc)
        self.sessions[session.id] = session  # counts against the limits while it is answered
        try:
            await self._answer(session, offer_sdp)
        except BaseException:
            self.sessions.pop(session.id, None)
            await _shut(session)
            raise
        pc.on("connectionstatechange", lambda: self._on_state(session))
        loop = asyncio.get_running_loop()
        session.expiry = loop.call_later(self.connect_timeout_s, self._expire, session)
        log.info("studio session %s opened for %s", session.id, owner)
        return session

    async def close(self, id: str) -> None:
        session = self.sessions.pop(id, None)
        if session is None:
            return
        await _shut(session)
        log.info("studio session %s of %s closed", id, session.owner)
        if self.on_close is not None:
            await self.on_close(session)

    async def close_all(self) -> None:
        for id in list(self.sessions):
            await self.close(id)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _check_limits(self, owner: str) -> None:
        if len(self.sessions) >= self.max_total:
            raise TooManySessions(
                f"the studio already has {self.max_total} sessions open; try again later")
        mine = sum(1 for s in self.sessions.values() if s.owner == owner)
        if mine >= self.max_per_owner:
            raise TooManySessions(
                f"{owner} already has {mine} studio sessions open; close one first")

    async def _answer(self, session: StudioSession, offer_sdp: str) -> None:
        pc = session.pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                session.tasks.append(asyncio.create_task(session.receive(track)))

        # The offer's audio section binds to this transceiver, so the answer offers Opus only.
        receiver = pc.addTransceiver("audio", direction="recvonly")
        receiver.setCodecPreferences(_opus())
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except ValueError as e:  # aiortc's own checks (RTCP mux)
            raise SdpError(f"was refused: {e}") from e
        await pc.setLocalDescription(await pc.createAnswer())
        session.answer_sdp = pc.localDescription.sdp

    def _on_state(self, session: StudioSession) -> None:
        if session.pc.connectionState in ("failed", "closed"):
            self._close_later(session)

    def _expire(self, session: StudioSession) -> None:
        if not session.connected:
            log.info("studio session %s never connected; closing it", session.id)
            self._close_later(session)

    def _close_later(self, session: StudioSession) -> None:
        task = asyncio.create_task(self.close(session.id))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _opus() -> list[RTCRtpCodecCapability]:
    caps = RTCRtpReceiver.getCapabilities("audio")
    opus = [c for c in caps.codecs if c.mimeType.lower() == "audio/opus"] if caps else []
    if not opus:  # an empty preference list would quietly mean "any codec"
        raise RuntimeError("this aiortc build has no Opus decoder")
    return opus


async def _shut(session: StudioSession) -> None:
    if session.expiry is not None:
        session.expiry.cancel()
    for task in session.tasks:
        task.cancel()
    await session.pc.close()
    session.buffer.close()


def check_offer(sdp: Any) -> None:
    """Refuse, naming the ``sdp`` field, anything but an offer with one Opus audio section."""
    if not isinstance(sdp, str):
        raise SdpError("must be a string holding an SDP offer")
    if len(sdp) > MAX_SDP_BYTES or len(sdp.encode("utf-8", "surrogatepass")) > MAX_SDP_BYTES:
        raise SdpError(f"is larger than {MAX_SDP_BYTES // 1024} KiB; this is no browser offer")
    if not sdp.startswith("v=0"):
        raise SdpError("is not SDP (it must start with 'v=0')")
    audio = _audio_section(_parse(sdp))
    if not any(c.mimeType.lower() == "audio/opus" and c.clockRate == 48_000
               for c in audio.rtp.codecs):
        offered = ", ".join(sorted({c.mimeType.split("/")[1] for c in audio.rtp.codecs}))
        raise SdpError(f"offers no Opus (only {offered or 'nothing'}) in its audio section; "
                       "the studio takes Opus only")
    if audio.ice is None or not audio.ice.usernameFragment or not audio.ice.password:
        raise SdpError("has no ICE credentials (a=ice-ufrag, a=ice-pwd) for its audio")
    if audio.dtls is None or not audio.dtls.fingerprints:
        raise SdpError("has no DTLS fingerprint and setup role for its audio")


def _parse(sdp: str) -> SessionDescription:
    # aiortc's parser is the one that will read the offer, so it is the one to ask; it reports
    # malformed lines with whatever the failing step raises (assert, int(), dict lookups,
    # unpacking), so every error of it means "not valid SDP".
    try:
        return SessionDescription.parse(sdp)
    except Exception as e:
        raise SdpError(f"is not valid SDP ({type(e).__name__}: {e})"[:300]) from e


def _audio_section(description: SessionDescription) -> MediaDescription:
    kinds = [m.kind for m in description.media]
    if kinds.count("audio") != 1 or len(kinds) != 1:
        raise SdpError("must have exactly one media section, for audio "
                       f"(this offer has: {', '.join(kinds) or 'none'})")
    return description.media[0]
