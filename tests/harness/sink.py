"""Sinks for tests: a packet sink for a mixer in place of the fan-out (:class:`Sent`; behind
the signing sink, :class:`Fanout`), and an audio sink for a speaker's playout in place of its
output (:class:`SparseSink`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class Sent(list[tuple[str, bytes]]):
    """A packet sink for a mixer under test: every datagram handed out, as (channel, bytes),
    in the order the fan-out would send them; ``paused``: the channels the mixer said fell
    quiet, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.paused: list[str] = []

    def publish_block(self, channels: Sequence[str], block: np.ndarray) -> None:
        assert block.dtype == np.uint8 and block.flags.c_contiguous
        assert block.shape[0] == len(channels)
        self.extend(zip(channels, map(bytes, block), strict=True))

    def pause(self, channels: Sequence[str]) -> None:
        self.paused.extend(channels)


class Fanout:
    """What the streamer's ``SigningSink`` needs of the fan-out, recording in :class:`Sent`
    every datagram in order, by channel: the media and the LOAS and reports signing adds."""

    def __init__(self) -> None:
        self.sent = Sent()

    def publish_block(self, channels: list[str], block: np.ndarray) -> None:
        self.sent.publish_block(channels, block)

    def publish(self, channel: str, data: bytes) -> None:
        self.sent.append((channel, data))

    def pause(self, channels: list[str]) -> None:
        self.sent.pause(channels)


class SparseSink:
    """Keeps what was written, by output index, and only counts silence (hours of it are
    cheap)."""

    def __init__(self) -> None:
        self.cursor = 0
        self.writes: list[tuple[int, np.ndarray]] = []

    def write(self, pcm: np.ndarray) -> None:
        self.writes.append((self.cursor, np.array(pcm, dtype=np.int16)))
        self.cursor += len(pcm)

    def write_silence(self, n: int) -> None:
        self.cursor += n

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def span(self, a: int, b: int) -> np.ndarray:
        out = np.zeros(b - a, dtype=np.int16)
        for at, pcm in self.writes:
            lo, hi = max(a, at), min(b, at + len(pcm))
            if lo < hi:
                out[lo - a : hi - a] = pcm[lo - at : hi - at]
        return out
