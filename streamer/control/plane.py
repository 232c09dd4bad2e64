"""The control plane of one streamer: state, zone settings, and the services the API calls.

Zone settings (quiet hours, approval, test zones) are inherited down the tree; this is where
"what applies to channel X" is answered. It also creates the first admin on an empty store.
The plane is the API handlers' only dependency (``Ctx.services``), which keeps them thin.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from common.secretfile import new_secret, write_private
from streamer.mixer.mixer import Mixer
from streamer.mixer.sources import TtsProvider
from streamer.zones import ZoneTree
from wire.auth import SigningKey
from wire.ids import ancestors
from wire.messages import EmergencyState

from .alerts import Alerts
from .board import BoardFeed
from .broadcasts import Broadcasts, ClipLibrary
from .devices import Devices
from .events import EventHub
from .fleet import Fleet
from .forward import Forward
from .grants import TokenIssuer
from .hashing import Hasher
from .inbound import Inbox
from .lexicon import ProvinceLexicon
from .live import LiveInputs
from .models import (
    DEFAULT_QUIET_HOURS,
    AuditEntry,
    BroadcastRecord,
    BroadcastState,
    EmergencyPlan,
    GeoPoint,
    Grant,
    LiveInput,
    Role,
    User,
    Zone,
)
from .presence import FleetRecorder
from .reach import ReachFeed
from .schedules import QuietHours, in_quiet_hours
from .state import State
from .throttle import Gate, LoginThrottle
from .zonedit import ZoneEditor

log = logging.getLogger("loa.control")
_parse_quiet = functools.lru_cache(maxsize=256)(QuietHours.parse)  # a few distinct settings


@dataclass
class Plane:
    state: State
    tree: ZoneTree
    broadcasts: Broadcasts
    clips: ClipLibrary
    tts: TtsProvider
    mixer: Mixer
    registry: CollectorRegistry
    devices: Devices
    recorder: FleetRecorder
    fleet: Fleet | None = None
    #: the streamer's signing key now (it signs listen-in tokens; devices pin its public key)
    signing_key: Callable[[], SigningKey] | None = None

    def stream_keys(self) -> list[str]:
        """The public keys a device must pin (``stream_keys``), as registration returns them."""
        return [] if self.signing_key is None else [self.signing_key().public_text]
    #: issues devices their subscription tokens over MQTT (with ``fleet``)
    tokens: TokenIssuer | None = None
    scheduler: Any = None
    now: Callable[[], float] = time.time
    zones: dict[str, Zone] = field(default_factory=dict)
    inputs: LiveInputs = field(init=False)
    #: browser studio sessions (``streamer/live/webrtc.py``), when the streamer has them
    studio: Any = None
    #: the RTP ingest endpoint (``streamer/live/ingest.py``), when the streamer has one,
    #: and the address senders reach it at
    ingest: Any = None
    ingest_addr: tuple[str, int] = ("", 0)
    #: registered ingest inputs and their keys, as the ingest endpoint reads them
    input_defs: dict[str, LiveInput] = field(default_factory=dict)
    input_keys: dict[str, str] = field(default_factory=dict)
    #: failed sign-ins per address and user name (``throttle.py``)
    logins: LoginThrottle = field(default_factory=LoginThrottle)
    #: password checks: two at once (each takes a core), 32 more waiting, then "busy"
    hashing: Gate = field(default_factory=lambda: Gate(2, 32))
    #: where they run: worker processes (``hashing.py``)
    hasher: Hasher = field(default_factory=Hasher)
    #: the event stream (``GET /api/v1/events``), its alerts, and reach as it fills
    events: EventHub = field(init=False)
    alerts: Alerts = field(init=False)
    reach: ReachFeed = field(init=False)
    #: store and forward: zone plans and clips for speakers to play offline (``forward.py``)
    forward: Forward = field(init=False)
    #: bulletins from above (``inbound.py``), and how long a priority one waits for an
    #: operator before it airs by itself
    inbox: Inbox = field(init=False)
    inbound_decide_s: float = 600.0
    #: e-boards' items (``board.py``)
    board: BoardFeed = field(init=False)
    #: runtime zone edits (``zonedit.py``)
    editor: ZoneEditor = field(init=False)
    #: the bulletin lexicon as admins extend it (``lexicon.py``)
    lexicon: ProvinceLexicon = field(init=False)

    def __post_init__(self) -> None:
        self.inputs = LiveInputs(self.broadcasts)
        self.login_refusals = Counter(
            "loa_login_refused_total",
            "Sign-ins refused before any password check: by address or user name throttle, "
            "or busy", ["by"], registry=self.registry)
        self.state.unreadable.register(self.registry)
        self.broadcasts.announce = self.announce_emergency
        self.broadcasts.voice_of = self.voice_for
        self.events = EventHub(self.registry)
        publish = self.events.publish
        self.broadcasts.publish = publish
        self.broadcasts.onair.publish_many = self.events.publish_many
        self.alerts = Alerts(publish)
        self.alerts.everywhere = list(self.tree.roots)
        self.recorder.alerts, self.recorder.publish = self.alerts, publish
        self.reach = ReachFeed(self.broadcasts, self.recorder, publish)
        self.recorder.on_played = self.reach.played
        self.forward = Forward(self)  # started with the control plane (``app.py``)
        self.broadcasts.occurrence_id = self.forward.occurrence_id
        self.inbox = Inbox(self, self.registry)  # started with the control plane (app.py)
        self.board = BoardFeed(self, self.registry)  # started with the control plane too
        self.broadcasts.on_first_airing = self.board.broadcast_aired
        self.broadcasts.on_emergency_over = self.board.emergency_over
        self.editor = ZoneEditor(self, self.registry)
        self.lexicon = ProvinceLexicon(self.state, self.tts)

    async def reload_inputs(self) -> None:
        self.input_defs = {r.id: r for r in await self.state.inputs.all()}
        self.input_keys = await self.state.input_keys()

    # -- RTP ingest events (``streamer/live/ingest.py`` calls these on the loop) -------------

    def ingest_started(self, input_id: str, addr: tuple[str, int]) -> None:
        self.broadcasts.spawn(self._air_input(input_id, addr), f"input {input_id}: its start")

    def ingest_audio(self, input_id: str, pcm: Any) -> None:
        self.inputs.open(input_id).write(pcm)

    def ingest_ended(self, input_id: str, reason: str) -> None:
        log.info("ingest input %s stopped sending (%s)", input_id, reason)
        self.broadcasts.spawn(self.inputs.close(input_id), f"input {input_id}: its end")

    def ingest_refused(self, addr: tuple[str, int], reason: str) -> None:
        self.broadcasts.spawn(self.state.audit(AuditEntry(
            ts=self.now(), user="-", action="ingest_refused", target=f"{addr[0]}:{addr[1]}",
            outcome="denied", detail={"reason": reason})), "a refused ingest sender")

    async def _air_input(self, input_id: str, addr: tuple[str, int]) -> None:
        """An input started sending: air it in its zones at its priority, as its registrant
        was allowed to; quiet hours hold back all but an emergency input (audited)."""
        rec = self.input_defs.get(input_id)
        if rec is None:
            return
        source, desc = self.inputs.source_of(input_id)
        quiet = [] if rec.priority == "emergency" else self.quiet_now(rec.zones)
        detail = {"from": f"{addr[0]}:{addr[1]}"}
        if quiet:
            log.warning("ingest input %s: quiet hours in %s; not aired", input_id, quiet[0])
            await self.state.audit(AuditEntry(
                ts=self.now(), user=f"input:{input_id}", action="live_input", target=input_id,
                zones=rec.zones, outcome="skipped", detail={**detail, "reason": "quiet hours"}))
            return
        plan = EmergencyPlan(chime=False) if rec.priority == "emergency" else None
        b = await self.broadcasts.create(rec.zones, rec.priority, source, label=rec.name,
                                         user=f"input:{input_id}", emergency=plan, desc=desc)
        await self.state.audit(AuditEntry(
            ts=self.now(), user=f"input:{input_id}", action="live_input", target=str(b.id),
            zones=rec.zones, detail=detail))

    async def announce_emergency(self, rec: BroadcastRecord) -> None:
        """Retain the emergency's state on each of its zones' topics: speakers below cache
        it and replay it on its cadence if they lose their stream (``docs/mqtt.md``)."""
        plan = rec.emergency
        if self.fleet is None or plan is None:
            return
        msg = EmergencyState(
            id=rec.id, active=rec.state == BroadcastState.QUEUED, volume=plan.volume,
            repeat_s=plan.repeat_s, started=rec.created, expires=plan.expires,
            label=rec.label)
        await asyncio.gather(*(self.fleet.publish_emergency(z, msg) for z in rec.zones))

    async def load(self) -> None:
        """Apply what the journal kept while Redis was away (before anything reads the
        records it holds), set aside stored records that no longer parse, import the zone tree
        into an empty store, then read every zone's settings and the admins' lexicon."""
        replayed = await self.state.replay()
        if replayed:
            log.warning("applied %d state writes journaled while Redis was away", replayed)
        moved = await self.state.quarantine()
        if moved:
            log.error("moved %d stored records that no longer parse to quarantine (%s); see "
                      "docs/state.md", sum(moved.values()),
                      ", ".join(f"{k}: {n}" for k, n in sorted(moved.items())))
        await self.editor.load()  # the tree as runtime edits left it, if they did
        added = await self.state.import_zones([
            Zone(id=z.id, name=z.name, parent=z.parent, **self._from_zone_file(z.id))
            for z in self.tree.zones.values()])
        if added:
            log.info("imported %d zones", added)
        await self.reload_zones()
        await self.recorder.load()
        await self.devices.sync_broker()
        await self.state.reserve_broadcast_ids()
        await self.reload_inputs()
        await self.lexicon.load()  # admins' terms, read by the voice from now on

    async def reload_zones(self) -> None:
        """Every zone's settings, read again (at start, and after a zone edit)."""
        # codes and geography come from the tree (the data file's, or as runtime edits left
        # it), also for zones stored before it had them
        self.zones = {z.id: z.model_copy(update=self._from_zone_file(z.id))
                      for z in await self.state.zones.all() if z.id in self.tree.zones}

    def _from_zone_file(self, zone_id: str) -> dict[str, Any]:
        """What the zone tree says of a zone and the API cannot change: its code and place."""
        z = self.tree.zones[zone_id]
        return {"code": z.code, "boundary": z.boundary,
                "location": None if z.location is None else GeoPoint(lat=z.location[0],
                                                                     lon=z.location[1])}

    def zones_then_and_now(self, zones: list[str]) -> list[str]:
        """A stored record's ``zones`` and the zones they are now (a zone edit may have
        renamed, moved or merged them): who may see and filter history asks for both."""
        return list(dict.fromkeys([*zones, *self.tree.resolve_all(zones)]))

    # -- inherited zone settings ----------------------------------------------------------

    def _inherited(self, zone_id: str, attr: str) -> Any:
        for zid in reversed(ancestors(zone_id)):
            z = self.zones.get(zid)
            if z is not None and getattr(z, attr) is not None:
                return getattr(z, attr)
        return None

    def quiet_hours(self, zone_id: str) -> str:
        """"HH:MM-HH:MM" in force for ``zone_id`` ("" for none): its own or its nearest
        ancestor's, else the default 22:00-05:00."""
        q = self._inherited(zone_id, "quiet_hours")
        return DEFAULT_QUIET_HOURS if q is None else str(q)

    def voice_for(self, zones: list[str]) -> str | None:
        """The voice a TTS broadcast to ``zones`` is read in: the first zone's own or
        inherited ``voice`` (one broadcast is one recording, docs/api.md); None: default."""
        return self._inherited(zones[0], "voice") if zones else None

    def listen_public(self, channel: str) -> bool:
        """Anyone may listen in to ``channel``: its zone or an ancestor is ``public_listen``."""
        return any(self.zones[a].public_listen for a in ancestors(channel) if a in self.zones)

    def requires_approval(self, zones: list[str]) -> bool:
        return any(self.zones[a].requires_approval
                   for z in zones for leaf in self.tree.leaves(z) for a in ancestors(leaf)
                   if a in self.zones)

    def quiet_for(self, zone_id: str) -> QuietHours | None:
        return _parse_quiet(self.quiet_hours(zone_id))

    def quiet_now(self, zones: list[str], when: float | None = None) -> list[str]:
        """Leaf zones under ``zones`` that are in their quiet hours at ``when``."""
        at = datetime.fromtimestamp(self.now() if when is None else when, UTC)
        return [leaf for z in zones for leaf in self.tree.leaves(z)
                if in_quiet_hours(self.quiet_for(leaf), at)]

    # -- first admin ------------------------------------------------------------------------

    async def bootstrap_admin(self, credentials_path: Path, name: str = "admin") -> bool:
        """On a store with no users, create ``name`` as admin of every root zone and write
        its password to ``credentials_path`` (mode 0600). Never logs the password."""
        if await self.state.users.count():
            return False
        password = new_secret(18)
        user = User(name=name, full_name="First administrator", created=self.now(),
                    grants=[Grant(role=Role.ADMIN, zone=r) for r in self.tree.roots])
        if not await self.state.create_user(user, await self.hasher.hash(password)):
            return False
        write_private(credentials_path, json.dumps({"user": name, "password": password}) + "\n")
        await self.state.audit(AuditEntry(ts=self.now(), user="-", action="bootstrap_admin",
                                          target=name, zones=list(self.tree.roots)))
        log.info("created the first admin %r; credentials in %s", name, credentials_path)
        return True

