"""Typed records of the control plane, as stored in Redis and returned by the API.

One pydantic model per record kind, validated whenever it crosses a boundary (an API body, a
Redis read, an MQTT payload). Secrets never live in these models' public fields: password and
device credential hashes are stored apart (``state.py``) and never serialised to a client.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from wire.ids import DEVICE_ID_RE, ZONE_ID_RE

USER_RE = r"^[a-z0-9][a-z0-9_.-]{1,31}$"
ZONE_CODE_RE = r"^[0-9]{1,10}$"
QUIET_RE = r"^$|^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$"
VOICE_RE = r"^[a-z][a-z0-9_-]{0,31}$"
DEFAULT_QUIET_HOURS = "22:00-05:00"

ZoneId = Annotated[str, StringConstraints(pattern=ZONE_ID_RE, max_length=400)]
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_RE)]
UserName = Annotated[str, StringConstraints(pattern=USER_RE)]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Role(StrEnum):
    """Granted on a zone subtree; see ``auth.py`` for what each may do."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    APPROVER = "approver"
    EMERGENCY = "emergency"
    ADMIN = "admin"


class Grant(Record):
    role: Role
    zone: ZoneId


class User(Record):
    name: UserName
    full_name: str = Field("", max_length=200)
    grants: list[Grant] = Field(default_factory=list, max_length=1000)
    disabled: bool = False
    created: float = 0.0


class GeoPoint(Record):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class Zone(Record):
    id: ZoneId
    name: str = Field(max_length=200)
    parent: ZoneId | None = None
    #: "HH:MM-HH:MM" local time; "" = no quiet hours; None = inherit from the parent zone
    quiet_hours: Annotated[str, StringConstraints(pattern=QUIET_RE)] | None = None
    #: non-emergency broadcasts and schedules here (or below) wait for an approver
    requires_approval: bool = False
    #: anyone may listen in to the channels here (or below), signed in or not
    public_listen: bool = False
    #: a zone that may receive test and exercise alerts (CAP status Test/Exercise)
    test: bool = False
    #: the voice TTS broadcasts here are read in ("north", "central", "south", or another name
    #: of the streamer's voice file); None = inherit from the parent zone, else the default
    voice: Annotated[str, StringConstraints(pattern=VOICE_RE)] | None = None
    #: Vietnamese administrative unit code ("mã đơn vị hành chính"), matched by CAP geocodes
    code: Annotated[str, StringConstraints(pattern=ZONE_CODE_RE)] | None = None
    #: a point inside the zone, from the zone file (docs/zones.md); None = unknown
    location: GeoPoint | None = Field(None, description="a point inside the zone (its centre, "
                                      "where a map puts its label); null: unknown")
    #: its outline, from the zone file: a closed ring of (lat, lon); None = unknown
    boundary: list[tuple[float, float]] | None = Field(
        None, description="its outline: [lat, lon] points, the last equal to the first; "
        "null: unknown")


class Speaker(Record):
    id: DeviceId
    zone: ZoneId
    name: str = Field("", max_length=200)
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    #: ordered upstream relays ("host:port"), first preferred
    relays: list[str] = Field(default_factory=list, max_length=16)
    created: float = 0.0


class Relay(Record):
    id: DeviceId
    media: str = Field("", max_length=300, description="host:port that speakers subscribe to")
    http: str = Field("", max_length=300, description="base URL of its HTTP endpoints")
    zone: ZoneId | None = Field(None, description="the area it serves, for reports")
    created: float = 0.0


class Presence(Record):
    state: str = "unknown"  # online | offline | unknown
    ts: float = 0.0
    detail: dict[str, Any] = Field(default_factory=dict)


class ClipMeta(Record):
    id: str
    name: str = ""
    seconds: float
    bytes: int
    created: float
    created_by: str = ""


class BroadcastState(StrEnum):
    PENDING_APPROVAL = "pending_approval"
    QUEUED = "queued"  # handed to the mixer (on air or waiting per channel)
    DONE = "done"
    STOPPED = "stopped"
    REJECTED = "rejected"
    INTERRUPTED = "interrupted"  # the streamer restarted while it was on air


class EmergencyOptions(Record):
    """What an emergency officer chooses beyond the content (``docs/priorities.md``)."""

    chime: bool = Field(True, description="the attention chime before the content")
    volume: float = Field(100.0, ge=0, le=100, allow_inf_nan=False,
                          description="speaker volume while it plays, overriding mute")
    repeat_s: int | None = Field(None, ge=60, le=86_400,
                                 description="air it again this many seconds after each start "
                                             "until cancelled (e.g. 3600: every hour)")


