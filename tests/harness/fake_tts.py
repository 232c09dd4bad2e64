"""A fake commercial TTS service on a free local port, for the HTTP voice's tests.

It answers like the two example shapes of docs/operations.md ("Voices"): ``/speak`` takes
a JSON (or bare text) request and returns WAV bytes, ``/async`` returns JSON holding an audio
URL that answers 404 for the first ``not_ready`` fetches, ``/b64`` returns base64 audio in
JSON. ``mode`` makes it fail: "500", "503" (``failures`` times, then well), "400", "slow"
(sleeps past any timeout), "garbage" (bytes that are not audio). It records every request.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import wave
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

SPEECH_S = 1.5


def wav_tone(seconds: float = SPEECH_S, rate_hz: int = 22_050) -> bytes:
    """A WAV file the way a voice service sends one: 16-bit mono, a warbling tone."""
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    x = 0.4 * np.sin(2 * np.pi * (300 + 80 * np.sin(2 * np.pi * 3 * t)) * t)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return buf.getvalue()


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeTts:
    mode: str = "ok"
    failures: int = 10**9  # how many requests fail in a failing mode
    not_ready: int = 0  # how many fetches of an async audio URL answer 404
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def calls(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path)

    def start(self) -> FakeTts:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.requests.append(Received("GET", self.path, self._headers(), b""))
                if self.path.startswith("/audio/"):
                    if fake.calls(self.path) <= fake.not_ready:
                        self._answer(404, b"not yet", "text/plain")
                    else:
                        self._answer(200, wav_tone(), "audio/wav")
                else:
                    self._answer(404, b"", "text/plain")

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                got = Received("POST", self.path, self._headers(), self.rfile.read(n))
                fake.requests.append(got)
                failing = sum(1 for r in fake.requests if r.method == "POST") <= fake.failures
                if failing and fake.mode in ("500", "503", "400"):
                    self._answer(int(fake.mode), b'{"error": "busy"}', "application/json")
                elif failing and fake.mode == "slow":
                    time.sleep(3)
                    self._answer(200, wav_tone(), "audio/wav")
                elif failing and fake.mode == "garbage":
                    self._answer(200, b"<html>quota exceeded</html>" * 20, "audio/wav")
                elif self.path == "/speak":
                    self._answer(200, wav_tone(), "audio/wav")
                elif self.path == "/async":
                    audio = f"{fake.url}/audio/{len(fake.requests)}.wav"
                    self._answer(200, json.dumps({"error": 0, "async": audio}).encode(),
                                 "application/json")
                elif self.path == "/b64":
                    doc = {"data": {"audio": base64.b64encode(wav_tone()).decode()}}
                    self._answer(200, json.dumps(doc).encode(), "application/json")
                else:
                    self._answer(404, b"", "text/plain")

            def _headers(self) -> dict[str, str]:
                return {k.lower(): v for k, v in self.headers.items()}

            def _answer(self, status: int, body: bytes, ctype: str) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (a timeout test)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
