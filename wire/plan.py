"""Store and forward: the signed plan of a zone's next 24 h and the clip files it names.

The streamer retains, per leaf zone, the plan of scheduled clips that will air there
(``loa/v1/zones/{zone}/plan``) and, per clip, its audio (``loa/v1/clips/{sha256}``); a speaker
keeps both and, with no stream at an entry's time, plays the clip itself (``docs/mqtt.md``,
"Store and forward"). Nothing is stored or played unless the streamer signed it:

- the plan's body is JSON (:class:`Plan`), sent as the very bytes that were signed, so no
  canonical re-encoding is needed: Ed25519 by a streamer media key, over the domain
  ``loa/plan/1`` and the body, with the key's 32-bit id beside it (:class:`SignedPlan`);
- a clip is trusted by its SHA-256, which only a verified plan carries: altered bytes are
  refused before they reach the disk.

Clip files are raw Opus packets (``LOAC``, :func:`pack_clip`): the speaker decodes them with
its own libopus decoder, and needs neither Ogg nor numpy. Pure code, no I/O, no clock reads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from collections.abc import Iterable, Iterator
from typing import Annotated

from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from .auth import SIG_LEN, Keyring, SigningKey
from .ids import valid_zone_id
from .messages import PREFIX

_DOMAIN = b"loa/plan/1\x00"
#: what the streamer plans ahead and how long a plan stays good without a refresh
HORIZON_S = 24 * 3600.0
VALID_S = HORIZON_S + 3600.0
MAX_ENTRIES = 512
#: the broker's packet limit (``streamer/control/broker.py``) less room for the header
MAX_CLIP_BYTES = 2 * 1024 * 1024 - 1024
MAX_PLAN_BYTES = 256 * 1024
CLIP_MAGIC = b"LOAC"
CLIP_VERSION = 1
_CLIP_HEAD = struct.Struct("!4sBBHI")  # magic, version, 0, samples per packet, packet count
_LEN = struct.Struct("!H")

#: what a receiver made of a plan (``loa_speaker_plans_total{outcome}``)
OUTCOMES = ("accepted", "current", "malformed", "unknown_key", "bad_signature", "expired",
            "wrong_zone", "rollback")

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class PlanRefused(ValueError):
    """A plan or clip that may not be stored; ``outcome`` is one of :data:`OUTCOMES`."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


class PlanEntry(BaseModel):
    """One occurrence a speaker may play on its own: at ``at`` (the streamer's Unix time) the
    clip ``clip`` (SHA-256 of its LOAC file), reported as broadcast ``broadcast``."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    schedule: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    at: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    clip: Sha256
    bytes: Annotated[int, Field(ge=1, le=MAX_CLIP_BYTES)]
    duration_s: Annotated[float, Field(gt=0, le=HORIZON_S, allow_inf_nan=False)]
    priority: Annotated[int, Field(ge=0, le=3)]
    broadcast: Annotated[int, Field(ge=1, lt=2**32)]


class Plan(BaseModel):
    """The body of a signed plan: one leaf zone's entries, made at ``made``, good until
    ``valid_until`` (a speaker drops a plan past it rather than play a stale one)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    zone: Annotated[str, StringConstraints(max_length=400)]
    made: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    valid_until: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    entries: Annotated[list[PlanEntry], Field(max_length=MAX_ENTRIES)]

    def clips(self) -> set[str]:
        return {e.clip for e in self.entries}


