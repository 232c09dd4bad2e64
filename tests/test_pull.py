"""Pulled streams against a real HTTP upstream, checked by what reaches the LiveBuffer.

The upstream is a real HTTP server on a free port, which a test can kill the way a radio
station's server dies (every connection reset at once) and start again on the same port. It
sends Icecast-like streams at real-time rate after a short burst, with ``icy-`` headers and no
length; plain files and HLS playlists at wire speed; and the bad cases (404, an HTML page, a
server that hangs, a stream whose sound dies). The audio is real ``ffmpeg`` output, and what
the stream wrote is read back through ``LiveBuffer.reader()`` the way the mixer reads it, then
checked by its FFT peak and RMS level.
"""

from __future__ import annotations

import functools
import http.server
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamer.mixer.sources.live import LiveBuffer
from streamer.mixer.sources.pull import PulledStream
from tests.harness.audio import peak_hz, rms_dbfs
from tests.harness.net import free_port

pytestmark = pytest.mark.realtime  # audio against the wall clock: see conftest.py

#: lavfi's sine has amplitude 1/8: an RMS of 20*log10(1/8/sqrt(2)) dBFS
TONE_RMS_DBFS = -21.07
FRAME = 960  # 20 ms at 48 kHz, as the mixer reads
SECONDS = 20  # length of the generated station audio
LIVE = f"seconds={SECONDS}"

# --- the upstream -----------------------------------------------------------------------------

CONTENT_TYPES = {".mp3": "audio/mpeg", ".ogg": "application/ogg", ".opus": "audio/ogg",
                 ".ts": "video/mp2t"}


