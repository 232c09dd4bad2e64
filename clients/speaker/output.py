"""Where a speaker's PCM goes (WAV file, sound card, nowhere) and its proof-of-play log.

Every sink takes 16-bit mono samples at 48 kHz, appended at its end: the playout has already
placed them on the wall-clock timeline (zeros for silence). A sink must never block the event
loop for long and must never raise on a full disk mid-broadcast without saying so in the log.
Samples come as Python buffers of int16 in the machine's order (a ``memoryview`` cast to ``h``
or an ``array("h")``), written as they are: WAV and the sound card take little-endian, as
every board Loa runs on is. No numpy here or in the playout: it would be a quarter of a small
speaker's memory (``docs/operations.md``, "A small speaker").
"""

from __future__ import annotations

import json
import logging
import struct
import sys
import threading
from array import array
from typing import IO, Any, Protocol, TypeAlias

RATE_HZ = 48_000
_WAV_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
WAV_HEADER_LEN = _WAV_HEADER.size  # 44
WAV_MAX_DATA = 0xFFFF_FFFF - 36  # RIFF sizes are 32-bit: about 12.4 h of 48 kHz mono
_ZEROS = bytes(2 * RATE_HZ)  # one second of silence, written in slices

log = logging.getLogger("loa.speaker.output")

#: int16 samples: a ``memoryview`` cast to ``h`` or an ``array("h")``
Samples: TypeAlias = "memoryview | array[int]"

if sys.byteorder != "little":  # WAV and the card's S16_LE would need a byte swap
    raise ImportError("the speaker's sinks write int16 samples in little-endian order only")


def wav_header(data_bytes: int, rate_hz: int = RATE_HZ) -> bytes:
    """The 44-byte header of a 16-bit mono PCM WAV holding ``data_bytes`` of samples."""
    return _WAV_HEADER.pack(b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, 1, rate_hz,
                            2 * rate_hz, 2, 16, b"data", data_bytes)


class Sink(Protocol):
    def write(self, pcm: Samples) -> None:
        """Append int16 samples."""

    def write_silence(self, n: int) -> None:
        """Append ``n`` zero samples."""

    def flush(self) -> None: ...

    def close(self) -> None: ...


class NullSink:
    """Plays nowhere; counts samples so that tests and metrics can see the timeline move."""

    def __init__(self) -> None:
        self.samples = 0

    def write(self, pcm: Samples) -> None:
        self.samples += len(pcm)

    def write_silence(self, n: int) -> None:
        self.samples += n

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class WavSink:
    """16-bit mono 48 kHz WAV whose sample 0 plays at wall time ``t0``.

    The header is written by hand rather than with :mod:`wave`: ``wave`` rewrites the header
    (seek, write, seek back) on every ``writeframes`` call once the length is unknown, i.e. on
    every 20 ms frame; here the sizes are patched once per flush, and a flush happens after at
    most one second of samples, so a reader sees a valid, at most one-second-stale file.
    """

    def __init__(self, path: str, t0: float, rate_hz: int = RATE_HZ) -> None:
        self.path = path
        self.t0 = t0
        self.rate_hz = rate_hz
        self.data_bytes = 0
        self.dropped_samples = 0  # past the 4 GiB RIFF limit
        self._unflushed = 0
        self._f: IO[bytes] = open(path, "wb")  # lives as long as the sink
        self._f.write(self._header())
        self._f.flush()

    def _header(self) -> bytes:
        return wav_header(self.data_bytes, self.rate_hz)

    def _append(self, data: bytes | memoryview) -> None:
        room = WAV_MAX_DATA - self.data_bytes
        if len(data) > room:
            if self.dropped_samples == 0:
                log.warning("%s reached the WAV size limit; further audio is not written",
                            self.path)
            self.dropped_samples += (len(data) - room) // 2
            data = data[:room]
        if data:
            self._f.write(data)
            self.data_bytes += len(data)
            self._unflushed += len(data)
            if self._unflushed >= 2 * self.rate_hz:
                self.flush()

    def write(self, pcm: Samples) -> None:
        self._append(memoryview(pcm).cast("B"))

    def write_silence(self, n: int) -> None:
        while n > 0:
            k = min(n, len(_ZEROS) // 2)
            self._append(memoryview(_ZEROS)[: 2 * k])
            n -= k

    def flush(self) -> None:
        if self._f.closed:
            return
        self._f.seek(0)
        self._f.write(self._header())
        self._f.seek(0, 2)
        self._f.flush()
        self._unflushed = 0

    def close(self) -> None:
        if not self._f.closed:
            self.flush()
            self._f.close()


class SoundcardSink:
    """The default output device through ``sounddevice`` (optional dependency).

    The card pulls samples from a FIFO in its own thread; an empty FIFO plays zeros. The card's
    own output latency is not compensated yet, so two cards are in sync only to within it.
    """

    MAX_BUFFER_S = 2.0

    def __init__(self, rate_hz: int = RATE_HZ) -> None:
        import sounddevice  # type: ignore[import-not-found]  # optional dependency

        self._fifo = bytearray()
        self._lock = threading.Lock()
        self._max = int(self.MAX_BUFFER_S * rate_hz) * 2
        self.underruns = 0
        self._stream = sounddevice.RawOutputStream(
            samplerate=rate_hz, channels=1, dtype="int16", callback=self._pull
        )
        self._stream.start()

    @staticmethod
    def available() -> bool:
        """True if ``sounddevice`` imports and an output device exists."""
        try:
            import sounddevice

            sounddevice.query_devices(kind="output")
        except Exception:  # ImportError, OSError (no PortAudio), PortAudioError (no device)
            return False
        return True

    def _pull(self, out: Any, frames: int, _time: Any, _status: Any) -> None:
        n = 2 * frames
        with self._lock:
            chunk = bytes(self._fifo[:n])
            del self._fifo[:n]
        if len(chunk) < n:
            self.underruns += 1
            chunk += bytes(n - len(chunk))
        out[:] = chunk

    def _push(self, data: bytes | memoryview) -> None:
        with self._lock:
            self._fifo += data
            if len(self._fifo) > self._max:  # the card stalled: drop the oldest audio
                del self._fifo[: len(self._fifo) - self._max]

    def write(self, pcm: Samples) -> None:
        self._push(memoryview(pcm).cast("B"))

    def write_silence(self, n: int) -> None:
        self._push(bytes(2 * n))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


class PlayLog:
    """Proof-of-play as JSON lines; each line is flushed at once (events are rare)."""

    def __init__(self, path: str) -> None:
        self._f = open(path, "a", encoding="utf-8")  # lives as long as the log

    def write(self, event: dict[str, Any]) -> None:
        if not self._f.closed:
            self._f.write(json.dumps(event, separators=(",", ":")) + "\n")
            self._f.flush()

    def close(self) -> None:
        self._f.close()
