"""Clip: a finished recording, decoded from any format PyAV reads, played from a file on disk.

Uploads arrive as wav, mp3, ogg/opus, flac, m4a or whatever an operator's phone produced. They
are decoded once, frame by frame, downmixed to mono and resampled to 48 kHz, and written as
16-bit PCM to a file while their loudness is measured (``ingest``); the gain that takes them to
the system loudness target is stored beside them and applied as they play. Decoded audio is
never held whole: ingest holds half a second of it at a time, and a clip on the air maps its
file, so playing it costs the pages it reads. Short synthetic sounds (the chime, speech) are
clips held in memory, read the same way.

Decoding is the edge where bad input arrives: anything that is not usable audio raises
``ClipError`` with a message an operator can act on, never another exception, and audio longer
than the limit raises ``ClipTooLong`` as soon as the decoded duration passes it, before the
frame that passed it is written (a tiny file can decode to hours of silence).

Playout reads a clip on the frame loop, so it must not wait on the disk: when a stored clip is
opened (in a worker thread, like every source build) its first seconds are read ahead, and the
kernel is told the file is read sequentially, so its read-ahead stays ahead of playout.
"""

from __future__ import annotations

import io
import json
import math
import mmap
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import av
import numpy as np

from streamer.mixer.loudness import (
    CEILING_DBFS,
    TARGET_LUFS,
    LoudnessMeter,
    db_to_gain,
    normalization_gain,
)
from streamer.mixer.sources.base import RATE_HZ

#: Default limit on a clip's decoded duration (the streamer's ``clip_max_s``). Bulletins last
#: minutes; the longest thing a commune uploads is a recorded programme or meeting, up to an
#: hour. Anything longer is a relay of a live stream, not an upload. Memory does not depend
#: on it; disk (5.5 MiB per minute of PCM) and ingest time (about 15 s of one worker thread
#: per hour of MP3) do.
MAX_SECONDS = 3600.0

#: stored PCM: signed 16-bit little-endian, full scale 32768
PCM_DTYPE = np.dtype("<i2")
_FULL_SCALE = 32768.0
# Decoded audio is written and measured in blocks of this many samples: few enough Python
# round trips for an hour of MP3's 1152-sample frames, little memory.
_BLOCK = RATE_HZ // 2
_READ_AHEAD_S = 10
MAX_FRAME_S = 10


class ClipError(ValueError):
    """The input cannot become a clip (not audio, no audio stream, empty, too long)."""


class ClipTooLong(ClipError):
    """The audio decodes to more than the limit (``max_seconds``)."""

    def __init__(self, max_seconds: float) -> None:
        super().__init__(f"the audio is longer than the {max_seconds:g} s limit")
        self.max_seconds = max_seconds