class Upstream(http.server.SimpleHTTPRequestHandler):
    """``/live/<file>?seconds=N[&hang=1]``: the file at real-time rate (N is its length),
    Icecast-style, then the end of the response (or, with ``hang``, silence on an open
    connection); ``/hang``: audio headers, then nothing; ``/hang-headers``: nothing at all;
    ``/html``: a web page; anything else: a static file (with a length) or 404."""

    protocol_version = "HTTP/1.0"
    server: Server

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path.startswith("/live/"):
            self.live(Path(self.directory) / url.path[6:], parse_qs(url.query))
        elif url.path == "/hang":
            self.send_response(200)
            self.send_header("Content-Type", "audio/mpeg")
            self.end_headers()
            self.wfile.flush()
            self.server.killed.wait(30)
        elif url.path == "/hang-headers":
            self.server.killed.wait(30)
        elif url.path == "/html":
            body = b"<!DOCTYPE html><html><body>" + b"<p>Radio online</p>" * 500 + b"</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            super().do_GET()

    def live(self, path: Path, query: dict[str, list[str]]) -> None:
        data = path.read_bytes()
        rate = len(data) / float(query["seconds"][0])  # bytes per second
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPES[path.suffix])
        self.send_header("icy-name", "Loa test radio")
        self.send_header("icy-br", str(round(rate * 8 / 1000)))
        self.end_headers()
        t0, sent = time.monotonic(), 0
        while sent < len(data):
            due = int((time.monotonic() - t0 + 1.0) * rate)  # Icecast bursts 1 s on connect
            self.wfile.write(data[sent:due])
            self.wfile.flush()
            sent = max(sent, due)
            if self.server.killed.wait(0.05):
                return
        if "hang" in query:
            self.server.killed.wait(30)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(http.server.ThreadingHTTPServer):
    """The upstream on a fixed port. ``kill()`` drops every connection at once, as a crashed
    station server does (a reset, not a goodbye); a new ``Server`` on the same port is the
    station coming back."""

    def __init__(self, root: Path, port: int) -> None:
        super().__init__(("127.0.0.1", port), functools.partial(Upstream, directory=str(root)))
        self.port = port
        self.killed = threading.Event()
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.connections.append(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.connections.remove(request)
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that went away, or a connection killed under its handler

    def kill(self) -> None:
        self.killed.set()
        self.shutdown()
        self.server_close()
        with self.lock:
            for conn in self.connections:
                # linger 0: close() resets the connection, like a process that died
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The station's audio, made by ffmpeg (all at once: it takes seconds on a busy machine).
    Every live file lasts ``SECONDS``, the length the ``/live`` URLs give."""
    root = tmp_path_factory.mktemp("upstream")

    def sine(hz: int, seconds: int = SECONDS, rate_hz: int = 44_100) -> list[str]:
        return ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                f"sine=frequency={hz}:sample_rate={rate_hz}:duration={seconds}"]

    mp3 = ["-c:a", "libmp3lame", "-b:a", "64k"]
    jobs = [
        [*sine(1000), "-ac", "2", *mp3, str(root / "tone.mp3")],
        [*sine(700), "-c:a", "libvorbis", str(root / "tone.ogg")],
        [*sine(440, rate_hz=48_000), "-c:a", "libopus", "-b:a", "48k", str(root / "tone.opus")],
        [*sine(600), "-c:a", "aac", "-b:a", "64k", "-f", "hls", "-hls_time", "1",
         "-hls_playlist_type", "vod", "-hls_segment_filename", str(root / "radio%03d.ts"),
         str(root / "radio.m3u8")],
        [*sine(1000), "-af", "volume=enable='between(t,1,4.5)':volume=0", *mp3,
         str(root / "dead-studio.mp3")],
        [*sine(1000, 2), *mp3, str(root / "short.mp3")],
        # a TV-style stream whose sound dies after 2 s while its picture goes on
        [*sine(1000, 2), "-f", "lavfi", "-i", f"testsrc=size=64x48:rate=25:duration={SECONDS}",
         "-c:a", "mp2", "-c:v", "mpeg1video", "-b:v", "100k", "-muxrate", "400k", "-f", "mpegts",
         str(root / "mute-tv.ts")],  # constant mux rate: the live pacing by bytes holds
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         "testsrc=size=64x48:rate=25:duration=2", "-c:v", "mpeg1video", "-f", "mpegts",
         str(root / "picture-only.ts")],
    ]
    for proc in [subprocess.Popen(job) for job in jobs]:
        assert proc.wait(timeout=120) == 0
    # a playlist that points at a file on the streamer's own disk
    (root / "local-file.m3u8").write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:20\n#EXT-X-PLAYLIST-TYPE:VOD\n"
        f"#EXTINF:20.0,\nfile://{root / 'tone.mp3'}\n#EXT-X-ENDLIST\n")
    return root


@pytest.fixture
def upstream(media: Path):
    server = Server(media, free_port())
    yield server
    server.kill()


def assert_paced(p: Pulled, t_playing: float) -> None:
    """No more than real time since ``playing`` has been written (plus a decoded chunk). It may
    be behind: a thread starved by a busy machine restarts its clock rather than rush the
    backlog (``MAX_BEHIND_S``), so the lower side only asks that it kept writing."""
    written_s = p.buffer.written / 48_000
    assert 0.25 < written_s < time.monotonic() - t_playing + 0.5, written_s


class States:
    """The ``on_state`` callback: every report, with the monotonic time it came."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []
        self._cond = threading.Condition()

    def __call__(self, state: str, detail: str) -> None:
        with self._cond:
            self.events.append((time.monotonic(), state, detail))
            self._cond.notify_all()

    def wait_for(self, state: str, timeout_s: float, after: float = 0.0) -> tuple[float, str]:
        """(time, detail) of the first ``state`` reported at or after ``after``."""
        def found() -> tuple[float, str] | None:
            return next(((t, d) for t, s, d in self.events if s == state and t >= after), None)

        with self._cond:
            if not self._cond.wait_for(lambda: found() is not None, timeout_s):
                pytest.fail(f"no {state!r} within {timeout_s} s; reports: {self.names()}")
            hit = found()
            assert hit is not None
            return hit

    def names(self) -> list[str]:
        return [s for _, s, _ in self.events]


@dataclass
class Pulled:
    stream: PulledStream
    states: States
    buffer: LiveBuffer
    registry: CollectorRegistry

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, {"url": self.stream.public_url, **labels})


