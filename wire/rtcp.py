"""RTCP (RFC 3550): sender reports for wall-clock mapping, BYE, and APP packets.

Loa multiplexes RTCP on the media port (RFC 5761). Sender reports map each channel's RTP
timestamps to the streamer's wall clock; on a quiet channel they are its heartbeat
(``docs/protocol.md``, "Quiet channels"). APP packets (PT 204) are the seam for stream
authentication: signatures over batches of packet hashes ride there so that plain RTP receivers
ignore them. Pure code: no sockets, no clock reads.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .packet import RTP_VERSION, MalformedPacket

PT_SR = 200
PT_RR = 201
PT_SDES = 202
PT_BYE = 203
PT_APP = 204

_SR = struct.Struct("!BBHIIIIII")
SR_LEN = _SR.size  # 28: a sender report without report blocks


def report_ts(data: bytes) -> int | None:
    """The RTP timestamp of a sender report (alone or first in a compound packet), read in
    place; None for any other RTCP. Cheap enough for every datagram of a relay."""
    if len(data) < SR_LEN or data[1] != PT_SR:
        return None
    return int.from_bytes(data[16:20], "big")


@dataclass(slots=True, frozen=True)
class SenderReport:
    ssrc: int
    ntp: int  # NTP 64-bit wall-clock time of rtp_ts
    rtp_ts: int
    packets: int
    octets: int

    def build(self) -> bytes:
        return _SR.pack(
            0x80, PT_SR, 6, self.ssrc, self.ntp >> 32, self.ntp & 0xFFFF_FFFF,
            self.rtp_ts & 0xFFFF_FFFF, self.packets & 0xFFFF_FFFF, self.octets & 0xFFFF_FFFF,
        )


@dataclass(slots=True, frozen=True)
class Bye:
    ssrc: int

    def build(self) -> bytes:
        return struct.pack("!BBHI", 0x81, PT_BYE, 1, self.ssrc)


@dataclass(slots=True, frozen=True)
class App:
    ssrc: int
    name: bytes  # 4 ASCII bytes
    subtype: int
    data: bytes  # multiple of 4 bytes

    def build(self) -> bytes:
        if len(self.name) != 4 or len(self.data) % 4:
            raise ValueError("APP name must be 4 bytes and data a multiple of 4")
        words = 2 + len(self.data) // 4
        return (
            struct.pack("!BBHI", 0x80 | (self.subtype & 0x1F), PT_APP, words, self.ssrc)
            + self.name
            + self.data
        )


RtcpPacket = SenderReport | Bye | App


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet; unknown packet types are skipped, bad lengths raise."""
    out: list[RtcpPacket] = []
    i, n = 0, len(data)
    while i < n:
        if n - i < 4:
            raise MalformedPacket("truncated RTCP header")
        b0, pt, words = struct.unpack_from("!BBH", data, i)
        if b0 >> 6 != RTP_VERSION:
            raise MalformedPacket(f"RTCP version {b0 >> 6}")
        size = 4 * (words + 1)
        if i + size > n:
            raise MalformedPacket("RTCP length overruns the datagram")
        if pt == PT_SR:
            if size < 28:
                raise MalformedPacket("short sender report")
            _, _, _, ssrc, hi, lo, rtp_ts, pkts, octets = _SR.unpack_from(data, i)
            out.append(SenderReport(ssrc, (hi << 32) | lo, rtp_ts, pkts, octets))
        elif pt == PT_BYE and b0 & 0x1F and size >= 8:
            out.append(Bye(int.from_bytes(data[i + 4 : i + 8], "big")))
        elif pt == PT_APP:
            if size < 12:
                raise MalformedPacket("short APP packet")
            ssrc = int.from_bytes(data[i + 4 : i + 8], "big")
            name, body = bytes(data[i + 8 : i + 12]), bytes(data[i + 12 : i + size])
            out.append(App(ssrc, name, b0 & 0x1F, body))
        i += size
    return out
