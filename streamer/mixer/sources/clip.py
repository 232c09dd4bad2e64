"""Clip: a finished recording held in memory, decoded from any format PyAV reads.

Uploads arrive as wav, mp3, ogg/opus, flac, m4a or whatever an operator's phone produced; they
are decoded once at ingest, downmixed to mono, resampled to 48 kHz and normalised to the system
loudness target, so that playout only ever slices an array. Decoding is the edge where bad input
arrives: anything that is not usable audio raises ``ClipError`` with a message an operator can
act on, never another exception, and a file longer than the limit is refused while decoding,
before it has been decoded whole.
"""

from __future__ import annotations

import io
import os
from typing import Any

import av
import numpy as np

from streamer.mixer.loudness import TARGET_LUFS, normalize
from streamer.mixer.sources.base import RATE_HZ

MAX_SECONDS = 3600


class ClipError(ValueError):
    """The input cannot become a clip (not audio, no audio stream, empty, too long)."""


class Clip:
    """48 kHz mono float32 samples, already normalised."""

    def __init__(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise ValueError(f"clip samples must be mono (1-D), got shape {samples.shape}")
        self._samples = np.ascontiguousarray(samples, dtype=np.float32)
        self.length: int | None = len(self._samples)

    @property
    def samples(self) -> np.ndarray:
        return self._samples

    @property
    def seconds(self) -> float:
        return len(self._samples) / RATE_HZ

    def read(self, pos: int, n: int) -> np.ndarray:
        # Always a copy: the mixer scales and limits frames in place, and must not change the
        # clip underneath another channel that plays it too.
        out = np.zeros(n, dtype=np.float32)
        start, stop = max(pos, 0), min(pos + n, len(self._samples))
        if start < stop:
            out[start - pos : stop - pos] = self._samples[start:stop]
        return out

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        target_lufs: float = TARGET_LUFS,
        max_seconds: float = MAX_SECONDS,
    ) -> Clip:
        """Decode, downmix, resample and normalise the audio file at ``path``."""
        return cls(normalize(decode(os.fspath(path), max_seconds), target_lufs))

    @classmethod
    def from_bytes(
        cls, data: bytes, target_lufs: float = TARGET_LUFS, max_seconds: float = MAX_SECONDS
    ) -> Clip:
        """Decode, downmix, resample and normalise an audio file held in ``data``."""
        return cls(normalize(decode_bytes(data, max_seconds), target_lufs))


def decode_bytes(data: bytes, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """48 kHz mono float32 samples of the audio file in ``data``, not normalised."""
    if not data:
        raise ClipError("the file is empty")
    return decode(io.BytesIO(data), max_seconds)


def decode(source: Any, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """48 kHz mono float32 samples of ``source`` (a path or a binary file), not normalised."""
    max_samples = int(max_seconds * RATE_HZ)
    too_long = f"the audio is longer than the {max_seconds:g} s limit"
    try:
        with av.open(source, mode="r") as container:
            if not container.streams.audio:
                raise ClipError("the file has no audio stream")
            stream = container.streams.audio[0]
            # Trust but verify: refuse on the declared duration at once, and still count
            # samples below, since a header can lie.
            if container.duration is not None and container.duration > max_seconds * av.time_base:
                raise ClipError(too_long)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE_HZ)
            chunks: list[np.ndarray] = []
            total = 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    total += out.samples
                if total > max_samples:
                    raise ClipError(too_long)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
                total += out.samples
    except ClipError:
        raise
    except FileNotFoundError as exc:
        raise ClipError(f"no such file: {exc.filename or source}") from exc
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ClipError(f"not a readable audio file ({exc})") from exc
    if total == 0:
        raise ClipError("the file contains no audio samples")
    if total > max_samples:
        raise ClipError(too_long)
    return np.concatenate(chunks)
