"""Ogg/Opus pages (RFC 3533, RFC 7845) for listen-in over HTTP, written from Opus packets.

Listen-in serves each HTTP client a live Ogg stream made of the Opus packets already encoded
for RTP: nothing is decoded or re-encoded. It is hand-written rather than done with PyAV
because libavformat's Ogg muxer wants a whole output container (a file-like object it may
seek) and its own packet timing for every client, which is heavy per HTTP client and awkward
to feed with pre-encoded packets as they arrive; an Ogg page is 27 bytes of header, a lacing
table and a CRC. Pure code: no sockets, no clock reads. One writer per client, because page
sequence numbers and granule positions are per stream.
"""

from __future__ import annotations

import struct

OGG_CAPTURE = b"OggS"
FLAG_CONTINUED = 0x01
FLAG_BOS = 0x02
FLAG_EOS = 0x04
MAX_PAGE_PAYLOAD = 255 * 255
_PAGE_HEADER = struct.Struct("<4sBBqIII")  # capture, version, flags, granule, serial, seq, crc
VENDOR = b"loa"


def _crc_table() -> tuple[int, ...]:
    # Ogg's CRC-32 is the MSB-first ("non-reflected") polynomial 0x04C11DB7 with zero initial
    # value and no final xor. zlib.crc32 is the reflected variant and gives other numbers.
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x8000_0000 else (r << 1)
        table.append(r & 0xFFFF_FFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def ogg_crc(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    table = _CRC_TABLE
    for b in data:
        crc = ((crc << 8) & 0xFFFF_FFFF) ^ table[((crc >> 24) ^ b) & 0xFF]
    return crc


def opus_head(pre_skip: int = 312, channels: int = 1, input_rate_hz: int = 48_000) -> bytes:
    """The OpusHead identification header (RFC 7845 section 5.1), mapping family 0."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, input_rate_hz, 0, 0)


def opus_tags(vendor: bytes = VENDOR, comments: tuple[str, ...] = ()) -> bytes:
    """The OpusTags comment header (RFC 7845 section 5.2)."""
    out = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", len(comments))
    for c in comments:
        b = c.encode()
        out += struct.pack("<I", len(b)) + b
    return out


class OggOpusWriter:
    """One logical Ogg/Opus stream: ``headers()`` once, then ``packet()`` per Opus packet."""

    def __init__(self, serial: int, pre_skip: int = 312, *, title: str = "") -> None:
        self.serial = serial & 0xFFFF_FFFF
        self.pre_skip = pre_skip
        self.title = title
        self.seq = 0
        self.granule = 0

    def headers(self) -> bytes:
        """OpusHead on its own BOS page, then OpusTags on the next page (RFC 7845 section 3)."""
        comments = (f"TITLE={self.title}",) if self.title else ()
        return (self._page(opus_head(self.pre_skip), 0, FLAG_BOS)
                + self._page(opus_tags(comments=comments), 0, 0))

    def packet(self, opus: bytes, samples: int) -> bytes:
        """One page holding one Opus packet; ``samples`` at 48 kHz advance the granule."""
        if not opus:
            raise ValueError("an Opus packet is at least one byte")
        self.granule += samples
        return self._page(opus, self.granule, 0)

    def end(self) -> bytes:
        """An EOS page holding no packet (zero segments), for a clean end of stream."""
        return self._page(b"", self.granule, FLAG_EOS)

    def _page(self, payload: bytes, granule: int, flags: int) -> bytes:
        n = len(payload)
        if n > MAX_PAGE_PAYLOAD - 1:
            raise ValueError(f"{n}-byte packet does not fit one Ogg page")
        # Lacing: 255s then the remainder; a multiple of 255 ends with a 0 so it is terminated.
        # No payload means no segment at all (a 0 lace would be a zero-length packet).
        lacing = b"\xff" * (n // 255) + bytes((n % 255,)) if n else b""
        page = bytearray(_PAGE_HEADER.size + 1 + len(lacing) + n)
        _PAGE_HEADER.pack_into(page, 0, OGG_CAPTURE, 0, flags, granule, self.serial, self.seq, 0)
        page[_PAGE_HEADER.size] = len(lacing)
        page[_PAGE_HEADER.size + 1 : _PAGE_HEADER.size + 1 + len(lacing)] = lacing
        page[_PAGE_HEADER.size + 1 + len(lacing) :] = payload
        struct.pack_into("<I", page, 22, ogg_crc(page))
        self.seq += 1
        return bytes(page)
