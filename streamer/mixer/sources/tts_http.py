"""A commercial text-to-speech voice over HTTP, with a cache and espeak-ng behind it.

The request and the response are declared in the voice file (``docs/operations.md``,
"Voices"), not coded per vendor: a body template (JSON, form or the bare text) and header
templates with ``{text}``, ``{voice}``, ``{speed}`` and ``{token}`` (the credential, read from
a file); the answer is audio bytes, or JSON holding an audio URL (fetched, waiting while the
service prepares it) or base64 audio, found by a dotted path. Rules:

- the text is normalised (``normalize_vi`` with the province's lexicon) before it is sent, so
  the service and espeak-ng read the same words;
- every request has a timeout; a failure that may pass (no connection, timeout, 5xx, 429) is
  retried ``attempts`` times with doubling backoff; anything else is not;
- audio that decodes is cached on disk under a hash of (service, voice, speed, normalised
  text), written atomically, the oldest dropped beyond ``cache_mb``; a cached bulletin is
  never requested again;
- when the service fails, espeak-ng speaks instead: the ``Speech`` says why (the broadcast
  record shows it), the log warns and ``loa_tts_fallback_total{reason}`` counts it;
- once it failed in a way that may pass (down, slow, 5xx), it is not asked again for
  ``cooldown_s``: espeak-ng speaks at once, so an outage delays one bulletin, not every one
  (an emergency's among them).

It is synchronous and blocks its thread for as long as the retries take (bounded by
``attempts × timeout_s`` + backoff + ``audio_wait_s``): call it from a worker thread, never
from the event loop or the playout thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from common.config import ConfigError
from streamer.mixer.loudness import TARGET_LUFS, normalize_limited
from streamer.mixer.sources.clip import Clip, ClipError, decode_bytes
from streamer.mixer.sources.tts import (
    MAX_SPEECH_S,
    EspeakProvider,
    Speech,
    TtsError,
    check_text,
)
from streamer.mixer.vi_lexicon import Lexicon
from streamer.mixer.vi_text import normalize_vi

log = logging.getLogger("loa.tts")

MAX_AUDIO_BYTES = 50 * 1024 * 1024
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class VoiceFailed(Exception):
    """The service gave no usable audio; ``reason`` is a metric label, ``detail`` the why."""

    def __init__(self, reason: str, detail: str, transient: bool = False) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        #: it may pass: worth another attempt
        self.transient = transient


@dataclass
class HttpVoiceConfig:
    """The ``[http]`` table of a voice file, and its ``[voices]``."""

    url: str
    method: str = "POST"
    #: "json" (``request`` as a JSON object), "form" (``request`` url-encoded), or "text"
    #: (the bare normalised text, UTF-8)
    body: str = "json"
    request: dict[str, Any] = field(default_factory=lambda: {"text": "{text}"})
    headers: dict[str, str] = field(default_factory=dict)
    #: the credential (API key, token), one line in this file; "" = none
    credentials_file: str = ""
    #: "audio" (the answer is the audio) or "json"
    response: str = "audio"
    #: dotted paths in a JSON answer: an audio URL to fetch, or base64 audio
    audio_url: str = ""
    audio_base64: str = ""
    #: as the service takes it (a rate 0.5-2, a step -3..3): sent as {speed}
    speed: float = 1.0
    timeout_s: float = 15.0
    attempts: int = 3
    backoff_s: float = 0.5
    #: how long an audio URL may answer 404 while the service prepares it
    audio_wait_s: float = 30.0
    #: after a failure that may pass, espeak-ng speaks without asking the service for this long
    cooldown_s: float = 60.0
    #: "" = ``<var_dir>/tts-cache``
    cache_dir: str = ""
    cache_mb: float = 200.0
    #: voice name (a zone's ``voice``) -> {"http": service voice, "espeak": espeak-ng voice}
    voices: dict[str, dict[str, str]] = field(default_factory=dict)
    default_voice: str = ""

    def __post_init__(self) -> None:
        u = urllib.parse.urlsplit(self.url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ConfigError("http.url", f"must be an http(s) URL, got {self.url!r}")
        if self.method not in ("POST", "GET", "PUT"):
            raise ConfigError("http.method", "must be POST, GET or PUT")
        if self.body not in ("json", "form", "text"):
            raise ConfigError("http.body", 'must be "json", "form" or "text"')
        if self.response not in ("audio", "json"):
            raise ConfigError("http.response", 'must be "audio" or "json"')
        if self.response == "json" and bool(self.audio_url) == bool(self.audio_base64):
            raise ConfigError("http.audio_url", 'a "json" response needs exactly one of '
                              "audio_url and audio_base64 (a dotted path)")
        if self.body == "form" and not all(isinstance(v, str | int | float)
                                           for v in self.request.values()):
            raise ConfigError("http.request", "a form body takes flat values only")
        for name, lo, hi in (("speed", -10.0, 10.0), ("timeout_s", 0.1, 300.0),
                             ("attempts", 1, 5), ("backoff_s", 0.0, 10.0),
                             ("audio_wait_s", 0.0, 300.0), ("cache_mb", 0.0, 100_000.0),
                             ("cooldown_s", 0.0, 3600.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not lo <= value <= hi:
                raise ConfigError(f"http.{name}", f"must be a number from {lo:g} to {hi:g}")
        for k, h in self.headers.items():
            if not isinstance(h, str):
                raise ConfigError(f"http.headers.{k}", "must be a string")
        for name, v in self.voices.items():
            if not isinstance(v, dict) or not isinstance(v.get("http"), str) or not v["http"]:
                raise ConfigError(f"voices.{name}", 'needs {http = "<the service\'s voice>"} '
                                  '(and optionally espeak = "<espeak-ng voice>")')
        if self.default_voice and self.default_voice not in self.voices:
            raise ConfigError("default_voice", f"{self.default_voice!r} is not in [voices]")
        if not self.voices:
            raise ConfigError("voices", "name at least one voice: [voices] north = "
                              '{http = "..."}')
        self.default_voice = self.default_voice or next(iter(self.voices))


def load_voice_file(path: str | Path) -> HttpVoiceConfig:
    """The voice file (TOML): ``default_voice``, ``[http]`` and ``[voices]``."""
    p = Path(path).expanduser()
    try:
        data = tomllib.loads(p.read_text("utf-8"))
    except OSError as e:
        raise ConfigError("tts_voice_file", f"cannot read {p}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("tts_voice_file", f"{p} is not valid TOML: {e}") from None
    http = data.get("http")
    if not isinstance(http, dict) or "url" not in http:
        raise ConfigError("http.url", f"{p} needs an [http] table with a url")
    known = set(HttpVoiceConfig.__dataclass_fields__)
    unknown = sorted(set(http) - known - {"voices", "default_voice"})
    if unknown:
        raise ConfigError(f"http.{unknown[0]}", "unknown setting")
    try:
        return HttpVoiceConfig(**http, voices=data.get("voices", {}),
                               default_voice=data.get("default_voice", ""))
    except TypeError as e:
        raise ConfigError("http", str(e)) from None


def _at(doc: Any, path: str) -> Any:
    """The value at a dotted ``path`` ("data.audio", "items.0.url") in a JSON document."""
    for key in path.split("."):
        if isinstance(doc, list) and key.isdigit() and int(key) < len(doc):
            doc = doc[int(key)]
        elif isinstance(doc, dict) and key in doc:
            doc = doc[key]
        else:
            return None
    return doc


def _fill(template: Any, values: dict[str, Any]) -> Any:
    """``template`` with ``{text}``, ``{voice}``, ``{speed}``, ``{token}`` put in. A string
    that is exactly one placeholder takes the value's own type (a number stays a number)."""
    if isinstance(template, dict):
        return {k: _fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, values) for v in template]
    if isinstance(template, str):
        for name, value in values.items():
            if template == "{" + name + "}":
                return value
        for name, value in values.items():
            template = template.replace("{" + name + "}", str(value))
    return template


