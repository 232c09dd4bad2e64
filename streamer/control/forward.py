"""Store and forward, the streamer's side: each leaf zone's signed plan of the next 24 h and
the clip files it names, retained on the broker for the speakers to keep (``wire/plan.py``).

What goes into a plan: every occurrence in the next :data:`~wire.plan.HORIZON_S` of an
active (enabled and approved) schedule whose source can be stored, i.e. anything with an end:
a clip, a tone, a text to speech (rendered once). A relayed stream cannot be stored and is
left out; so is an occurrence the quiet hours of any zone it reaches would block (the
scheduler would skip it as a whole, ``docs/schedules.md``). Each entry carries the broadcast
id the streamer reserves for that occurrence now: when the occurrence fires, the scheduled
broadcast takes that id (``Broadcasts.occurrence_id``), so a speaker's local play and the
streamed ones confirm the same broadcast. Whichever asks first, a plan or the scheduler
preparing the occurrence (30 s ahead: a schedule made minutes before its time may be
prepared before any plan named it), reserves the id, and the other gets the same one.

Clip audio is rendered to Opus once per distinct source (a worker thread, never the loop) and
retained on ``loa/v1/clips/{sha256}``; a clip no plan names any more is cleared from the
broker. Plans are published again when a schedule changes (the scheduler's copy is watched
every ``poll_s``) and refreshed every ``refresh_s``, well before they expire. This module
must never hold up playout or the API: a failure to render or publish is logged and retried
at the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from common.opus import OpusEncoder, OpusSettings
from streamer.mixer.sources.base import Source
from wire.plan import (
    HORIZON_S,
    MAX_CLIP_BYTES,
    VALID_S,
    Plan,
    PlanEntry,
    canonical,
    clip_topic,
    pack_clip,
    plan_topic,
    sha256_hex,
    sign_plan,
)
from wire.priority import Priority

from .schedules import Schedule, occurrences, quiet_reason

log = logging.getLogger("loa.forward")

FRAME_SAMPLES = 960  # 20 ms
#: speech-grade Opus for stored clips: about 3 kB a second (``docs/mqtt.md``)
CLIP_OPUS = OpusSettings(application="audio", complexity=8, fec=False, loss_perc=0,
                         bitrate=24_000)
PUBLISH_TIMEOUT_S = 10.0
#: Redis hash: "{schedule}@{occurrence Unix time}" → the broadcast id a plan promised
IDS_KEY = "loa:forward-ids"


def _field(key: tuple[str, float]) -> str:
    return f"{key[0]}@{key[1]!r}"


@dataclass(frozen=True)
class RenderedClip:
    sha256: str
    data: bytes
    duration_s: float


def render(source: Source, max_s: float | None) -> RenderedClip:
    """``source`` (up to ``max_s`` seconds of it) as a LOAC file of 20 ms Opus packets; one
    frame of silence more, so that the encoder's lookahead does not cut the end."""
    length = source.length
    assert length is not None, "an endless source cannot be stored"
    if max_s is not None:
        length = min(length, round(max_s * 48_000))
    enc = OpusEncoder(FRAME_SAMPLES, CLIP_OPUS)
    frames = math.ceil(length / FRAME_SAMPLES) + 1
    packets = []
    for i in range(frames):
        pcm = source.read(i * FRAME_SAMPLES, FRAME_SAMPLES)
        if (i + 1) * FRAME_SAMPLES > length:  # a window cut: nothing past its end
            pcm[max(0, length - i * FRAME_SAMPLES):] = 0.0
        packets.append(enc.encode(pcm))
    data = pack_clip(packets, FRAME_SAMPLES)
    return RenderedClip(sha256_hex(data), data, length / 48_000)