class EmergencyPlan(EmergencyOptions):
    """What makes an emergency more than a broadcast at the top level, as stored."""

    expires: float | None = Field(None, ge=0, allow_inf_nan=False,
                                  description="Unix time after which it stops by itself")


class BroadcastRecord(Record):
    id: int
    zones: list[str]
    priority: str
    source: dict[str, Any]
    label: str = ""
    created: float
    created_by: str = ""
    channels: int = 0
    state: BroadcastState = BroadcastState.QUEUED
    started: float | None = None
    ended: float | None = None
    schedule: str | None = None
    approved_by: str | None = None
    override_quiet_hours: bool = False
    emergency: EmergencyPlan | None = None
    #: how many times it has started (an emergency with a cadence airs again and again)
    airings: int = 0
    next_airing: float | None = None
    #: a live or relayed source's input: "" (not live), connecting, playing, silent, down
    health: str = ""
    health_detail: str = ""
    #: when it was asked for (the API request's arrival; else its first start) and when its
    #: first frame went out: its time to air is the difference (None: not known, e.g. a
    #: record stored before these fields, or one still waiting for its first frame)
    requested_at: float | None = None
    aired_at: float | None = None


class LiveInput(Record):
    """A registered RTP ingest input (a studio encoder, ``loa studio``): where its audio airs
    when it sends. Its SRTP key is kept apart (``State.input_keys``), never in this record."""

    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    name: str = Field("", max_length=200)
    zones: list[ZoneId] = Field(min_length=1, max_length=10_000)
    priority: str = "normal"
    created: float = 0.0
    created_by: str = ""


class CapRecord(Record):
    """A CAP alert Loa received, by its CAP reference (``sender,identifier,sent``)."""

    ref: str
    msg_type: str
    status: str
    broadcast: int | None = None
    zones: list[str] = Field(default_factory=list)
    received: float
    user: str = ""


class Board(Record):
    """An e-board (bản tin điện tử: an LED or LCD screen at a commune office or square): a
    device like a speaker, showing what its zone's board items say (``board.py``)."""

    id: DeviceId
    zone: ZoneId = Field(description="the zone whose items it shows (any level)")
    name: str = Field("", max_length=200)
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    created: float = 0.0


class Sender(Record):
    """A system above that may send bulletins in (the central or another source system,
    ``inbound.py``): its Ed25519 public key, and the zones it may address."""

    id: DeviceId
    name: str = Field("", max_length=200)
    zones: list[ZoneId] = Field(min_length=1, max_length=1000)
    public_key: str = Field(description="Ed25519 public key, base64 (32 bytes)")
    created: float = 0.0
    created_by: str = ""


class InboundState(StrEnum):
    PENDING = "pending"  # waiting for an operator (a priority bulletin airs by itself later)
    AIRED = "aired"
    REJECTED = "rejected"
    EXPIRED = "expired"  # nobody aired it before valid_until


class LexiconEntry(Record):
    """A term of the bulletin lexicon added by a province admin (``control/lexicon.py``)."""

    term: str = Field(description="as written in bulletins, e.g. \"BCH PCTT\"")
    reading: str = Field(description="what a presenter says for it")
    added_by: str
    added: float


class InboundBulletin(Record):
    """A bulletin received from a system above (``inbound.py``)."""

    id: str  # ours: "in-<n>"
    sender: str
    ref: str  # the sender's own id for it: a second request with it is the same bulletin
    digest: str  # SHA-256 of the request body: the same ref with another body is refused
    level: str  # normal | priority | emergency
    zones: list[str]
    #: each zone id the sender named that a runtime edit retired, with the zones it stood for
    retired: dict[str, list[str]] = Field(default_factory=dict)
    title: str = ""
    text: str = ""
    clip: str | None = None  # the audio it came with, in the clip library
    received: float
    valid_until: float | None = None
    state: InboundState = InboundState.PENDING
    #: a priority bulletin airs by itself at this time unless an operator decided before
    auto_air_at: float | None = None
    decided_by: str = ""
    decided_at: float | None = None
    note: str = ""
    broadcast: int | None = None


class AuditEntry(Record):
    id: str = ""
    ts: float
    user: str
    action: str
    target: str = ""
    zones: list[str] = Field(default_factory=list)
    outcome: str = "ok"  # ok | denied | skipped (a scheduled occurrence that did not air)
    detail: dict[str, Any] = Field(default_factory=dict)


def covers(ancestor: str, zone_id: str) -> bool:
    return zone_id == ancestor or zone_id.startswith(ancestor + ".")


def valid_zone_id(zone_id: str) -> bool:
    return bool(re.match(ZONE_ID_RE, zone_id)) and len(zone_id) <= 400
