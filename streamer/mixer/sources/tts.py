"""Text to speech: Vietnamese bulletins turned into clips by a pluggable voice provider.

A provider takes text and a voice name (a zone's ``voice`` setting: "north", "central",
"south", ...) and returns ``Speech``: a normalised ``Clip``, which voice spoke it and, when the
production voice failed, why it fell back. ``EspeakProvider`` is the offline default
(``espeak-ng``); ``HttpTtsProvider`` (``tts_http.py``) is a commercial voice with espeak-ng
behind it. Text is spelled out by ``normalize_vi`` (with the province's lexicon) first so that
every voice reads numbers, units and abbreviations the same way. The synthesiser is never run
through a shell and never gets the text on its command line (it arrives on stdin, so no text
can become an option), it is never waited on without a timeout, and every failure surfaces as
``TtsError``.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from streamer.mixer.loudness import TARGET_LUFS, normalize_limited
from streamer.mixer.sources.clip import Clip, ClipError, decode_bytes
from streamer.mixer.vi_lexicon import Lexicon
from streamer.mixer.vi_text import normalize_vi

MAX_TEXT_CHARS = 5000


class TtsError(RuntimeError):
    """The text could not be synthesised (empty, too long, or the voice failed)."""


@dataclass(frozen=True)
class Speech:
    clip: Clip
    #: what spoke: "espeak-ng:vi", "http:banmai"
    voice: str
    #: why the production voice did not speak ("" = it did), e.g. "timeout after 3 attempts"
    fallback: str = ""


class TtsProvider(Protocol):
    #: the voice names a zone may choose (``Zone.voice``); empty: only the default voice
    voice_names: tuple[str, ...]
    #: the province's terms (None: the built-in lexicon only), read once per text; replaced
    #: whole when admins edit theirs (``streamer/control/lexicon.py``), never changed in place
    lexicon: Lexicon | None

    def speak(self, text: str, voice: str | None = None) -> Speech:
        """Speech for ``text`` in the named voice (None or unknown: the default voice), as a
        clip normalised to the system loudness target."""
        ...

    def synthesize(self, text: str) -> Clip:
        """``speak(text).clip``: the default voice."""
        ...


def check_text(text: str) -> str:
    """``text`` if it can be synthesised, else ``TtsError`` saying why."""
    if not text or not text.strip():
        raise TtsError("the text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise TtsError(f"the text is {len(text)} characters, over the {MAX_TEXT_CHARS} limit")
    return text


#: Longest speech one text may give. Loudness normalisation costs ~20 ms per second of audio,
#: so this also bounds how long a TTS request can keep a worker thread busy (~12 s).
MAX_SPEECH_S = 600.0


#: espeak-ng's Vietnamese voices, by the names zones choose (``Zone.voice``)
ESPEAK_VOICES = {"north": "vi", "central": "vi-vn-x-central", "south": "vi-vn-x-south"}


class EspeakProvider:
    """Offline Vietnamese voice from ``espeak-ng``: robotic but always available."""

    def __init__(
        self,
        voice: str = "vi",
        rate_wpm: int = 150,
        timeout_s: float = 60.0,
        binary: str = "espeak-ng",
        target_lufs: float = TARGET_LUFS,
        voices: Mapping[str, str] | None = None,
        lexicon: Lexicon | None = None,
    ) -> None:
        """``voices``: voice name -> espeak-ng voice; default: espeak-ng's three Vietnamese
        dialects (``ESPEAK_VOICES``)."""
        if not 80 <= rate_wpm <= 450:
            raise ValueError(f"rate_wpm must be between 80 and 450, got {rate_wpm}")
        self.voice = voice
        self.rate_wpm = rate_wpm
        self.timeout_s = timeout_s
        self.binary = binary
        self.target_lufs = target_lufs
        self.voices = dict(ESPEAK_VOICES if voices is None else voices)
        self.voice_names = tuple(self.voices)
        self.lexicon = lexicon

    def synthesize(self, text: str) -> Clip:
        return self.speak(text).clip

    def speak(self, text: str, voice: str | None = None) -> Speech:
        espeak_voice = self.voices.get(voice or "", self.voice)
        spoken = normalize_vi(check_text(text), self.lexicon)
        return Speech(self.say(spoken, espeak_voice), f"espeak-ng:{espeak_voice}")

    def say(self, spoken: str, espeak_voice: str) -> Clip:
        """Normalised ``spoken`` text read by ``espeak_voice``."""
        # -b 1: the input is UTF-8 whatever the locale of the service; --stdout: one WAV.
        argv = [self.binary, "-v", espeak_voice, "-s", str(self.rate_wpm), "-b", "1",
                "--stdout"]
        try:
            done = subprocess.run(
                argv,
                input=spoken.encode("utf-8"),
                capture_output=True,
                timeout=self.timeout_s,
                check=False,
            )
        except FileNotFoundError as exc:
            raise TtsError(f"{self.binary} is not installed") from exc
        except subprocess.TimeoutExpired as exc:
            raise TtsError(f"{self.binary} took longer than {self.timeout_s:g} s") from exc
        except OSError as exc:
            raise TtsError(f"{self.binary} could not be started: {exc}") from exc
        if done.returncode != 0:
            stderr = done.stderr.decode("utf-8", "replace").strip()[-300:]
            raise TtsError(f"{self.binary} failed with exit code {done.returncode}: {stderr}")
        try:
            samples = decode_bytes(done.stdout, max_seconds=MAX_SPEECH_S)
        except ClipError as exc:
            if "longer than" in str(exc):  # e.g. thousands of digits, each read as a word
                raise TtsError(f"the text would take more than {MAX_SPEECH_S / 60:g} minutes "
                               "to speak; split it into several bulletins") from None
            raise TtsError(f"{self.binary} produced no usable audio: {exc}") from exc
        # Text with nothing to pronounce ("...") gives a valid but silent WAV.
        if not np.any(samples):
            raise TtsError("the text has nothing to pronounce")
        # espeak-ng's peaks are too high to reach the target by gain alone; limit them.
        return Clip(normalize_limited(samples, self.target_lufs))


#: Speech is made in threads of its own: an HTTP voice may wait seconds on its service, and
#: must not hold the streamer's few control workers (``app.py``, ``CONTROL_WORKERS``) that
#: everything else queues on. Two: a third bulletin waits for one of them.
_SPEECH_THREADS = ThreadPoolExecutor(2, thread_name_prefix="loa-tts")
_T = TypeVar("_T")


async def in_speech_thread(fn: Callable[..., _T], *args: object) -> _T:
    """``fn(*args)`` in a speech thread, awaited from the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_SPEECH_THREADS, fn, *args)


_default_provider: TtsProvider | None = None


def tts_source(text: str, provider: TtsProvider | None = None) -> Clip:
    """Speech for ``text`` from ``provider``, or from the offline espeak-ng voice."""
    global _default_provider
    if provider is None:
        if _default_provider is None:
            _default_provider = EspeakProvider()
        provider = _default_provider
    return provider.synthesize(text)
