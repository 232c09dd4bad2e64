"""Pulled streams: relayed radio ("tiếp sóng") from an HTTP/Icecast stream or HLS, as a live input.

A commune relays national or provincial radio in a scheduled window. :class:`PulledStream` runs
one daemon thread that opens the URL with PyAV (ffmpeg's HTTP, Icecast and HLS support, so MP3,
AAC, Ogg/Vorbis and Opus all work), decodes, resamples to 48 kHz mono float32 and writes into a
:class:`~streamer.mixer.sources.live.LiveBuffer` at real-time pace: a file served over HTTP
arrives faster than real time and must not push minutes into a buffer whose readers would skip
them. The point of the state machine below is that a dead upstream is reported, not aired as
silence for an hour; after ``down`` the stream reconnects by itself, with exponential backoff
and jitter, and recovers to ``playing`` when the upstream returns.

States, reported through ``on_state(state, detail)`` from the thread:

- ``connecting``: opening the URL (at start and after each ``down``);
- ``playing``: audio decodes and is written to the buffer;
- ``silent``: audio decodes but stayed below ``silence_dbfs`` for ``silence_s`` (a dead studio
  feeding digital silence);
- ``down``: cannot connect, an HTTP error, not audio, the stream ended, or no audio for
  ``stall_s``; the detail says which. A reconnect follows after a backoff, except for a URL
  that is not http(s);
- ``stopped``: ``stop()`` was called; nothing is written or reported after it.

Metrics, on the registry given (`url` is the URL without credentials, query or fragment):

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| `loa_pulled_stream_up` | gauge | `url` | 1 while `playing`, else 0 |
| `loa_pulled_stream_state` | gauge | `url`, `state` | 1 for the current state, 0 for the others |
| `loa_pulled_stream_reconnects_total` | counter | `url` | connection attempts after a `down` |

The thread never raises, and never opens anything but http(s): ffmpeg's protocol whitelist
also covers the URLs inside an HLS playlist, which must not read local files. PyAV can only
interrupt a blocked read through its timeouts, and closing a container that another thread is
reading from frees memory under that thread; so ``stop()`` returns within about a second, and
from then on the thread writes and reports nothing, but a read blocked on a hung upstream ends
only when its timeout (``stall_s``) fires, and the thread with it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import av
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from .base import RATE_HZ
from .live import LiveBuffer

log = logging.getLogger(__name__)

STATES = ("connecting", "playing", "silent", "down", "stopped")
#: a stream that fell this far behind real time (a network stall) restarts the pacing clock,
#: so that the backlog plays late rather than being rushed into the buffer and skipped
MAX_BEHIND_S = 0.2
STOP_JOIN_S = 1.0

# Only http(s), for the URL and for everything an HLS playlist points to (crypto: AES-128 HLS).
# ffmpeg's own `reconnect*` options are left off on purpose: they would hide a break from the
# states and the reconnect counter, and resume a file from a server without Range support at
# the wrong place; every break ends the session and the thread reconnects, with backoff.
OPEN_OPTIONS = {"protocol_whitelist": "http,https,tcp,tls,crypto"}


class PulledStreamMetrics:
    """The metrics of every pulled stream on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge("loa_pulled_stream_up", "1 while the pulled stream is playing",
                        ["url"], registry=registry)
        self.state = Gauge("loa_pulled_stream_state",
                           "1 for the pulled stream's current state, 0 for the others",
                           ["url", "state"], registry=registry)
        self.reconnects = Counter("loa_pulled_stream_reconnects_total",
                                  "Connection attempts after the pulled stream went down",
                                  ["url"], registry=registry)


# Several streams share a registry, and a registry refuses a metric name twice.
_metrics: weakref.WeakKeyDictionary[CollectorRegistry, PulledStreamMetrics] = (
    weakref.WeakKeyDictionary())
_metrics_lock = threading.Lock()


def metrics_for(registry: CollectorRegistry) -> PulledStreamMetrics:
    with _metrics_lock:
        if registry not in _metrics:
            _metrics[registry] = PulledStreamMetrics(registry)
        return _metrics[registry]


def public_url(url: str) -> str:
    """``url`` without user, password, query or fragment: safe for logs, labels and details."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def url_problem(url: str) -> str | None:
    """Why ``url`` can never be pulled, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"url: must be an http:// or https:// URL of the stream, got {url[:100]!r}"
    return None


def describe(exc: av.FFmpegError) -> str:
    """An operator's reading of an ffmpeg error (its message, never the URL it carries)."""
    if isinstance(exc, av.InvalidDataError):
        return f"not an audio stream ffmpeg can read ({exc.strerror})"
    return str(exc.strerror or type(exc).__name__)


def _frames(packet: av.Packet[Any]) -> list[av.AudioFrame]:
    try:
        return cast("list[av.AudioFrame]", packet.decode())  # an audio stream's packet
    except av.InvalidDataError:
        return []  # one corrupt packet is skipped; only audio that stops ends the session


class NoAudio(Exception):
    """Packets arrive but none decodes to audio."""


def _ignore(state: str, detail: str) -> None:
    pass


