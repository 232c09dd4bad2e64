"""Runtime zone edits: add a zone, rename or move one, merge one into another.

A zone id is its dotted path, and grants, devices, senders, inputs, schedules, board items and
channels (a leaf's id is its channel's, its SSRC a hash of it) all name zones by it. So an
edit is a mapping of old ids to new ones (``ZoneTree.moved`` / ``merged``), applied to all of
them at once:

- the edited tree, every rewritten record and the **aliases** (retired id → the zone that took
  its place) go to Redis in one transaction, with the tree's revision: a start loads that
  tree, not the data file's, and history stored under an old id (broadcast records, audit,
  reports) resolves through the aliases (``ZoneTree.resolve``);
- then the running streamer follows: new channels are added to the mixer before anything
  names them, speakers are told their new channel (``DeviceConfig.channel``) with new tokens
  and broker rules, schedules, inputs and board items are reloaded, and channels no longer in
  the tree are removed from the mixer and their subscribers refused;
- an edit that would take away a channel something is on air on, or booked to air on, is
  refused (409): a zone edit never cuts a broadcast. Neither does it wait for one.

One edit at a time (a lock); every edit is audited with its whole mapping.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions
from prometheus_client import CollectorRegistry, Counter

from streamer.zones import ZoneError, ZoneTree
from wire.plan import plan_topic

from .models import BroadcastState, InboundState, Zone
from .moves import follow
from .state import P, State

log = logging.getLogger("loa.zonedit")

TREE_KEY = P + "zone-tree"
#: broadcasts waiting for approval are looked for among this many recent ones (as
#: ``GET /api/v1/approvals`` does)
PENDING_SCAN = 1000
#: a removed channel that still carries a broadcast is retired when it ends: checked this often
RETIRE_RETRY_S = 1.0
#: the edit's Redis transaction must be done within this (a province's records: a few MB)
EDIT_DEADLINE_S = 10.0


class EditRefused(Exception):
    """An edit that cannot be made now or at all: ``status`` 400 (bad request), 409 (the tree
    or what is on air forbids it) or 503 (Redis is away); ``field`` names the request field."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


@dataclass
class EditResult:
    action: str
    #: old zone id → new zone id, for every zone whose id changed
    mapping: dict[str, str]
    channels_added: list[str]
    channels_removed: list[str]
    #: records rewritten, by kind
    rewritten: dict[str, int] = field(default_factory=dict)
    rev: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


def _remap(zones: list[str], mapping: dict[str, str]) -> list[str]:
    return list(dict.fromkeys(mapping.get(z, z) for z in zones))


async def load_stored_tree(state: State) -> tuple[ZoneTree, int] | None:
    """The tree runtime edits left in Redis and its revision; None when there is none (the
    zone file is the tree). A stored tree that does not load is an error, not a fallback."""
    raw = await state.r.get(TREE_KEY)
    if raw is None:
        return None
    try:
        return ZoneTree.from_json(raw)
    except ZoneError as e:
        raise ZoneError(f"{TREE_KEY}: {e}") from None


