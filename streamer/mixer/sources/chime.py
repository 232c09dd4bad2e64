"""The attention chime before an emergency, and a source that plays sources one after another.

The chime is three rising notes (G5, C6, E6) with a bell-like decay, then a pause: short enough
not to delay a warning (1.6 s), distinct from any bulletin or test tone, and the same every
time, so villagers learn that it means "listen now". Generated once, at the mixer's loudness
target like every other source.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from streamer.mixer.loudness import normalize

from .base import RATE_HZ, Source
from .clip import Clip

NOTES_HZ = (783.99, 1046.50, 1318.51)
NOTE_S = 0.4
PAUSE_S = 0.4
CEILING_DBFS = 20 * math.log10(0.9)
CHIME_S = NOTE_S * len(NOTES_HZ) + PAUSE_S  # its length, the pause after it included


@functools.cache
def chime_pcm() -> np.ndarray:
    n = int(NOTE_S * RATE_HZ)
    t = np.arange(n) / RATE_HZ
    attack = np.minimum(1.0, t / 0.005)
    notes = [attack * np.exp(-t * 6.0) * (np.sin(2 * np.pi * hz * t)
                                          + 0.3 * np.sin(4 * np.pi * hz * t))
             for hz in NOTES_HZ]
    sounding = normalize(np.concatenate(notes), ceiling_dbfs=CEILING_DBFS)
    out = np.concatenate([sounding, np.zeros(int(PAUSE_S * RATE_HZ), np.float32)])
    out.setflags(write=False)
    return out


def chime() -> Clip:
    return Clip(chime_pcm())


class Sequence:
    """Sources played back to back; all but the last must have a length (the last may be
    endless: a chime, then a live voice)."""

    def __init__(self, parts: list[Source]) -> None:
        if any(p.length is None for p in parts[:-1]):
            raise ValueError("only the last part of a sequence may be endless")
        self.parts = parts
        starts = np.cumsum([0] + [p.length or 0 for p in parts[:-1]]).tolist()
        #: (start, end or None, part) of each part, in order
        self.spans = [(start, None if p.length is None else start + p.length, p)
                      for start, p in zip(starts, parts, strict=True)]
        last = parts[-1].length
        self.length: int | None = None if last is None else starts[-1] + last
        # A live last part keeps time (``program.py``, rule 8) once the sequence reaches it;
        # the parts before it wait like any recording.
        live_from = getattr(parts[-1], "keeps_time_from", None)
        self.keeps_time_from = None if live_from is None else starts[-1] + live_from

    def read(self, pos: int, n: int) -> np.ndarray:
        for start, end, part in self.spans:  # the common case: all in one part
            if start <= pos and (end is None or pos + n <= end):
                return part.read(pos - start, n)
        out = np.zeros(n, dtype=np.float32)
        for start, end, part in self.spans:
            lo, hi = max(pos, start), pos + n if end is None else min(pos + n, end)
            if lo < hi:
                out[lo - pos : hi - pos] = part.read(lo - start, hi - lo)
        return out
