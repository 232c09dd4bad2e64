"""What the fleet reports over MQTT, kept: presence, telemetry, and proof of play (reach).

The :class:`~streamer.control.fleet.Fleet` hands every validated status, telemetry and
``played`` message to :class:`FleetRecorder`, which writes it to Redis and keeps the metrics
ops watch: speakers registered and online per zone (the offline-ratio alert divides one by the
other) and confirmed plays per broadcast. A device's zone comes from the registry, never from
what the device says about itself.

Presence is what each device last said, and a device that has said nothing for a while may
be gone without its last will ever reaching us (the broker frozen, our link to it down, a
network split): :meth:`FleetRecorder.view` shows a device ``online`` only while the streamer
has heard from it (status, telemetry or proof of play) within ``stale_after_s``, and
``unknown`` after that, until it is heard again.

It also tells the event stream (``events.py``) what changed: a speaker going online or
offline (``presence``), a leaf zone left with no speaker online and a relay gone offline
(``alert``, ``alerts.py``), and each confirmed play (``reach``, through ``on_played``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter as CounterOf
from collections import OrderedDict
from collections.abc import Callable, Iterator

import redis.exceptions
from prometheus_client import CollectorRegistry, Counter, Gauge

from wire.messages import Played, RelayTelemetry, SpeakerTelemetry, Status

from .alerts import Alerts
from .events import Publish, nothing
from .models import Presence
from .state import State

log = logging.getLogger("loa.presence")
REACH_BROADCASTS = 20  # broadcasts whose reach stays exported as a metric
#: a device heard from less recently than this reads ``unknown``: three times the devices'
#: default telemetry period (``telemetry_s``, 10 s), and a little more
STALE_AFTER_S = 35.0


@contextlib.contextmanager
def redis_away(what: str, device_id: str) -> Iterator[None]:
    """Redis away (restarting, say): one line per message, not a traceback, and the metrics
    still follow the fleet. A device's next status and telemetry are written again."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
        log.warning("%s of %s not stored: state store unavailable (%s)", what, device_id, e)


