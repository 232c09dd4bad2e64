"""Test tone: a sine at a given BS.1770 loudness, for installers checking a horn or a zone.

Every sample is computed from its absolute position, so any sequence of reads (a preempted tone
resumed later, two channels at different cursors) gives the same phase-continuous signal. The
ends are faded over 5 ms so the tone never starts or stops with a click. A tone never exceeds
full scale: a level that would need an amplitude above 1 is refused at construction.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from streamer.mixer.loudness import TARGET_LUFS, db_to_gain, integrated_lufs
from streamer.mixer.sources.base import RATE_HZ

FADE_S = 0.005
_FADE_SAMPLES = round(FADE_S * RATE_HZ)


@functools.lru_cache(maxsize=64)
def _unit_sine_lufs(hz: float) -> float:
    """Loudness of a full-scale sine at ``hz``; K-weighting makes it depend on frequency."""
    t = np.arange(RATE_HZ, dtype=np.float64) / RATE_HZ
    return integrated_lufs(np.sin(2.0 * np.pi * hz * t), RATE_HZ)


class Tone:
    """Sine at ``hz`` lasting ``seconds`` (None = endless) at ``level_lufs``."""

    def __init__(self, hz: float, seconds: float | None, level_lufs: float = TARGET_LUFS) -> None:
        if not 0.0 < hz < RATE_HZ / 2:
            raise ValueError(f"tone frequency must be between 0 and {RATE_HZ // 2} Hz, got {hz}")
        if seconds is not None and not (math.isfinite(seconds) and seconds >= 0.0):
            raise ValueError(f"tone duration must be a non-negative number, got {seconds}")
        amplitude = db_to_gain(level_lufs - _unit_sine_lufs(float(hz)))
        if not amplitude <= 1.0:
            raise ValueError(f"{level_lufs} LUFS at {hz} Hz needs more than full scale")
        self.hz = float(hz)
        self.level_lufs = level_lufs
        self.amplitude = amplitude
        self.length: int | None = None if seconds is None else round(seconds * RATE_HZ)
        self._cycles_per_sample = self.hz / RATE_HZ

    def read(self, pos: int, n: int) -> np.ndarray:
        positions = np.arange(pos, pos + n, dtype=np.float64)
        # Reduce to [0, 1) cycles before sin() so that the result depends only on the position
        # and stays precise however long an endless tone has run (x - floor(x) is exact, and
        # in place: this runs for every frame of an installer's test tone).
        out = positions * self._cycles_per_sample
        out -= np.floor(out)
        out *= 2.0 * np.pi
        np.sin(out, out=out)
        out *= self.amplitude
        steady_until = math.inf if self.length is None else self.length - _FADE_SAMPLES
        if pos < _FADE_SAMPLES or pos + n > steady_until:
            # Distance in samples to the nearer end, through a 5 ms ramp; <= 0 outside the tone.
            edge = positions + 0.5
            if self.length is not None:
                edge = np.minimum(edge, self.length - edge)
            out *= np.clip(edge / _FADE_SAMPLES, 0.0, 1.0)
        return out.astype(np.float32)