@dataclass(frozen=True)
class ClipLevels:
    """What ingest learnt about a clip's stored PCM; kept beside it as JSON."""

    samples: int
    #: BS.1770 integrated loudness of the stored PCM; None if silent (or gated away)
    lufs: float | None
    #: sample peak of the stored PCM, linear (1 = full scale)
    peak: float
    #: linear gain applied at playback: to the loudness target, capped under the ceiling
    gain: float

    def to_json(self) -> str:
        return json.dumps({"format": "s16le", "rate_hz": RATE_HZ, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> ClipLevels:
        d = json.loads(text)
        if d.get("format") != "s16le" or d.get("rate_hz") != RATE_HZ:
            raise ValueError(f"not 48 kHz s16le PCM: {d.get('format')} {d.get('rate_hz')}")
        return cls(samples=int(d["samples"]), peak=float(d["peak"]), gain=float(d["gain"]),
                   lufs=None if d["lufs"] is None else float(d["lufs"]))


class Clip:
    """48 kHz mono samples times a gain: float32 in memory, or 16-bit PCM mapped from a file."""

    def __init__(self, samples: np.ndarray, gain: float = 1.0,
                 path: Path | None = None) -> None:
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise ValueError(f"clip samples must be mono (1-D), got shape {samples.shape}")
        if samples.dtype == PCM_DTYPE:
            self._samples, self._scale = samples, np.float32(gain / _FULL_SCALE)
        else:
            self._samples = np.ascontiguousarray(samples, dtype=np.float32)
            self._scale = np.float32(gain)
        self.length: int | None = len(self._samples)
        #: the PCM file this clip plays from, or None for one held in memory
        self.path = path

    @property
    def seconds(self) -> float:
        return len(self._samples) / RATE_HZ

    def read(self, pos: int, n: int) -> np.ndarray:
        # Always a new array: the mixer scales and limits frames in place, and must not change
        # the clip underneath another channel that plays it too.
        out = np.zeros(n, dtype=np.float32)
        start, stop = max(pos, 0), min(pos + n, len(self._samples))
        if start < stop:
            np.multiply(self._samples[start:stop], self._scale, out=out[start - pos : stop - pos])
        return out

    @classmethod
    def open(cls, path: Path, levels: ClipLevels) -> Clip:
        """The clip whose PCM ``ingest`` wrote to ``path``, mapped, not read."""
        with open(path, "rb") as f:
            return cls._mapped(f.fileno(), levels, path)

    @classmethod
    def _mapped(cls, fd: int, levels: ClipLevels, path: Path | None) -> Clip:
        size = levels.samples * PCM_DTYPE.itemsize
        if os.fstat(fd).st_size != size:
            raise ClipError(f"stored PCM is not {levels.samples} samples long")
        pages = mmap.mmap(fd, size, access=mmap.ACCESS_READ)  # outlives the descriptor
        pages.madvise(mmap.MADV_SEQUENTIAL)
        pages.madvise(mmap.MADV_WILLNEED, 0, min(size, _READ_AHEAD_S * RATE_HZ * 2))
        return cls(np.frombuffer(pages, dtype=PCM_DTYPE), levels.gain, path)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        target_lufs: float = TARGET_LUFS,
        max_seconds: float = MAX_SECONDS,
    ) -> Clip:
        """Decode the audio file at ``path`` into an unnamed temporary file and map it."""
        return cls._from_source(os.fspath(path), target_lufs, max_seconds)

    @classmethod
    def from_bytes(
        cls, data: bytes, target_lufs: float = TARGET_LUFS, max_seconds: float = MAX_SECONDS
    ) -> Clip:
        """Decode an audio file held in ``data`` into an unnamed temporary file and map it."""
        if not data:
            raise ClipError("the file is empty")
        return cls._from_source(io.BytesIO(data), target_lufs, max_seconds)

    @classmethod
    def _from_source(cls, source: Any, target_lufs: float, max_seconds: float) -> Clip:
        with tempfile.TemporaryFile() as pcm:
            levels = ingest(source, pcm, max_seconds, target_lufs)
            pcm.flush()
            return cls._mapped(pcm.fileno(), levels, None)


def ingest(
    source: Any,
    pcm: IO[bytes],
    max_seconds: float = MAX_SECONDS,
    target_lufs: float = TARGET_LUFS,
) -> ClipLevels:
    """Decode ``source`` (a path or a binary file) into ``pcm`` as 48 kHz mono 16-bit PCM,
    measuring its loudness and peak on the way; the levels say how to play it at
    ``target_lufs``. Holds at most one block of decoded audio, whatever the clip's length."""
    meter = LoudnessMeter(RATE_HZ)
    peak = 0
    pending: list[np.ndarray] = []
    pending_n = 0

    def write() -> None:
        nonlocal peak, pending_n
        block = np.concatenate(pending)
        pending.clear()
        pending_n = 0
        block *= _FULL_SCALE
        np.rint(block, out=block)
        np.clip(block, -_FULL_SCALE, _FULL_SCALE - 1, out=block)
        quantised = block.astype(PCM_DTYPE)
        pcm.write(quantised.data)
        # Measured as stored, so the gain is exact for what plays.
        meter.feed(quantised / _FULL_SCALE)
        peak = max(peak, -int(quantised.min()), int(quantised.max()))

    for chunk in decoded(source, max_seconds):
        pending.append(chunk)
        pending_n += chunk.shape[0]
        if pending_n >= _BLOCK:
            write()
    if pending:
        write()
    lufs = meter.integrated_lufs()
    gain = normalization_gain(lufs, peak / _FULL_SCALE, target_lufs, CEILING_DBFS)
    # The gain is applied in float32; keep the loudest sample at or under the ceiling after
    # that rounding too.
    scale = np.float32(gain / _FULL_SCALE)
    while float(np.float32(peak) * scale) > db_to_gain(CEILING_DBFS):
        scale = np.nextafter(scale, np.float32(0))
    return ClipLevels(samples=meter.samples, lufs=lufs if math.isfinite(lufs) else None,
                      peak=peak / _FULL_SCALE, gain=float(scale) * _FULL_SCALE)


def decode_bytes(data: bytes, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """48 kHz mono float32 samples of the audio file in ``data``, not normalised, in memory:
    for short sounds only (speech), which are processed whole."""
    if not data:
        raise ClipError("the file is empty")
    return decode(io.BytesIO(data), max_seconds)


def decode(source: Any, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """48 kHz mono float32 samples of ``source`` (a path or a binary file), in memory."""
    return np.concatenate(list(decoded(source, max_seconds)))


def decoded(source: Any, max_seconds: float = MAX_SECONDS) -> Iterator[np.ndarray]:
    """48 kHz mono float32 samples of ``source``, a chunk at a time as PyAV decodes them.

    Raises ``ClipTooLong`` as soon as the running total passes ``max_seconds``, before the
    chunk that passed it is handed on; ``ClipError`` if there is no audio at all.
    """
    max_samples = int(max_seconds * RATE_HZ)
    total = 0
    try:
        with av.open(source, mode="r") as container:
            if not container.streams.audio:
                raise ClipError("the file has no audio stream")
            stream = container.streams.audio[0]
            # Trust but verify: refuse on the declared duration at once, and still count
            # samples below, since a header can lie or say nothing.
            if container.duration is not None and container.duration > max_seconds * av.time_base:
                raise ClipTooLong(max_seconds)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE_HZ)
            for frame in container.decode(stream):
                # Resampling happens before the running total can be checked, so one frame
                # must not decode to much: codecs' frames last milliseconds to a second or so,
                # but a FLAC header may claim 65535 samples at 1 Hz (18 h at 48 kHz).
                if frame.samples > MAX_FRAME_S * frame.sample_rate:
                    raise ClipError(f"a frame lasts {frame.samples / frame.sample_rate:g} s, "
                                    f"over {MAX_FRAME_S} s: not audio")
                for out in resampler.resample(frame):
                    total += out.samples
                    if total > max_samples:
                        raise ClipTooLong(max_seconds)
                    yield out.to_ndarray().reshape(-1)
            for out in resampler.resample(None):
                total += out.samples
                if total > max_samples:
                    raise ClipTooLong(max_seconds)
                yield out.to_ndarray().reshape(-1)
    except ClipError:
        raise
    except FileNotFoundError as exc:
        raise ClipError(f"no such file: {exc.filename or source}") from exc
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ClipError(f"not a readable audio file ({exc})") from exc
    if total == 0:
        raise ClipError("the file contains no audio samples")