class PulledStream:
    """One pulled URL feeding one :class:`LiveBuffer`, from ``start()`` to ``stop()``."""

    def __init__(
        self,
        url: str,
        buffer: LiveBuffer,
        *,
        on_state: Callable[[str, str], None] = _ignore,
        silence_dbfs: float = -50.0,
        silence_s: float = 8.0,
        stall_s: float = 5.0,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.url = url
        self.public_url = public_url(url)
        self.buffer = buffer
        self.silence_dbfs = silence_dbfs
        self.silence_s = silence_s
        self.stall_s = stall_s
        self.backoff_s = backoff_s
        self._on_state = on_state
        # None: the metrics are kept, on a registry nobody scrapes
        metrics = metrics_for(registry if registry is not None else CollectorRegistry())
        self._up = metrics.up.labels(self.public_url)
        self._state_gauges = {s: metrics.state.labels(self.public_url, s) for s in STATES}
        self._reconnects = metrics.reconnects.labels(self.public_url)
        self._state = "stopped"
        self._stopping = threading.Event()
        # Held while reporting or writing, so that nothing follows the `stopped` report;
        # re-entrant for an on_state that calls stop().
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._quiet_samples = 0
        self._due = 0.0  # monotonic time the next chunk is due in the buffer

    @property
    def state(self) -> str:
        """The last state reported (``stopped`` before ``start()``)."""
        return self._state

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a PulledStream starts once")
        self._thread = threading.Thread(
            target=self._run, name=f"pulled {self.public_url}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop writing and reporting at once, close the buffer, and give the thread up to a
        second to end (one blocked on a hung upstream ends when its read times out)."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            self._set_state("stopped", "")
        self.buffer.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_JOIN_S)

    # --- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a bug must still show as `down`, never as silent air
            log.exception("pulled stream %s failed", self.public_url)
            self._report("down", f"internal error: {exc!r}")

    def _loop(self) -> None:
        problem = url_problem(self.url)
        if problem is not None:
            self._report("down", problem)
            return
        delay_s = self.backoff_s[0]
        while self._report("connecting", self.public_url):
            played, detail = self._session()
            if not self._report("down", detail):
                return
            if played:
                delay_s = self.backoff_s[0]
            if self._stopping.wait(delay_s * random.uniform(0.5, 1.0)):
                return
            delay_s = min(delay_s * 2, self.backoff_s[1])
            self._reconnects.inc()

    def _session(self) -> tuple[bool, str]:
        """Play one connection until it ends: (whether any audio played, why it ended)."""
        try:
            # Connecting and probing (an HLS playlist and its first segment included) get
            # `stall_s` too: an upstream that sends no audio for that long is down.
            container = av.open(self.url, timeout=self.stall_s, container_options=OPEN_OPTIONS)
        except av.ExitError:
            return False, self._no_audio
        except av.FFmpegError as exc:
            return False, f"cannot open the stream: {describe(exc)}"
        played = False
        with container:
            if not container.streams.audio:
                return False, "the stream has no audio"
            self._quiet_samples = 0
            self._due = time.monotonic()
            try:
                for pcm in self._decode(container):
                    if not self._write(pcm):
                        return played, "stopped"
                    played = True
            except (av.ExitError, NoAudio):
                return played, self._no_audio
            except av.FFmpegError as exc:
                return played, f"the stream broke: {describe(exc)}"
        return played, "the stream ended"

    def _decode(self, container: av.container.InputContainer) -> Iterator[np.ndarray]:
        """48 kHz mono float32 chunks of the first audio stream, one per decoded frame.

        A blocked read ends with PyAV's read timeout; this adds the case of packets that keep
        coming without audio (all corrupt, or only another stream's), raising ``NoAudio``."""
        audio = container.streams.audio[0]
        resampler, source_format = None, None
        heard = time.monotonic()
        for packet in container.demux():
            for frame in _frames(packet) if packet.stream.index == audio.index else ():
                # A source may change rate or layout mid-stream (an Icecast fallback mount).
                fmt = (frame.format.name, frame.layout.name, frame.sample_rate)
                if fmt != source_format:
                    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE_HZ)
                    source_format = fmt
                assert resampler is not None
                for out in resampler.resample(frame):
                    if out.samples:
                        yield out.to_ndarray().reshape(-1)
                        heard = time.monotonic()
            if time.monotonic() - heard > self.stall_s:
                raise NoAudio

    @property
    def _no_audio(self) -> str:
        return f"no audio from the upstream for {self.stall_s:g} s"

    def _write(self, pcm: np.ndarray) -> bool:
        """Write ``pcm`` when it is due (real-time pace) and update the state; False once
        stopped."""
        now = time.monotonic()
        if self._due > now:
            if self._stopping.wait(self._due - now):
                return False
        elif now - self._due > MAX_BEHIND_S:
            self._due = now
        self._due += pcm.size / RATE_HZ
        loud = 10 * np.log10(np.mean(pcm * pcm) + 1e-20) >= self.silence_dbfs
        self._quiet_samples = 0 if loud else self._quiet_samples + pcm.size
        silent = self._quiet_samples >= self.silence_s * RATE_HZ
        with self._lock:
            if self._stopping.is_set():
                return False
            self.buffer.write(pcm)
            if silent and self._state != "silent":
                self._set_state("silent", f"below {self.silence_dbfs:g} dBFS for "
                                          f"{self.silence_s:g} s")
            elif not silent and self._state != "playing":
                self._set_state("playing", "")
        return True

    def _report(self, state: str, detail: str) -> bool:
        """Enter ``state`` unless stopped; False once stopped."""
        with self._lock:
            if self._stopping.is_set():
                return False
            self._set_state(state, detail)
            return True

    def _set_state(self, state: str, detail: str) -> None:
        self._state = state
        self._up.set(1 if state == "playing" else 0)
        for name, gauge in self._state_gauges.items():
            gauge.set(1 if name == state else 0)
        level = logging.WARNING if state in ("down", "silent") else logging.INFO
        log.log(level, "pulled stream %s: %s %s", self.public_url, state, detail)
        try:
            self._on_state(state, detail)
        except Exception:  # the caller's bug must not end the stream or its reports
            log.exception("pulled stream %s: on_state failed", self.public_url)
