"""What the fleet reports over MQTT, kept: presence, telemetry, and proof of play (reach).

The :class:`~streamer.control.fleet.Fleet` hands every validated status, telemetry and
``played`` message to :class:`FleetRecorder`, which writes it to Redis and keeps the metrics
ops watch: speakers online per zone and confirmed plays per broadcast. A device's zone comes
from the registry, never from what the device says about itself.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from prometheus_client import CollectorRegistry, Counter, Gauge

from .messages import Played, RelayTelemetry, SpeakerTelemetry, Status
from .models import Presence
from .state import State

log = logging.getLogger("loa.presence")
REACH_BROADCASTS = 20  # broadcasts whose reach stays exported as a metric


class FleetRecorder:
    def __init__(self, state: State, registry: CollectorRegistry) -> None:
        self.state = state
        self.zone_of: dict[str, str] = {}  # speaker id → leaf zone, from the registry
        self.online: dict[str, bool] = {}
        self.speakers_online = Gauge("loa_speakers_online", "Speakers online (MQTT presence)",
                                     ["zone"], registry=registry)
        self.reach = Gauge("loa_broadcast_reach_confirmed",
                           "Speakers that confirmed playing a recent broadcast", ["broadcast"],
                           registry=registry)
        self.played_total = Counter("loa_played_events_total", "Proof-of-play events recorded",
                                    registry=registry)
        self._reach: OrderedDict[int, set[str]] = OrderedDict()
        self._exported: set[str] = set()

    async def load(self) -> None:
        self.zone_of = {s.id: s.zone for s in await self.state.speakers.all()}
        presence = await self.state.presence.many(list(self.zone_of))
        self.online = {sid: p is not None and p.state == "online"
                       for sid, p in zip(self.zone_of, presence, strict=True)}
        self._export_online()

    def place(self, speaker_id: str, zone: str) -> None:
        """A speaker registered or moved (the registry is the truth about zones)."""
        self.zone_of[speaker_id] = zone
        self._export_online()

    def forget(self, speaker_id: str) -> None:
        self.zone_of.pop(speaker_id, None)
        self.online.pop(speaker_id, None)
        self._export_online()

    def _export_online(self) -> None:
        counts: dict[str, int] = {}
        for sid, zone in self.zone_of.items():
            counts[zone] = counts.get(zone, 0) + int(self.online.get(sid, False))
        for zone, n in counts.items():
            self.speakers_online.labels(zone).set(n)
        for zone in self._exported - counts.keys():  # its last speaker moved or was removed
            self.speakers_online.remove(zone)
        self._exported = set(counts)

    # -- FleetSink ----------------------------------------------------------------------------

    async def presence(self, kind: str, device_id: str, status: Status) -> None:
        detail = status.model_dump(exclude={"state", "ts"}, exclude_none=True)
        await self.state.set_presence(device_id, Presence(
            state=status.state, ts=status.ts or time.time(), detail={"kind": kind, **detail}))
        if kind == "speaker":
            self.online[device_id] = status.state == "online"
            self._export_online()

    async def telemetry(self, kind: str, device_id: str,
                        t: SpeakerTelemetry | RelayTelemetry) -> None:
        await self.state.set_telemetry(device_id, t.model_dump(mode="json"))

    async def played(self, speaker_id: str, ev: Played) -> None:
        await self.state.record_played(ev.broadcast, speaker_id, ev.model_dump(mode="json"))
        self.played_total.inc()
        who = self._reach.setdefault(ev.broadcast, set())
        self._reach.move_to_end(ev.broadcast)
        who.add(speaker_id)
        self.reach.labels(str(ev.broadcast)).set(len(who))
        while len(self._reach) > REACH_BROADCASTS:
            old, _ = self._reach.popitem(last=False)
            self.reach.remove(str(old))
