"""Store and forward, the speaker's side: keep the zone's signed plan and its clips, and play a
clip on our own at its time when no stream reaches us (``wire/plan.py``, ``docs/mqtt.md``).

The rules, in order (:func:`entry_due`):

1. Only what the streamer signed: a plan is verified with the streamer keys this speaker
   trusts (``device/trust.py``) before it is kept; a clip is kept only if a kept plan names
   its SHA-256 and its bytes hash to it. Anything else is refused, counted by outcome and
   logged.
2. An entry plays at its time on the streamer's clock plus the playout delay, where the
   stream would have played it, and only while the stream is lost (``stream_lost``, as the
   emergency path decides it). The stream wins: its first packet ends a local play
   (``Playout.receive``).
3. Never twice: an entry is done once it started locally, or once the stream played its
   broadcast. Never stale: more than :data:`GRACE_S` past its time it is dropped.
4. An emergency wins: no scheduled clip starts while an emergency is active, and an
   emergency replay falling due replaces a scheduled local play (``emergency.py``).

The plan, the clips and the list of done entries live in ``cache_dir`` (files replaced
atomically from the one worker thread, as the emergency cache); clips take at most
``max_bytes`` on disk, the oldest evicted first, and a clip no plan needs is deleted.
Decoding (the speaker's own libopus decoder) runs on that worker thread ahead of the entry's
time, so playout never waits. Nothing here may block or break playout.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import re
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.secretfile import write_private
from wire.auth import Keyring

from .output import Samples
from .playout import RATE_HZ, Playout

if TYPE_CHECKING:
    from wire.plan import Plan, PlanEntry

log = logging.getLogger("loa.speaker.store")

FORWARD_TICK_S = 0.05  # a local play starts within this of its time
GRACE_S = 30.0  # an entry not started within this of its time is stale
LEAD_S = 60.0  # decoded this long ahead of its time while the stream is lost
ONLINE_LEAD_S = 5.0  # and this long ahead while it is there (it may go at the last moment)
MAX_DONE = 2048
PLAN_FILE = "plan.json"
DONE_FILE = "plan-done.json"
_CLIP_NAME = re.compile(r"clip-([0-9a-f]{64})\.loac")
CLIP_OUTCOMES = ("stored", "unexpected", "bad_hash", "malformed")

Submit = Callable[[Callable[[], Any]], "Future[Any] | Any"]


def entry_due(entry: PlanEntry, now: float, delay_s: float, lost: bool, done: bool,
              emergency: bool, grace_s: float = GRACE_S) -> bool:
    """Whether to start ``entry`` locally now (``now`` on the streamer's clock)."""
    start = entry.at + delay_s
    return lost and not done and not emergency and start <= now < start + grace_s


class ClipStore:
    """The plan and clip files in ``directory``: ``plan.json`` (the signed plan as
    received), ``plan-done.json`` and ``clip-{sha256}.loac``. Reading never raises."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def path(self, sha: str) -> Path:
        return self.directory / f"clip-{sha}.loac"

    def clips(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return [p for p in self.directory.iterdir() if _CLIP_NAME.fullmatch(p.name)]

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def read(self, sha: str) -> bytes | None:
        """The clip's bytes, if on disk and whole (hashed again: a damaged file is deleted)."""
        try:
            data = self.path(sha).read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != sha:
            log.warning("stored clip %s damaged: deleted", sha[:12])
            self.path(sha).unlink(missing_ok=True)
            return None
        return data

    def put(self, sha: str, data: bytes) -> list[str]:
        """Write the clip, then evict the oldest others until within ``max_bytes``; returns
        the evicted clips."""
        write_private(self.path(sha), data)
        files = sorted(((p.stat().st_mtime, p) for p in self.clips() if p != self.path(sha)),
                       key=lambda t: t[0])
        total = len(data) + sum(p.stat().st_size for _, p in files)
        evicted = []
        for _, p in files:
            if total <= self.max_bytes:
                break
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
            evicted.append(p.name[5:-5])
        return evicted

    def keep_only(self, shas: set[str]) -> list[str]:
        gone = []
        for p in self.clips():
            sha = p.name[5:-5]
            if sha not in shas:
                p.unlink(missing_ok=True)
                gone.append(sha)
        return gone

    def save_plan(self, payload: bytes) -> None:
        write_private(self.directory / PLAN_FILE, payload)

    def drop_plan(self) -> None:
        (self.directory / PLAN_FILE).unlink(missing_ok=True)

    def load_plan(self) -> bytes | None:
        try:
            return (self.directory / PLAN_FILE).read_bytes()
        except OSError:
            return None

    def save_done(self, done: list[int]) -> None:
        write_private(self.directory / DONE_FILE, json.dumps(done))

    def load_done(self) -> list[int]:
        try:
            raw = json.loads((self.directory / DONE_FILE).read_bytes())
        except (OSError, ValueError):
            return []
        return [b for b in raw if type(b) is int] if isinstance(raw, list) else []


def decode_clip(data: bytes, decoder: Any) -> Samples:
    """The int16 PCM of a LOAC file, decoded with ``decoder`` (``playout.OpusDecoder``)."""
    from wire.plan import clip_packets

    frame_samples, packets = clip_packets(data)
    out = bytearray()
    for p in packets:
        out += decoder.decode(p, frame_samples)
    return memoryview(bytes(out)).cast("h")


class ForwardPath:
    """Ties the parts above to one :class:`Playout` (see the module docstring). Inputs: the
    plan and clip messages (:meth:`on_plan`, :meth:`on_clip`), play-log records
    (:meth:`on_event`) and a periodic :meth:`tick`. ``new_decoder`` makes an Opus decoder for
    the worker thread; ``emergency_on(now)`` says whether an emergency is active."""

    def __init__(self, playout: Playout, store: ClipStore, zone: str, keys: Keyring, *,
                 new_decoder: Callable[[], Any], delay_s: float,
                 emergency_on: Callable[[float], bool] = lambda now: False,
                 submit: Submit = lambda job: job(), grace_s: float = GRACE_S) -> None:
        self.playout = playout
        self.store = store
        self.zone = zone
        self.keys = keys
        self.new_decoder = new_decoder
        self.delay_s = delay_s
        self.emergency_on = emergency_on
        self.grace_s = grace_s
        self._submit = submit
        self.plan: Plan | None = None
        self.done: collections.OrderedDict[int, None] = collections.OrderedDict(
            (b, None) for b in store.load_done())
        self.ready: dict[int, Samples] = {}
        self._decoding: dict[int, Any] = {}
        self.plans: dict[str, int] = {}
        self.clips: dict[str, int] = dict.fromkeys(CLIP_OUTCOMES, 0)
        self.local_plays = 0
        self.skipped_ms = 0.0  # of the latest local play (the tick's lateness)
        self._stored: set[str] = set()  # accepted, on their way to the disk
        self.on_change: Callable[[], None] = lambda: None  # what clips we lack changed

    def load(self, now: float) -> None:
        """The plan kept on disk, verified again (a reboot with no network still plays)."""
        payload = self.store.load_plan()
        if payload is not None:
            self.on_plan(payload, now, save=False)

    # ------------------------------------------------------------------ inputs

    def on_plan(self, payload: bytes, now: float, save: bool = True) -> str:
        from wire.plan import PlanRefused, verify_plan

        if not payload:  # retained plan cleared
            return "cleared"
        try:
            plan = verify_plan(self.keys, payload, self.zone, now)
        except PlanRefused as e:
            self.plans[e.outcome] = self.plans.get(e.outcome, 0) + 1
            log.warning("plan for %s refused (%s): %s", self.zone, e.outcome, e)
            return e.outcome
        if self.plan is not None and plan.made < self.plan.made:
            self.plans["rollback"] = self.plans.get("rollback", 0) + 1
            log.warning("plan for %s refused (rollback): older than the one kept", self.zone)
            return "rollback"
        outcome = "current" if self.plan is not None and plan == self.plan else "accepted"
        self.plans[outcome] = self.plans.get(outcome, 0) + 1
        self.plan = plan
        if outcome == "accepted":
            keep = plan.clips()
            self._stored &= keep
            log.info("plan for %s: %d entries, %d clips", self.zone, len(plan.entries),
                     len(keep))
            def write() -> None:
                if save:
                    self.store.save_plan(payload)
                gone = self.store.keep_only(keep)
                if gone:
                    log.info("clips no plan needs deleted: %s", ", ".join(g[:12] for g in gone))

            self._write(write)
        self.on_change()
        return outcome

    def move(self, zone: str) -> None:
        """The speaker moved to leaf zone ``zone``: the old zone's plan is dropped, here and
        on disk, so that none of its entries plays on the new channel; the new zone's plan
        comes on its topic. Stored clips stay (a clip is named by its content: the new plan
        may need it) until a plan that does not name them is kept."""
        if zone == self.zone:
            return
        log.info("moved from zone %s to %s: its plan dropped", self.zone, zone)
        p, plan = self.playout, self.plan
        if plan is not None and p.local_playing and any(
                e.broadcast == p.local_broadcast_id for e in plan.entries):
            p.stop_local()
        self.zone, self.plan = zone, None
        self.ready.clear()
        self._write(self.store.drop_plan)
        self.on_change()

    def missing(self) -> set[str]:
        """Clips the plan names that are not on disk (what to subscribe to)."""
        if self.plan is None:
            return set()
        return {sha for sha in self.plan.clips()
                if sha not in self._stored and not self.store.has(sha)}

    def on_clip(self, sha: str, payload: bytes) -> str:
        """A clip file from the broker: kept only if the plan names it and its bytes hash to
        it. Written (and older clips evicted) on the worker thread."""
        if not payload:
            return "unexpected"
        plan = self.plan
        outcome = "stored"
        if plan is None or sha not in plan.clips():
            outcome = "unexpected"
        elif hashlib.sha256(payload).hexdigest() != sha:
            outcome = "bad_hash"
        self.clips[outcome] += 1
        if outcome != "stored":
            log.warning("clip %s refused: %s", sha[:12], outcome)
            return outcome

        def write() -> None:
            evicted = self.store.put(sha, payload)
            if evicted:
                log.info("clip store full: evicted %s", ", ".join(s[:12] for s in evicted))

        self._stored.add(sha)
        self._write(write)
        log.info("clip %s stored (%d bytes)", sha[:12], len(payload))
        return outcome

    def on_event(self, event: dict[str, Any]) -> None:
        """A streamed play of a planned broadcast: that entry is done."""
        if event.get("event") == "play_start" and not event.get("local"):
            bid = event.get("broadcast")
            if self.plan is not None and any(e.broadcast == bid for e in self.plan.entries):
                self._mark_done(int(bid))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ ticks

    def tick(self, now: float, lost: bool, shift_s: float = 0.0) -> None:
        """``now``: the streamer's clock; ``shift_s``: the streamer's clock minus ours. Decode
        what is near, start what is due.

        A local play starts where the playout's output is (its cursor, on the streamer's
        clock), not at this tick's ``now``: it is due once the cursor reaches the entry's
        time, and the part of the clip that falls before the cursor is skipped, so that its
        samples come out when the stream would have played them (in step with the speakers
        that still have the stream), whatever the ticks' timing."""
        plan = self.plan
        if plan is None:
            return
        if now > plan.valid_until:
            log.warning("plan for %s expired: dropped", self.zone)
            self.plan = None
            return
        emergency = self.emergency_on(now)
        timeline = self.playout.timeline
        out = timeline.time(timeline.cursor) + shift_s
        for e in plan.entries:
            start = e.at + self.delay_s
            if e.broadcast in self.done or min(now, out) >= start + self.grace_s:
                self.ready.pop(e.broadcast, None)
                continue
            if now < start - LEAD_S:
                break  # entries are in time order
            if not lost and now < start - ONLINE_LEAD_S:
                continue  # with a stream, most likely never needed: no memory spent on it
            self._prepare(e)
            if e.broadcast not in self.ready or self.playout.local_playing:
                continue
            if entry_due(e, out, self.delay_s, lost, False, emergency, self.grace_s):
                pcm = self.ready.pop(e.broadcast)
                skip = max(0, round((out - start) * RATE_HZ))
                self.playout.play_local(pcm[skip:], e.broadcast, e.priority)
                self.local_plays += 1
                self.skipped_ms = skip * 1000 / RATE_HZ
                self._mark_done(e.broadcast)
                log.info("no stream: playing schedule %s (broadcast %d, %.1f s) from the "
                         "store, its first %.1f ms skipped to stay in step", e.schedule,
                         e.broadcast, len(pcm) / RATE_HZ, self.skipped_ms)

    def _prepare(self, e: PlanEntry) -> None:
        """Have the entry's clip decoded on the worker thread; ready once it is done."""
        bid = e.broadcast
        if bid in self.ready:
            return
        if bid not in self._decoding:
            if not self.store.has(e.clip):
                return
            store, new_decoder = self.store, self.new_decoder

            def decode() -> Samples | None:
                data = store.read(e.clip)
                return None if data is None else decode_clip(data, new_decoder())

            self._decoding[bid] = self._submit(decode)
        job = self._decoding[bid]
        if isinstance(job, Future):
            if not job.done():
                return
            try:
                job = job.result()
            except Exception as err:
                job = None
                log.warning("clip %s of broadcast %d not decoded: %s", e.clip[:12], bid, err)
        del self._decoding[bid]  # tried again at the next tick if it failed
        if job is not None:
            self.ready[bid] = job

    def _mark_done(self, bid: int) -> None:
        self.done[bid] = None
        while len(self.done) > MAX_DONE:
            self.done.popitem(last=False)
        done = list(self.done)
        self._write(lambda: self.store.save_done(done))

    def _write(self, job: Callable[[], Any]) -> None:
        def guarded() -> None:
            try:
                job()
            except OSError as e:
                log.error("clip store in %s not written: %s", self.store.directory, e)
            except Exception:
                log.exception("clip store write failed")

        self._submit(guarded)

    def status(self) -> dict[str, Any]:
        plan = self.plan
        return {"entries": len(plan.entries) if plan else 0, "missing": len(self.missing()),
                "local_plays": self.local_plays}


class ForwardCollector:
    """Prometheus metrics of a :class:`ForwardPath` (registered by ``main.py``)."""

    def __init__(self, forward: ForwardPath) -> None:
        self.forward = forward

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from wire.plan import OUTCOMES

        f = self.forward
        plans = CounterMetricFamily("loa_speaker_plans", "Store-and-forward plans received, "
                                    "by outcome (refused: malformed, unknown_key, "
                                    "bad_signature, expired, wrong_zone, rollback)",
                                    labels=["outcome"])
        for outcome in OUTCOMES:
            plans.add_metric([outcome], f.plans.get(outcome, 0))
        yield plans
        clips = CounterMetricFamily("loa_speaker_clips", "Clip files received, by outcome "
                                    "(refused: unexpected, bad_hash)", labels=["outcome"])
        for outcome in CLIP_OUTCOMES:
            clips.add_metric([outcome], f.clips[outcome])
        yield clips
        yield CounterMetricFamily("loa_speaker_local_plays", "Stored clips played by the "
                                  "speaker itself, with no stream", value=f.local_plays)
        yield GaugeMetricFamily("loa_speaker_plan_entries", "Entries of the plan kept",
                                value=len(f.plan.entries) if f.plan else 0)
        yield GaugeMetricFamily("loa_speaker_store_missing_clips", "Clips the plan names "
                                "that are not stored yet", value=len(f.missing()))


def forward_tick(forward: ForwardPath, speaker: Any, cfg: Any) -> None:
    """Local play decisions on the streamer's clock (``speaker.time``), every
    :data:`FORWARD_TICK_S`; "lost" as the emergency path judges it (``emergency_tick``)."""
    import time

    from wire.subscribe import ClientState

    from .emergency import stream_lost

    silent_s = time.monotonic() - speaker.last_media
    subscribed = speaker.client.state is ClientState.SUBSCRIBED
    forward.tick(speaker.time.now(), stream_lost(silent_s, subscribed, cfg.offline_after_s,
                                                 cfg.failover_s), speaker.time.shift_s())


__all__ = ["ClipStore", "ForwardCollector", "ForwardPath", "decode_clip", "entry_due",
           "forward_tick"]