@pytest.fixture
def pull(monkeypatch: pytest.MonkeyPatch):
    """Start pulled streams; at the end, stop them and check that every thread ended without
    an exception."""
    errors: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    made: list[Pulled] = []

    def start(url: str, **kwargs: object) -> Pulled:
        states, buffer, registry = States(), LiveBuffer(), CollectorRegistry()
        kwargs = {"backoff_s": (0.2, 1.0), "on_state": states, **kwargs}
        stream = PulledStream(url, buffer, registry=registry, **kwargs)
        stream.start()
        made.append(Pulled(stream, states, buffer, registry))
        return made[-1]

    yield start
    for p in made:
        p.stream.stop()
        assert p.stream.thread is not None
        p.stream.thread.join(p.stream.stall_s + 2)
        assert not p.stream.thread.is_alive(), "the pulling thread outlived its read timeout"
    assert not errors, [e.exc_value for e in errors]


def listen(buffer: LiveBuffer, seconds: float) -> np.ndarray:
    """What a mixer item airs from ``buffer`` over ``seconds``: 20 ms reads on a real-time
    clock through a LiveReader."""
    deadline = time.monotonic() + 5
    while buffer.written < 0.5 * 48_000:  # the reader starts `latency` behind the writer
        assert time.monotonic() < deadline, "nothing was written"
        time.sleep(0.05)
    reader = buffer.reader(latency_s=0.3)
    frames = []
    t0 = time.monotonic()
    for k in range(int(seconds * 50)):
        time.sleep(max(0.0, t0 + k * 0.02 - time.monotonic()))
        frames.append(reader.read(k * FRAME, FRAME))
    return np.concatenate(frames)


def assert_tone(x: np.ndarray, hz: float) -> None:
    assert abs(peak_hz(x) - hz) <= 2, f"peak at {peak_hz(x):.1f} Hz, expected {hz} Hz"
    assert rms_dbfs(x) == pytest.approx(TONE_RMS_DBFS, abs=1.0)


# --- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "hz"), [
    (f"/live/tone.mp3?{LIVE}", 1000),
    (f"/live/tone.ogg?{LIVE}", 700),
    (f"/live/tone.opus?{LIVE}", 440),
], ids=["icecast-mp3", "icecast-ogg-vorbis", "icecast-ogg-opus"])
def test_icecast_stream_airs_its_tone(upstream: Server, pull, path: str, hz: int) -> None:
    p = pull(upstream.url(path))
    p.states.wait_for("playing", 10)
    assert p.metric("loa_pulled_stream_up") == 1
    assert p.metric("loa_pulled_stream_state", state="playing") == 1
    assert_tone(listen(p.buffer, 1.5), hz)
    assert p.states.names() == ["connecting", "playing"]
    p.stream.stop()
    assert p.states.names()[-1] == "stopped"
    assert p.metric("loa_pulled_stream_up") == 0
    assert p.metric("loa_pulled_stream_state", state="stopped") == 1


def test_hls_stream_airs_its_tone_at_real_time_pace(upstream: Server, pull) -> None:
    p = pull(upstream.url("/radio.m3u8"))
    t_playing, _ = p.states.wait_for("playing", 10)
    assert_tone(listen(p.buffer, 1.5), 600)
    # Served at wire speed, the whole 20 s playlist is available at once: pacing must keep the
    # buffer at real time, not let it run minutes (or here, tens of seconds) ahead.
    assert_paced(p, t_playing)


def test_file_served_at_wire_speed_is_paced(upstream: Server, pull) -> None:
    p = pull(upstream.url("/tone.mp3"))
    t_playing, _ = p.states.wait_for("playing", 10)
    time.sleep(2.0)
    assert_paced(p, t_playing)  # a 120 s file sent at wire speed: unpaced, all of it by now
    assert_tone(listen(p.buffer, 1.0), 1000)


