"""The attention chime before an emergency, and a source that plays sources one after another.

The chime is three rising notes (G5, C6, E6) with a bell-like decay, then a pause: short enough
not to delay a warning (1.6 s), distinct from any bulletin or test tone, and the same every
time, so villagers learn that it means "listen now". Generated once, at the mixer's loudness
target like every other source.
"""

from __future__ import annotations

import functools

import numpy as np

from streamer.mixer.loudness import TARGET_LUFS, db_to_gain, integrated_lufs

from .base import RATE_HZ, Source

NOTES_HZ = (783.99, 1046.50, 1318.51)
NOTE_S = 0.4
PAUSE_S = 0.4


@functools.cache
def chime_pcm() -> np.ndarray:
    n = int(NOTE_S * RATE_HZ)
    t = np.arange(n) / RATE_HZ
    attack = np.minimum(1.0, t / 0.005)
    notes = [attack * np.exp(-t * 6.0) * (np.sin(2 * np.pi * hz * t)
                                          + 0.3 * np.sin(4 * np.pi * hz * t))
             for hz in NOTES_HZ]
    pcm = np.concatenate([*notes, np.zeros(int(PAUSE_S * RATE_HZ))])
    sounding = pcm[: 3 * n]
    pcm *= db_to_gain(TARGET_LUFS - integrated_lufs(sounding, RATE_HZ))
    peak = float(np.max(np.abs(pcm)))
    if peak > 0.9:
        pcm *= 0.9 / peak
    out = pcm.astype(np.float32)
    out.setflags(write=False)
    return out


class Pcm:
    """A finished array of samples as a source."""

    def __init__(self, pcm: np.ndarray) -> None:
        self.pcm = pcm
        self.length: int | None = len(pcm)

    def read(self, pos: int, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.float32)
        seg = self.pcm[pos : pos + n]
        out[: len(seg)] = seg
        return out


def chime() -> Pcm:
    return Pcm(chime_pcm())


class Sequence:
    """Sources played back to back; all but the last must have a length (the last may be
    endless: a chime, then a live voice)."""

    def __init__(self, parts: list[Source]) -> None:
        if any(p.length is None for p in parts[:-1]):
            raise ValueError("only the last part of a sequence may be endless")
        self.parts = parts
        self.starts = np.cumsum([0] + [p.length or 0 for p in parts[:-1]]).tolist()
        last = parts[-1].length
        self.length: int | None = None if last is None else self.starts[-1] + last

    def read(self, pos: int, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.float32)
        for start, part in zip(self.starts, self.parts, strict=True):
            end = None if part.length is None else start + part.length
            lo, hi = max(pos, start), pos + n if end is None else min(pos + n, end)
            if lo < hi:
                out[lo - pos : hi - pos] = part.read(lo - start, hi - lo)
        return out
