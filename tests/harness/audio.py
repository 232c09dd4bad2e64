"""How the tests judge audio: its pitch (the strongest FFT bin), its level, and where one
recording matches another (normalised cross-correlation)."""

from __future__ import annotations

import numpy as np
from scipy.signal import correlate

from loadtest.fleet import dominant_hz as peak_hz  # one FFT peak for the tests and the load test

__all__ = ["correlation", "peak_hz", "rms_dbfs"]


def rms_dbfs(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(20 * np.log10(np.sqrt(np.mean(x * x)) + 1e-12))


def correlation(reference: np.ndarray, search: np.ndarray) -> float:
    """Peak normalised cross-correlation of ``reference`` within the longer ``search``."""
    c = correlate(search, reference, mode="valid", method="fft")
    running = np.concatenate([[0.0], np.cumsum(search * search)])
    energy = running[len(reference):] - running[: len(running) - len(reference)]
    return float(np.max(c / np.sqrt(energy * np.dot(reference, reference) + 1e-18)))
