"""Broadcasts: what operators asked to air, turned into mixer items, and what became of them.

Building a source can be slow (TTS runs espeak-ng, a clip may be long) so it runs in a worker
thread; only the hand-over to the mixer happens on the event loop, between two frames. State
lives in memory for now; the control-plane issue moves it to Redis behind this same class.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamer.mixer.mixer import Mixer
from streamer.mixer.program import Item, Priority
from streamer.mixer.sources import Clip, ClipError, EspeakProvider, Tone, TtsError, TtsProvider
from streamer.mixer.sources.base import Source
from streamer.zones import ZoneTree

from .schemas import BadRequest, BroadcastRequest, ClipSource, ToneSource, TtsSource

log = logging.getLogger(__name__)


@dataclass
class Broadcast:
    id: int
    zones: tuple[str, ...]
    priority: Priority
    source: dict[str, object]
    label: str
    created: float
    channels: int = 0
    state: str = "queued"  # queued | on_air | waiting | done | stopped
    ended: float | None = None

    def as_json(self, on_air: list[str]) -> dict[str, object]:
        state = self.state
        if state == "queued":
            state = "on_air" if on_air else "waiting"
        return {"id": self.id, "zones": list(self.zones), "priority": self.priority.name.lower(),
                "source": self.source, "label": self.label, "created": self.created,
                "channels": self.channels, "on_air_channels": len(on_air), "state": state,
                "ended": self.ended}


@dataclass
class ClipLibrary:
    """Uploaded clips, content-addressed (sha256 of the upload) and decoded once at ingest."""

    directory: Path
    clips: dict[str, Clip] = field(default_factory=dict)

    def add(self, data: bytes) -> tuple[str, Clip]:
        cid = hashlib.sha256(data).hexdigest()[:32]
        clip = self.clips.get(cid)
        if clip is None:
            clip = Clip.from_bytes(data)  # raises ClipError on anything that is not audio
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / f".{cid}.tmp"
            tmp.write_bytes(data)
            tmp.replace(self.directory / cid)  # never a half-written file under the real name
            self.clips[cid] = clip
        return cid, clip


class Broadcasts:
    def __init__(self, mixer: Mixer, zones: ZoneTree, clips: ClipLibrary,
                 tts: TtsProvider | None = None) -> None:
        self.mixer = mixer
        self.zones = zones
        self.clips = clips
        self.tts = tts or EspeakProvider()
        self.records: dict[int, Broadcast] = {}
        self._ids = itertools.count(1)
        self._order = itertools.count(1)
        mixer.on_finished = self._finished

    async def create(self, req: BroadcastRequest) -> Broadcast:
        source, desc = await asyncio.to_thread(self._build_source, req)
        channels = sorted({c for z in req.zones for c in self.zones.leaves(z)})
        bid = next(self._ids)
        rec = Broadcast(bid, req.zones, req.priority, desc, req.label, time.time())
        self.records[bid] = rec
        rec.channels = self.mixer.start(Item(bid, req.priority, source, next(self._order)),
                                        channels)
        log.info("broadcast %d: %s %s to %d channels", bid, req.priority.name.lower(),
                 desc["kind"], rec.channels)
        return rec

    def _build_source(self, req: BroadcastRequest) -> tuple[Source, dict[str, object]]:
        s = req.source
        if isinstance(s, ToneSource):
            return Tone(s.hz, s.seconds), {"kind": "tone", "hz": s.hz, "seconds": s.seconds}
        if isinstance(s, TtsSource):
            try:
                clip = self.tts.synthesize(s.text)
            except TtsError as e:
                raise BadRequest("source.text", str(e)) from None
            return clip, {"kind": "tts", "text": s.text, "seconds": clip.length / 48_000}
        assert isinstance(s, ClipSource)
        found = self.clips.clips.get(s.clip)
        if found is None:
            raise BadRequest("source.clip", f"no uploaded clip {s.clip!r}")
        return found, {"kind": "clip", "clip": s.clip, "seconds": found.length / 48_000}

    def stop(self, bid: int) -> Broadcast | None:
        rec = self.records.get(bid)
        if rec is None:
            return None
        if self.mixer.stop(bid):
            rec.state, rec.ended = "stopped", time.time()
            log.info("broadcast %d stopped", bid)
        return rec

    def _finished(self, bid: int) -> None:
        rec = self.records.get(bid)
        if rec is not None and rec.state == "queued":
            rec.state, rec.ended = "done", time.time()
            log.info("broadcast %d done", bid)

    def as_json(self, rec: Broadcast) -> dict[str, object]:
        return rec.as_json(self.mixer.on_air(rec.id) if rec.state == "queued" else [])


__all__ = ["Broadcast", "Broadcasts", "ClipLibrary", "ClipError"]
