"""How the tests judge audio: its pitch (the strongest FFT bin), its level, where one
recording matches another (normalised cross-correlation), and the longest hole in a steady
tone."""

from __future__ import annotations

import io
import wave

import numpy as np
from scipy.signal import correlate

from loadtest.fleet import dominant_hz as peak_hz  # one FFT peak for the tests and the load test

__all__ = ["correlation", "frame_snr_db", "longest_gap_s", "peak_hz", "rms_dbfs", "tone_wav"]


def rms_dbfs(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(20 * np.log10(np.sqrt(np.mean(x * x)) + 1e-12))


def correlation(reference: np.ndarray, search: np.ndarray) -> float:
    """Peak normalised cross-correlation of ``reference`` within the longer ``search``."""
    c = correlate(search, reference, mode="valid", method="fft")
    running = np.concatenate([[0.0], np.cumsum(search * search)])
    energy = running[len(reference):] - running[: len(running) - len(reference)]
    return float(np.max(c / np.sqrt(energy * np.dot(reference, reference) + 1e-18)))


def longest_gap_s(x: np.ndarray, level: float, rate_hz: int = 48_000,
                  block_s: float = 0.005) -> float:
    """The longest stretch of ``x`` (full scale = 1) whose RMS, over blocks of ``block_s``,
    stays below ``level``, in seconds: the hole a listener hears in a steady tone. Concealment
    that still sounds like the tone is not counted; a fade below ``level`` is."""
    n = round(rate_hz * block_s)
    blocks = np.asarray(x, dtype=np.float64)[: len(x) // n * n].reshape(-1, n)
    quiet = np.sqrt(np.mean(blocks * blocks, axis=1)) < level
    longest = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        longest = max(longest, run)
    return longest * block_s


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


def tone_wav(hz: float = 440.0, seconds: float = 0.5, amplitude: int = 8000) -> bytes:
    """A sine of ``hz`` as a 48 kHz mono 16-bit WAV file's bytes: a clip to upload."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48_000)
        t = np.arange(round(seconds * 48_000)) / 48_000
        w.writeframes((np.sin(2 * np.pi * hz * t) * amplitude).astype("<i2").tobytes())
    return buf.getvalue()
