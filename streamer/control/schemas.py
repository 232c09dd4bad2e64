"""Typed API bodies, validated at the edge: a bad body becomes a :class:`BadRequest` naming the
field, before anything changes state.

The source of a broadcast is a small discriminated union (``kind``), one class per kind, the
way LibreTime models its playout events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from streamer.mixer.program import Priority

MAX_TONE_S = 3600.0
MAX_TTS_CHARS = 5000
MAX_ZONES_PER_BROADCAST = 10_000


class BadRequest(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class ToneSource:
    hz: float
    seconds: float
    kind: str = "tone"


@dataclass(frozen=True, slots=True)
class TtsSource:
    text: str
    kind: str = "tts"


@dataclass(frozen=True, slots=True)
class ClipSource:
    clip: str
    kind: str = "clip"


Source = ToneSource | TtsSource | ClipSource


@dataclass(frozen=True, slots=True)
class BroadcastRequest:
    zones: tuple[str, ...]
    priority: Priority
    source: Source
    label: str = ""


def _number(value: Any, field: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(field, "must be a number")
    if not lo <= value <= hi:
        raise BadRequest(field, f"must be between {lo:g} and {hi:g}")
    return float(value)


def parse_source(value: Any) -> Source:
    if not isinstance(value, dict):
        raise BadRequest("source", "must be an object with a 'kind'")
    kind = value.get("kind")
    if kind == "tone":
        hz = _number(value.get("hz", 1000), "source.hz", 20, 20_000)
        seconds = _number(value.get("seconds", 5), "source.seconds", 0.02, MAX_TONE_S)
        return ToneSource(hz, seconds)
    if kind == "tts":
        text = value.get("text")
        if not isinstance(text, str) or not text.strip():
            raise BadRequest("source.text", "must be a non-empty string")
        if len(text) > MAX_TTS_CHARS:
            raise BadRequest("source.text", f"longer than {MAX_TTS_CHARS} characters")
        return TtsSource(text)
    if kind == "clip":
        clip = value.get("clip")
        if not isinstance(clip, str) or not clip:
            raise BadRequest("source.clip", "must be the id of an uploaded clip")
        return ClipSource(clip)
    raise BadRequest("source.kind", "must be one of tone, tts, clip")


def parse_broadcast(body: Any, known_zone: Any) -> BroadcastRequest:
    """``known_zone(id) -> bool`` says whether a zone exists."""
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object")
    zones = body.get("zones")
    if not isinstance(zones, list) or not zones:
        raise BadRequest("zones", "must be a non-empty list of zone ids")
    if len(zones) > MAX_ZONES_PER_BROADCAST:
        raise BadRequest("zones", f"more than {MAX_ZONES_PER_BROADCAST} zones")
    for z in zones:
        if not isinstance(z, str) or not known_zone(z):
            raise BadRequest("zones", f"unknown zone {z!r}")
    prio = body.get("priority", "normal")
    try:
        priority = Priority[prio.upper()] if isinstance(prio, str) else None
    except KeyError:
        priority = None
    if priority is None:
        raise BadRequest("priority", "must be one of emergency, priority, normal, background")
    label = body.get("label", "")
    if not isinstance(label, str) or len(label) > 200:
        raise BadRequest("label", "must be a string of at most 200 characters")
    return BroadcastRequest(tuple(dict.fromkeys(zones)), priority, parse_source(body.get("source")),
                            label)
