"""RTP packets (RFC 3550) carrying Opus (RFC 7587) with Loa's RFC 8285 header extensions.

Every Loa media packet has the same 32-byte header: the 12-byte fixed header, then a one-byte
header-extension block (profile 0xBEDE) with the absolute capture time (ID 1, NTP 64-bit, the
WebRTC ``abs-capture-time`` format), the broadcast id on air (ID 2, uint32, 0 = none) and its
priority level (ID 3, uint8: 0 background … 3 emergency, ``wire.priority``), which speakers act
on at once (forced volume) without waiting for the control plane.
``docs/protocol.md`` has the byte table. Pure code: no sockets, no clock reads.

Parsing accepts any valid RTP (other extensions, CSRCs, padding) so that foreign senders can be
read; building always produces the fixed layout so that the hot path can patch fields in place.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

RTP_VERSION = 2
OPUS_PT = 111
OPUS_CLOCK_HZ = 48_000
EXT_PROFILE_ONE_BYTE = 0xBEDE
EXT_ID_CAPTURE_TIME = 1
EXT_ID_BROADCAST = 2
EXT_ID_PRIORITY = 3
EXT_URI_CAPTURE_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time"
EXT_URI_BROADCAST = "urn:loa:rtp-hdrext:broadcast-id"
EXT_URI_PRIORITY = "urn:loa:rtp-hdrext:priority"

# 12 fixed + 4 extension header + (1+8) capture time + (1+4) broadcast id + (1+1) priority
HEADER_LEN = 32
_FIXED = struct.Struct("!BBHII")
_LOA_HEADER = struct.Struct("!BBHIIHHBQBIBB")
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01


def ssrc_for(channel: str) -> int:
    """The SSRC of a channel, the same in every process: no lookup needed to demultiplex."""
    return int.from_bytes(hashlib.sha256(channel.encode()).digest()[:4], "big") or 1


class MalformedPacket(ValueError):
    """The bytes are not a packet this module can read."""


def unix_to_ntp64(t: float) -> int:
    """Unix seconds to NTP 64-bit fixed point (32.32)."""
    return int((t + NTP_EPOCH_OFFSET) * 4294967296.0) & 0xFFFF_FFFF_FFFF_FFFF


def ntp64_to_unix(ntp: int) -> float:
    return ntp / 4294967296.0 - NTP_EPOCH_OFFSET


@dataclass(slots=True)
class RtpPacket:
    ssrc: int
    seq: int
    ts: int
    payload: bytes
    pt: int = OPUS_PT
    marker: bool = False
    capture_ntp: int | None = None
    broadcast_id: int = 0
    priority: int = 0

    @property
    def capture_time(self) -> float | None:
        """Capture time as Unix seconds, when the sender stamped it."""
        return None if self.capture_ntp is None else ntp64_to_unix(self.capture_ntp)

    def build(self) -> bytes:
        buf = bytearray(HEADER_LEN + len(self.payload))
        write_header(
            buf, self.ssrc, self.seq, self.ts, self.capture_ntp or 0, self.broadcast_id,
            self.marker, self.pt, self.priority,
        )
        buf[HEADER_LEN:] = self.payload
        return bytes(buf)


def write_header(
    buf: bytearray,
    ssrc: int,
    seq: int,
    ts: int,
    capture_ntp: int,
    broadcast_id: int,
    marker: bool = False,
    pt: int = OPUS_PT,
    priority: int = 0,
) -> None:
    """Write Loa's fixed 32-byte header into ``buf[0:32]`` (reusable buffer, no allocation)."""
    _LOA_HEADER.pack_into(
        buf, 0,
        0x90,  # V=2, P=0, X=1, CC=0
        (0x80 if marker else 0) | (pt & 0x7F),
        seq & 0xFFFF,
        ts & 0xFFFF_FFFF,
        ssrc,
        EXT_PROFILE_ONE_BYTE,
        4,  # extension length in 32-bit words
        (EXT_ID_CAPTURE_TIME << 4) | 7,
        capture_ntp,
        (EXT_ID_BROADCAST << 4) | 3,
        broadcast_id & 0xFFFF_FFFF,
        EXT_ID_PRIORITY << 4,
        priority & 0xFF,
    )


def is_rtp(data: bytes) -> bool:
    """RTP or RTCP version 2 (RFC 5761 demultiplexing is done by :func:`is_rtcp`)."""
    return len(data) >= 12 and data[0] >> 6 == RTP_VERSION


def is_rtcp(data: bytes) -> bool:
    return len(data) >= 8 and data[0] >> 6 == RTP_VERSION and 192 <= data[1] <= 223


def peek_ssrc(data: bytes) -> int:
    """SSRC of an RTP packet without parsing the rest (relay hot path)."""
    if len(data) < 12:
        raise MalformedPacket("shorter than an RTP header")
    return int.from_bytes(data[8:12], "big")