def test_killed_upstream_is_reported_down_then_recovers(media: Path, upstream: Server,
                                                        pull) -> None:
    p = pull(upstream.url(f"/live/tone.mp3?{LIVE}"))
    p.states.wait_for("playing", 10)
    killed = time.monotonic()
    upstream.kill()
    t_down, _ = p.states.wait_for("down", 10, after=killed)
    assert t_down - killed <= 10
    assert p.metric("loa_pulled_stream_up") == 0
    time.sleep(1.0)  # the station is away for a while; the stream keeps trying
    assert p.states.names().count("connecting") >= 2
    back = Server(media, upstream.port)
    try:
        p.states.wait_for("playing", 10, after=t_down)
        assert p.metric("loa_pulled_stream_reconnects_total") >= 1
        assert_tone(listen(p.buffer, 1.0), 1000)
    finally:
        back.kill()


def test_hung_upstream_is_reported_down_within_the_stall_time(upstream: Server, pull) -> None:
    p = pull(upstream.url("/hang"), stall_s=2.0)
    t0, _ = p.states.wait_for("connecting", 5)
    t_down, detail = p.states.wait_for("down", 10)
    assert detail == "no audio from the upstream for 2 s"
    assert 1.5 < t_down - t0 < 5
    assert "playing" not in p.states.names()


def test_upstream_hung_mid_stream_is_reported_down(upstream: Server, pull) -> None:
    p = pull(upstream.url("/live/short.mp3?seconds=2&hang=1"), stall_s=2.0)
    t_playing, _ = p.states.wait_for("playing", 10)
    t_down, detail = p.states.wait_for("down", 12)
    assert detail == "no audio from the upstream for 2 s"
    # 2 s of audio (paced), then 2 s of nothing before it counts, plus a margin
    assert 3.0 < t_down - t_playing < 8


def test_stream_whose_audio_stops_while_packets_flow_is_reported_down(upstream: Server,
                                                                      pull) -> None:
    p = pull(upstream.url(f"/live/mute-tv.ts?{LIVE}"), stall_s=2.0)
    t_playing, _ = p.states.wait_for("playing", 10)
    t_down, detail = p.states.wait_for("down", 12)
    assert detail == "no audio from the upstream for 2 s"
    assert 3.0 < t_down - t_playing < 8


def test_dead_studio_is_reported_silent_until_the_audio_returns(upstream: Server,
                                                                pull) -> None:
    # 1 s of tone, 3.5 s of digital silence, then the tone again
    p = pull(upstream.url(f"/live/dead-studio.mp3?{LIVE}"), silence_s=2.0)
    t_playing, _ = p.states.wait_for("playing", 10)
    t_silent, detail = p.states.wait_for("silent", 10)
    assert 2.5 < t_silent - t_playing < 5.5  # the silence counts only after 2 s of it
    assert detail == "below -50 dBFS for 2 s"
    assert p.metric("loa_pulled_stream_up") == 0
    assert p.metric("loa_pulled_stream_state", state="silent") == 1
    t_back, _ = p.states.wait_for("playing", 10, after=t_silent)
    assert 1.0 < t_back - t_silent < 4.0
    assert p.metric("loa_pulled_stream_up") == 1
    assert p.states.names() == ["connecting", "playing", "silent", "playing"]


def test_stream_that_ends_goes_down_and_is_pulled_again(upstream: Server, pull) -> None:
    p = pull(upstream.url("/live/short.mp3?seconds=2"))
    p.states.wait_for("playing", 10)
    t_down, detail = p.states.wait_for("down", 10)
    # ffmpeg reads the end of a stream sent without a length as an I/O error
    assert detail in ("the stream ended", "the stream broke: Input/output error"), detail
    p.states.wait_for("playing", 10, after=t_down)


@pytest.mark.parametrize(("path", "expected"), [
    ("ftp://127.0.0.1/radio.mp3", "url: must be an http:// or https:// URL"),
    ("file:///etc/passwd", "url: must be an http:// or https:// URL"),
    ("not a url", "url: must be an http:// or https:// URL"),
    ("/nothing-here.mp3", "404 Not Found"),
    ("/html", "not an audio stream"),
    ("/local-file.m3u8", "not an audio stream"),
    ("/picture-only.ts", "the stream has no audio"),
], ids=["ftp", "file", "not-a-url", "404", "html", "hls-pointing-at-a-local-file",
        "picture-only"])
