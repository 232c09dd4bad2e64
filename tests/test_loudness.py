"""Loudness measurement, ingest normalisation and the mix limiter, checked on real signals."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from streamer.mixer.loudness import (
    TARGET_LUFS,
    Limiter,
    LoudnessMeter,
    db_to_gain,
    integrated_lufs,
    normalize,
    normalize_limited,
)

RATE = 48_000
CEILING = db_to_gain(-1.0)


def sine(hz: float, seconds: float, amplitude: float = 1.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def speechlike(seconds: float = 3.0, seed: int = 1) -> np.ndarray:
    """Noise bursts with pauses and a few sharp clicks: a high peak-to-loudness ratio."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.05, round(seconds * RATE))
    x *= (np.arange(x.size) // (RATE // 4)) % 2  # 250 ms on, 250 ms off
    x[rng.integers(0, x.size, 12)] = 0.95
    return x.astype(np.float32)


def test_full_scale_1khz_sine_is_minus_3_lufs() -> None:
    # BS.1770's reference: a 0 dBFS 997 Hz sine in one channel reads -3.01 LKFS.
    assert integrated_lufs(sine(997, 2.0)) == pytest.approx(-3.01, abs=0.05)


def test_gain_moves_loudness_by_the_same_db() -> None:
    x = sine(440, 2.0, 0.5)
    assert integrated_lufs(x * db_to_gain(-12)) == pytest.approx(integrated_lufs(x) - 12, abs=0.01)


def test_clip_shorter_than_gating_block_measures_like_a_long_one() -> None:
    long_lufs = integrated_lufs(sine(1000, 2.0, 0.3))
    assert integrated_lufs(sine(1000, 0.1, 0.3)) == pytest.approx(long_lufs, abs=0.2)
    assert math.isfinite(integrated_lufs(sine(1000, 0.001, 0.3)))


@pytest.mark.parametrize("x", [np.zeros(0), np.zeros(RATE), np.zeros(10), np.full(RATE, 1e-6)])
def test_silence_is_minus_infinity(x: np.ndarray) -> None:
    assert integrated_lufs(x) == -math.inf


def test_normalize_reaches_target_without_touching_input() -> None:
    x = sine(440, 2.0, 0.01)
    before = x.copy()
    y = normalize(x)
    assert y.dtype == np.float32
    assert integrated_lufs(y) == pytest.approx(TARGET_LUFS, abs=0.05)
    assert np.array_equal(x, before)
    assert integrated_lufs(normalize(x, target_lufs=-30.0)) == pytest.approx(-30.0, abs=0.05)


def test_normalize_stops_at_the_ceiling_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    x = speechlike()
    with caplog.at_level(logging.WARNING, logger="streamer.mixer.loudness"):
        y = normalize(x)
    assert np.max(np.abs(y)) <= CEILING
    assert np.max(np.abs(y)) == pytest.approx(CEILING, rel=1e-4)
    assert integrated_lufs(y) < TARGET_LUFS - 1.0
    assert "peak-limited" in caplog.text
    # Gain only: the waveform keeps its shape.
    np.testing.assert_allclose(y / np.max(np.abs(y)), x / np.max(np.abs(x)), atol=1e-6)


def test_normalize_silence_is_unchanged() -> None:
    assert np.array_equal(normalize(np.zeros(RATE)), np.zeros(RATE, dtype=np.float32))


def test_normalize_limited_reaches_target_under_the_ceiling() -> None:
    y = normalize_limited(speechlike())
    assert np.max(np.abs(y)) <= CEILING
    assert integrated_lufs(y) == pytest.approx(TARGET_LUFS, abs=0.1)


def test_limiter_brings_plus_6_dbfs_under_ceiling_then_releases() -> None:
    limiter = Limiter(ceiling_dbfs=-1.0, release_db_per_s=20.0)
    loud = sine(1000, 0.02, db_to_gain(6.0))
    out = limiter.process(loud.copy())
    assert np.max(np.abs(out)) <= CEILING
    attacked_db = limiter.gain_db
    assert attacked_db == pytest.approx(-7.0, abs=0.1)
    # Quiet frames afterwards: the gain climbs back smoothly, never jumps, reaches unity.
    gains = []
    quiet = sine(1000, 0.02, 0.1)
    for _ in range(30):  # 600 ms, enough for 7 dB at 20 dB/s
        limiter.process(quiet.copy())
        gains.append(limiter.gain_db)
    steps = np.diff([attacked_db, *gains])
    assert np.all(steps >= 0) and np.all(steps <= 20.0 * 0.02 + 1e-9)
    assert gains[-1] == 0.0
    assert np.array_equal(limiter.process(quiet.copy()), quiet)


def test_limiter_attack_is_instant_and_does_not_touch_what_came_before() -> None:
    frame = np.full(960, 0.5, dtype=np.float32)
    frame[500] = 1.0
    out = Limiter().process(frame.copy())
    assert np.array_equal(out[:500], frame[:500])
    assert out[500] == pytest.approx(CEILING, rel=1e-6)
    assert np.all(np.abs(out) <= CEILING)


def test_limiter_below_ceiling_is_identity() -> None:
    frame = sine(440, 0.02, 0.5)
    assert np.array_equal(Limiter().process(frame.copy()), frame)


def test_limiter_matches_a_sample_by_sample_reference_across_frames() -> None:
    rng = np.random.default_rng(7)
    signal = (rng.normal(0, 0.4, 48_000) * np.repeat(rng.uniform(0.2, 4.0, 50), 960))
    signal = signal.astype(np.float32)
    release_db_per_s = 50.0
    # The textbook recursion: g = min(0, needed, g_prev + release per sample).
    d = release_db_per_s / RATE
    g, expected = 0.0, np.empty_like(signal)
    for k, s in enumerate(signal.astype(np.float64)):
        need = min(0.0, 20 * math.log10(CEILING / abs(s))) if s else 0.0
        g = min(0.0, need, g + d)
        expected[k] = s * 10 ** (g / 20)
    limiter = Limiter(-1.0, release_db_per_s)
    got = np.concatenate([limiter.process(f.copy()) for f in np.split(signal, 50)])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.max(np.abs(got)) <= CEILING


def test_limiter_turns_nan_and_inf_into_silence() -> None:
    limiter = Limiter()
    frame = np.array([0.1, np.nan, np.inf, -np.inf, 0.2], dtype=np.float32)
    out = limiter.process(frame)
    assert np.array_equal(out, np.array([0.1, 0.0, 0.0, 0.0, 0.2], dtype=np.float32))
    assert limiter.gain_db == 0.0


def test_limiter_refuses_a_ceiling_above_full_scale() -> None:
    with pytest.raises(ValueError):
        Limiter(ceiling_dbfs=1.0)


@pytest.mark.parametrize("seconds", [0.2, 0.4, 0.45, 0.449, 7.3, 61.0])
def test_meter_fed_in_pieces_measures_what_pyloudnorm_measures_whole(seconds: float) -> None:
    """The streaming meter that measures uploads while they decode gives the figure of
    BS.1770 over the whole signal (pyloudnorm as the reference), however it is cut up."""
    import pyloudnorm

    x = speechlike(seconds, seed=7).astype(np.float64)
    reference_x = x if len(x) >= 0.4 * RATE else np.tile(x, math.ceil(RATE / len(x)))
    reference = pyloudnorm.Meter(RATE).integrated_loudness(reference_x)
    rng = np.random.default_rng(11)
    meter = LoudnessMeter(RATE)
    pos = 0
    while pos < len(x):
        n = int(rng.integers(1, 20_000))
        meter.feed(x[pos : pos + n])
        pos += n
    assert meter.samples == len(x)
    assert meter.integrated_lufs() == pytest.approx(reference, abs=1e-6)
    assert integrated_lufs(x) == pytest.approx(reference, abs=1e-6)


def test_meter_memory_does_not_grow_with_samples() -> None:
    import tracemalloc

    block = sine(440, 1.0, 0.1)
    tracemalloc.start()
    try:
        meter = LoudnessMeter(RATE)
        for _ in range(600):  # ten minutes: 110 MB as float64, if it were kept
            meter.feed(block)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 1_000_000  # the first 400 ms and one float per 100 ms
    assert meter.integrated_lufs() == pytest.approx(integrated_lufs(sine(440, 2.0, 0.1)), abs=0.01)
