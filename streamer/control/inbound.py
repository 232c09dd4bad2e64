"""Bulletins from above: the door through which the central (or another) source system sends
bulletins down (``docs/api.md``, "Bulletins from above"; guidance 1273/BTTTT-TTCS and 2455).

A **sender** is registered by an admin with the zones it may address and its Ed25519 public
key; it signs every request (``verify``), so a leaked request cannot be altered or replayed
beyond ``SKEW_S`` and nobody else can send in its name. What it sends is text (spoken by the
streamer's voice) or audio, a level, target zones and a validity, and the three levels go
three ways, as the guidance says:

- **emergency** airs at once, in every target zone, as an emergency (chime, forced volume);
- **priority** goes to the target zones' operators, and airs by itself (at priority) when
  none of them has decided by ``decide_within_s``: the default airs;
- **normal** lands in the zones' queue and waits for an operator to air it, until it expires.

Every step is audited (the sender as ``sender:<id>``), and the sender reads a receipt: the
state, who decided, the broadcast it became and its reach (``receipt``). A request repeated
with the same ``ref`` (the sender's own id for the bulletin) is the same bulletin: nothing airs
twice. Pending bulletins outlive a restart or a takeover: their timers are set again by
:meth:`Inbox.start`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, Field, model_validator

from streamer.mixer.sources.clip import ClipError

from .background import Background
from .models import (
    AuditEntry,
    BroadcastRecord,
    ClipMeta,
    EmergencyPlan,
    InboundBulletin,
    InboundState,
    Sender,
    ZoneId,
    covers,
)
from .schemas import BadRequest, ClipSource, TtsSource

log = logging.getLogger("loa.inbound")

SKEW_S = 300  # how far a request's timestamp may be from ours
MAX_AUDIO_BYTES = 16 * 1024 * 1024
DEFAULT_VALID_S = 86_400  # a bulletin with no validity waits a day at most
QUIET_RETRY_S = 60.0  # a priority bulletin due in quiet hours is tried again this often
LEVELS = ("normal", "priority", "emergency")
HEADERS = ("X-Loa-Sender", "X-Loa-Timestamp", "X-Loa-Signature")


class InboundIn(BaseModel):
    """A bulletin from above, as the sender signs it."""

    model_config = {"extra": "forbid"}
    ref: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$",
                     description="the sender's own id for it: repeating it repeats nothing")
    level: Literal["normal", "priority", "emergency"]
    zones: list[ZoneId] = Field(min_length=1, max_length=1000)
    title: str = Field("", max_length=200)
    text: str | None = Field(None, min_length=1, max_length=5000,
                             description="spoken by the streamer's voice")
    audio: str | None = Field(None, description="base64 of an audio file (any format "
                              "ffmpeg decodes), at most 16 MiB")
    valid_until: float | None = Field(None, allow_inf_nan=False, description="Unix time "
                                      "after which it must not air (default: a day)")
    decide_within_s: float | None = Field(None, ge=1, le=86_400, allow_inf_nan=False,
                                          description="priority: airs by itself after this "
                                          "unless an operator decided (default 600)")
    chime: bool = Field(True, description="emergency: the attention chime first")

    @model_validator(mode="after")
    def _one_content(self) -> InboundIn:
        if (self.text is None) == (self.audio is None):
            raise ValueError("give text or audio, one of them")
        return self


class ReceiptReach(BaseModel):
    expected: int
    confirmed: int
    ratio: float


class Receipt(BaseModel):
    """What a sender reads about its bulletin."""

    id: str
    ref: str
    level: str
    zones: list[str]
    retired: dict[str, list[str]] = Field(default_factory=dict, description=(
        "each zone id the sender named that a runtime zone edit retired (a commune merged or "
        "renamed), with the zones it reached instead: what that zone was made of"))
    state: str
    received: float
    valid_until: float | None
    auto_air_at: float | None = None
    decided_by: str = ""
    decided_at: float | None = None
    broadcast: int | None = None
    broadcast_state: str | None = None
    reach: ReceiptReach | None = None


def message(method: str, path: str, timestamp: str, body: bytes) -> bytes:
    """What a sender signs: method, path, timestamp and the body's SHA-256, one per line."""
    return "\n".join([method.upper(), path, timestamp, hashlib.sha256(body).hexdigest()]
                     ).encode()


def verify(sender: Sender | None, method: str, path: str, headers: Mapping[str, str],
           body: bytes, now: float) -> tuple[str, str] | None:
    """None if the request is the sender's own, signed now; else (header, why)."""
    if sender is None:
        return "X-Loa-Sender", "unknown sender"
    stamp = headers.get("X-Loa-Timestamp", "")
    try:
        t = float(stamp)
    except ValueError:
        return "X-Loa-Timestamp", "a Unix time is required"
    if abs(now - t) > SKEW_S:
        return "X-Loa-Timestamp", f"more than {SKEW_S} s from the streamer's clock"
    try:
        signature = base64.b64decode(headers.get("X-Loa-Signature", ""), validate=True)
        Ed25519PublicKey.from_public_bytes(base64.b64decode(sender.public_key)).verify(
            signature, message(method, path, stamp, body))
    except (binascii.Error, ValueError, InvalidSignature):
        return "X-Loa-Signature", "not a signature of this request by the sender's key"
    return None