def test_bad_input_is_reported_down(upstream: Server, pull, path: str, expected: str) -> None:
    url = upstream.url(path) if path.startswith("/") else path
    p = pull(url)
    _, detail = p.states.wait_for("down", 10)
    assert expected in detail
    assert "playing" not in p.states.names()
    assert p.buffer.written == 0


def test_refused_connection_is_reported_down_and_retried(pull) -> None:
    p = pull(f"http://127.0.0.1:{free_port()}/radio.mp3")
    t_down, detail = p.states.wait_for("down", 10)
    assert "refused" in detail.lower()
    p.states.wait_for("down", 10, after=t_down + 0.01)
    assert p.metric("loa_pulled_stream_reconnects_total") >= 1


def test_credentials_stay_out_of_labels_and_reports(upstream: Server, pull) -> None:
    url = upstream.url(f"/live/tone.mp3?{LIVE}&token=s3cret").replace(
        "http://", "http://user:pa55@")
    p = pull(url)
    p.states.wait_for("playing", 10)
    assert p.stream.public_url == upstream.url("/live/tone.mp3")
    assert not any("pa55" in d or "s3cret" in d for _, _, d in p.states.events)
    assert p.metric("loa_pulled_stream_up") == 1


def test_failing_callback_and_internal_errors_never_escape_the_thread(upstream: Server,
                                                                      pull) -> None:
    def on_state(state: str, detail: str) -> None:
        raise RuntimeError("a caller's bug")

    p = pull(upstream.url(f"/live/tone.mp3?{LIVE}"), on_state=on_state)
    deadline = time.monotonic() + 10
    while p.stream.state != "playing":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert_tone(listen(p.buffer, 1.0), 1000)

    class BrokenBuffer(LiveBuffer):
        def write(self, pcm: np.ndarray) -> None:
            raise RuntimeError("a bug in the buffer")

    states = States()
    stream = PulledStream(upstream.url(f"/live/tone.mp3?{LIVE}"), BrokenBuffer(),
                          on_state=states)
    stream.start()
    _, detail = states.wait_for("down", 10)
    assert detail.startswith("internal error: RuntimeError('a bug in the buffer')")
    stream.stop()


def test_streams_share_a_registry() -> None:
    registry = CollectorRegistry()
    for name in ("vov1", "vov2"):
        PulledStream(f"http://radio.example/{name}.mp3", LiveBuffer(), registry=registry)
    for name in ("vov1", "vov2"):
        labels = {"url": f"http://radio.example/{name}.mp3", "state": "playing"}
        assert registry.get_sample_value("loa_pulled_stream_state", labels) == 0


@pytest.mark.parametrize("path", ["/hang", "/hang-headers"])
def test_stop_is_prompt_while_the_upstream_hangs(upstream: Server, pull, path: str) -> None:
    p = pull(upstream.url(path), stall_s=3.0)
    p.states.wait_for("connecting", 5)
    time.sleep(0.5)  # well inside a blocked open or read
    t0 = time.monotonic()
    p.stream.stop()
    assert time.monotonic() - t0 < 1.5
    assert p.states.names()[-1] == "stopped"
    assert p.stream.state == "stopped"
    assert p.buffer.closed
    # The blocked read ends when its timeout fires; what it would report stays unsaid.
    assert p.stream.thread is not None
    p.stream.thread.join(5)
    assert not p.stream.thread.is_alive()
    assert p.states.names()[-1] == "stopped"
    assert p.metric("loa_pulled_stream_state", state="stopped") == 1


def test_stop_while_playing_ends_the_thread_and_the_writes(upstream: Server, pull) -> None:
    p = pull(upstream.url("/tone.mp3"))
    p.states.wait_for("playing", 10)
    t0 = time.monotonic()
    p.stream.stop()
    assert time.monotonic() - t0 < 1.5
    assert p.stream.thread is not None and not p.stream.thread.is_alive()
    written = p.buffer.written
    time.sleep(0.3)
    assert p.buffer.written == written
    assert p.states.names() == ["connecting", "playing", "stopped"]