class Forward:
    """Plans and clips for every leaf zone some stored occurrence airs in (see the module
    docstring). ``plane`` gives the fleet, the scheduler, the broadcasts, the zone settings
    and the signing key; the fleet and scheduler may come after this is made."""

    def __init__(self, plane: Any, *, refresh_s: float = 3600.0, poll_s: float = 2.0,
                 now: Callable[[], float] = time.time) -> None:
        self.plane = plane
        self.refresh_s = refresh_s
        self.poll_s = poll_s
        self.now = now
        #: (schedule id, occurrence as Unix time) → the broadcast id reserved for it
        self.ids: dict[tuple[str, float], int] = {}
        self._rendered: dict[str, RenderedClip] = {}  # source description → its clip
        self._published: dict[str, tuple[str, float]] = {}  # zone → (canonical, made)
        self._clips: set[str] = set()  # clips retained on the broker
        self._seen: object = None
        self._ids_loaded = False
        self._task: asyncio.Task[None] | None = None
        self.passes = 0

    # ------------------------------------------------------------------ the hook

    async def occurrence_id(self, schedule_id: str, occurrence: datetime) -> int:
        """The broadcast id of this occurrence: the one a plan promised, else one reserved now
        (and kept in Redis like a plan's), which the next plan then promises. With Redis known
        to be away it neither reads nor keeps (as a plan pass's ids are then not kept either):
        no wait for a dead store on the way to air."""
        online = self.plane.state.available
        if online:
            await self._load_ids()
        key = (schedule_id, occurrence.timestamp())
        bid, fresh = await self._reserve(key)
        if fresh and online:
            await self._save_ids({_field(key): bid}, [])
        return bid

    async def _reserve(self, key: tuple[str, float]) -> tuple[int, bool]:
        """The id reserved for ``key``, and whether it was reserved by this call. Two callers
        at once (a plan pass and the scheduler) get the same id: the first one set wins."""
        bid = self.ids.get(key)
        if bid is not None:
            return bid, False
        new = await self.plane.state.next_broadcast_id()
        bid = self.ids.setdefault(key, new)
        return bid, bid == new

    # ------------------------------------------------------------------ running

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self.run())
        return self._task

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        last = -math.inf
        while True:
            await asyncio.sleep(self.poll_s)
            p = self.plane
            if p.fleet is None or p.scheduler is None or p.signing_key is None:
                continue
            seen = self._fingerprint(p.scheduler.schedules)
            if seen == self._seen and time.monotonic() - last < self.refresh_s:
                continue
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("store and forward: plans not refreshed")
                continue
            self._seen, last = seen, time.monotonic()

    def stale(self) -> None:
        """Plan again at the next poll, whatever the schedules: a zone edit renamed leaves
        (a schedule for a district names none of them and is unchanged)."""
        self._seen = None

    @staticmethod
    def _fingerprint(schedules: dict[str, Schedule]) -> object:
        return tuple(sorted((sid, s.model_dump_json()) for sid, s in schedules.items()))

    async def refresh(self) -> dict[str, Plan]:
        """Compute every plan, render what clips they need, publish what changed; returns
        the plans by zone."""
        p = self.plane
        now = self.now()
        await self._load_ids()
        fresh: dict[str, int] = {}
        lo, hi = datetime.fromtimestamp(now, UTC), datetime.fromtimestamp(now + HORIZON_S, UTC)
        entries: dict[str, list[PlanEntry]] = {}
        needed: dict[str, RenderedClip] = {}
        for s in list(p.scheduler.schedules.values()):
            if not s.active or s.source.kind == "relay":
                continue
            leaves = p.broadcasts.channels_of(list(s.zones))
            occs = [o for o in occurrences(s, lo, hi)
                    if quiet_reason(s, o, leaves, p.quiet_for) is None]
            if not occs or not leaves:
                continue
            clip = await self._clip(s)
            if clip is None:
                continue
            needed[clip.sha256] = clip
            for occ in occs:
                key = (s.id, occ.timestamp())
                bid, new = await self._reserve(key)
                if new:
                    fresh[_field(key)] = bid
                entry = PlanEntry(schedule=s.id, at=occ.timestamp(), clip=clip.sha256,
                                  bytes=len(clip.data), duration_s=clip.duration_s,
                                  priority=int(Priority[s.priority.upper()]), broadcast=bid)
                for leaf in leaves:
                    entries.setdefault(leaf, []).append(entry)
        key = p.signing_key()
        plans = {zone: Plan(zone=zone, made=now, valid_until=now + VALID_S,
                            entries=sorted(es, key=lambda e: e.at)[:512])
                 for zone, es in entries.items()}
        for zone in set(self._published) - set(plans):  # nothing left for it: say so once
            plans[zone] = Plan(zone=zone, made=now, valid_until=now + VALID_S, entries=[])
        for sha in set(needed) - self._clips:
            await self._retain(clip_topic(sha), needed[sha].data)
            self._clips.add(sha)
        for zone, plan in plans.items():
            form = canonical(plan)
            old = self._published.get(zone)
            if old is not None and old[0] == form and now - old[1] < self.refresh_s * 0.9:
                continue
            await self._retain(plan_topic(zone), sign_plan(key, plan))
            if plan.entries:
                self._published[zone] = (form, now)
            else:
                self._published.pop(zone, None)
        for sha in self._clips - set(needed):  # no plan names it: off the broker
            await self._retain(clip_topic(sha), b"")
            self._clips.discard(sha)
        gone = [k for k in self.ids if k[1] <= now - 3600]
        for k in gone:
            del self.ids[k]
        await self._save_ids(fresh, [_field(k) for k in gone])
        self._rendered = {k: c for k, c in self._rendered.items() if c.sha256 in needed}
        self.passes += 1
        log.info("store and forward: %d zone plans, %d entries, %d clips (%d bytes)",
                 sum(1 for pl in plans.values() if pl.entries),
                 sum(len(pl.entries) for pl in plans.values()), len(needed),
                 sum(len(c.data) for c in needed.values()))
        return plans

    async def _load_ids(self) -> None:
        """The ids promised before a restart: a speaker offline since then still holds the
        plan that named them, and its local play must confirm the broadcast that airs."""
        if self._ids_loaded:
            return
        try:
            raw = await asyncio.wait_for(self.plane.state.r.hgetall(IDS_KEY), 2.0)
        except Exception as e:  # Redis away: new ids, and the next pass tries again
            log.warning("store and forward: promised broadcast ids not read: %s", e)
            return
        for name, bid in raw.items():
            sid, _, ts = str(name).rpartition("@")
            with contextlib.suppress(ValueError):
                self.ids.setdefault((sid, float(ts)), int(bid))
        self._ids_loaded = True

    async def _save_ids(self, fresh: dict[str, int], gone: list[str]) -> None:
        r = self.plane.state.r
        try:
            if fresh:
                await asyncio.wait_for(r.hset(IDS_KEY, mapping=fresh), 2.0)
            if gone:
                await asyncio.wait_for(r.hdel(IDS_KEY, *gone), 2.0)
        except Exception as e:
            log.warning("store and forward: promised broadcast ids not kept: %s", e)

    async def _clip(self, s: Schedule) -> RenderedClip | None:
        what = f"{s.source.model_dump_json()}|{s.duration_s}"
        clip = self._rendered.get(what)
        if clip is not None:
            return clip
        try:
            source, _ = await self.plane.broadcasts.build(s.source, list(s.zones))
            clip = await asyncio.to_thread(render, source, s.duration_s)
        except Exception as e:
            log.warning("schedule %s: not stored for offline play: %s", s.id, e)
            return None
        if len(clip.data) > MAX_CLIP_BYTES:
            log.warning("schedule %s: clip of %d bytes is too big to store (max %d)", s.id,
                        len(clip.data), MAX_CLIP_BYTES)
            return None
        self._rendered[what] = clip
        return clip

    async def _retain(self, topic: str, payload: bytes) -> None:
        fleet = self.plane.fleet
        try:
            await fleet.retain(topic, payload, PUBLISH_TIMEOUT_S)
        except TimeoutError:  # kept by the fleet, published when the broker is back
            log.warning("store and forward: %s not yet published (broker away)", topic)

