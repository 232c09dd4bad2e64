"""How the tests judge audio: its pitch (the strongest FFT bin), its level, and where one
recording matches another (normalised cross-correlation)."""

from __future__ import annotations

import numpy as np
from scipy.signal import correlate

from loadtest.fleet import dominant_hz as peak_hz  # one FFT peak for the tests and the load test

__all__ = ["correlation", "frame_snr_db", "peak_hz", "rms_dbfs"]


def rms_dbfs(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(20 * np.log10(np.sqrt(np.mean(x * x)) + 1e-12))


def correlation(reference: np.ndarray, search: np.ndarray) -> float:
    """Peak normalised cross-correlation of ``reference`` within the longer ``search``."""
    c = correlate(search, reference, mode="valid", method="fft")
    running = np.concatenate([[0.0], np.cumsum(search * search)])
    energy = running[len(reference):] - running[: len(running) - len(reference)]
    return float(np.max(c / np.sqrt(energy * np.dot(reference, reference) + 1e-18)))


def frame_snr_db(played: np.ndarray, clean: np.ndarray, frame: int, max_lag: int = 240,
                 ceiling_db: float = 60.0) -> np.ndarray:
    """The SNR of each ``frame``-sample block of ``played`` against ``clean`` (what a speaker
    that lost nothing played over the same wall-clock window), in dB up to ``ceiling_db``,
    once the two are aligned within ``max_lag`` samples by cross-correlation."""
    n = min(len(played), len(clean)) - 2 * max_lag
    ref = clean[max_lag:max_lag + n]
    c = correlate(played[: n + 2 * max_lag], ref, mode="valid", method="fft")
    lag = int(np.argmax(c))
    x = played[lag:lag + n]
    k = n // frame
    sig = (ref[: k * frame].reshape(k, frame) ** 2).sum(axis=1)
    err = ((x[: k * frame] - ref[: k * frame]).reshape(k, frame) ** 2).sum(axis=1)
    snr = 10 * np.log10((sig + 1e-18) / (err + 1e-18))
    return np.asarray(np.minimum(snr, ceiling_db))
