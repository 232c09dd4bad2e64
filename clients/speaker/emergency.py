"""The speaker's side of the emergency path when its network is gone: keep, remember, replay.

Forced volume needs nothing from here: the playout plays RTP priority level 3 at the emergency
volume from the first packet. This module is for the speaker that loses its stream during an
emergency, when it matters most. It keeps the decoded audio of the last emergency it played
(:class:`EmergencyRecorder`, then :class:`EmergencyCache`: a WAV and a small JSON, each
replaced atomically, so that a reboot finds them whole), the emergency states of its zone
topics (:class:`Emergencies`, persisted beside the audio so that a speaker rebooting offline
still knows them), and it decides when to air that audio on its own (:func:`replay_due`): the
emergency is active and unexpired, its audio is cached, no stream reaches the speaker, and
``repeat_s`` has passed since it last played. The stream always wins (its first packet ends a
local replay), and so do a cancellation and ``expires``. Nothing here may block or break
playout: the disk is written from one worker thread, an unreadable cache is logged and
ignored, and the playout only hands over PCM it decoded anyway.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import wave
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.secretfile import write_private
from wire.priority import Priority

if TYPE_CHECKING:  # the schemas (pydantic) load with the first state: MQTT, or states.json
    from wire.messages import EmergencyState

from .output import Samples, wav_header
from .playout import RATE_HZ, Playout

log = logging.getLogger("loa.speaker.emergency")

MAX_RECORDING_S = 600.0
MAX_KNOWN = 32  # emergency states remembered (the most recently started)
META_FILE = "emergency.json"
STATES_FILE = "states.json"
OUTCOMES = ("accepted", "duplicate", "stale")

Submit = Callable[[Callable[[], None]], object]


@dataclass(frozen=True, eq=False)
class CachedEmergency:
    """The audio of one emergency as the speaker played it: int16, 48 kHz mono, before volume."""

    id: int
    started: float  # wall time its first sample played
    pcm: Samples
    last_played: float  # wall time its latest play began, streamed or local

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / RATE_HZ


# --------------------------------------------------------------------------- on disk


_WAV_NAME = re.compile(r"emergency-[0-9]+\.wav")


@dataclass(frozen=True)
class _Meta:
    """``emergency.json``. Checked by hand rather than by a pydantic model: every speaker
    reads it at start-up, and most never load pydantic (``main.py``)."""

    id: int
    started: float
    duration_s: float
    last_played: float
    wav: str

    @classmethod
    def parse(cls, data: bytes) -> _Meta:
        """Raises ValueError unless ``data`` is exactly these fields, of these types
        (an integer id of 32 bits, numbers, a WAV name of the cache's own)."""
        raw = json.loads(data)
        if not isinstance(raw, dict) or set(raw) != set(cls.__dataclass_fields__):
            raise ValueError("not the fields of an emergency description")
        if type(raw["id"]) is not int or not 1 <= raw["id"] <= 0xFFFF_FFFF:
            raise ValueError(f"bad id {raw['id']!r}")
        for key in ("started", "duration_s", "last_played"):
            if type(raw[key]) not in (int, float):
                raise ValueError(f"{key} is not a number")
        if raw["duration_s"] < 0:
            raise ValueError("negative duration_s")
        if not isinstance(raw["wav"], str) or not _WAV_NAME.fullmatch(raw["wav"]):
            raise ValueError(f"bad wav {raw['wav']!r}")
        return cls(raw["id"], float(raw["started"]), float(raw["duration_s"]),
                   float(raw["last_played"]), raw["wav"])

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


@functools.cache
def _states_schema() -> Any:
    """``states.json``: ``{"states": [EmergencyState, ...]}`` (a pydantic model, made when
    first needed)."""
    from pydantic import ConfigDict, create_model

    from wire.messages import EmergencyState

    return create_model("_States", __config__=ConfigDict(strict=True, extra="forbid"),
                        states=(list[EmergencyState], ...))


class EmergencyCache:
    """The speaker's emergency files in ``directory`` (created when first written): the latest
    emergency's audio ``emergency-{id}.wav``, ``emergency.json`` naming it (id, started,
    duration, last played), and ``states.json``. Each file is replaced atomically and the JSON
    after the WAV it names, so a crash or a power cut leaves the previous set, never a torn
    one. Reading never raises: a missing or damaged cache is no cache."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def load(self) -> CachedEmergency | None:
        path = self.directory / META_FILE
        if not path.exists():
            return None
        try:
            meta = _Meta.parse(path.read_bytes())
            pcm = _read_wav(self.directory / meta.wav)
        except (OSError, ValueError, EOFError, wave.Error) as e:
            log.warning("emergency cache %s unreadable, ignored: %s", path, e)
            return None
        return CachedEmergency(meta.id, meta.started, pcm, meta.last_played)

    def load_states(self) -> list[EmergencyState]:
        path = self.directory / STATES_FILE
        if not path.exists():
            return []
        try:
            return list(_states_schema().model_validate_json(path.read_bytes()).states)
        except (OSError, ValueError) as e:
            log.warning("emergency states %s unreadable, ignored: %s", path, e)
            return []

    def store(self, cached: CachedEmergency) -> None:
        """The audio and its description; the previous emergency's audio goes."""
        name = f"emergency-{cached.id}.wav"
        data = memoryview(cached.pcm).cast("B").tobytes()
        write_private(self.directory / name, wav_header(len(data)) + data)
        self.store_meta(cached)
        for old in self.directory.glob("emergency-*.wav"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def store_meta(self, cached: CachedEmergency) -> None:
        meta = _Meta(id=cached.id, started=cached.started, duration_s=cached.duration_s,
                     last_played=cached.last_played, wav=f"emergency-{cached.id}.wav")
        write_private(self.directory / META_FILE, meta.to_json())

    def store_states(self, states: list[EmergencyState]) -> None:
        write_private(self.directory / STATES_FILE,
                      _states_schema()(states=states).model_dump_json())


def _read_wav(path: Path) -> Samples:
    with wave.open(str(path), "rb") as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, RATE_HZ):
            raise ValueError(f"{path.name} is not 16-bit mono {RATE_HZ} Hz")
        if w.getnframes() > MAX_RECORDING_S * RATE_HZ:
            raise ValueError(f"{path.name} is longer than {MAX_RECORDING_S:g} s")
        return memoryview(w.readframes(w.getnframes())).cast("h")


# --------------------------------------------------------------------------- sans-IO parts


class EmergencyRecorder:
    """The decoded PCM of the emergency broadcast playing now, as the playout hands it over
    (``Playout.capture``); at most ``max_s`` seconds, the rest of a longer one is not kept."""

    def __init__(self, max_s: float = MAX_RECORDING_S, rate_hz: int = RATE_HZ) -> None:
        self.max_bytes = 2 * int(max_s * rate_hz)
        self.broadcast_id = 0
        # one growing buffer: when the broadcast ends it is already the whole recording, with
        # nothing left to join on the event loop
        self._buf = bytearray()

    def add(self, broadcast_id: int, pcm: bytes) -> None:
        if broadcast_id != self.broadcast_id:
            self.broadcast_id, self._buf = broadcast_id, bytearray()
        room = self.max_bytes - len(self._buf)
        if room > 0:
            self._buf += memoryview(pcm)[:room]

    def take(self, broadcast_id: int) -> list[bytearray]:
        """What was recorded of ``broadcast_id`` (nothing if another one is recording), and
        start afresh."""
        if broadcast_id != self.broadcast_id:
            return []
        buf = self._buf
        self.broadcast_id, self._buf = 0, bytearray()
        return [buf] if buf else []


class Emergencies:
    """The emergency states heard on the zone topics (or reloaded from disk), by id: at most
    :data:`MAX_KNOWN`, the most recently started. An ended emergency stays known as ended, so
    that an older ``active: true`` copy of it (another ancestor zone's retained message) cannot
    bring it back."""

    def __init__(self, states: Iterable[EmergencyState] = ()) -> None:
        self._by_id: dict[int, EmergencyState] = {}
        for state in states:
            self.update(state)

    def update(self, state: EmergencyState) -> str:
        """Take one state in; returns one of :data:`OUTCOMES`: ``accepted``, ``duplicate``
        (the same state again) or ``stale`` (``active: true`` for an emergency that ended)."""
        known = self._by_id.get(state.id)
        if known == state:
            return "duplicate"
        if known is not None and not known.active and state.active:
            return "stale"
        self._by_id[state.id] = state
        if len(self._by_id) > MAX_KNOWN:
            oldest = min(self._by_id.values(), key=lambda s: s.started)
            del self._by_id[oldest.id]
        return "accepted"

    def current(self, now: float) -> EmergencyState | None:
        """The active, unexpired emergency that started last, if any."""
        live = [s for s in self._by_id.values()
                if s.active and (s.expires is None or now < s.expires)]
        return max(live, key=lambda s: s.started, default=None)

    def latest(self) -> EmergencyState | None:
        """The state that started last, active or not."""
        return max(self._by_id.values(), key=lambda s: s.started, default=None)

    @property
    def states(self) -> list[EmergencyState]:
        return list(self._by_id.values())


def stream_lost(silent_s: float, subscribed: bool, offline_after_s: float,
                handshake_s: float) -> bool:
    """No stream reaches the speaker: no packet for ``offline_after_s``, or the subscribe
    client gave up on its upstream (not subscribed) and nothing came for ``handshake_s``, so
    that the ordinary handshake at start-up or after a reconnect does not count."""
    return silent_s >= offline_after_s or (not subscribed and silent_s >= handshake_s)


def replay_due(state: EmergencyState, cached: CachedEmergency, repeat_override_s: float | None,
               now: float, lost: bool) -> bool:
    """Whether to air the cached audio now: it is the current emergency ``state``'s, the
    stream is ``lost``, and the cadence (``repeat_s``, or the override where the state has
    one) has passed since the audio last began to play, streamed or local."""
    if cached.id != state.id or not lost or state.repeat_s is None:
        return False
    repeat_s = state.repeat_s if repeat_override_s is None else repeat_override_s
    return now >= cached.last_played + repeat_s


class EmergencyPath:
    """Ties the parts above to one :class:`Playout`. Its inputs come from the speaker's edge:
    play-log records (:meth:`on_event`), emergency states from MQTT (:meth:`on_state`) and a
    periodic :meth:`tick`. Files are written through ``submit`` (a single worker thread in the
    process, so writes stay in order; the caller itself in tests)."""

    def __init__(self, playout: Playout, cache: EmergencyCache, *,
                 cached: CachedEmergency | None = None, states: Iterable[EmergencyState] = (),
                 volume_pct: float = 100.0, repeat_override_s: float | None = None,
                 submit: Submit = lambda job: job()) -> None:
        self.playout = playout
        self.cache = cache
        # Replaced whole, never mutated, and only on the event loop: the worker thread only
        # writes files.
        self.cached = cached
        self.emergencies = Emergencies(states)
        self.recorder = EmergencyRecorder()
        self.default_volume_pct = volume_pct
        self.repeat_override_s = repeat_override_s
        self._submit = submit
        self.replays = 0
        self._replay_id = 0  # the emergency of our latest local replay
        self.messages = dict.fromkeys(OUTCOMES, 0)
        self._apply_volume()

    # ------------------------------------------------------------------ inputs

    def on_event(self, event: Mapping[str, Any]) -> None:
        """A play-log record: a streamed emergency starting restarts its cadence; ending, it
        leaves its audio in the cache."""
        if event.get("priority") != Priority.EMERGENCY or event.get("local"):
            return
        broadcast_id, start = event["broadcast"], event["start"]
        cached = self.cached
        if event["event"] == "play_start" and cached is not None and cached.id == broadcast_id:
            self.cached = replace(cached, last_played=start)
        elif event["event"] == "play":
            self._keep(broadcast_id, start, self.recorder.take(broadcast_id))

    def on_state(self, state: EmergencyState, now: float) -> None:
        """An emergency state from a zone topic; duplicates and stale ones are counted and
        dropped. A cancelled or expired emergency stops its local replay at once."""
        outcome = self.emergencies.update(state)
        self.messages[outcome] += 1
        if outcome != "accepted":
            return
        log.info("emergency %d %s%s", state.id, "active" if state.active else "ended",
                 f" ({state.label})" if state.label else "")
        snapshot = self.emergencies.states
        self._write(lambda: self.cache.store_states(snapshot))
        self._apply_volume()
        self._stop_if_over(now)

    def forget_states(self, now: float) -> None:
        """The speaker moved to another zone: the states it heard were its old zones'. The
        broker sends the new zones' retained states again; until then no emergency is
        current, and a local replay of an old zone's stops. The cached audio stays: it
        replays only for a state of the same emergency."""
        self.emergencies = Emergencies()
        self._write(lambda: self.cache.store_states([]))
        self._apply_volume()
        self._stop_if_over(now)

    def tick(self, now: float, lost: bool) -> None:
        """Start a local replay when one is due; stop one whose emergency is over."""
        if self._stop_if_over(now) or self._replaying:
            return
        current, cached = self.emergencies.current(now), self.cached
        if current is None or cached is None:
            return
        if replay_due(current, cached, self.repeat_override_s, now, lost):
            self.cached = replay = replace(cached, last_played=now)
            self.playout.play_local(replay.pcm, replay.id)
            self._replay_id = replay.id
            self.replays += 1
            self._write(lambda: self.cache.store_meta(replay))
            log.info("no stream: replaying emergency %d (%.1f s) on our own", replay.id,
                     replay.duration_s)

    def status(self, now: float) -> dict[str, Any]:
        current, cached = self.emergencies.current(now), self.cached
        return {"playing": self.playout.emergency_playing, "local": self.playout.local_playing,
                "current": current.id if current else None,
                "cached": cached.id if cached else None}

    # ------------------------------------------------------------------ internals

    @property
    def _replaying(self) -> bool:
        """One of our replays is on (a stored scheduled clip playing locally is not one, even
        at the emergency level: an emergency replay that falls due replaces it, ``store.py``)."""
        p = self.playout
        return p.local_playing and p.local_broadcast_id == self._replay_id

    def _stop_if_over(self, now: float) -> bool:
        p = self.playout
        current = self.emergencies.current(now)
        if not self._replaying or (current is not None and current.id == p.local_broadcast_id):
            return False
        log.info("local replay of emergency %d stopped: cancelled or expired",
                 p.local_broadcast_id)
        p.stop_local()
        return True

    def _keep(self, broadcast_id: int, started: float, chunks: list[bytearray]) -> None:
        """Cache what was just recorded, unless it is a shorter take of the emergency already
        cached (the network cut it short): offline, the whole message is worth more."""
        samples = sum(map(len, chunks)) // 2
        cached = self.cached
        if cached is not None and cached.id == broadcast_id and samples < len(cached.pcm):
            self.cached = kept = replace(cached, last_played=max(cached.last_played, started))
            self._write(lambda: self.cache.store_meta(kept))
            return
        if not samples:
            return
        pcm = memoryview(chunks[0]).cast("h")  # the recorder's buffer: no copy
        self.cached = fresh = CachedEmergency(broadcast_id, started, pcm, started)
        self._write(lambda: self.cache.store(fresh))
        log.info("emergency %d cached (%.1f s)", broadcast_id, fresh.duration_s)

    def _apply_volume(self) -> None:
        latest = self.emergencies.latest()
        self.playout.set_emergency_volume(latest.volume if latest else self.default_volume_pct)

    def _write(self, job: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                job()
            except OSError as e:  # a full or read-only disk: playing matters more
                log.error("emergency cache in %s not written: %s", self.cache.directory, e)
            except Exception:
                log.exception("emergency cache write failed")

        self._submit(guarded)