class AudioCache:
    """Synthesised audio on disk, by key; the least recently used goes beyond ``max_bytes``."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.audio"

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
            os.utime(path)  # recently used
        except OSError:
            return None
        return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, self._path(key))
        finally:
            Path(tmp).unlink(missing_ok=True)
        self._trim()

    def _trim(self) -> None:
        files = []
        for p in self.directory.glob("*.audio"):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files):
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size


class HttpTtsProvider:
    """A commercial voice per ``HttpVoiceConfig``, espeak-ng when it fails."""

    def __init__(self, config: HttpVoiceConfig, *, var_dir: str | Path = ".",
                 lexicon: Lexicon | None = None,
                 registry: CollectorRegistry | None = None,
                 fallback: EspeakProvider | None = None,
                 target_lufs: float = TARGET_LUFS) -> None:
        self.config = config
        self.lexicon = lexicon
        self.target_lufs = target_lufs
        self.voice_names = tuple(config.voices)
        self.fallback = fallback or EspeakProvider(
            voices={n: v["espeak"] for n, v in config.voices.items() if v.get("espeak")},
            lexicon=lexicon)  # a voice without an espeak-ng one falls back to "vi"
        self.token = ""
        if config.credentials_file:
            p = Path(config.credentials_file).expanduser()
            try:
                self.token = p.read_text("utf-8").strip()
            except OSError as e:
                raise ConfigError("http.credentials_file",
                                  f"cannot read {p}: {e.strerror or e}") from None
            if not self.token:
                raise ConfigError("http.credentials_file", f"{p} is empty")
        cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir \
            else Path(var_dir) / "tts-cache"
        self.cache = AudioCache(cache_dir, int(config.cache_mb * 1024 * 1024))
        self.fallbacks = Counter(
            "loa_tts_fallback_total", "Texts spoken by espeak-ng because the HTTP voice failed, "
            "by reason", ["reason"], registry=registry)
        self.cache_hits = Counter("loa_tts_cache_hits_total",
                                  "Texts spoken from the TTS cache, without asking the service",
                                  registry=registry)
        self.sleep = time.sleep  # tests may count the backoff instead of waiting it
        self.clock = time.monotonic
        #: the service failed in a way that may pass: not asked until then, and why
        self._down_at = self._down_until = float("-inf")
        self._down_why = ""

    def synthesize(self, text: str) -> Clip:
        return self.speak(text).clip

    def speak(self, text: str, voice: str | None = None) -> Speech:
        cfg = self.config
        name = voice if voice in cfg.voices else cfg.default_voice
        service_voice = cfg.voices[name]["http"]
        spoken = normalize_vi(check_text(text), self.lexicon)
        if not spoken.strip():
            raise TtsError("the text has nothing to pronounce")
        key = hashlib.sha256(json.dumps(
            [cfg.url, service_voice, cfg.speed, spoken], ensure_ascii=False).encode()).hexdigest()
        label = f"http:{service_voice}"
        cached = self.cache.get(key)
        if cached is not None:
            try:
                clip = self._clip(cached)
            except VoiceFailed:
                pass  # a damaged entry: ask again
            else:
                self.cache_hits.inc()
                return Speech(clip, label)
        try:
            now = self.clock()
            if now < self._down_until:
                raise VoiceFailed("down", f"not asked: it failed {now - self._down_at:.0f} s "
                                  f"ago ({self._down_why})")
            audio = self._request(spoken, service_voice)
            clip = self._clip(audio)
        except VoiceFailed as e:
            if e.transient:
                self._down_at = self.clock()
                self._down_until = self._down_at + cfg.cooldown_s
                self._down_why = e.detail
            self.fallbacks.labels(e.reason).inc()
            log.warning("TTS voice %s failed (%s): espeak-ng speaks instead", label, e.detail)
            espeak = self.fallback.voices.get(name, self.fallback.voice)
            try:
                clip = self.fallback.say(spoken, espeak)
            except TtsError as again:
                raise TtsError(f"{label} failed ({e.detail}), and espeak-ng too: {again}") \
                    from None
            return Speech(clip, f"espeak-ng:{espeak}", fallback=f"{label}: {e.detail}")
        self.cache.put(key, audio)
        return Speech(clip, label)

    # -- the service ------------------------------------------------------------------------

    def _clip(self, audio: bytes) -> Clip:
        try:
            samples = decode_bytes(audio, max_seconds=MAX_SPEECH_S)
        except ClipError as e:
            raise VoiceFailed("bad_audio", f"the audio does not decode: {e}") from None
        if not np.any(samples):
            raise VoiceFailed("bad_audio", "the audio is silent")
        return Clip(normalize_limited(samples, self.target_lufs))

    def _request(self, spoken: str, service_voice: str) -> bytes:
        cfg = self.config
        values = {"text": spoken, "voice": service_voice, "speed": cfg.speed,
                  "token": self.token}
        headers = {k: str(_fill(v, values)) for k, v in cfg.headers.items()}
        data: bytes | None
        if cfg.body == "json":
            data = json.dumps(_fill(cfg.request, values), ensure_ascii=False).encode()
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        elif cfg.body == "form":
            data = urllib.parse.urlencode(_fill(cfg.request, values)).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        else:
            data = spoken.encode("utf-8")
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        answer = self._with_retries(
            lambda: self._fetch(urllib.request.Request(cfg.url, data, headers, method=cfg.method)))
        if cfg.response == "audio":
            return answer
        try:
            doc = json.loads(answer)
        except (ValueError, UnicodeDecodeError):
            raise VoiceFailed("bad_response", "the answer is not JSON") from None
        if cfg.audio_base64:
            b64 = _at(doc, cfg.audio_base64)
            if not isinstance(b64, str):
                raise VoiceFailed("bad_response", f"no {cfg.audio_base64!r} in the answer")
            try:
                return base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise VoiceFailed("bad_response", f"{cfg.audio_base64!r} is not base64") from None
        url = _at(doc, cfg.audio_url)
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise VoiceFailed("bad_response", f"no audio URL at {cfg.audio_url!r} in the answer")
        return self._wait_for_audio(url)

    def _wait_for_audio(self, url: str) -> bytes:
        """An asynchronous service's audio URL answers 404 until the audio is ready."""
        deadline = self.clock() + self.config.audio_wait_s
        while True:
            try:
                return self._with_retries(lambda: self._fetch(urllib.request.Request(url)))
            except VoiceFailed as e:
                if e.reason != "not_ready":
                    raise
                if self.clock() >= deadline:
                    raise VoiceFailed("timeout", f"the audio was not ready within "
                                      f"{self.config.audio_wait_s:g} s", transient=True) from None
                self.sleep(min(1.0, max(0.0, deadline - self.clock())))

    def _with_retries(self, call: Callable[[], bytes]) -> bytes:
        cfg = self.config
        for attempt in range(1, cfg.attempts + 1):
            try:
                return call()
            except VoiceFailed as e:
                if not e.transient or attempt == cfg.attempts:
                    if attempt > 1:
                        e.detail += f" (after {attempt} attempts)"
                    raise
                self.sleep(cfg.backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def _fetch(self, req: urllib.request.Request) -> bytes:
        try:
            with urllib.request.urlopen(req, timeout=self.config.timeout_s) as r:
                body: bytes = r.read(MAX_AUDIO_BYTES + 1)
        except urllib.error.HTTPError as e:
            if e.code == 404 and req.get_method() == "GET":
                raise VoiceFailed("not_ready", "the audio URL answered 404") from None
            raise VoiceFailed("http_error", f"the service answered {e.code} {e.reason}",
                              transient=e.code in _RETRY_STATUS) from None
        except TimeoutError:
            raise VoiceFailed("timeout", f"no answer within {self.config.timeout_s:g} s",
                              transient=True) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            kind = "timeout" if isinstance(reason, TimeoutError) else "unreachable"
            raise VoiceFailed(kind, f"cannot reach the service: {reason}",
                              transient=True) from None
        if len(body) > MAX_AUDIO_BYTES:
            raise VoiceFailed("bad_response", f"the answer is over {MAX_AUDIO_BYTES} bytes")
        return body


def voice_from_config(
    voice_file: str, lexicon_file: str, var_dir: str | Path,
    registry: CollectorRegistry | None = None,
) -> HttpTtsProvider | EspeakProvider:
    """The streamer's voice: the HTTP voice of ``voice_file`` ("" = espeak-ng only), reading
    with the province's lexicon from ``lexicon_file`` ("" = the built-in one)."""
    from streamer.mixer.vi_lexicon import LexiconError

    try:
        lexicon = Lexicon.load(lexicon_file) if lexicon_file else None
    except LexiconError as e:
        raise ConfigError("tts_lexicon", str(e)) from None
    if not voice_file:
        return EspeakProvider(lexicon=lexicon)
    return HttpTtsProvider(load_voice_file(voice_file), var_dir=var_dir, lexicon=lexicon,
                           registry=registry)
