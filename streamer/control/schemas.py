"""API request bodies and responses as pydantic models, validated at the edge.

A bad body becomes a 400 naming the field before anything changes state (``api/core.py``
parses it strictly and maps pydantic's errors; semantic checks raise :class:`BadRequest`).
The source of a broadcast is a discriminated union on ``kind``, one class per kind, the way
LibreTime models playout events. These models are also the OpenAPI document's schemas.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from wire.priority import PriorityName

from .models import BroadcastRecord, EmergencyOptions, ZoneId

MAX_TONE_S = 3600.0
MIN_TONE_HZ = 25.0
MAX_TTS_CHARS = 5000
MAX_ZONES_PER_BROADCAST = 10_000
#: discriminator values that pydantic puts into an error's location; not field names
UNION_TAGS = frozenset({"tone", "tts", "clip", "relay", "live"})
MAX_EMERGENCY_S = 7 * 86_400
InputId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]


class BadRequest(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Body(BaseModel):
    """A request body. The API edge parses it strictly (``api/core.py``, ``read_body``)."""

    model_config = ConfigDict(extra="forbid")


def _no_null_defaults(schema: dict[str, Any]) -> None:
    for prop in schema.get("properties", {}).values():
        if "default" in prop and prop["default"] is None:
            del prop["default"]  # a left-out PATCH field is unchanged, not null


class Patch(Body):
    """A partial update: a field left out keeps its stored value. ``null`` is a value, the
    one that clears a field, so only a field whose stored counterpart may be null takes it
    (declared ``T | None``); every other field is declared :func:`left_out`, and a ``null``
    for it is a 400 naming the field, never a record that no longer parses."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_no_null_defaults)


def left_out(**kw: Any) -> Any:
    """The default of a :class:`Patch` field that may not be null: ``None`` in the model when
    the field is left out (defaults are not validated), while a JSON ``null`` fails the
    field's type."""
    return Field(None, **kw)


class ToneSource(Body):
    kind: Literal["tone"]
    # below ~22 Hz, K-weighting makes the loudness target need more than full scale
    # (``Tone`` refuses it); a horn plays nothing that low anyway
    hz: float = Field(1000.0, ge=MIN_TONE_HZ, le=20_000, allow_inf_nan=False)
    seconds: float = Field(5.0, ge=0.02, le=MAX_TONE_S, allow_inf_nan=False)


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be blank")
    return v


#: Vietnamese text to speak: a bulletin, a preview, a CAP headline
SpeechText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TTS_CHARS),
                       AfterValidator(_not_blank)]


class TtsSource(Body):
    kind: Literal["tts"]
    text: SpeechText


class ClipSource(Body):
    kind: Literal["clip"]
    clip: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] = Field(
        description="id returned by POST /api/v1/clips")


class LiveSource(Body):
    kind: Literal["live"]
    input: InputId = Field(description="a live input that is sending now: an RTP ingest input "
                                        "id, or studio-{session} for a browser studio")


Source = Annotated[ToneSource | TtsSource | ClipSource, Field(discriminator="kind")]
EmergencySource = Annotated[ToneSource | TtsSource | ClipSource | LiveSource,
                            Field(discriminator="kind")]
Zones = Annotated[list[ZoneId], Field(min_length=1, max_length=MAX_ZONES_PER_BROADCAST)]


class BroadcastIn(Body):
    zones: Zones
    priority: PriorityName = "normal"
    source: Source
    label: str = Field("", max_length=200)
    override_quiet_hours: bool = Field(
        False, description="air during quiet hours (admin on every zone; audited)")


class EmergencyIn(EmergencyOptions):
    zones: Zones
    source: EmergencySource
    label: str = Field("", max_length=200)
    expires_s: int | None = Field(None, ge=60, le=MAX_EMERGENCY_S,
                                  description="stop by itself this many seconds from now")


class StopIn(Body):
    zones: Zones
    priority: PriorityName | None = Field(None, description="only this level; all when absent")


class BroadcastOut(BroadcastRecord):
    #: stored states, with "queued" shown as "on_air" (in at least one channel) or "waiting"
    state: str  # type: ignore[assignment]
    on_air_channels: int = 0


class BroadcastList(BaseModel):
    broadcasts: list[BroadcastOut]


class StopOut(BaseModel):
    stopped: list[int]


class ReachSpeaker(BaseModel):
    id: str
    zone: str
    start: float | None = None
    end: float | None = None
    level_dbfs: float | None = None
    #: played by the speaker on its own, from its store, with no stream (``docs/mqtt.md``)
    local: bool = False


class ReachOut(BaseModel):
    broadcast: int
    expected: int
    confirmed: list[ReachSpeaker]
    not_confirmed: list[ReachSpeaker]
    offline: list[ReachSpeaker]
    ratio: float


def source_from_record(desc: dict[str, Any]) -> ToneSource | TtsSource | ClipSource:
    """Rebuild a stored source description (it carries extra keys such as ``seconds``)."""
    kind = desc.get("kind")
    keep = {"tone": ("kind", "hz", "seconds"), "tts": ("kind", "text"),
            "clip": ("kind", "clip")}.get(str(kind))
    if keep is None:
        raise BadRequest("source.kind", f"cannot replay a {kind!r} source")
    model = {"tone": ToneSource, "tts": TtsSource, "clip": ClipSource}[str(kind)]
    return model.model_validate({k: desc[k] for k in keep if k in desc})