class SignedPlan(BaseModel):
    """Retained on ``loa/v1/zones/{zone}/plan``: ``body`` (base64 of the plan's JSON bytes),
    the id of the key that signed it and the signature (base64, 64 bytes)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    body: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]*={0,2}$",
                                           max_length=MAX_PLAN_BYTES)]
    kid: Annotated[int, Field(ge=0, lt=2**32)]
    sig: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]+={0,2}$", max_length=88)]


def plan_topic(zone: str) -> str:
    if not valid_zone_id(zone):
        raise ValueError(f"zone id {zone!r} is not a zone id")
    return f"{PREFIX}/zones/{zone}/plan"


CLIPS_TOPIC = f"{PREFIX}/clips/+"


def clip_topic(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"{sha256!r} is not a SHA-256 in hex")
    return f"{PREFIX}/clips/{sha256}"


def clip_of_topic(topic: str) -> str | None:
    """``loa/v1/clips/{sha}`` → ``sha`` (None for any other topic)."""
    head = f"{PREFIX}/clips/"
    if not topic.startswith(head):
        return None
    sha = topic[len(head):]
    return sha if len(sha) == 64 and all(c in "0123456789abcdef" for c in sha) else None


# --------------------------------------------------------------------------- plans


def sign_plan(key: SigningKey, plan: Plan) -> bytes:
    """The retained payload of ``plan``, signed with ``key``."""
    body = plan.model_dump_json().encode()
    sig = key.private.sign(_DOMAIN + body)
    return SignedPlan(body=base64.b64encode(body).decode(), kid=key.id,
                      sig=base64.b64encode(sig).decode()).model_dump_json().encode()


def verify_plan(keys: Keyring, payload: bytes, zone: str, now: float) -> Plan:
    """The plan in ``payload`` for ``zone``, once its signature is checked against ``keys``
    and it is still valid at ``now``; raises :class:`PlanRefused` otherwise."""
    if len(payload) > MAX_PLAN_BYTES * 2:
        raise PlanRefused("malformed", f"plan of {len(payload)} bytes")
    try:
        signed = SignedPlan.model_validate_json(payload)
        body, sig = base64.b64decode(signed.body), base64.b64decode(signed.sig)
    except (ValidationError, ValueError, binascii.Error) as e:
        raise PlanRefused("malformed", f"not a signed plan: {str(e)[:200]}") from None
    public = keys.get(signed.kid)
    if public is None:
        raise PlanRefused("unknown_key", f"signed by key {signed.kid:08x}, not one we trust")
    if len(sig) != SIG_LEN:
        raise PlanRefused("malformed", "signature is not 64 bytes")
    try:
        public.verify(sig, _DOMAIN + body)
    except InvalidSignature:
        raise PlanRefused("bad_signature", "the signature does not match the plan") from None
    try:
        plan = Plan.model_validate_json(body)
    except ValidationError as e:  # signed, yet not a plan: a bug on the streamer's side
        raise PlanRefused("malformed", f"signed body is not a plan: {str(e)[:200]}") from None
    if plan.zone != zone:
        raise PlanRefused("wrong_zone", f"plan of {plan.zone!r}, not of {zone!r}")
    if now > plan.valid_until:
        raise PlanRefused("expired", f"plan made at {plan.made:.0f} expired")
    return plan


# --------------------------------------------------------------------------- clip files


def pack_clip(packets: Iterable[bytes], frame_samples: int) -> bytes:
    """A LOAC file: the header, then each Opus packet after its 16-bit length."""
    body = bytearray()
    n = 0
    for p in packets:
        body += _LEN.pack(len(p)) + p
        n += 1
    return _CLIP_HEAD.pack(CLIP_MAGIC, CLIP_VERSION, 0, frame_samples, n) + bytes(body)


def clip_packets(data: bytes) -> tuple[int, Iterator[bytes]]:
    """``(samples per packet, packets)`` of a LOAC file; ValueError if it is not one."""
    if len(data) < _CLIP_HEAD.size:
        raise ValueError("too short for a clip file")
    magic, version, _, frame_samples, count = _CLIP_HEAD.unpack_from(data)
    if magic != CLIP_MAGIC or version != CLIP_VERSION or not 120 <= frame_samples <= 5760:
        raise ValueError("not a LOAC clip file")

    def walk() -> Iterator[bytes]:
        i = _CLIP_HEAD.size
        for _ in range(count):
            if i + 2 > len(data):
                raise ValueError("clip file cut short")
            (n,) = _LEN.unpack_from(data, i)
            if i + 2 + n > len(data):
                raise ValueError("clip file cut short")
            yield data[i + 2:i + 2 + n]
            i += 2 + n

    return frame_samples, walk()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(plan: Plan) -> str:
    """The plan without ``made`` and ``valid_until``: two plans with the same canonical form
    need not be published again (only refreshed before they expire)."""
    return json.dumps(plan.model_dump(exclude={"made", "valid_until"}), sort_keys=True)