def peek_rtcp_ssrc(data: bytes) -> int:
    """The sender SSRC of an RTCP packet (the first of a compound one)."""
    if len(data) < 8:
        raise MalformedPacket("shorter than an RTCP header")
    return int.from_bytes(data[4:8], "big")


#: bytes 0, 12-16, 16, 25 and 30 of Loa's own header (V=2, X=1, no CSRC or padding; the
#: 0xBEDE block of 4 words; the ID/length bytes of its three elements): what ``parse``
#: checks before it reads the whole header in one unpack
_LOA_MARKS = (0x90, EXT_PROFILE_ONE_BYTE, 4, (EXT_ID_CAPTURE_TIME << 4) | 7,
              (EXT_ID_BROADCAST << 4) | 3, EXT_ID_PRIORITY << 4)


def parse(data: bytes) -> RtpPacket:
    """Parse any RTP packet; raise :class:`MalformedPacket` on bad bytes."""
    n = len(data)
    if n >= HEADER_LEN:
        # Loa's own layout (every packet a speaker plays) in one unpack, a third of the time
        # the general walk below takes
        (b0, b1, seq, ts, ssrc, profile, words, id1, ntp, id2, broadcast_id, id3,
         priority) = _LOA_HEADER.unpack_from(data)
        if (b0, profile, words, id1, id2, id3) == _LOA_MARKS:
            return RtpPacket(ssrc, seq, ts, bytes(data[HEADER_LEN:]), b1 & 0x7F, b1 >= 0x80,
                             ntp, broadcast_id, priority)
    if n < 12:
        raise MalformedPacket(f"{n} bytes is shorter than an RTP header")
    b0, b1, seq, ts, ssrc = _FIXED.unpack_from(data, 0)
    if b0 >> 6 != RTP_VERSION:
        raise MalformedPacket(f"RTP version {b0 >> 6}")
    pos = 12 + 4 * (b0 & 0x0F)
    end = n
    if b0 & 0x20:  # padding
        pad = data[-1]
        if pad == 0 or pad > n - pos:
            raise MalformedPacket("bad padding length")
        end = n - pad
    capture_ntp: int | None = None
    broadcast_id = priority = 0
    if b0 & 0x10:
        if pos + 4 > end:
            raise MalformedPacket("truncated extension header")
        profile, words = struct.unpack_from("!HH", data, pos)
        ext_start = pos + 4
        pos = ext_start + 4 * words
        if pos > end:
            raise MalformedPacket("truncated extension")
        if profile == EXT_PROFILE_ONE_BYTE:
            capture_ntp, broadcast_id, priority = _parse_one_byte_ext(data, ext_start, pos)
    if pos > end:
        raise MalformedPacket("truncated header")
    return RtpPacket(
        ssrc=ssrc, seq=seq, ts=ts, payload=bytes(data[pos:end]), pt=b1 & 0x7F,
        marker=bool(b1 & 0x80), capture_ntp=capture_ntp, broadcast_id=broadcast_id,
        priority=priority,
    )


def _parse_one_byte_ext(data: bytes, i: int, end: int) -> tuple[int | None, int, int]:
    capture_ntp: int | None = None
    broadcast_id = priority = 0
    while i < end:
        b = data[i]
        if b == 0:  # padding byte
            i += 1
            continue
        ext_id, length = b >> 4, (b & 0x0F) + 1
        if ext_id == 15:  # reserved: stop parsing (RFC 8285 section 4.2)
            break
        if i + 1 + length > end:
            raise MalformedPacket("extension element overruns its block")
        if ext_id == EXT_ID_CAPTURE_TIME and length in (8, 16):
            capture_ntp = int.from_bytes(data[i + 1 : i + 9], "big")
        elif ext_id == EXT_ID_BROADCAST and length == 4:
            broadcast_id = int.from_bytes(data[i + 1 : i + 5], "big")
        elif ext_id == EXT_ID_PRIORITY and length == 1:
            priority = data[i + 1]
        i += 1 + length
    return capture_ntp, broadcast_id, priority


def opus_samples(payload: bytes, rate_hz: int = OPUS_CLOCK_HZ) -> int:
    """Samples (at ``rate_hz``) in one Opus packet, from its TOC byte (RFC 6716 section 3.1)."""
    if not payload:
        raise MalformedPacket("empty Opus payload")
    toc = payload[0]
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        frame_us = (10_000, 20_000, 40_000, 60_000)[config & 3]
    elif config < 16:  # hybrid: 10, 20 ms
        frame_us = (10_000, 20_000)[config & 1]
    else:  # CELT: 2.5, 5, 10, 20 ms
        frame_us = (2_500, 5_000, 10_000, 20_000)[config & 3]
    code = toc & 3
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        if len(payload) < 2:
            raise MalformedPacket("Opus code-3 packet without frame count")
        frames = payload[1] & 0x3F
        if frames == 0:
            raise MalformedPacket("Opus code-3 packet with zero frames")
    samples = frames * frame_us * rate_hz // 1_000_000
    if samples > rate_hz * 120 // 1000:
        raise MalformedPacket("Opus packet longer than 120 ms")
    return samples
