"""Offers from an aiortc client, for tests of what the studio accepts and refuses."""

from __future__ import annotations

from aiortc import RTCPeerConnection, RTCRtpSender


async def client_offer(pc: RTCPeerConnection) -> str:
    """A complete (non-trickle) offer: aiortc gathers its candidates in setLocalDescription."""
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


async def offer_with(codec_mime: str | None = None, video: bool = False) -> str:
    """The offer of a fresh peer sending one audio track (only ``codec_mime`` if given), or one
    video track; the peer is closed again."""
    pc = RTCPeerConnection()
    if video:
        pc.addTransceiver("video", direction="sendonly")
    else:
        t = pc.addTransceiver("audio", direction="sendonly")
        if codec_mime:
            t.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("audio").codecs
                                   if c.mimeType == codec_mime])
    try:
        return await client_offer(pc)
    finally:
        await pc.close()
