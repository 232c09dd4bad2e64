"""Loudness: one BS.1770 target for the whole system, ingest normalisation and the mix limiter.

Every clip is measured (ITU-R BS.1770 integrated loudness, ``LoudnessMeter``) and gained to
``TARGET_LUFS``, so that a bulletin, a chime and a relayed song come out of a horn at the same
loudness; the mixer then passes every frame through one ``Limiter`` as a safety net. The meter
takes a signal in blocks of any size and keeps ten numbers per second of it, so an hour-long
upload is measured while it is decoded, never held whole. Normalisation never clips: when
reaching the target would push the peak above the ceiling it stops short and says so in the
log. The limiter never lets a sample past its ceiling, never
allocates more than numpy temporaries of the frame it is given, and never lets a bad sample
(NaN, inf) poison its state.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import scipy.signal
from pyloudnorm.iirfilter import IIRfilter

log = logging.getLogger(__name__)

#: The one loudness target of the system. Speech on outdoor horns has to carry over traffic and
#: wind, and the horns' amplifiers are driven close to full scale, so we sit well above the
#: -23/-24 LUFS of broadcast TV and near the -16 LUFS of spoken-word streaming (AES TD1004):
#: loud enough to be intelligible, with about 15 dB left for the peaks of natural speech before
#: the -1 dBFS ceiling.
TARGET_LUFS = -16.0

#: Peak ceiling for normalised clips and for the mix. The 1 dB margin absorbs the inter-sample
#: overs that Opus encoding adds to a sample-peak-limited signal.
CEILING_DBFS = -1.0

_GATE_BLOCK_S = 0.400
#: gating blocks overlap by 75 %: a block starts every 100 ms
_GATE_STEPS_PER_BLOCK = 4
_ABSOLUTE_GATE_LUFS = -70.0
_RELATIVE_GATE_LU = -10.0
# A clip shorter than the gating block is measured as if it looped: repeating a sound keeps its
# mean square, whereas padding with silence would make a short beep measure too quiet.
_MIN_MEASURED_S = 1.0


@functools.lru_cache(maxsize=8)
def _k_weighting(rate_hz: int) -> np.ndarray:
    """BS.1770's K-weighting (the "head" high shelf, then the RLB high pass) as biquad sections;
    pyloudnorm designs them for any rate."""
    stages = [IIRfilter(4.0, 1 / math.sqrt(2), 1500.0, rate_hz, "high_shelf"),
              IIRfilter(0.0, 0.5, 38.0, rate_hz, "high_pass")]
    return np.array([np.concatenate([f.b, f.a]) / f.a[0] for f in stages])


class LoudnessMeter:
    """BS.1770 integrated loudness of a mono signal fed in blocks of any size.

    Memory does not grow with the signal's samples: the K-weighting filters carry their state
    from one block to the next, and only the energy of each 100 ms step is kept (ten floats
    per second), plus the first 400 ms for a signal that never gets longer (it is measured
    looped). Feeding a signal in pieces gives the same figure as feeding it whole, which is the
    same as pyloudnorm's ``Meter.integrated_loudness`` (gating blocks of 400 ms every 100 ms,
    absolute gate -70 LUFS, relative gate -10 LU).
    """

    def __init__(self, rate_hz: int = 48_000) -> None:
        self.rate_hz = rate_hz
        self.samples = 0
        self._sos = _k_weighting(rate_hz)
        self._state = np.zeros((self._sos.shape[0], 2))
        self._step = round(_GATE_BLOCK_S * rate_hz / _GATE_STEPS_PER_BLOCK)
        self._steps: list[float] = []  # energy of each whole step
        self._partial = 0.0  # energy of the step being filled
        self._head: list[np.ndarray] = []  # the first gating block, unfiltered

    def feed(self, x: np.ndarray) -> None:
        """Measure the next samples of the signal (1-D, float, full scale = 1)."""
        data = np.asarray(x, dtype=np.float64)
        if data.ndim != 1:
            raise ValueError(f"the meter takes mono (1-D) samples, got shape {data.shape}")
        if data.shape[0] == 0:
            return
        block = self._step * _GATE_STEPS_PER_BLOCK
        if self.samples < block:
            self._head.append(data[: block - self.samples].copy())
        weighted, self._state = scipy.signal.sosfilt(self._sos, data, zi=self._state)
        energy = np.square(weighted, out=weighted)
        filled = self.samples % self._step
        self.samples += energy.shape[0]
        first = min(self._step - filled, energy.shape[0])
        self._partial += float(energy[:first].sum())
        if filled + first < self._step:
            return
        self._steps.append(self._partial)
        rest = energy[first:]
        whole = rest.shape[0] // self._step * self._step
        self._steps.extend(rest[:whole].reshape(-1, self._step).sum(axis=1).tolist())
        self._partial = float(rest[whole:].sum())

    def integrated_lufs(self) -> float:
        """Loudness of everything fed so far, in LUFS; ``-inf`` if silent or gated away."""
        block = self._step * _GATE_STEPS_PER_BLOCK
        if self.samples == 0:
            return -math.inf
        if self.samples < block:
            head = np.concatenate(self._head)
            if not np.any(head):
                return -math.inf
            looped = LoudnessMeter(self.rate_hz)
            looped.feed(np.tile(head, math.ceil(_MIN_MEASURED_S * self.rate_hz / head.shape[0])))
            return looped.integrated_lufs()
        steps = np.array([*self._steps, self._partial, 0.0, 0.0, 0.0])
        # As pyloudnorm counts blocks: the last one may take in a step that is more than half
        # filled, never one that is less.
        n_blocks = round((self.samples - block) / self._step) + 1
        energy = np.lib.stride_tricks.sliding_window_view(steps, _GATE_STEPS_PER_BLOCK)
        z = energy[:n_blocks].sum(axis=1) / block
        with np.errstate(divide="ignore"):
            loudness = -0.691 + 10.0 * np.log10(z)
        kept = z[loudness >= _ABSOLUTE_GATE_LUFS]
        if kept.size == 0:
            return -math.inf
        relative = -0.691 + 10.0 * math.log10(float(kept.mean())) + _RELATIVE_GATE_LU
        kept = z[(loudness > relative) & (loudness > _ABSOLUTE_GATE_LUFS)]
        if kept.size == 0:
            return -math.inf
        return -0.691 + 10.0 * math.log10(float(kept.mean()))


#: whole clips are processed a second at a time: a numpy or scipy call holds the GIL for its
#: length, and the playout thread must get it back within a millisecond or so
CHUNK = 48_000


def integrated_lufs(x: np.ndarray, rate_hz: int = 48_000) -> float:
    """BS.1770 integrated loudness of mono ``x``, in LUFS.

    Returns ``-inf`` for an empty or all-silent signal, or one gated away entirely (below the
    -70 LUFS absolute gate). A signal shorter than one 400 ms gating block is looped to one
    second before measuring.
    """
    meter = LoudnessMeter(rate_hz)
    for i in range(0, len(x), CHUNK):
        meter.feed(x[i:i + CHUNK])
    return meter.integrated_lufs()


def db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def normalization_gain(
    lufs: float, peak: float, target_lufs: float = TARGET_LUFS,
    ceiling_dbfs: float = CEILING_DBFS,
) -> float:
    """The linear gain that takes a signal measured at ``lufs`` to ``target_lufs``, reduced so
    that its sample ``peak`` (linear) stays at or below ``ceiling_dbfs`` (a warning is logged
    with the shortfall); 1 for a silent signal."""
    if not math.isfinite(lufs) or peak <= 0.0:
        log.warning("normalize: signal is silent, left unchanged")
        return 1.0
    gain = db_to_gain(target_lufs - lufs)
    ceiling = db_to_gain(ceiling_dbfs)
    if peak * gain > ceiling:
        capped = ceiling / peak
        log.warning(
            "normalize: peak-limited, reaching %.1f LUFS instead of %.1f (peak %.1f dBFS)",
            lufs + 20.0 * math.log10(capped),
            target_lufs,
            20.0 * math.log10(peak),
        )
        gain = capped
    return gain


def normalize(
    x: np.ndarray,
    target_lufs: float = TARGET_LUFS,
    ceiling_dbfs: float = CEILING_DBFS,
    rate_hz: int = 48_000,
) -> np.ndarray:
    """``x`` gained to ``target_lufs``, as a new float32 array.

    The gain is reduced so that the sample peak stays at or below ``ceiling_dbfs`` (a warning is
    logged with the shortfall); a silent signal is returned unchanged.
    """
    out = np.array(x, dtype=np.float32)
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    gain = normalization_gain(integrated_lufs(out, rate_hz), peak, target_lufs, ceiling_dbfs)
    if gain == 1.0:
        return out
    ceiling = db_to_gain(ceiling_dbfs)
    out *= np.float32(gain)
    # float32 rounding of peak * gain can land one ulp above the ceiling.
    np.clip(out, -ceiling, ceiling, out=out)
    return out


def normalize_limited(
    x: np.ndarray,
    target_lufs: float = TARGET_LUFS,
    ceiling_dbfs: float = CEILING_DBFS,
    release_db_per_s: float = 60.0,
    rate_hz: int = 48_000,
) -> np.ndarray:
    """``x`` gained to ``target_lufs`` with its peaks limited to ``ceiling_dbfs``, as float32.

    For sources whose peaks are too high for the target but which we control, such as
    synthetic speech (espeak-ng's glottal pulses give it about 20 dB of peak-to-loudness);
    uploads keep ``normalize``, which never alters the waveform's shape. If the target cannot
    be reached (a signal that is nearly all peak) it returns the closest it got.
    """
    src = np.array(x, dtype=np.float32)
    lufs = integrated_lufs(src, rate_hz)
    if not math.isfinite(lufs):
        return src
    # Limiting takes back part of every added dB, so search for the gain that lands on the
    # target (secant steps, as loudness is smooth and monotonic in gain); the release is fast
    # enough that the target stays reachable for speech.
    gain_db, prev = target_lufs - lufs, None
    for _ in range(8):
        out = src * np.float32(db_to_gain(gain_db))
        limiter = Limiter(ceiling_dbfs, release_db_per_s, rate_hz)
        for i in range(0, len(out), CHUNK):
            limiter.process(out[i:i + CHUNK])
        error_db = target_lufs - integrated_lufs(out, rate_hz)
        if abs(error_db) < 0.05:
            break
        step_db = error_db
        if prev is not None and prev[1] != error_db:
            slope = (prev[1] - error_db) / (gain_db - prev[0])  # LU gained per dB of gain
            step_db = error_db / min(max(slope, 0.1), 1.0)
        prev = (gain_db, error_db)
        gain_db += min(step_db, 20.0)
    return out


class Limiter:
    """Peak limiter for the mix: instant attack, linear-in-dB release, no lookahead.

    The gain drops on the very sample that would exceed the ceiling (so nothing ever passes it)
    and recovers at ``release_db_per_s``. State is one float, so a limiter belongs to one
    program's stream and must not be shared between streams. It never raises on a frame, never
    allocates beyond numpy temporaries of that frame, and replaces NaN/inf samples with silence
    rather than let them reach the encoder.
    """

    def __init__(
        self, ceiling_dbfs: float = CEILING_DBFS, release_db_per_s: float = 20.0,
        rate_hz: int = 48_000,
    ) -> None:
        if ceiling_dbfs > 0.0:
            raise ValueError("ceiling_dbfs must be <= 0")
        if release_db_per_s <= 0.0:
            raise ValueError("release_db_per_s must be > 0")
        self.ceiling_dbfs = ceiling_dbfs
        self._ceiling = db_to_gain(ceiling_dbfs)
        self._release_db_per_sample = release_db_per_s / rate_hz
        self._gain_db = 0.0
        self._ramp_db = np.zeros(0)

    @property
    def gain_db(self) -> float:
        """Gain applied to the last sample of the last frame (0 = unity)."""
        return self._gain_db

    def reset(self) -> None:
        self._gain_db = 0.0

    def process(self, frame: np.ndarray) -> np.ndarray:
        """Limit ``frame`` (a 1-D float array) in place and return it."""
        n = frame.shape[0]
        if n == 0:
            return frame
        # Two reductions and no temporary in the usual case (every program, every frame):
        # a NaN or infinity anywhere shows in the maximum or the minimum.
        hi, lo = float(frame.max()), float(frame.min())
        if not (math.isfinite(hi) and math.isfinite(lo)):
            np.nan_to_num(frame, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            hi, lo = float(frame.max()), float(frame.min())
        if self._gain_db >= 0.0 and max(hi, -lo) <= self._ceiling:
            return frame  # nothing to do
        mag = np.abs(frame)
        if self._ramp_db.shape[0] != n:
            self._ramp_db = np.arange(1, n + 1, dtype=np.float64) * self._release_db_per_sample
        # The gain each sample needs, in dB (0 where the sample is below the ceiling).
        need_db = np.zeros(n)
        over = mag > self._ceiling
        need_db[over] = 20.0 * np.log10(self._ceiling / mag[over])
        # g[k] = min(0, need[k], g[k-1] + d) unrolls to
        # g[k] = min(0, g_prev + (k+1)d, min_{j<=k}(need[j] - (j+1)d) + (k+1)d),
        # which a running minimum computes without a Python loop.
        need_db -= self._ramp_db
        np.minimum.accumulate(need_db, out=need_db)
        np.minimum(need_db, self._gain_db, out=need_db)
        need_db += self._ramp_db
        np.minimum(need_db, 0.0, out=need_db)
        self._gain_db = float(need_db[-1])
        frame *= 10.0 ** (need_db / 20.0)
        # The dB round trip can leave a sample one ulp above the ceiling.
        np.clip(frame, -self._ceiling, self._ceiling, out=frame)
        return frame
