"""Reading Loa's fixed 32-byte RTP header in place, one packet or a whole batch at once.

Every media packet the streamer builds has the same layout (``docs/protocol.md``): sequence
number at 2, RTP timestamp at 4, abs-capture-time (NTP 64-bit) at 17, broadcast id at 26,
priority at 31. Simulated speakers read those fields at their offsets rather than parsing each
packet: :func:`peek`, :func:`capture_of` and :func:`payload_of` for one datagram (falling back to
the full parser for other senders' layouts), :class:`HeaderFields` for a numpy array of
headers, one row per datagram, with no Python loop per packet. Nothing here allocates per
packet beyond the arrays it returns, or touches a socket.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from wire.packet import HEADER_LEN, MalformedPacket, ntp64_to_unix, parse
from wire.subscribe import MAGIC

SEQ_AT, TIMESTAMP_AT, CAPTURE_AT, BROADCAST_AT, PRIORITY_AT = 2, 4, 17, 26, 31
_BID_PRIO = struct.Struct("!IxB")  # broadcast id, ID-3 element header, priority
_NTP = struct.Struct("!Q")


def fixed_layout(buf: bytes | bytearray, n: int) -> bool:
    """Whether ``buf[:n]`` has Loa's layout: 0x90, 0xBEDE at 12, the priority element at 30."""
    return n >= HEADER_LEN and buf[0] == 0x90 and buf[12] == 0xBE and buf[13] == 0xDE \
        and buf[30] == 0x30


def peek(buf: bytes | bytearray, n: int) -> tuple[int, int]:
    """(broadcast id, priority) of the RTP packet in ``buf[:n]``; priority -1 for RTCP or
    anything unreadable. Loa's fixed layout is read in place; other senders are parsed."""
    if n < 12 or 192 <= buf[1] <= 223:
        return 0, -1
    if fixed_layout(buf, n):
        bid, prio = _BID_PRIO.unpack_from(buf, BROADCAST_AT)
        return bid, prio
    try:
        pkt = parse(bytes(buf[:n]))
    except MalformedPacket:
        return 0, -1
    return pkt.broadcast_id, pkt.priority


def payload_of(buf: bytes | bytearray, n: int) -> bytes:
    if fixed_layout(buf, n):
        return bytes(buf[HEADER_LEN:n])
    return parse(bytes(buf[:n])).payload


def capture_of(buf: bytes | bytearray, n: int) -> float:
    """The abs-capture-time of the packet as Unix seconds, NaN if it has none."""
    if fixed_layout(buf, n):
        return ntp64_to_unix(_NTP.unpack_from(buf, CAPTURE_AT)[0])
    t = parse(bytes(buf[:n])).capture_time
    return math.nan if t is None else t


def _be(rows: np.ndarray, at: int, size: int) -> np.ndarray:
    raw = np.ascontiguousarray(rows[..., at:at + size])
    return raw.view(f">u{size}")[..., 0]


@dataclass(frozen=True, slots=True)
class HeaderFields:
    """The fields of an array of headers (``uint8``, last axis at least ``HEADER_LEN``);
    every field has the shape of the array without its last axis. ``media`` marks rows in
    Loa's fixed layout, the only ones whose other fields mean anything; ``control`` marks
    handshake messages and ``rtcp`` RTCP packets (sender reports, signatures)."""

    media: np.ndarray
    control: np.ndarray
    rtcp: np.ndarray
    seq: np.ndarray  # int64, 16-bit
    timestamp: np.ndarray  # int64, 32-bit
    capture: np.ndarray  # float64 Unix seconds
    broadcast_id: np.ndarray  # int64
    priority: np.ndarray  # int64

    @classmethod
    def of(cls, rows: np.ndarray, lengths: np.ndarray) -> HeaderFields:
        media = (lengths >= HEADER_LEN) & (rows[..., 0] == 0x90) & (rows[..., 12] == 0xBE) \
            & (rows[..., 13] == 0xDE) & (rows[..., 30] == 0x30)
        control = (lengths >= len(MAGIC)) & np.all(
            rows[..., :len(MAGIC)] == np.frombuffer(MAGIC, dtype=np.uint8), axis=-1)
        rtcp = (lengths >= 8) & ((rows[..., 0] & 0xC0) == 0x80) & (rows[..., 1] >= 192) \
            & (rows[..., 1] <= 223)
        return cls(media, control, rtcp,
                   _be(rows, SEQ_AT, 2).astype(np.int64),
                   _be(rows, TIMESTAMP_AT, 4).astype(np.int64),
                   ntp64_to_unix(_be(rows, CAPTURE_AT, 8).astype(np.float64)),
                   _be(rows, BROADCAST_AT, 4).astype(np.int64),
                   rows[..., PRIORITY_AT].astype(np.int64))