class FleetRecorder:
    def __init__(self, state: State, registry: CollectorRegistry,
                 stale_after_s: float = STALE_AFTER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.stale_after_s = stale_after_s
        self.clock = clock
        self._started = clock()
        #: when each device was last heard from (``clock``); before that, the recorder's start
        self.heard: dict[str, float] = {}
        self.zone_of: dict[str, str] = {}  # speaker id → leaf zone, from the registry
        self.online: dict[str, bool] = {}
        self.speakers_online = Gauge("loa_speakers_online", "Speakers online (MQTT presence)",
                                     ["zone"], registry=registry)
        self.speakers_registered = Gauge("loa_speakers_registered", "Speakers registered",
                                         ["zone"], registry=registry)
        self.reach = Gauge("loa_broadcast_reach_confirmed",
                           "Speakers that confirmed playing a recent broadcast", ["broadcast"],
                           registry=registry)
        self.played_total = Counter("loa_played_events_total", "Proof-of-play events recorded",
                                    registry=registry)
        self._reach: OrderedDict[int, set[str]] = OrderedDict()
        self._members: CounterOf[str] = CounterOf()  # speakers per leaf zone
        self._online_n: CounterOf[str] = CounterOf()  # of which online
        #: the event stream's publisher, its alerts, and who hears of each confirmed play
        self.publish: Publish = nothing
        self.alerts = Alerts()
        self.on_played: Callable[[int], None] = lambda broadcast: None
        self._relay_online: dict[str, bool] = {}

    def registered_in(self, channels: set[str]) -> int:
        """Speakers registered in ``channels``."""
        return sum(self._members.get(c, 0) for c in channels)

    async def load(self) -> None:
        speakers = await self.state.speakers.all()
        presence = await self.state.presence.many([sp.id for sp in speakers])
        for sp, p in zip(speakers, presence, strict=True):
            self._move(sp.id, sp.zone, p is not None and p.state == "online")

    def place(self, speaker_id: str, zone: str) -> None:
        """A speaker registered or moved (the registry is the truth about zones)."""
        self._move(speaker_id, zone, self.online.get(speaker_id, False))

    def forget(self, speaker_id: str) -> None:
        self._move(speaker_id, None, False)
        self.heard.pop(speaker_id, None)

    def _move(self, speaker_id: str, zone: str | None, online: bool) -> None:
        """Take the speaker out of its zone's counts and put it into ``zone``'s (None: gone).
        Only the zones touched are re-exported: a presence message costs O(1), not O(fleet)."""
        old = self.zone_of.pop(speaker_id, None)
        if old is not None:
            self._members[old] -= 1
            self._online_n[old] -= self.online.pop(speaker_id, False)
            if old != zone:  # else exported once below, with no half-moved state between
                self._export(old)
        if zone is not None:
            self.zone_of[speaker_id], self.online[speaker_id] = zone, online
            self._members[zone] += 1
            self._online_n[zone] += online
            self._export(zone)

    def _export(self, zone: str) -> None:
        members, online = self._members[zone], self._online_n[zone]
        if members and not online:
            self.alerts.fire("zone_offline", zone, [zone],
                             f"no speaker online in {zone} ({members} registered)")
        else:
            self.alerts.resolve("zone_offline", zone, f"{online} of {members} speakers online "
                                f"in {zone}" if members else f"no speaker registered in {zone}")
        if members > 0:
            self.speakers_registered.labels(zone).set(members)
            self.speakers_online.labels(zone).set(online)
            return
        del self._members[zone], self._online_n[zone]  # its last speaker moved or was removed
        for gauge in (self.speakers_registered, self.speakers_online):
            with contextlib.suppress(KeyError):
                gauge.remove(zone)

    def view(self, device_id: str, p: Presence | None) -> Presence:
        """``p`` as the API shows it: ``online`` turns ``unknown`` once the device has not been
        heard from for ``stale_after_s`` (``detail.silent_s`` says how long)."""
        if p is None:
            return Presence()
        if p.state != "online":
            return p
        silent = self.clock() - self.heard.get(device_id, self._started)
        if silent <= self.stale_after_s:
            return p
        return p.model_copy(update={"state": "unknown",
                                    "detail": {**p.detail, "silent_s": round(silent, 1)}})

    # -- FleetSink ----------------------------------------------------------------------------

    async def presence(self, kind: str, device_id: str, status: Status) -> None:
        self.heard[device_id] = self.clock()
        detail = status.model_dump(exclude={"state", "ts"}, exclude_none=True)
        with redis_away("presence", device_id):
            await self.state.set_presence(device_id, Presence(
                state=status.state, ts=status.ts or time.time(),
                detail={"kind": kind, **detail}))
        online = status.state == "online"
        if kind == "speaker" and device_id in self.zone_of:
            zone = self.zone_of[device_id]
            if self.online.get(device_id) != online:
                self.publish("presence", {"speaker": device_id, "zone": zone,
                                          "online": online}, [zone])
            self._move(device_id, zone, online)
        elif kind == "relay" and self._relay_online.get(device_id) != online:
            self._relay_online[device_id] = online
            await self._relay_alert(device_id, online)

    async def _relay_alert(self, relay_id: str, online: bool) -> None:
        if online:
            self.alerts.resolve("relay_offline", relay_id, f"relay {relay_id} is online")
            return
        with redis_away("relay alert", relay_id):
            relay = await self.state.relays.get(relay_id)
            if relay is not None:  # a device the registry does not know raises no alert
                self.alerts.fire("relay_offline", relay_id, [relay.zone] if relay.zone else [],
                                 f"relay {relay_id} is offline"
                                 f"{' (' + relay.zone + ')' if relay.zone else ''}")

    async def telemetry(self, kind: str, device_id: str,
                        t: SpeakerTelemetry | RelayTelemetry) -> None:
        self.heard[device_id] = self.clock()
        with redis_away("telemetry", device_id):
            await self.state.set_telemetry(device_id, t.model_dump(mode="json"))

    async def played(self, speaker_id: str, ev: Played) -> None:
        self.heard[speaker_id] = self.clock()
        with redis_away("proof of play", speaker_id):
            await self.state.record_played(ev.broadcast, speaker_id, ev.model_dump(mode="json"))
        self.played_total.inc()
        who = self._reach.setdefault(ev.broadcast, set())
        self._reach.move_to_end(ev.broadcast)
        who.add(speaker_id)
        self.reach.labels(str(ev.broadcast)).set(len(who))
        self.on_played(ev.broadcast)
        while len(self._reach) > REACH_BROADCASTS:
            old, _ = self._reach.popitem(last=False)
            self.reach.remove(str(old))
