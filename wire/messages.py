"""The MQTT control plane's contract: topic names and typed payloads (``docs/mqtt.md``).

Shared by the streamer (``streamer/control/fleet.py``), relays and speakers. Every payload is
one JSON object, UTF-8, at most :data:`MAX_PAYLOAD` bytes, validated by a pydantic model with
strict types; :func:`parse` is the only way in and raises :class:`BadPayload` carrying a
``reason`` (a metric label) and a message naming the field at fault. This module does no I/O;
it never decodes a payload before checking its size, and never coerces a wrong type into a
right one (``"50"`` is not a volume, ``true`` is not 1).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from .addr import parse_hostport
from .ids import DEVICE_ID_RE, ZONE_ID_RE, ancestors, valid_device_id, valid_zone_id
from .subscribe import MAX_TOKEN

PREFIX = "loa/v1"
MAX_PAYLOAD = 64 * 1024
#: a device kind as the code names it → the topic level that holds its devices
KINDS: dict[str, str] = {"speaker": "speakers", "relay": "relays", "board": "boards"}
DeviceKind = Literal["speaker", "relay", "board"]


@dataclass(frozen=True)
class DeviceTopics:
    """The topics of one device kind: leaves under its own ``loa/v1/{kinds}/{id}/``."""

    #: what the device publishes and the streamer reads (in the broker ACL: ``write``)
    publishes: tuple[str, ...]
    #: what the streamer publishes and the device reads (``read``)
    reads: tuple[str, ...]
    #: the device also reads the ``cmd`` and ``emergency`` topics of its leaf zone and of
    #: each ancestor (``zone_cmd_topics``, ``zone_emergency_topics``)
    zones: bool = False
    #: fleet-wide topics the device reads (``read`` in the ACL)
    fleet: tuple[str, ...] = ()


#: retained by the streamer, read by every device: the stream key set (:class:`StreamKeys`)
KEYS_TOPIC = f"{PREFIX}/keys"


#: THE table of who publishes and reads what (``docs/mqtt.md``, "Topic tree"): the broker's
#: ACL (``broker.py``), the streamer's subscriptions and each device's (``Fleet``,
#: ``DeviceLink``) are all derived from it.
DEVICE_TOPICS: dict[str, DeviceTopics] = {
    "speaker": DeviceTopics(publishes=("status", "telemetry", "ack", "played"),
                            reads=("cmd", "config", "token"), zones=True,
                            fleet=(KEYS_TOPIC,)),
    "relay": DeviceTopics(publishes=("status", "telemetry", "ack"), reads=("cmd", "token"),
                          fleet=(KEYS_TOPIC,)),
    # an e-board (LED/LCD screen): its presence, and its zone's board (``zone_board_topic``)
    "board": DeviceTopics(publishes=("status",), reads=()),
}
#: topic leaves some device publishes (``up``) and receives (``down``)
UP_LEAVES = tuple(dict.fromkeys(leaf for t in DEVICE_TOPICS.values() for leaf in t.publishes))
DOWN_LEAVES = tuple(dict.fromkeys(leaf for t in DEVICE_TOPICS.values() for leaf in t.reads))
BAD_REASONS = ("too_large", "not_utf8", "invalid_json", "invalid_fields", "bad_topic")

M = TypeVar("M", bound=BaseModel)
#: a JSON escape of a UTF-16 surrogate: a pair decodes to one character, a lone one to a
#: string that no UTF-8 encoder takes back (``encode``, Redis, an API answer would fail)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class BadPayload(ValueError):
    """A payload refused at the edge; ``reason`` is one of :data:`BAD_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --------------------------------------------------------------------------- topics


def device_topic(kind: str, device_id: str, leaf: str) -> str:
    """``loa/v1/speakers/{id}/{leaf}``; raises ValueError for an id that could escape its
    topic (``/``, ``+``, ``#`` and anything outside the device id pattern)."""
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    if not valid_device_id(device_id):
        raise ValueError(f"device id {device_id!r} does not match {DEVICE_ID_RE}")
    if leaf not in UP_LEAVES + DOWN_LEAVES:
        raise ValueError(f"no topic {leaf!r} under a device")
    return f"{PREFIX}/{KINDS[kind]}/{device_id}/{leaf}"


def zone_cmd_topic(zone: str) -> str:
    if not valid_zone_id(zone):
        raise ValueError(f"zone id {zone!r} does not match {ZONE_ID_RE}")
    return f"{PREFIX}/zones/{zone}/cmd"


def zone_cmd_topics(leaf_zone: str) -> list[str]:
    """The group command topics a device of ``leaf_zone`` listens to: the leaf and each
    ancestor (``brvt``, ``brvt.vung-tau``, …)."""
    return [zone_cmd_topic(z) for z in ancestors(leaf_zone)]


def zone_emergency_topic(zone: str) -> str:
    """Retained :class:`EmergencyState` of a zone (the streamer writes, speakers below read)."""
    if not valid_zone_id(zone):
        raise ValueError(f"zone id {zone!r} does not match {ZONE_ID_RE}")
    return f"{PREFIX}/zones/{zone}/emergency"


def zone_emergency_topics(leaf_zone: str) -> list[str]:
    return [zone_emergency_topic(z) for z in ancestors(leaf_zone)]


def zone_board_topic(zone: str) -> str:
    """Retained :class:`BoardState` of a zone: what its e-boards show now."""
    if not valid_zone_id(zone):
        raise ValueError(f"zone id {zone!r} does not match {ZONE_ID_RE}")
    return f"{PREFIX}/zones/{zone}/board"


def split_device_topic(topic: str) -> tuple[str, str, str]:
    """``loa/v1/speakers/s1/status`` → ``("speaker", "s1", "status")``; raises
    :class:`BadPayload` (reason ``bad_topic``) for anything else."""
    parts = topic.split("/")
    if len(parts) == 5 and f"{parts[0]}/{parts[1]}" == PREFIX:
        kind = next((k for k, plural in KINDS.items() if plural == parts[2]), None)
        if kind and valid_device_id(parts[3]) and parts[4] in UP_LEAVES + DOWN_LEAVES:
            return kind, parts[3], parts[4]
    raise BadPayload("bad_topic", f"not a device topic: {topic[:200]!r}")


# --------------------------------------------------------------------------- field types


def _host_port(text: str) -> str:
    try:
        _, port = parse_hostport(text)
    except ValueError as e:
        raise ValueError(f"upstream: {e}") from None
    if port == 0:
        raise ValueError(f"{text!r} needs a port")
    return text


HostPort = Annotated[str, StringConstraints(max_length=300), AfterValidator(_host_port)]
CorrelationId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Short = Annotated[str, StringConstraints(max_length=400)]
UnixTime = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Level = Annotated[float, Field(ge=-200, le=20, allow_inf_nan=False)]
Volume = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
#: a dotted zone id (``wire/ids.py``); a leaf zone's id is its channel's
ZoneId = Annotated[str, StringConstraints(pattern=ZONE_ID_RE, max_length=400)]


class Payload(BaseModel):
    """Reports from devices ignore unknown fields (a newer device may add some);
    everything sent *to* a device forbids them, so a typo is an error, not a no-op."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class Strict(Payload):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


# --------------------------------------------------------------------------- device → streamer


class Status(Payload):
    """Retained on ``…/status``. The last will carries ``ts: null``: the broker sends it
    verbatim when the device vanishes, so the device cannot know when that will be."""

    state: Literal["online", "offline"]
    ts: UnixTime | None = None
    zone: Short | None = None
    channel: Short | None = None
    upstream: Short | None = None
    version: Short | None = None


class SpeakerTelemetry(Payload):
    ts: UnixTime
    buffer_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    loss_ratio: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    level_dbfs: Level
    volume: Volume
    muted: bool
    uptime_s: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    upstream: Short | None = None
    #: an emergency is playing (at its forced volume) right now
    emergency: bool = False


class RelayTelemetry(Payload):
    ts: UnixTime
    subscribers: Count
    channels: Count
    packets_out: Count
    uptime_s: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    upstream: Short | None = None


Telemetry = SpeakerTelemetry | RelayTelemetry
TELEMETRY: dict[str, type[SpeakerTelemetry] | type[RelayTelemetry]] = {
    "speaker": SpeakerTelemetry, "relay": RelayTelemetry,
}


class Ack(Payload):
    id: CorrelationId
    ok: bool
    error: Annotated[str, StringConstraints(max_length=1000)] | None = None
    state: dict[str, Any] = Field(default_factory=dict)


class Played(Payload):
    """Proof of play: one per broadcast a speaker actually played (from its play log)."""

    broadcast: Annotated[int, Field(ge=1, lt=2**32)]
    start: UnixTime
    end: UnixTime
    level_dbfs: Level
    #: replayed by the speaker itself from its emergency cache, with no stream
    local: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Played:
        if self.end < self.start:
            raise ValueError("end is before start")
        return self


# --------------------------------------------------------------------------- streamer → device


class Command(Strict):
    id: CorrelationId
    cmd: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")]
    args: dict[str, Any] = Field(default_factory=dict)


class DeviceConfig(Strict):
    """Retained on ``…/config``: the desired state, applied on every (re)connect. A field
    left out (null) leaves that setting alone."""

    volume: Volume | None = None
    muted: bool | None = None
    upstream: Annotated[list[HostPort], Field(min_length=1, max_length=16)] | None = None
    #: the leaf zone the speaker belongs to, and so the channel it plays: moved by an admin
    #: (or a zone edit), it follows without anyone on the pole (``docs/mqtt.md``, "Config")
    channel: ZoneId | None = None


class TokenGrant(Strict):
    """Retained on ``…/token``: the device's subscription token (``wire/token.py``) in base64,
    and when it expires (Unix seconds). The streamer renews it well before then."""

    token: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]+={0,2}$", max_length=1400)]
    expires: Annotated[int, Field(ge=0)]


class StreamKeys(Strict):
    """Retained on ``loa/v1/keys``: the streamer's key set (``wire/keyset.py``, at most 334
    bytes) in base64. Whether a device takes it is for the set's own signature to say."""

    keyset: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]+={0,2}$",
                                             max_length=448)]


class EmergencyState(Strict):
    """Retained on ``loa/v1/zones/{zone}/emergency``: the emergency that covers the zone.

    Written when an emergency starts (``active``) and when it is cancelled or over
    (``active: false``, same ``id``). A speaker keeps the audio of broadcast ``id`` as it
    plays it (the RTP priority extension marks it, ``docs/protocol.md``); while the emergency
    is active and the speaker has lost its stream, it replays that audio itself every
    ``repeat_s`` seconds (none: once is enough) until ``expires``, at ``volume``, unmuted.
    """

    id: Annotated[int, Field(ge=1, le=0xFFFF_FFFF)]
    active: bool
    volume: Volume = 100.0
    repeat_s: Annotated[float, Field(ge=60, le=86_400, allow_inf_nan=False)] | None = None
    started: UnixTime
    expires: UnixTime | None = None
    label: Short = ""


class BoardItem(Strict):
    """One item an e-board shows (``docs/mqtt.md``, "E-boards"): a bulletin's text, a CAP
    alert's headline and instructions, an emergency, or a text an operator posted."""

    id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,40}$")]
    zones: list[Short] = Field(min_length=1, max_length=1000)
    title: Annotated[str, StringConstraints(max_length=200)] = ""
    body: Annotated[str, StringConstraints(max_length=5000)] = ""
    level: Literal["normal", "priority", "emergency"] = "normal"
    start: UnixTime
    expires: UnixTime | None = None  # None: until it is taken down
    broadcast: Annotated[int, Field(ge=1)] | None = None  # the broadcast it comes with


class BoardState(Strict):
    """Retained on ``loa/v1/zones/{zone}/board``: every item the zone's boards show now,
    emergencies first, then newest first."""

    zone: Short
    items: list[BoardItem] = Field(max_length=200)
    ts: UnixTime


class NoArgs(Strict):
    pass


class SetVolume(Strict):
    volume: Volume


class SetUpstream(Strict):
    upstream: Annotated[list[HostPort], Field(min_length=1, max_length=16)]


class TestTone(Strict):
    __test__ = False  # not a pytest class, whatever its name says
    hz: Annotated[float, Field(ge=20, le=20_000, allow_inf_nan=False)] = 1000.0
    seconds: Annotated[float, Field(gt=0, le=60, allow_inf_nan=False)] = 5.0


class RefreshToken(Strict):
    token: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TOKEN)]


#: command name → its arguments, per device kind
SPEAKER_COMMANDS: dict[str, type[Strict]] = {
    "set_volume": SetVolume, "mute": NoArgs, "unmute": NoArgs, "reconnect": NoArgs,
    "set_upstream": SetUpstream, "test_tone": TestTone, "refresh_token": RefreshToken,
    "ping": NoArgs,
}
RELAY_COMMANDS: dict[str, type[Strict]] = {"reconnect": NoArgs, "ping": NoArgs}


# --------------------------------------------------------------------------- parsing


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _validation_message(e: ValidationError, prefix: str = "") -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "payload"
    return f"{prefix}{where}: {err['msg']}"


def parse(model: type[M], payload: bytes | bytearray | str) -> M:
    """Decode one payload into ``model``; raises :class:`BadPayload` for anything off."""
    if len(payload) > MAX_PAYLOAD:  # before anything looks inside it
        raise BadPayload("too_large", f"payload of {len(payload)} bytes > {MAX_PAYLOAD}")
    if isinstance(payload, bytes | bytearray):
        try:
            text = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadPayload("not_utf8", f"payload is not UTF-8 (byte {e.start})") from None
    else:
        text = payload
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise BadPayload("not_utf8", f"payload is not UTF-8 (character {e.start})") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise BadPayload("invalid_json", f"payload is not JSON: {str(e)[:200]}") from None
    if _SURROGATE_ESCAPE.search(text) and _lone_surrogate(data):
        raise BadPayload("invalid_json", "payload is not JSON Loa can use: a \\u escape of a "
                                         "lone UTF-16 surrogate")
    if not isinstance(data, dict):
        raise BadPayload("invalid_fields", f"payload: expected a JSON object, got "
                                           f"{type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise BadPayload("invalid_fields", _validation_message(e)) from None


def _lone_surrogate(data: Any) -> bool:
    """Whether a decoded JSON value holds a string that is not valid Unicode (iterative: the
    value may be as deep as the parser allows)."""
    stack = [data]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(x, dict):
            stack.extend(x)
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return False


def command_args(table: dict[str, type[Strict]], command: Command) -> Strict:
    """The typed arguments of ``command``; raises :class:`BadPayload` naming ``cmd`` for an
    unknown command or ``args.<field>`` for a bad argument."""
    model = table.get(command.cmd)
    if model is None:
        raise BadPayload("invalid_fields", f"cmd: unknown command {command.cmd!r} "
                                           f"(known: {', '.join(sorted(table))})")
    try:
        return model.model_validate(command.args)
    except ValidationError as e:
        raise BadPayload("invalid_fields", _validation_message(e, "args.")) from None


def correlation_id_of(payload: bytes | bytearray) -> str | None:
    """The ``id`` of a command too broken to parse, if one can be found, so that the device
    can still answer ``ok: false`` to the sender waiting on it."""
    if len(payload) > MAX_PAYLOAD:
        return None
    try:
        data = json.loads(bytes(payload).decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    cid = data.get("id") if isinstance(data, dict) else None
    if isinstance(cid, str) and re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", cid):
        return cid
    return None


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json().encode()


def finite(x: float, default: float = 0.0) -> float:
    """``x`` if it is a finite number, else ``default`` (telemetry must stay valid JSON)."""
    return x if math.isfinite(x) else default
