"""Broadcasts: what operators asked to air, turned into mixer items, and what became of them.

Records live in Redis (``state.py``); this class is the single writer. Building a source can
be slow (TTS runs espeak-ng, a clip may be long) so it runs in a worker thread; only the
hand-over to the mixer happens on the event loop, between two frames. Nothing is recorded
until its input has been validated and its source built, so a refused request leaves no
trace but the audit entry. A broadcast that needs approval is validated the same way, stored
as ``pending_approval`` and rebuilt from its stored description when an approver releases it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from streamer.mixer.mixer import Mixer
from streamer.mixer.program import Item, Priority
from streamer.mixer.sources import Clip, ClipError, EspeakProvider, Tone, TtsError, TtsProvider
from streamer.mixer.sources.base import Source

from .models import AuditEntry, BroadcastRecord, BroadcastState
from .schedules import RelaySource, Schedule
from .schemas import BadRequest, BroadcastOut, ClipSource, ToneSource, TtsSource
from .state import State

log = logging.getLogger(__name__)

SourceIn = ToneSource | TtsSource | ClipSource | RelaySource


@dataclass
class ClipLibrary:
    """Uploaded clips, content-addressed (sha256 of the upload) and decoded once at ingest.

    Audio is kept on disk under its content hash; metadata in Redis (``State.clips``). After
    a restart a clip is decoded again from disk the first time it is used.
    """

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

    def get(self, cid: str) -> Clip | None:
        clip = self.clips.get(cid)
        path = self.directory / cid
        if clip is None and len(cid) == 32 and path.is_file():
            clip = self.clips[cid] = Clip.from_file(path)
        return clip


class Broadcasts:
    def __init__(self, mixer: Mixer, leaves: Any, clips: ClipLibrary, state: State,
                 tts: TtsProvider | None = None) -> None:
        """``leaves(zone_id) -> list[channel id]`` (the zone tree's leaf channels)."""
        self.mixer = mixer
        self.leaves = leaves
        self.clips = clips
        self.state = state
        self.tts = tts or EspeakProvider()
        self.live: dict[int, BroadcastRecord] = {}  # handed to the mixer, not finished yet
        self.booked: dict[int, BroadcastRecord] = {}  # scheduled, prepared, not aired yet
        self._writes: set[asyncio.Task[None]] = set()
        mixer.on_finished = self._finished

    async def recover(self) -> int:
        """After a restart: broadcasts that were on air when the streamer stopped are over."""
        n = 0
        for rec in await self.state.recent_broadcasts(limit=1000):
            if rec.state == BroadcastState.QUEUED:
                rec.state, rec.ended = BroadcastState.INTERRUPTED, time.time()
                await self.state.put_broadcast(rec)
                n += 1
        if n:
            log.warning("%d broadcasts were on air when the streamer stopped: interrupted", n)
        return n

    def channels_of(self, zones: list[str]) -> list[str]:
        return sorted({c for z in zones for c in self.leaves(z)})

    async def build(self, source: SourceIn) -> tuple[Source, dict[str, Any]]:
        return await asyncio.to_thread(self._build_source, source)

    async def create(self, zones: list[str], priority: str, source: SourceIn, *, label: str = "",
                     user: str = "", pending: bool = False, schedule: str | None = None,
                     override_quiet_hours: bool = False,
                     at_frame: int | None = None) -> BroadcastRecord:
        built, desc = await self.build(source)
        rec = BroadcastRecord(
            id=await self.state.next_broadcast_id(), zones=zones, priority=priority,
            source=desc, label=label, created=time.time(), created_by=user,
            channels=len(self.channels_of(zones)), schedule=schedule,
            override_quiet_hours=override_quiet_hours,
            state=BroadcastState.PENDING_APPROVAL if pending else BroadcastState.QUEUED)
        if not pending:
            self._start(rec, built, at_frame)
        await self.state.put_broadcast(rec)
        log.info("broadcast %d: %s %s to %d channels%s", rec.id, priority, desc["kind"],
                 rec.channels, " (waiting for approval)" if pending else "")
        return rec

    async def approve(self, rec: BroadcastRecord, approver: str) -> BroadcastRecord:
        from .schemas import source_from_record

        built, _ = await self.build(source_from_record(rec.source))
        rec.approved_by, rec.state = approver, BroadcastState.QUEUED
        self._start(rec, built, None)
        await self.state.put_broadcast(rec)
        return rec

    async def reject(self, rec: BroadcastRecord, approver: str) -> BroadcastRecord:
        rec.approved_by, rec.state, rec.ended = approver, BroadcastState.REJECTED, time.time()
        await self.state.put_broadcast(rec)
        return rec

    def _start(self, rec: BroadcastRecord, source: Source, at_frame: int | None) -> None:
        item = Item(rec.id, Priority[rec.priority.upper()], source, 0)
        rec.started = time.time()
        self.live[rec.id] = rec
        self.mixer.start(item, self.channels_of(rec.zones), **(
            {"at_frame": at_frame} if at_frame is not None else {}))

    def _build_source(self, s: SourceIn) -> tuple[Source, dict[str, Any]]:
        if isinstance(s, RelaySource):
            raise BadRequest("source.kind", "relaying a pulled stream (kind relay) is not "
                             "supported yet; schedule a clip, text or tone")
        if isinstance(s, ToneSource):
            return Tone(s.hz, s.seconds), {"kind": "tone", "hz": s.hz, "seconds": s.seconds}
        if isinstance(s, TtsSource):
            try:
                clip = self.tts.synthesize(s.text)
            except TtsError as e:
                raise BadRequest("source.text", str(e)) from None
            return clip, {"kind": "tts", "text": s.text, "seconds": clip.length / 48_000}
        try:
            found = self.clips.get(s.clip)
        except ClipError as e:
            raise BadRequest("source.clip", f"stored clip unreadable: {e}") from None
        if found is None:
            raise BadRequest("source.clip", f"no uploaded clip {s.clip!r}")
        return found, {"kind": "clip", "clip": s.clip, "seconds": found.length / 48_000}

    async def stop(self, rec: BroadcastRecord) -> BroadcastRecord:
        if rec.state in (BroadcastState.QUEUED, BroadcastState.PENDING_APPROVAL):
            self.mixer.stop(rec.id)
            self.live.pop(rec.id, None)
            rec.state, rec.ended = BroadcastState.STOPPED, time.time()
            await self.state.put_broadcast(rec)
            log.info("broadcast %d stopped", rec.id)
        return rec

    def stoppable(self, zones: list[str], priority: str | None) -> list[BroadcastRecord]:
        """Live broadcasts touching any channel under ``zones`` (for "stop everything here")."""
        chans = set(self.channels_of(zones))
        return [r for r in self.live.values()
                if (priority is None or r.priority == priority)
                and chans.intersection(self.channels_of(r.zones))]

    def _finished(self, bid: int) -> None:
        rec = self.live.pop(bid, None)
        if rec is not None and rec.state == BroadcastState.QUEUED:
            rec.state, rec.ended = BroadcastState.DONE, time.time()
            log.info("broadcast %d done", bid)
            self._write(self.state.put_broadcast(rec), f"broadcast {bid}: its end")

    def _write(self, write: Coroutine[Any, Any, Any], what: str) -> None:
        """Persist from a synchronous callback (mixer, scheduler) without blocking a frame.
        If Redis is away the write is lost and logged; playout goes on regardless."""
        async def run() -> None:
            try:
                await write
            except Exception:
                log.exception("could not record %s", what)

        task = asyncio.get_running_loop().create_task(run())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    # -- scheduled airing (the Scheduler's callbacks, see scheduler.py) ------------------------

    async def prepare_scheduled(self, s: Schedule, occ: datetime) -> Item:
        """Build the occurrence's source ahead of time; its record is written when it airs."""
        built, desc = await self.build(s.source)
        rec = BroadcastRecord(
            id=await self.state.next_broadcast_id(), zones=list(s.zones), priority=s.priority,
            source=desc, label=s.label, created=time.time(), created_by=s.created_by,
            channels=len(self.channels_of(list(s.zones))), schedule=s.id,
            override_quiet_hours=s.override_quiet_hours)
        self.booked[rec.id] = rec
        return Item(rec.id, Priority[s.priority.upper()], built, 0)

    def fired(self, s: Schedule, occ: datetime, item: Item) -> None:
        rec = self.booked.pop(item.id, None)
        if rec is None:
            return
        rec.started = occ.timestamp()
        self.live[rec.id] = rec
        log.info("schedule %s: broadcast %d airs at %s", s.id, rec.id, occ.isoformat())
        self._write(self.state.put_broadcast(rec), f"broadcast {rec.id}")
        self._write(self.state.set_last_fired(s.id, occ.timestamp()), f"schedule {s.id}")

    def skipped(self, s: Schedule, occ: datetime, reason: str) -> None:
        for bid in [b for b, r in self.booked.items() if r.schedule == s.id]:
            del self.booked[bid]
        log.warning("schedule %s: occurrence %s skipped: %s", s.id, occ.isoformat(), reason)
        self._write(self.state.set_last_fired(s.id, occ.timestamp()), f"schedule {s.id}")
        self._write(self.state.audit(AuditEntry(
            ts=time.time(), user="-", action="schedule_skipped", target=s.id, zones=list(s.zones),
            outcome="skipped", detail={"occurrence": occ.isoformat(), "reason": reason})),
            f"schedule {s.id}: skip")

    def cancelled(self, s: Schedule, occ: datetime, item: Item | None) -> None:
        if item is not None:
            self.booked.pop(item.id, None)

    async def get(self, bid: int) -> BroadcastRecord | None:
        return self.live.get(bid) or await self.state.broadcasts.get(bid)

    def out(self, rec: BroadcastRecord) -> BroadcastOut:
        on_air = len(self.mixer.on_air(rec.id)) if rec.id in self.live else 0
        out = rec.model_dump()
        if rec.state == BroadcastState.QUEUED:
            out["state"] = "on_air" if on_air else "waiting"
        return BroadcastOut(**out, on_air_channels=on_air)


__all__ = ["Broadcasts", "ClipLibrary", "ClipError"]