def public_key_ok(text: str) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        return False
    return True


class InboundError(Exception):
    def __init__(self, status: int, message: str, field: str | None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class Inbox:
    """Bulletins from above on their way to the air (one per streamer, on the control plane).
    ``plane`` gives the state, the broadcasts, the clip library, quiet hours and reach."""

    def __init__(self, plane: Any, registry: CollectorRegistry | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.plane = plane
        self.now = now
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._background = Background(log, "inbound bulletin step")
        self.m = Counter("loa_inbound_bulletins_total", "Bulletins from above, by level and "
                         "what became of them", ["level", "outcome"], registry=registry)

    # -- life ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Set the timers of the bulletins still pending (after a restart or a takeover)."""
        for rec in await self.plane.state.inbound.all():
            if rec.state == InboundState.PENDING:
                self._arm(rec)

    def close(self) -> None:
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        self._background.cancel()

    # -- the sender's side ----------------------------------------------------------------

    async def receive(self, sender: Sender, b: InboundIn, digest: str
                      ) -> tuple[InboundBulletin, bool]:
        """A verified request: the bulletin (new, or the one this ``ref`` already made) and
        whether it is new. Raises :class:`InboundError` or ``BadRequest``."""
        state = self.plane.state
        known = await state.inbound_by_ref(sender.id, b.ref)
        if known is not None:
            if known.digest != digest:
                raise InboundError(409, f"ref {b.ref!r} was used for another bulletin", "ref")
            return known, False
        zones, retired = self._zones(b.zones)
        outside = [z for z in zones if not any(covers(s, z) for s in sender.zones)]
        if outside:
            await self._audit(f"sender:{sender.id}", "inbound_refused", b.ref, outside,
                              "denied", reason="outside the sender's zones")
            self.m.labels(b.level, "refused").inc()
            raise InboundError(403, f"sender {sender.id} may not address "
                               f"{', '.join(outside[:5])}", "zones")
        now = self.now()
        if b.valid_until is not None and b.valid_until <= now:
            raise BadRequest("valid_until", "already past")
        clip = await self._clip(sender, b.audio) if b.audio is not None else None
        rec = InboundBulletin(
            id=await state.next_inbound_id(), sender=sender.id, ref=b.ref, digest=digest,
            level=b.level, zones=zones, retired=retired, title=b.title, text=b.text or "",
            clip=clip,
            received=now, valid_until=b.valid_until or now + DEFAULT_VALID_S,
            auto_air_at=now + (b.decide_within_s or self.plane.inbound_decide_s)
            if b.level == "priority" else None)
        await state.put_inbound(rec)
        self.m.labels(b.level, "received").inc()
        await self._audit(f"sender:{sender.id}", "inbound_received", rec.id, zones,
                          ref=b.ref, level=b.level, title=b.title, retired=retired)
        if retired:
            log.warning("bulletin %s from %s names zones from before a zone edit: %s", rec.id,
                        sender.id, retired)
        log.info("bulletin %s (%s) from %s for %s", rec.id, b.level, sender.id,
                 ", ".join(zones[:5]))
        if b.level == "emergency":
            await self._air(rec, f"sender:{sender.id}", chime=b.chime)
        else:
            self._arm(rec)
        return rec, True

    def _zones(self, named: list[str]) -> tuple[list[str], dict[str, list[str]]]:
        """The zones a bulletin addresses, and each retired id among those it names with the
        zones it stands for now: a system above may not have caught up with a merger, and its
        bulletin (an emergency, say) must still reach the hamlets it meant."""
        tree = self.plane.tree
        zones: list[str] = []
        retired: dict[str, list[str]] = {}
        for z in dict.fromkeys(named):
            if z in tree.zones:
                zones.append(z)
            elif (was := tree.formerly(z)) is not None:
                retired[z] = was
                zones.extend(was)
            else:
                raise BadRequest("zones", f"unknown zone {z!r}")
        return list(dict.fromkeys(zones)), retired

    async def receipt(self, rec: InboundBulletin, reach: Callable[[BroadcastRecord], Any]
                      ) -> Receipt:
        out = Receipt(**rec.model_dump(include=set(Receipt.model_fields)))
        if rec.broadcast is not None:
            b = self.plane.broadcasts
            br = b.live.get(rec.broadcast) or await self.plane.state.broadcasts.get(
                rec.broadcast)
            if br is not None:
                out.broadcast_state = b.out(br).state
                r = await reach(br)
                out.reach = ReceiptReach(expected=r.expected, confirmed=len(r.confirmed),
                                  ratio=r.ratio)
        return out

    # -- the operator's side --------------------------------------------------------------

    async def decide(self, rec: InboundBulletin, user: str, air: bool, note: str = "",
                     override_quiet_hours: bool = False) -> InboundBulletin:
        if rec.state != InboundState.PENDING:
            raise InboundError(409, f"bulletin {rec.id} is {rec.state.value}, not pending", "id")
        rec.note = note
        if air:
            quiet = self.plane.quiet_now(rec.zones)
            if quiet and not override_quiet_hours:
                raise InboundError(409, f"quiet hours in {', '.join(quiet[:5])}: air it later, "
                                   "or an admin overrides them", "zones")
            await self._air(rec, user, override_quiet_hours=bool(quiet))
        else:
            await self._end(rec, InboundState.REJECTED, user, "inbound_rejected", note=note)
        return rec

    # -- on the way -------------------------------------------------------------------------

    def _arm(self, rec: InboundBulletin) -> None:
        """The pending bulletin's next timer: its automatic airing or its expiry."""
        self._cancel(rec.id)
        now = self.now()
        if rec.auto_air_at is not None and (rec.valid_until is None
                                            or rec.auto_air_at < rec.valid_until):
            at, then = rec.auto_air_at, self._auto_air
        elif rec.valid_until is not None:
            at, then = rec.valid_until, self._expire
        else:
            return
        self._timers[rec.id] = asyncio.get_running_loop().call_later(
            max(0.0, at - now), lambda: self._background.spawn(then(rec.id)))

    def _cancel(self, rid: str) -> None:
        timer = self._timers.pop(rid, None)
        if timer is not None:
            timer.cancel()

    async def _auto_air(self, rid: str) -> None:
        rec = await self.plane.state.inbound.get(rid)
        if rec is None or rec.state != InboundState.PENDING:
            return
        if self.plane.quiet_now(rec.zones):  # airs when quiet hours end, if still valid
            rec.auto_air_at = self.now() + QUIET_RETRY_S
            await self.plane.state.put_inbound(rec)
            self._arm(rec)
            return
        log.warning("bulletin %s: no operator decided; airing it (the default)", rid)
        await self._air(rec, "-", auto=True)

    async def _expire(self, rid: str) -> None:
        rec = await self.plane.state.inbound.get(rid)
        if rec is not None and rec.state == InboundState.PENDING:
            await self._end(rec, InboundState.EXPIRED, "-", "inbound_expired")

    async def _air(self, rec: InboundBulletin, by: str, *, auto: bool = False,
                   chime: bool = True, override_quiet_hours: bool = False) -> None:
        self._cancel(rec.id)
        plane = self.plane
        source = (ClipSource(kind="clip", clip=rec.clip) if rec.clip is not None
                  else TtsSource(kind="tts", text=rec.text))
        emergency = rec.level == "emergency"
        br = await plane.broadcasts.create(
            rec.zones, rec.level, source, label=rec.title or f"bulletin {rec.ref}",
            user=by if by != "-" else f"sender:{rec.sender}",
            override_quiet_hours=override_quiet_hours,
            emergency=EmergencyPlan(chime=chime, expires=rec.valid_until) if emergency else None,
            requested_at=rec.received if emergency else None)
        rec.state, rec.broadcast = InboundState.AIRED, br.id
        rec.decided_by, rec.decided_at = by, self.now()
        await plane.state.put_inbound(rec)
        outcome = "auto_aired" if auto else "aired"
        self.m.labels(rec.level, outcome).inc()
        await self._audit(by, "inbound_aired", rec.id, rec.zones, broadcast=br.id, auto=auto,
                          sender=rec.sender, ref=rec.ref)

    async def _end(self, rec: InboundBulletin, state: InboundState, by: str, action: str,
                   **detail: Any) -> None:
        self._cancel(rec.id)
        rec.state, rec.decided_by, rec.decided_at = state, by, self.now()
        await self.plane.state.put_inbound(rec)
        self.m.labels(rec.level, state.value).inc()
        await self._audit(by, action, rec.id, rec.zones, sender=rec.sender, ref=rec.ref,
                          **detail)

    async def _clip(self, sender: Sender, audio: str) -> str:
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("audio", "not base64") from None
        if len(data) > MAX_AUDIO_BYTES:
            raise InboundError(413, f"the audio is over {MAX_AUDIO_BYTES >> 20} MiB", "audio")
        clips = self.plane.clips
        spool = clips.spool()
        await asyncio.to_thread(spool.write_bytes, data)
        try:
            cid, clip = await asyncio.to_thread(clips.add, spool)
        except ClipError as e:
            raise BadRequest("audio", f"not playable audio: {e}".replace(str(spool),
                                                                         "the file")) from None
        assert clip.length is not None
        await self.plane.state.clips.put(cid, ClipMeta(
            id=cid, name=f"{sender.id}: bulletin", seconds=clip.length / 48_000,
            bytes=len(data), created=self.now(), created_by=f"sender:{sender.id}"))
        return str(cid)

    async def _audit(self, user: str, action: str, target: str, zones: list[str],
                     outcome: str = "ok", **detail: Any) -> None:
        await self.plane.state.audit(AuditEntry(ts=self.now(), user=user, action=action,
                                                target=target, zones=zones, outcome=outcome,
                                                detail=detail))
