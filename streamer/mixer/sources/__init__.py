"""Audio sources for the mixer: one small class per kind, all behind ``Source``."""

from streamer.mixer.sources.base import RATE_HZ, Source
from streamer.mixer.sources.clip import Clip, ClipError, ClipTooLong
from streamer.mixer.sources.tone import Tone
from streamer.mixer.sources.tts import EspeakProvider, Speech, TtsError, TtsProvider

__all__ = [
    "RATE_HZ",
    "Clip",
    "ClipError",
    "ClipTooLong",
    "EspeakProvider",
    "Source",
    "Speech",
    "Tone",
    "TtsError",
    "TtsProvider",
]