class ZoneEditor:
    def __init__(self, plane: Any, registry: CollectorRegistry | None = None) -> None:
        self.plane = plane
        self.rev = 0
        self._lock = asyncio.Lock()
        #: set by the app: ``(added, removed)`` channels for the media endpoint (a removed
        #: channel's subscribers are refused)
        self.channels_changed: Any = None
        self.m_edits = Counter("loa_zone_edits_total", "Runtime zone edits, by action and "
                               "outcome", ["action", "outcome"], registry=registry)

    async def load(self) -> None:
        """At start (and on a takeover): the tree runtime edits stored, if any, replaces the
        zone file's, and the mixer's channels follow it (nothing is on air yet)."""
        stored = await load_stored_tree(self.plane.state)
        if stored is None:
            return
        tree, self.rev = stored
        plane = self.plane
        old, new = set(plane.tree.leaves()), set(tree.leaves())
        added, removed = sorted(new - old), sorted(old - new)
        plane.mixer.add_channels(added)
        if self.channels_changed is not None:
            self.channels_changed(added, [])
        plane.tree.adopt(tree)
        self._retire(removed)
        log.warning("zone tree: revision %d from Redis (%s, edited at runtime), %d zones; the "
                    "zone file's tree is not used", self.rev, TREE_KEY, len(tree.zones))

    # -- the edits ----------------------------------------------------------------------------

    async def add(self, parent: str, key: str, name: str, code: str | None,
                  user: str) -> EditResult:
        """A new zone under ``parent``. A channel ``parent`` becomes a zone above channels:
        its speakers move into the new zone (its only channel), the rest stays with it."""
        async with self._lock:
            tree = self.plane.tree
            new_tree = self._edit(lambda: tree.added(parent, key, name, code))
            new_id = f"{parent}.{key}"
            speakers = {parent: new_id} if tree.zones[parent].is_leaf else {}
            zone = Zone(id=new_id, name=name, parent=parent, code=code)
            return await self._apply("zone_add", new_tree, {}, user, speakers=speakers,
                                     new_zone=zone, detail={"zone": new_id, "name": name})

    async def move(self, zone_id: str, parent: str, key: str, user: str,
                   name: str | None = None) -> EditResult:
        """``zone_id`` under ``parent`` as ``key`` (a rename when the parent is its own), and
        named ``name`` in the same edit when given."""
        async with self._lock:
            new_tree, mapping = self._edit(lambda: self.plane.tree.moved(zone_id, parent, key))
            new_id = mapping[zone_id]
            if name is not None:
                new_tree.zones[new_id].name = name
            return await self._apply("zone_move", new_tree, mapping, user,
                                     names={new_id: name} if name is not None else None,
                                     detail={"zone": zone_id, "to": new_id,
                                             **({"name": name} if name is not None else {})})

    async def merge(self, zone_id: str, into: str, keys: dict[str, str],
                    user: str) -> EditResult:
        async with self._lock:
            new_tree, mapping = self._edit(lambda: self.plane.tree.merged(zone_id, into, keys))
            return await self._apply("zone_merge", new_tree, mapping, user,
                                     detail={"zone": zone_id, "into": into})

    def _edit(self, make: Any) -> Any:
        try:
            return make()
        except ZoneError as e:
            message = str(e)
            if "share code" in message:
                raise EditRefused(409, "code", message) from None
            if "same SSRC" in message:  # 1 in ~4 billion: another key avoids it
                raise EditRefused(409, "key", message + ": choose another key") from None
            where, _, _ = message.partition(":")
            field_name = where if where in ("parent", "key", "into", "name", "code") or \
                where.startswith("keys") else "id"
            if field_name != "id":  # the field is the answer's "field", not the message's
                message = message[len(where) + 1:].strip()
            raise EditRefused(409 if "exists" in message or "was a zone" in message
                              or "already has" in message else 400, field_name,
                              message) from None

    # -- applying one -------------------------------------------------------------------------

    async def _apply(self, action: str, new_tree: ZoneTree, mapping: dict[str, str],
                     user: str, *, speakers: dict[str, str] | None = None,
                     new_zone: Zone | None = None, names: dict[str, str] | None = None,
                     detail: dict[str, Any]) -> EditResult:
        plane = self.plane
        state: State = plane.state
        if not state.available:
            self.m_edits.labels(action, "unavailable").inc()
            raise EditRefused(503, "id", "zone edits need Redis, which is away; the running "
                              "zones are unchanged")
        old_leaves, new_leaves = set(plane.tree.leaves()), set(new_tree.leaves())
        removed = sorted(old_leaves - new_leaves)
        added = sorted(new_leaves - old_leaves)
        self._check_idle(removed, action)
        speaker_map = {**mapping, **(speakers or {})}
        rev = self.rev + 1
        try:
            writes = await asyncio.wait_for(self._rewrites(mapping, speaker_map, new_zone),
                                            EDIT_DEADLINE_S)
            for zid, name in (names or {}).items():
                rec = writes.get("zones", {}).get(zid)
                if rec is not None:
                    writes["zones"][zid] = rec.model_copy(update={"name": name})
            async with state.r.pipeline(transaction=True) as p:
                p.set(TREE_KEY, new_tree.to_json(rev))
                for kind, recs in writes.items():
                    if kind == "zones-gone":
                        for zid in recs:
                            p.hdel(P + "zones", zid)
                        continue
                    for rid, rec in recs.items():
                        p.hset(P + kind, rid, rec.model_dump_json())
                await asyncio.wait_for(p.execute(), EDIT_DEADLINE_S)
        except (redis.exceptions.RedisError, TimeoutError, OSError) as e:
            # MULTI/EXEC: all of it or none of it; an answer lost on the way is the one case
            # in which Redis may hold the edit: the next start takes the stored tree up
            self.m_edits.labels(action, "unavailable").inc()
            log.error("%s by %s: Redis failed the edit (%s); the running tree is unchanged",
                      action, user, e)
            raise EditRefused(503, "id", "Redis did not take the edit; the running zones are "
                              "unchanged: try again") from None
        if state.users.cache is not None:  # sign-ins read users from it while Redis is away
            state.users.cache.update(writes.get("users", {}))
        self.rev = rev
        result = EditResult(action, mapping, added, removed,
                            {k: len(v) for k, v in writes.items()}, rev)
        try:
            await self._follow(new_tree, result, writes)
        except Exception:  # stored: a restart (or a takeover) takes the rest of it up
            log.exception("%s by %s is stored (revision %d) but the running streamer did not "
                          "take all of it up: restart it to finish", action, user, rev)
        self.m_edits.labels(action, "ok").inc()
        plane.events.publish("zones", {  # open consoles load the tree again
            "action": action, "mapping": mapping, "channels_added": added,
            "channels_removed": removed, "rev": rev},
            sorted({*mapping, *mapping.values(), *added, *removed, *(speakers or {}).values()}))
        log.info("%s by %s: %s (%d channels added, %d removed)", action, user,
                 ", ".join(f"{a} → {b}" for a, b in list(mapping.items())[:5]) or detail,
                 len(added), len(removed))
        result.detail = detail
        return result

    def _check_idle(self, removed: list[str], action: str) -> None:
        """Refuse to take away a channel that carries (or is booked to carry) a broadcast."""
        gone = set(removed)
        b = self.plane.broadcasts
        for rec in [*b.live.values(), *b.booked.values()]:
            hit = gone.intersection(b.channels_of(rec.zones))
            if hit:
                self.m_edits.labels(action, "busy").inc()
                raise EditRefused(409, "id", f"broadcast {rec.id} ({rec.priority}) is on air or "
                                  f"booked on {sorted(hit)[0]}: edit the zones when it has "
                                  "ended, or stop it first")

    async def _rewrites(self, mapping: dict[str, str], speaker_map: dict[str, str],
                        new_zone: Zone | None) -> dict[str, Any]:
        """Every stored record the edit changes, by Redis hash (``zones-gone``: zone records
        to delete). Records are read from Redis, not from caches, so nothing is missed."""
        state: State = self.plane.state
        out: dict[str, Any] = {}

        def put(kind: str, rid: str, rec: Any) -> None:
            out.setdefault(kind, {})[rid] = rec

        zones = {z.id: z for z in await state.zones.all()}
        gone: list[str] = []
        for old, new in mapping.items():
            rec = zones.get(old)
            if rec is None:
                continue
            gone.append(old)
            if new not in zones or new in mapping:  # renamed or moved: its settings go along
                put("zones", new, rec.model_copy(update={
                    "id": new, "parent": new.rsplit(".", 1)[0] if "." in new else None}))
            # merged into a zone that stays: that zone's settings win
        if gone:
            out["zones-gone"] = [z for z in gone if z not in out.get("zones", {})]
        if new_zone is not None:
            put("zones", new_zone.id, new_zone)
        for u in await state.users.all():
            grants = [g.model_copy(update={"zone": mapping.get(g.zone, g.zone)})
                      for g in u.grants]
            unique = list({(g.role, g.zone): g for g in grants}.values())  # merged: one grant
            if unique != u.grants:
                put("users", u.name, u.model_copy(update={"grants": unique}))
        for s in await state.speakers.all():
            if s.zone in speaker_map:
                put("speakers", s.id, s.model_copy(update={"zone": speaker_map[s.zone]}))
        for r in await state.relays.all():
            if r.zone in mapping:
                put("relays", r.id, r.model_copy(update={"zone": mapping[r.zone]}))
        for bd in await state.boards.all():
            if bd.zone in mapping:
                put("boards", bd.id, bd.model_copy(update={"zone": mapping[bd.zone]}))
        for kind, coll in (("senders", state.senders), ("inputs", state.inputs),
                           ("schedules", state.schedules), ("board-items", state.board_items)):
            for rec in await coll.all():
                zs = _remap(rec.zones, mapping)
                if zs != rec.zones:
                    put(kind, str(rec.id), rec.model_copy(update={"zones": zs}))
        for ib in await state.inbound.all():  # what an operator is still to decide
            zs = _remap(ib.zones, mapping)
            if ib.state == InboundState.PENDING and zs != ib.zones:
                put("inbound", ib.id, ib.model_copy(update={"zones": zs}))
        for rec in await state.recent_broadcasts(PENDING_SCAN):  # as approvals lists them
            zs = _remap(rec.zones, mapping)
            if zs != rec.zones and rec.state == BroadcastState.PENDING_APPROVAL:
                put("broadcasts", str(rec.id), rec.model_copy(update={"zones": zs}))
        return out

    async def _follow(self, new_tree: ZoneTree, result: EditResult,
                      writes: dict[str, Any]) -> None:
        """The running streamer takes the stored edit up: the mixer's channels, the plane's
        zones, the scheduler, the fleet. Each step that talks to the fleet is best effort (the
        broker may be away: devices get the retained state when it is back)."""
        plane = self.plane
        old_zones = set(plane.tree.zones)
        plane.mixer.add_channels(result.channels_added)
        if self.channels_changed is not None:
            self.channels_changed(result.channels_added, [])
        plane.tree.adopt(new_tree)
        await plane.reload_zones()
        for s in writes.get("schedules", {}).values():
            if plane.scheduler is not None:
                plane.scheduler.upsert(s)
        await plane.reload_inputs()
        plane.forward.stale()  # store and forward's plans are per leaf
        await plane.board.reload(old_zones - set(new_tree.zones))
        self._retire(result.channels_removed)
        moved = list(writes.get("speakers", {}).values())
        for s in moved:
            plane.recorder.place(s.id, s.zone)
        if moved:  # broker rules, tokens, and the config that moves each speaker
            await follow(plane, moved)
        elif writes.get("boards"):
            await plane.devices.sync_broker()
        await self._tell_fleet(writes.get("relays", {}), result.channels_removed)

    def _retire(self, channels: list[str]) -> None:
        """Remove channels no longer in the tree from the mixer and the media endpoint. One
        that a broadcast took between the edit's check and now (a schedule booked it) stays
        until that broadcast ends: tried again every second, never cut."""
        leaves = set(self.plane.tree.leaves())
        channels = [c for c in channels if c not in leaves]  # a later edit brought it back
        if not channels:
            return
        try:
            self.plane.mixer.remove_channels(channels)
        except ValueError as e:
            log.warning("channels %s stay until what airs on them ends: %s",
                        ", ".join(channels[:5]), e)
            asyncio.get_running_loop().call_later(RETIRE_RETRY_S, self._retire, channels)
            return
        if self.channels_changed is not None:
            self.channels_changed([], channels)

    async def _tell_fleet(self, relays: dict[str, Any], removed: list[str]) -> None:
        plane = self.plane
        if plane.fleet is None:
            return
        if plane.tokens is not None:  # a relay's token names its zone
            for r in relays.values():
                plane.tokens.soon(r)
        for leaf in removed:  # a channel that is gone: its retained plan is cleared
            try:
                await plane.fleet.retain(plan_topic(leaf), b"")
            except TimeoutError:
                log.info("plan of %s not cleared yet (broker away)", leaf)
