"""A load scenario: how many simulated speakers, through how many relays, for how long, with
which clocks, and which broadcasts and emergencies to air during the run.

Scenarios are TOML files (``loadtest/scenarios/NAME.toml``, or any path); ``docs/loadtest.md``
has the format. They are validated at the edge by a pydantic model, because it names the
offending field in every error (``clock.drift_ppm: Input should be greater than or equal to 0``)
and refuses unknown keys, so a typo in a file never silently becomes a default. Command-line
flags override fields through :meth:`Scenario.with_overrides`, validated the same way. Nothing
here starts a process or touches the network.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

SCENARIOS = Path(__file__).resolve().parent / "scenarios"

ZoneId = Annotated[str, StringConstraints(min_length=1, max_length=128,
                                          pattern=r"^[a-z0-9][a-z0-9_.-]*$")]


class ScenarioError(ValueError):
    """A scenario file or override that cannot be used; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tone(_Strict):
    kind: Literal["tone"] = "tone"
    freq_hz: float = Field(1000.0, ge=20, le=20_000)
    seconds: float = Field(5.0, gt=0.02, le=3600)


class Event(_Strict):
    """Sent to the API ``at_s`` seconds into the measurement."""

    at_s: float = Field(ge=0)
    kind: Literal["broadcast", "emergency"]
    zones: list[ZoneId] = Field(min_length=1, max_length=10_000)
    content: Tone = Tone()
    label: str = Field("loa loadtest", max_length=200)
    #: emergencies only: the attention chime before the content (the API's default is on)
    chime: bool = True


class Clock(_Strict):
    """The simulated speakers' wall clocks (see ``loadtest/fleet.py`` for the model)."""

    initial_offset_ms: float = Field(20.0, ge=0, le=10_000)
    drift_ppm: float = Field(20.0, ge=0, le=1_000)
    sync_interval_s: float = Field(64.0, gt=0, le=86_400)
    residual_ms: float = Field(1.0, ge=0, le=1_000)
    playout_delay_ms: float = Field(300.0, ge=0, le=10_000)
    #: the speakers play on the streamer's timeline through the clock sync (TIME exchanges
    #: with their relay, as ``loa speaker`` does); false: on their own clocks, as before it
    protocol: bool = True


class Scenario(_Strict):
    name: str = Field("custom", min_length=1, max_length=100)
    speakers: int = Field(ge=1, le=20_000)
    relays: int = Field(1, ge=1, le=8)
    workers: int = Field(2, ge=1, le=32)
    duration_s: float = Field(ge=1, le=86_400)
    warmup_s: float = Field(2.0, ge=0, le=600)
    ptime_ms: Literal[20, 40, 60] = 20
    #: zones whose leaf channels the speakers spread over; empty: every leaf
    channels: list[ZoneId] = []
    decode_sample: int = Field(0, ge=0, le=100)
    max_loss: float = Field(0.0, ge=0, le=1)
    handshake_timeout_s: float = Field(60.0, gt=0, le=3600)
    #: a targeted speaker without an event's first packet after this never got it
    deadline_s: float = Field(5.0, gt=0, le=600)
    seed: int = 1
    #: broadcasts carry the API's ``override_quiet_hours``: a load test runs at any hour, and
    #: quiet hours (22:00-05:00 by default) would refuse them with a 409 (needs an admin)
    override_quiet_hours: bool = True
    clock: Clock = Clock()
    events: list[Event] = []

    def with_overrides(self, **fields: Any) -> Scenario:
        """This scenario with the given fields replaced (``None`` values are ignored)."""
        data = self.model_dump()
        data.update({k: v for k, v in fields.items() if v is not None})
        return validate(data, "command line")

    def check(self) -> Scenario:
        """Cross-field rules that pydantic's per-field checks cannot express."""
        if self.decode_sample > self.speakers:
            raise ScenarioError("decode_sample: must not exceed speakers")
        for i, e in enumerate(self.events):
            if e.at_s >= self.duration_s:
                raise ScenarioError(f"events.{i}.at_s: must be before duration_s "
                                    f"({self.duration_s:g})")
        return self


def validate(data: dict[str, Any], source: str) -> Scenario:
    try:
        return Scenario.model_validate(data).check()
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "scenario"
        raise ScenarioError(f"{source}: {field}: {err['msg']}") from None
    except ScenarioError as e:
        raise ScenarioError(f"{source}: {e}") from None


def load(name_or_path: str) -> Scenario:
    """A scenario by name (``smoke``: ``loadtest/scenarios/smoke.toml``) or file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SCENARIOS / f"{name_or_path}.toml"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        known = ", ".join(sorted(p.stem for p in SCENARIOS.glob("*.toml")))
        raise ScenarioError(f"scenario: no file {path} (known: {known})") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ScenarioError(f"{path}: {e}") from None
    data.setdefault("name", path.stem)
    return validate(data, str(path))
