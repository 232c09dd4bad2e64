"""Broadcasts: what operators asked to air, turned into mixer items, and what became of them.

Records live in Redis (``state.py``); this class is the single writer. Building a source can
be slow (TTS runs espeak-ng, a clip may be long) so it runs in a worker thread; only the
hand-over to the mixer happens on the event loop, between two frames. Nothing is recorded
until its input has been validated and its source built, so a refused request leaves no
trace but the audit entry. A broadcast that needs approval is validated the same way, stored
as ``pending_approval`` and rebuilt from its stored description when an approver releases it.
Every hand-over to or from the mixer is told to the on-air board (``onair.py``), and approvals
and emergencies to the event stream (``events.py``), on the loop, never from playout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from prometheus_client import CollectorRegistry

from streamer.mixer.mixer import Mixer
from streamer.mixer.program import Item
from streamer.mixer.sources import Clip, ClipError, EspeakProvider, Tone, TtsError, TtsProvider
from streamer.mixer.sources.base import From, Source
from streamer.mixer.sources.chime import CHIME_S, Sequence, chime
from streamer.mixer.sources.clip import MAX_SECONDS, ClipLevels, ingest
from streamer.mixer.sources.tts import in_speech_thread
from wire.priority import Priority

from .events import Publish, nothing
from .feeds import OFF_AIR, RelayFeed
from .models import AuditEntry, BroadcastRecord, BroadcastState, EmergencyPlan
from .onair import OnAir
from .scheduler import frame_for
from .schedules import RelaySource, Schedule
from .schemas import BadRequest, BroadcastOut, ClipSource, ToneSource, TtsSource
from .state import State

log = logging.getLogger(__name__)
_CLIP_ID = re.compile(r"[0-9a-f]{32}")

SourceIn = ToneSource | TtsSource | ClipSource | RelaySource
#: called with an emergency's record when it starts and when it ends (``rec.state`` tells)
Announce = Callable[[BroadcastRecord], Awaitable[None]]


@dataclass
class ClipLibrary:
    """Uploaded clips, content-addressed (sha256 of the upload), decoded once and kept on disk.

    In ``directory`` (``docs/state.md``): ``<id>``, the upload as received; ``<id>.pcm``, its
    decoded audio (48 kHz mono 16-bit PCM); ``<id>.json``, its length, loudness, peak and the
    gain that plays it at the system target. Metadata for the API is in Redis
    (``State.clips``). Nothing decoded stays in memory: ``get`` maps the PCM file. The PCM and
    its JSON are derived from the upload, written under temporary names and renamed, the JSON
    last; a clip whose pair is missing or does not match (stored before this layout, or cut
    short by a crash) is decoded again from its upload the first time it is used.
    """

    directory: Path
    #: longest decoded duration accepted (the streamer's ``clip_max_s``)
    max_seconds: float = MAX_SECONDS

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(".*.tmp"):  # an upload or ingest cut short
            stale.unlink(missing_ok=True)

    def spool(self) -> Path:
        """A new empty file in the library for an upload to be written to, then given to
        ``add`` (or deleted)."""
        fd, path = tempfile.mkstemp(dir=self.directory, prefix=".upload-", suffix=".tmp")
        os.close(fd)
        return Path(path)

    def add(self, upload: Path) -> tuple[str, Clip]:
        """Decode the file at ``upload`` (it becomes the clip's ``<id>``, or is deleted if it
        cannot); raises ``ClipError`` (``ClipTooLong`` past ``max_seconds``)."""
        try:
            sha = hashlib.sha256()
            with open(upload, "rb") as f:
                while chunk := f.read(1 << 20):
                    sha.update(chunk)
            cid = sha.hexdigest()[:32]
            clip = self._open(cid) or self._ingest(cid, upload)
            upload.replace(self.directory / cid)
            return cid, clip
        finally:
            upload.unlink(missing_ok=True)

    @staticmethod
    def valid_id(cid: str) -> bool:
        return _CLIP_ID.fullmatch(cid) is not None

    def get(self, cid: str) -> Clip | None:
        if not self.valid_id(cid):
            return None
        clip = self._open(cid)
        if clip is None and (self.directory / cid).is_file():
            clip = self._ingest(cid, self.directory / cid)
        return clip

    def _open(self, cid: str) -> Clip | None:
        try:
            levels = ClipLevels.from_json((self.directory / f"{cid}.json").read_text())
            return Clip.open(self.directory / f"{cid}.pcm", levels)
        except (OSError, ValueError, KeyError, TypeError) as e:
            if not isinstance(e, FileNotFoundError):
                log.warning("clip %s: stored PCM unusable (%s), decoding it again", cid, e)
            return None

    def _ingest(self, cid: str, source: Path) -> Clip:
        pcm = self.directory / f"{cid}.pcm"
        with self._replacing(pcm) as out:
            levels = ingest(source, out, self.max_seconds)  # ClipError if not audio
        with self._replacing(self.directory / f"{cid}.json") as out:
            out.write(levels.to_json().encode())
        log.info("clip %s: %.1f s, %s LUFS, gain %.1f dB", cid, levels.samples / 48_000,
                 "silent" if levels.lufs is None else f"{levels.lufs:.1f}",
                 20 * math.log10(levels.gain))
        return Clip.open(pcm, levels)

    @contextlib.contextmanager
    def _replacing(self, path: Path) -> Iterator[IO[bytes]]:
        """A file written under a temporary name (two threads ingesting one clip each have
        their own) that replaces ``path`` once whole, or is deleted."""
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)


class Broadcasts:
    def __init__(self, mixer: Mixer, leaves: Any, clips: ClipLibrary, state: State,
                 tts: TtsProvider | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        """``leaves(zone_id) -> list[channel id]`` (the zone tree's leaf channels)."""
        self.mixer = mixer
        self.leaves = leaves
        self.clips = clips
        self.state = state
        self.tts = tts or EspeakProvider()
        self.registry = registry
        self.live: dict[int, BroadcastRecord] = {}  # handed to the mixer, not finished yet
        self.booked: dict[int, BroadcastRecord] = {}  # scheduled, prepared, not aired yet
        self.items: dict[int, Item] = {}  # the mixer item of each live record
        self.feeds: dict[int, RelayFeed] = {}  # pulled streams of live or booked records
        self._new_feeds: dict[int, RelayFeed] = {}  # built, waiting for their record
        self._timers: dict[int, asyncio.TimerHandle] = {}  # repeats and expiries
        self._writes: set[asyncio.Task[None]] = set()
        #: set by the plane: publishes an emergency's state to the fleet
        self.announce: Announce | None = None
        #: set by the plane: a broadcast airs for the first time, or an emergency is over
        #: (e-boards show the one's text and take the other's down, ``board.py``)
        self.on_first_airing: Callable[[BroadcastRecord], None] = lambda rec: None
        self.on_emergency_over: Callable[[BroadcastRecord], None] = lambda rec: None
        #: set by the plane: the event stream's publisher (approvals, emergencies) and what
        #: each channel plays (``onair`` events)
        self.publish: Publish = nothing
        self.onair = OnAir()
        #: set by the plane: the broadcast id a store-and-forward plan promised for a
        #: scheduled occurrence (``forward.py``), so local plays confirm the same broadcast
        #: set by the plane: the broadcast id of a schedule's occurrence, the one store and
        #: forward promised the speakers (``forward.py``)
        self.occurrence_id: Callable[[str, datetime], Awaitable[int]] = (
            lambda sid, occ: self.state.next_broadcast_id())
        #: set by the plane: the voice name a TTS broadcast to these zones is read in
        #: (``Plane.voice_for``); None = the provider's default
        self.voice_of: Callable[[list[str]], str | None] = lambda zones: None
        mixer.on_finished = self._finished

    async def recover(self, takeover: bool = False) -> int:
        """After a restart: broadcasts that were on air when the streamer stopped are over,
        except emergencies that repeat until cancelled: those air again at once (a warning
        must not be lost to a crash), unless they expired or were live.

        After a ``takeover`` (a standby streamer taking over from an active one that died a
        moment ago, ``lease.py``) everything goes on as it would have: an emergency that was
        on air airs again from its start (a warning cut in the middle is not a warning), one
        waiting between airings keeps its cadence, and any other broadcast that was on air
        goes on from where it was by the clock. A live input cannot (its sender reconnects,
        or its operator starts it again): it is interrupted, as after a restart. Returns how
        many broadcasts were interrupted."""
        from .schemas import source_from_record

        n = 0
        now = time.time()
        for rec in await self.state.recent_broadcasts(limit=1000):
            if rec.state != BroadcastState.QUEUED:
                continue
            plan = rec.emergency
            repeats = plan is not None and bool(plan.repeat_s) and not self._expired(rec)
            kind = rec.source.get("kind")
            rebuildable = kind in ("tone", "tts", "clip") or (takeover and kind == "relay")
            if rebuildable and (repeats or takeover):
                try:
                    built, _ = await self.build(
                        RelaySource(kind="relay", url=rec.source["url"]) if kind == "relay"
                        else source_from_record(rec.source), rec.zones)
                except (BadRequest, KeyError, ValueError) as e:
                    log.error("broadcast %d cannot be rebuilt after a %s: %s", rec.id,
                              "takeover" if takeover else "restart", e)
                else:
                    self._adopt_feed(rec, built)
                    if self._back_on_air(rec, built, now, takeover, repeats,
                                         await self._window_end(rec)):
                        await self.state.put_broadcast(rec)
                        continue
                    self._release(rec.id)
            rec.state, rec.ended = BroadcastState.INTERRUPTED, now
            await self.state.put_broadcast(rec)
            n += 1
        if n:
            log.warning("%d broadcasts were on air when the streamer stopped: interrupted", n)
        return n

    async def _window_end(self, rec: BroadcastRecord) -> float | None:
        """When a scheduled broadcast's window ends (its schedule's ``duration_s`` from its
        start), or None: it has none."""
        if rec.schedule is None or rec.started is None:
            return None
        s = await self.state.schedules.get(rec.schedule)
        return None if s is None or s.duration_s is None else rec.started + s.duration_s

    def _back_on_air(self, rec: BroadcastRecord, source: Source, now: float, takeover: bool,
                     repeats: bool, window_end: float | None = None) -> bool:
        """Put a recovered broadcast back on the air (``recover``); False if it is over."""
        plan = rec.emergency
        played_s = now - (rec.started or now)
        if plan is not None and plan.expires is not None:
            self._timer(rec.id, plan.expires - now, self._expire)
        if takeover and repeats and not self._on_air(rec, played_s) \
                and rec.next_airing is not None:
            # between two airings: waits (QUEUED, as _finished leaves it) for the next one
            self.live[rec.id] = rec
            self.items[rec.id] = Item(rec.id, Priority[rec.priority.upper()], source, 0)
            self._timer(rec.id, rec.next_airing - now, self._repeat)
            log.warning("emergency %d: taken over between airings; the next in %.0f s",
                        rec.id, rec.next_airing - now)
            return True
        if plan is not None:
            if not (repeats or self._on_air(rec, played_s)):
                return False
            log.warning("emergency %d was active when the streamer %s: airing it again",
                        rec.id, "was taken over" if takeover else "stopped")
            self._start(rec, source, None)
            return True
        if not self._on_air(rec, played_s) or (window_end is not None and window_end <= now):
            return False
        # goes on where it was: its record keeps its start, it is one broadcast (a pulled
        # stream goes on where the stream is)
        log.warning("broadcast %d: taken over %.1f s into it; going on from there", rec.id,
                    played_s)
        if source.length is not None:
            source = From(source, round(played_s * 48_000))
        item = Item(rec.id, Priority[rec.priority.upper()], source, 0)
        self.live[rec.id] = rec
        self.items[rec.id] = item
        channels = self.channels_of(rec.zones)
        self.mixer.start(item, channels, **({} if window_end is None else {
            "end_frame": frame_for(self.mixer.clock, window_end)}))
        self.onair.playing(rec, channels)
        return True

    @staticmethod
    def _on_air(rec: BroadcastRecord, played_s: float) -> bool:
        """Whether ``rec``'s latest airing, ``played_s`` in, was still playing (its length
        from its record, the chime included)."""
        seconds = rec.source.get("seconds")
        if rec.started is None or not isinstance(seconds, (int, float)):
            return rec.started is not None  # no known end: it was
        if rec.emergency is not None and rec.emergency.chime:
            seconds += CHIME_S
        return played_s < seconds

    def channels_of(self, zones: list[str]) -> list[str]:
        return sorted({c for z in zones for c in self.leaves(z)})

    async def build(self, source: SourceIn,
                    zones: list[str] | None = None) -> tuple[Source, dict[str, Any]]:
        """The mixer source of ``source`` and its record description; a TTS text is read in
        the voice of ``zones`` (``voice_of``)."""
        if isinstance(source, RelaySource):  # starts a puller thread: done on the loop
            feed = RelayFeed(source.url, self._feed_state, self.registry)
            reader = feed.reader()
            self._new_feeds[id(reader)] = feed
            return reader, {"kind": "relay", "url": source.url}
        voice = self.voice_of(zones) if zones else None
        if isinstance(source, TtsSource):  # a voice may wait on its service: not a control worker
            return await in_speech_thread(self._build_source, source, voice)
        return await asyncio.to_thread(self._build_source, source, voice)

    def _adopt_feed(self, rec: BroadcastRecord, source: Source) -> None:
        feed = self._new_feeds.pop(id(source), None)
        if feed is not None:
            feed.bid = rec.id
            self.feeds[rec.id] = feed

    def _feed_state(self, feed: RelayFeed, state: str, detail: str) -> None:
        """A pulled stream changed state (on the loop). Off the air while it is down or
        silent, back on when it plays again inside its window."""
        feed.state, feed.detail = state, detail
        rec = self.live.get(feed.bid) or self.booked.get(feed.bid)
        if rec is None or (rec.health, rec.health_detail) == (state, detail):
            return
        changed = rec.health != state  # a new detail alone (another failed retry) is no news
        rec.health, rec.health_detail = state, detail
        if state in OFF_AIR and changed:
            log.warning("broadcast %d: relayed stream %s is %s (%s)", rec.id, feed.url, state,
                        detail)
            self.spawn(self.state.audit(AuditEntry(
                ts=time.time(), user="-", action="relay_" + state, target=str(rec.id),
                zones=rec.zones, outcome="failed", detail={"url": feed.url, "why": detail})),
                f"broadcast {rec.id}: relay {state}")
            if rec.id in self.live:
                self._pause(rec, feed)
        elif state == "playing" and feed.paused:
            self._resume(rec, feed)
        if rec.id in self.live:
            self.spawn(self.state.put_broadcast(rec), f"broadcast {rec.id}: relay health")

    def _pause(self, rec: BroadcastRecord, feed: RelayFeed) -> None:
        if feed.paused:
            return
        feed.end_frame = self.mixer.end_frame(rec.id)
        feed.channels = self.mixer.channels_of(rec.id)
        if not self.mixer.stop(rec.id):
            return
        feed.paused = True
        self.onair.silent(rec.id)
        log.warning("broadcast %d: off the air until its upstream is back", rec.id)
        if feed.end_frame is not None:
            self._timer(rec.id, self.mixer.clock.capture_wall(feed.end_frame) - time.time(),
                        self._window_over)

    def _resume(self, rec: BroadcastRecord, feed: RelayFeed) -> None:
        item, end = self.items.get(rec.id), feed.end_frame
        if item is None or (end is not None and end <= self.mixer.next_frame + 1):
            return
        feed.paused = False
        self._cancel_timer(rec.id)
        self.mixer.start(item, feed.channels, end_frame=end)
        self.onair.playing(rec, feed.channels)
        log.info("broadcast %d: relayed stream is back: on the air", rec.id)

    def _window_over(self, bid: int) -> None:
        """A paused relay window reached its end without its upstream coming back."""
        self._timers.pop(bid, None)
        self._finished(bid)

    async def create(self, zones: list[str], priority: str, source: SourceIn | Source, *,
                     label: str = "", user: str = "", pending: bool = False,
                     schedule: str | None = None, override_quiet_hours: bool = False,
                     at_frame: int | None = None, emergency: EmergencyPlan | None = None,
                     desc: dict[str, Any] | None = None,
                     requested_at: float | None = None) -> BroadcastRecord:
        """Record a broadcast and hand it to the mixer (unless ``pending`` approval). A
        request's source is validated and built here; a live input passes its built source
        with its ``desc``. ``requested_at``: when the request arrived (its time to air counts
        from it; None: from its start in the mixer)."""
        if desc is None:
            built, desc = await self.build(source, zones)  # type: ignore[arg-type]
        else:
            built = source  # type: ignore[assignment]
        rec = BroadcastRecord(
            id=await self.state.next_broadcast_id(), zones=zones, priority=priority,
            source=desc, label=label, created=time.time(), created_by=user,
            channels=len(self.channels_of(zones)), schedule=schedule,
            override_quiet_hours=override_quiet_hours, emergency=emergency,
            health="connecting" if desc["kind"] in ("live", "relay") else "",
            state=BroadcastState.PENDING_APPROVAL if pending else BroadcastState.QUEUED)
        self._adopt_feed(rec, built)
        if not pending:
            self._start(rec, built, at_frame, requested_at)
        await self.state.put_broadcast(rec)
        if pending:
            self._approval(rec, "waiting")
        log.info("broadcast %d: %s %s to %d channels%s", rec.id, priority, desc["kind"],
                 rec.channels, " (waiting for approval)" if pending else "")
        return rec

    async def approve(self, rec: BroadcastRecord, approver: str,
                      requested_at: float | None = None) -> BroadcastRecord:
        from .schemas import source_from_record

        # recorded as built now, as ``create`` does: the voice (or its fallback) that reads
        # an approved bulletin may not be the one that read it when it was asked for
        built, rec.source = await self.build(source_from_record(rec.source), rec.zones)
        rec.approved_by, rec.state = approver, BroadcastState.QUEUED
        self._start(rec, built, None, requested_at)
        await self.state.put_broadcast(rec)
        self._approval(rec, "approved")
        return rec

    async def reject(self, rec: BroadcastRecord, approver: str) -> BroadcastRecord:
        rec.approved_by, rec.state, rec.ended = approver, BroadcastState.REJECTED, time.time()
        await self.state.put_broadcast(rec)
        self._approval(rec, "rejected")
        return rec

    def _approval(self, rec: BroadcastRecord, state: str, **extra: Any) -> None:
        self.publish("approval", {"id": rec.id, "state": state, "zones": list(rec.zones),
                                  "label": rec.label, "priority": rec.priority, **extra},
                     list(rec.zones))

    def _start(self, rec: BroadcastRecord, source: Source, at_frame: int | None,
               requested_at: float | None = None) -> None:
        plan = rec.emergency
        if plan is not None and plan.chime:
            source = Sequence([chime(), source])
        item = Item(rec.id, Priority[rec.priority.upper()], source, 0, requested_at)
        rec.started = time.time()
        rec.airings += 1
        rec.next_airing = None
        if rec.airings == 1:
            rec.requested_at = requested_at or rec.started
        self.live[rec.id] = rec
        self.items[rec.id] = item
        channels = self.channels_of(rec.zones)
        self.mixer.start(item, channels, **(
            {"at_frame": at_frame} if at_frame is not None else {}))
        self.onair.playing(rec, channels)
        if rec.airings == 1:
            self.on_first_airing(rec)
        if plan is not None:
            if rec.airings == 1:
                self._announce(rec)
                if plan.expires is not None:
                    self._timer(rec.id, plan.expires - time.time(), self._expire)
            # a cadence counts from each start, so the next airing is known now
            if plan.repeat_s:
                rec.next_airing = rec.started + plan.repeat_s

    def _build_source(self, s: SourceIn, voice: str | None) -> tuple[Source, dict[str, Any]]:
        """In a worker thread: a TTS voice may take seconds (an HTTP voice, its retries)."""
        assert not isinstance(s, RelaySource), "built on the loop by build()"
        if isinstance(s, ToneSource):
            return Tone(s.hz, s.seconds), {"kind": "tone", "hz": s.hz, "seconds": s.seconds}
        if isinstance(s, TtsSource):
            try:
                speech = self.tts.speak(s.text, voice)
            except TtsError as e:
                raise BadRequest("source.text", str(e)) from None
            desc = {"kind": "tts", "text": s.text, "seconds": (speech.clip.length or 0) / 48_000,
                    "voice": speech.voice}
            if speech.fallback:
                desc["tts_fallback"] = speech.fallback
            return speech.clip, desc
        try:
            found = self.clips.get(s.clip)
        except ClipError as e:
            raise BadRequest("source.clip", f"stored clip unreadable: {e}") from None
        if found is None:
            raise BadRequest("source.clip", f"no uploaded clip {s.clip!r}")
        return found, {"kind": "clip", "clip": s.clip, "seconds": found.length / 48_000}

    async def stop(self, rec: BroadcastRecord,
                   state: BroadcastState = BroadcastState.STOPPED) -> BroadcastRecord:
        """Take it off the air everywhere (a live input that ended is ``DONE``)."""
        if rec.state in (BroadcastState.QUEUED, BroadcastState.PENDING_APPROVAL):
            pending = rec.state == BroadcastState.PENDING_APPROVAL
            self._note_aired(rec)
            self.mixer.stop(rec.id)
            self._release(rec.id)
            rec.state, rec.ended, rec.next_airing = state, time.time(), None
            await self.state.put_broadcast(rec)
            if pending:  # withdrawn before any approver decided: no longer waiting
                self._approval(rec, "expired", reason=state.value)
            if rec.emergency is not None:
                self._announce(rec)
            log.info("broadcast %d %s", rec.id, state.value)
        return rec

    def _release(self, bid: int) -> None:
        self.onair.silent(bid)
        self.live.pop(bid, None)
        self.items.pop(bid, None)
        self._cancel_timer(bid)
        feed = self.feeds.pop(bid, None)
        if feed is not None:
            feed.close()

    async def close(self) -> None:
        """Shutting down: stop every puller thread and wait for them, so none outlives the
        process's event loop (a thread left reconnecting to a dead upstream would report into a
        closed loop, and hold a socket, until the process exits)."""
        feeds = [*self.feeds.values(), *self._new_feeds.values()]
        self.feeds.clear()
        self._new_feeds.clear()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await asyncio.gather(*(asyncio.to_thread(f.stream.stop) for f in feeds))

    def stoppable(self, zones: list[str], priority: str | None) -> list[BroadcastRecord]:
        """Live broadcasts touching any channel under ``zones`` (for "stop everything here")."""
        chans = set(self.channels_of(zones))
        return [r for r in self.live.values()
                if (priority is None or r.priority == priority)
                and chans.intersection(self.channels_of(r.zones))]

    def _note_aired(self, rec: BroadcastRecord) -> None:
        """Copy the mixer's first-frame time of ``rec``'s item into the record (once)."""
        item = self.items.get(rec.id)
        if rec.aired_at is None and item is not None and item.aired_at is not None:
            rec.aired_at = item.aired_at

    def _finished(self, bid: int) -> None:
        rec = self.live.get(bid)
        if rec is not None:
            self._note_aired(rec)
        if rec is None or rec.state != BroadcastState.QUEUED:
            self._release(bid)
            return
        plan = rec.emergency
        if plan is not None and plan.repeat_s and rec.next_airing is not None \
                and not self._expired(rec):
            # stays QUEUED (shown as waiting) until it airs again; the mixer item is gone
            self.onair.silent(bid)
            self._timer(bid, rec.next_airing - time.time(), self._repeat)
            log.info("emergency %d: next airing in %.0f s", bid, rec.next_airing - time.time())
            self.spawn(self.state.put_broadcast(rec), f"emergency {bid}")
            return
        self._release(bid)
        rec.state, rec.ended, rec.next_airing = BroadcastState.DONE, time.time(), None
        log.info("broadcast %d done", bid)
        self.spawn(self.state.put_broadcast(rec), f"broadcast {bid}: its end")
        if plan is not None:
            self._announce(rec)

    def _repeat(self, bid: int) -> None:
        rec, item = self.live.get(bid), self.items.get(bid)
        if rec is None or item is None or rec.state != BroadcastState.QUEUED:
            return
        self._timers.pop(bid, None)
        source = item.source
        self._start(rec, source.parts[-1] if isinstance(source, Sequence) else source, None)
        log.info("emergency %d: airing %d", bid, rec.airings)
        self.spawn(self.state.put_broadcast(rec), f"emergency {bid}")

    def _expire(self, bid: int) -> None:
        rec = self.live.get(bid)
        if rec is not None:
            self._timers.pop(bid, None)
            log.info("emergency %d expired", bid)
            self.spawn(self.stop(rec, BroadcastState.DONE), f"emergency {bid}: expiry")

    def _expired(self, rec: BroadcastRecord) -> bool:
        exp = rec.emergency.expires if rec.emergency is not None else None
        return exp is not None and exp <= time.time()

    def _timer(self, bid: int, delay: float, then: Callable[[int], None]) -> None:
        self._cancel_timer(bid)
        loop = asyncio.get_running_loop()
        self._timers[bid] = loop.call_later(max(0.0, delay), then, bid)

    def _cancel_timer(self, bid: int) -> None:
        timer = self._timers.pop(bid, None)
        if timer is not None:
            timer.cancel()

    def _announce(self, rec: BroadcastRecord) -> None:
        if rec.state != BroadcastState.QUEUED:
            self.on_emergency_over(rec)
        self.publish("emergency", self.emergency_event(rec), list(rec.zones))
        if self.announce is not None:
            self.spawn(self.announce(rec.model_copy(deep=True)),
                        f"emergency {rec.id}: its state to the fleet")

    @staticmethod
    def emergency_event(rec: BroadcastRecord) -> dict[str, Any]:
        return {"id": rec.id, "state": "on" if rec.state == BroadcastState.QUEUED else "off",
                "zones": list(rec.zones), "label": rec.label, "started": rec.created}

    def emergencies_on(self) -> list[BroadcastRecord]:
        """Emergencies in force: on the air, or waiting for their next airing."""
        return [r for r in self.live.values()
                if r.emergency is not None and r.state == BroadcastState.QUEUED]

    def spawn(self, write: Coroutine[Any, Any, Any], what: str) -> None:
        """Persist (or publish) from a synchronous callback — the mixer, the scheduler, a
        timer, a live input — without blocking a frame. State writes that Redis cannot take
        are journaled (``State._write``); a publish the broker cannot take is lost and
        logged; playout goes on regardless."""
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
        built, desc = await self.build(s.source, list(s.zones))
        bid = await self.occurrence_id(s.id, occ)
        rec = BroadcastRecord(
            id=bid, zones=list(s.zones), priority=s.priority,
            source=desc, label=s.label, created=time.time(), created_by=s.created_by,
            channels=len(self.channels_of(list(s.zones))), schedule=s.id,
            override_quiet_hours=s.override_quiet_hours,
            health="connecting" if desc["kind"] == "relay" else "")
        self._adopt_feed(rec, built)
        self.booked[rec.id] = rec
        return Item(rec.id, Priority[s.priority.upper()], built, 0)

    def fired(self, s: Schedule, occ: datetime, item: Item) -> None:
        rec = self.booked.pop(item.id, None)
        if rec is None:
            return
        rec.started = rec.requested_at = occ.timestamp()  # its time to air: from its time
        rec.airings = 1
        self.live[rec.id] = rec
        self.items[rec.id] = item
        self.onair.playing(rec, self.channels_of(rec.zones))
        feed = self.feeds.get(rec.id)
        if feed is not None and feed.state in OFF_AIR:  # dead before its window opened
            self._pause(rec, feed)
        self.on_first_airing(rec)
        log.info("schedule %s: broadcast %d airs at %s", s.id, rec.id, occ.isoformat())
        self.spawn(self.state.put_broadcast(rec), f"broadcast {rec.id}")
        self.spawn(self.state.set_last_fired(s.id, occ.timestamp()), f"schedule {s.id}")

    def skipped(self, s: Schedule, occ: datetime, reason: str) -> None:
        for bid in [b for b, r in self.booked.items() if r.schedule == s.id]:
            del self.booked[bid]
            self._release(bid)
        log.warning("schedule %s: occurrence %s skipped: %s", s.id, occ.isoformat(), reason)
        self.spawn(self.state.set_last_fired(s.id, occ.timestamp()), f"schedule {s.id}")
        self.spawn(self.state.audit(AuditEntry(
            ts=time.time(), user="-", action="schedule_skipped", target=s.id, zones=list(s.zones),
            outcome="skipped", detail={"occurrence": occ.isoformat(), "reason": reason})),
            f"schedule {s.id}: skip")

    def cancelled(self, s: Schedule, occ: datetime, item: Item | None) -> None:
        if item is not None:
            self.booked.pop(item.id, None)
            self._release(item.id)

    async def get(self, bid: int) -> BroadcastRecord | None:
        return (self.live.get(bid) or self.state.journaled_broadcast(bid)
                or await self.state.broadcasts.get(bid))

    def out(self, rec: BroadcastRecord) -> BroadcastOut:
        on_air = len(self.mixer.on_air(rec.id)) if rec.id in self.live else 0
        out = rec.model_dump()
        if rec.state == BroadcastState.QUEUED:
            out["state"] = "on_air" if on_air else "waiting"
        return BroadcastOut(**out, on_air_channels=on_air)


__all__ = ["Broadcasts", "ClipLibrary", "ClipError"]
