"""The zone tree (province → … → cluster group, any depth), loaded from data.

A zone id is the dotted path of keys from the root ("brvt.chau-duc.kim-long.ap-1"), so "is X
inside Y" is a prefix test. Every leaf zone has one channel, whose id is the leaf's zone id.
A zone may say where it is: a ``location`` (a point inside it) and a ``boundary`` (its
outline), checked here so that a typo (a swapped latitude and longitude, a ring that encloses
nothing) stops the load with the zone and the field named. ``docs/zones.md`` has the format.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from streamer.geo import Point, closed, inside_ring, ring_area
from wire.ids import valid_zone_id
from wire.packet import ssrc_for

_KEY = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_CODE = re.compile(r"^[0-9]{1,10}$")
MAX_ZONES = 100_000
#: points of one zone's boundary: bounds the work of mapping a CAP area to zones
MAX_BOUNDARY_POINTS = 10_000
#: keys of a zone table that are its fields, not child zones
FIELDS = ("name", "code", "location", "boundary")


class ZoneError(ValueError):
    pass


@dataclass(slots=True)
class Zone:
    id: str
    name: str
    parent: str | None
    children: list[str] = field(default_factory=list)
    #: Vietnamese administrative unit code ("mã đơn vị hành chính"), matched by CAP geocodes
    code: str | None = None
    #: a point inside the zone (its centre, where a map puts its label), (lat, lon)
    location: Point | None = None
    #: its outline, a closed ring of (lat, lon) (the last point equals the first)
    boundary: list[Point] | None = None

    @property
    def is_leaf(self) -> bool:
        return not self.children


def _code(zid: str, code: object) -> str | None:
    if code is not None and not (isinstance(code, str) and _CODE.match(code)):
        raise ZoneError(f"zone {zid}: code must be a string of 1 to 10 digits")
    return code


def _degrees(zid: str, where: str, value: object, limit: int) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ZoneError(f"zone {zid}: {where} must be a number of decimal degrees, "
                        f"got {value!r}")
    if not -limit <= value <= limit:
        raise ZoneError(f"zone {zid}: {where} {value} is outside -{limit}..{limit}")
    return float(value)


def _location(zid: str, value: object) -> Point | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"lat", "lon"}:
        raise ZoneError(f"zone {zid}: location must be {{ lat = …, lon = … }} in decimal "
                        f"degrees, got {value!r}"[:300])
    return (_degrees(zid, "location.lat", value["lat"], 90),
            _degrees(zid, "location.lon", value["lon"], 180))


def _boundary(zid: str, value: object) -> list[Point] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not 3 <= len(value) <= MAX_BOUNDARY_POINTS:
        raise ZoneError(f"zone {zid}: boundary must be a list of 3 to {MAX_BOUNDARY_POINTS} "
                        "[lat, lon] points")
    points: list[Point] = []
    for i, pair in enumerate(value):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ZoneError(f"zone {zid}: boundary[{i}] must be a [lat, lon] pair, "
                            f"got {pair!r}"[:300])
        points.append((_degrees(zid, f"boundary[{i}] latitude", pair[0], 90),
                       _degrees(zid, f"boundary[{i}] longitude", pair[1], 180)))
    ring = closed(points)
    if len(set(ring)) < 3 or ring_area(ring) == 0:
        raise ZoneError(f"zone {zid}: boundary encloses no area (fewer than 3 distinct points, "
                        "or all on one line)")
    return ring


def _check_location_inside(zone: Zone) -> None:
    if zone.location is None or zone.boundary is None:
        return
    lat, lon = zone.location
    if not inside_ring(np.array([lat]), np.array([lon]), zone.boundary)[0]:
        raise ZoneError(f"zone {zone.id}: location ({lat}, {lon}) lies outside its boundary "
                        "(are latitude and longitude swapped?)")


def _check_key(field: str, key: str) -> None:
    if not isinstance(key, str) or not _KEY.match(key):
        raise ZoneError(f"{field}: {key!r} must be 1 to 32 of a-z, 0-9 and '-', starting with "
                        "a letter or digit")


def _copy(z: Zone) -> Zone:
    return Zone(z.id, z.name, z.parent, list(z.children), z.code, z.location, z.boundary)


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _ordered(zones: dict[str, Zone]) -> dict[str, Zone]:
    """``zones`` with every parent before its children (depth first in children order), as
    the stored form needs."""
    out: dict[str, Zone] = {}

    def walk(zid: str) -> None:
        out[zid] = zones[zid]
        for child in zones[zid].children:
            walk(child)

    for z in zones.values():
        if z.parent is None:
            walk(z.id)
    return out


class ZoneTree:
    """The zones by id, in file order (a zone's ``children`` in order too), and ``aliases``:
    the ids that runtime edits retired (renamed, moved or merged away, ``zonedit.py``), each
    to the zone that took its place, so that history stored under an old id still resolves.
    A zone above channels merged into another is only part of it: ``parts`` keeps, for such a
    retired id, the zones it was made of (their ids now), so that its history counts its own
    channels (``leaves``), not every channel of the zone it went into. Its administrative
    code, which no zone has any more, is kept in ``old_codes`` (code → the retired id), so that
    a system above that still sends it reaches what the zone was (:meth:`formerly`)."""

    def __init__(self, zones: dict[str, Zone], aliases: dict[str, str] | None = None,
                 parts: dict[str, list[str]] | None = None,
                 old_codes: dict[str, str] | None = None) -> None:
        self.zones = zones
        self.roots = [z.id for z in zones.values() if z.parent is None]
        self.aliases = dict(aliases or {})
        self.parts = {old: ids for old, ids in (parts or {}).items() if old in self.aliases}
        codes = {z.code for z in zones.values()}
        self.old_codes = {c: old for c, old in (old_codes or {}).items() if c not in codes}

    def adopt(self, other: ZoneTree) -> None:
        """Become ``other`` in place: whoever holds this tree (or its bound methods) sees the
        edited one."""
        self.zones, self.roots = other.zones, other.roots
        self.aliases, self.parts, self.old_codes = other.aliases, other.parts, other.old_codes

    def resolve(self, zone_id: str) -> str | None:
        """The zone ``zone_id`` is now: itself, the zone an edit moved it to, else None."""
        if zone_id in self.zones:
            return zone_id
        now = self.aliases.get(zone_id)
        return now if now in self.zones else None

    def formerly(self, zone_id: str) -> list[str] | None:
        """What a retired id covers now: the zones it was made of (merged into a zone that has
        others too), else the zone that took its place; None for a current or unknown id."""
        if zone_id in self.zones:
            return None
        if (parts := self.parts.get(zone_id)) is not None:
            return list(parts)
        now = self.resolve(zone_id)
        return None if now is None else [now]

    def by_old_code(self, code: str) -> list[str] | None:
        """The zones now of the zone that had administrative ``code`` before it was merged
        away; None if no merged zone had it."""
        old = self.old_codes.get(code)
        if old is None:
            return None
        return [old] if old in self.zones else self.formerly(old)

    def resolve_all(self, zone_ids: Iterable[str]) -> list[str]:
        """``resolve`` each, dropping the unknown, without duplicates."""
        return _unique(z for z in map(self.resolve, zone_ids) if z is not None)

    @classmethod
    def from_toml(cls, text: str) -> ZoneTree:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ZoneError(f"zone file is not valid TOML: {e}") from None
        zones: dict[str, Zone] = {}

        def walk(table: dict[str, object], zid: str, parent: str | None) -> None:
            name = table.get("name", zid.rsplit(".", 1)[-1])
            if not isinstance(name, str):
                raise ZoneError(f"zone {zid}: name must be a string")
            zones[zid] = zone = Zone(zid, name, parent, code=_code(zid, table.get("code")),
                                     location=_location(zid, table.get("location")),
                                     boundary=_boundary(zid, table.get("boundary")))
            _check_location_inside(zone)
            if len(zones) > MAX_ZONES:
                raise ZoneError(f"more than {MAX_ZONES} zones")
            for key, value in table.items():
                if key in FIELDS:
                    continue
                if not isinstance(value, dict):
                    raise ZoneError(f"zone {zid}: unexpected key {key!r}")
                if not _KEY.match(key):
                    raise ZoneError(f"zone {zid}: bad child key {key!r} (a-z, 0-9, '-')")
                child = f"{zid}.{key}"
                zones[zid].children.append(child)
                walk(value, child, zid)

        for key, value in data.items():
            if not isinstance(value, dict) or not _KEY.match(key):
                raise ZoneError(f"top-level key {key!r} must be a zone table")
            walk(value, key, None)
        if not zones:
            raise ZoneError("zone file defines no zone")
        return cls.checked(zones)

    @classmethod
    def checked(cls, zones: dict[str, Zone], aliases: dict[str, str] | None = None,
                parts: dict[str, list[str]] | None = None,
                old_codes: dict[str, str] | None = None) -> ZoneTree:
        """A tree of ``zones`` once the rules that span zones hold: codes unique, channels'
        SSRCs distinct."""
        codes: dict[str, str] = {}
        for zone in zones.values():
            if zone.code is not None and codes.setdefault(zone.code, zone.id) != zone.id:
                raise ZoneError(f"zones {codes[zone.code]} and {zone.id} share code {zone.code}")
        tree = cls(zones, aliases, parts, old_codes)
        # Relays demultiplex channels by SSRC, a 32-bit hash of the channel id: refuse a tree
        # in which two channels would share one (rename a zone key to fix it).
        seen: dict[int, str] = {}
        for leaf in tree.leaves():
            other = seen.setdefault(ssrc_for(leaf), leaf)
            if other != leaf:
                raise ZoneError(f"channels {other} and {leaf} hash to the same SSRC")
        return tree

    # -- stored form: the tree as runtime edits left it (``zonedit.py``) ------------------

    def to_json(self, rev: int) -> str:
        return json.dumps({"rev": rev, "aliases": self.aliases, "parts": self.parts,
                           "old_codes": self.old_codes, "zones": [
            {"id": z.id, "name": z.name, "parent": z.parent, "code": z.code,
             "location": z.location, "boundary": z.boundary} for z in self.zones.values()]},
            ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> tuple[ZoneTree, int]:
        """A stored tree and its revision; every field is checked as the zone file's are."""
        try:
            doc = json.loads(text)
            rev, rows, aliases = int(doc["rev"]), list(doc["zones"]), dict(doc["aliases"])
            parts = {str(k): [str(i) for i in v] for k, v in dict(doc.get("parts", {})).items()}
            old_codes = {str(k): str(v) for k, v in dict(doc.get("old_codes", {})).items()
                         if valid_zone_id(str(v))}
        except (ValueError, KeyError, TypeError) as e:
            raise ZoneError(f"stored zone tree is damaged: {e}") from None
        zones: dict[str, Zone] = {}
        for row in rows:
            zid, parent = row.get("id"), row.get("parent")
            if not isinstance(zid, str) or not valid_zone_id(zid) or zid in zones:
                raise ZoneError(f"stored zone tree: bad or repeated zone id {zid!r}"[:200])
            if parent != (zid.rsplit(".", 1)[0] if "." in zid else None) or (
                    parent is not None and parent not in zones):
                raise ZoneError(f"stored zone tree: zone {zid} comes before its parent")
            name = row.get("name")
            if not isinstance(name, str):
                raise ZoneError(f"zone {zid}: name must be a string")
            loc = row.get("location")
            zones[zid] = zone = Zone(
                zid, name, parent, code=_code(zid, row.get("code")),
                location=None if loc is None else _location(zid, {"lat": loc[0], "lon": loc[1]}),
                boundary=_boundary(zid, [list(p) for p in row["boundary"]]
                                   if row.get("boundary") else None))
            _check_location_inside(zone)
            if parent is not None:
                zones[parent].children.append(zid)
        if not zones or len(zones) > MAX_ZONES:
            raise ZoneError(f"stored zone tree has {len(zones)} zones")
        for old, ids in parts.items():
            if not ids or any(i not in zones for i in ids):
                raise ZoneError(f"stored zone tree: {old!r} was made of unknown zones"[:200])
        return cls.checked(zones, {str(k): str(v) for k, v in aliases.items()}, parts,
                           old_codes), rev

    # -- edits: each returns the edited tree (this one unchanged) and which ids moved where --

    def added(self, parent: str, key: str, name: str, code: str | None = None) -> ZoneTree:
        """A tree with a new zone ``parent.key``; a leaf ``parent`` stops being a channel."""
        if parent not in self.zones:
            raise ZoneError(f"parent: no zone {parent!r}")
        _check_key("key", key)
        zid = f"{parent}.{key}"
        self._check_free("key", zid)
        zones = {i: _copy(z) for i, z in self.zones.items()}
        zones[zid] = Zone(zid, name, parent, code=_code(zid, code))
        zones[parent].children.append(zid)
        return ZoneTree.checked(zones, self.aliases, self.parts, self.old_codes)

    def moved(self, zone_id: str, parent: str, key: str) -> tuple[ZoneTree, dict[str, str]]:
        """``zone_id`` and its subtree under ``parent`` as ``key`` (a rename when ``parent`` is
        its own parent); returns the tree and ``{old id: new id}`` for the whole subtree."""
        self._check_editable(zone_id)
        if parent not in self.zones:
            raise ZoneError(f"parent: no zone {parent!r}")
        if self.contains(zone_id, parent):
            raise ZoneError(f"parent: {parent} is inside {zone_id}")
        _check_key("key", key)
        new_id = f"{parent}.{key}"
        if new_id == zone_id:
            raise ZoneError(f"key: {zone_id} is already there by that name")
        self._check_free("key", new_id, moving=zone_id)
        mapping = {old: new_id + old[len(zone_id):] for old in self.subtree(zone_id)}
        return self._remapped(mapping), mapping

    def merged(self, zone_id: str, into: str,
               keys: dict[str, str] | None = None) -> tuple[ZoneTree, dict[str, str]]:
        """``zone_id`` merged into ``into``: its children move under ``into`` (a child whose
        key ``into`` already has needs a new one in ``keys``), and ``zone_id`` itself becomes
        ``into``. Two channels merge into one; a channel cannot merge with a zone above
        channels (move it instead)."""
        self._check_editable(zone_id)
        if into not in self.zones:
            raise ZoneError(f"into: no zone {into!r}")
        if self.contains(zone_id, into) or self.contains(into, zone_id):
            raise ZoneError(f"into: {into} and {zone_id} are one inside the other")
        src, dst = self.zones[zone_id], self.zones[into]
        if src.is_leaf != dst.is_leaf:
            raise ZoneError(f"into: {zone_id} and {into} must both be channels (leaf zones) or "
                            "both zones with zones under them; move the one instead")
        keys = dict(keys or {})
        for child_key in keys:
            if f"{zone_id}.{child_key}" not in src.children:
                raise ZoneError(f"keys: {zone_id} has no zone {child_key!r}")
        mapping = {zone_id: into}
        taken = {c.rsplit(".", 1)[1] for c in dst.children}
        new_keys = {c: keys.get(c.rsplit(".", 1)[1], c.rsplit(".", 1)[1]) for c in src.children}
        clashes = [c.rsplit(".", 1)[1] for c, k in new_keys.items()
                   if k in taken or list(new_keys.values()).count(k) > 1]
        if clashes:
            raise ZoneError(f"keys.{clashes[0]}: {into} already has zones named "
                            f"{', '.join(repr(new_keys[f'{zone_id}.{k}']) for k in clashes)}:"
                            f" give {zone_id}'s another key in keys, e.g. "
                            f"{{\"{clashes[0]}\": \"{clashes[0]}-2\"}}")
        for child in src.children:
            old_key = child.rsplit(".", 1)[1]
            key = new_keys[child]
            _check_key(f"keys.{old_key}", key)
            taken.add(key)
            new_child = f"{into}.{key}"
            self._check_free(f"keys.{old_key}", new_child, moving=child)
            mapping.update({old: new_child + old[len(child):] for old in self.subtree(child)})
        return self._remapped(mapping), mapping

    def _check_editable(self, zone_id: str) -> None:
        if zone_id not in self.zones:
            raise ZoneError(f"no zone {zone_id!r}")
        if self.zones[zone_id].parent is None:
            raise ZoneError(f"{zone_id} is a top-level zone: it cannot be moved or merged")

    def _check_free(self, field: str, zone_id: str, moving: str | None = None) -> None:
        """``zone_id`` may be created: no zone has it, and no retired id that history still
        resolves elsewhere (renaming back what ``moving`` was called is allowed)."""
        if not valid_zone_id(zone_id):
            raise ZoneError(f"{field}: {zone_id!r} is not a zone id")
        if zone_id in self.zones:
            raise ZoneError(f"{field}: zone {zone_id} exists")
        now = self.aliases.get(zone_id)
        if now is not None and not (moving is not None and self.contains(moving, now)):
            raise ZoneError(f"{field}: {zone_id} was a zone, now part of {now}; its history is "
                            "kept under that name: choose another key")

    def subtree(self, zone_id: str) -> list[str]:
        """``zone_id`` and every zone below it."""
        out = [zone_id]
        for child in self.zones[zone_id].children:
            out.extend(self.subtree(child))
        return out

    def _remapped(self, mapping: dict[str, str]) -> ZoneTree:
        """The tree with every id in ``mapping`` replaced (zones mapped onto an existing zone
        are merged into it), in the same order; aliases follow, an id that comes back drops
        its alias."""
        zones: dict[str, Zone] = {}
        for zid, z in self.zones.items():
            new = mapping.get(zid, zid)
            if new in zones or (new != zid and new in self.zones):
                continue  # merged into a zone that is (or will be) there
            zones[new] = Zone(new, z.name, new.rsplit(".", 1)[0] if "." in new else None,
                              code=z.code, location=z.location, boundary=z.boundary)
        # a merge target's own children first, then those it takes in
        for zid in sorted(self.zones, key=lambda i: i in mapping):
            new = mapping.get(zid, zid)
            parent = zones[new].parent
            if parent is not None and new not in zones[parent].children:
                zones[parent].children.append(new)
        aliases = {old: mapping.get(now, now) for old, now in self.aliases.items()}
        aliases.update((old, new) for old, new in mapping.items() if old != new)
        aliases = {old: now for old, now in aliases.items() if old != now and old not in zones}
        # What each retired zone was made of, its ids now: kept ones follow the mapping; a zone
        # above channels merged into one that was there gets its children's (and so does each
        # earlier id of it)
        parts = {old: _unique(mapping.get(i, i) for i in ids) for old, ids in self.parts.items()}
        old_codes = dict(self.old_codes)
        for zid, new in mapping.items():
            z = self.zones[zid]
            if new != zid and new in self.zones:  # merged: its code goes with it
                if not z.is_leaf:
                    parts[zid] = _unique(mapping.get(c, c) for c in z.children)
                if z.code is not None:
                    old_codes[z.code] = zid
        for old, was in self.aliases.items():
            if was in parts and old not in parts:
                parts[old] = parts[was]
        return ZoneTree.checked(_ordered(zones), aliases, parts, old_codes)

    @classmethod
    def load(cls, path: str | Path | None = None) -> ZoneTree:
        if path is None:
            text = resources.files("streamer").joinpath("data/zones-brvt.toml").read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
        return cls.from_toml(text)

    def leaves(self, zone_id: str | None = None) -> list[str]:
        """Leaf zones (channels) under ``zone_id`` (itself if it is a leaf); all when None. A
        retired id (history) answers for the zones it was made of (``parts``), else for the
        zone that took its place."""
        if zone_id is None:
            return [z.id for z in self.zones.values() if z.is_leaf]
        if (parts := self.parts.get(zone_id)) is not None:
            return _unique(leaf for part in parts for leaf in self.leaves(part))
        zone = self.zones[self.aliases.get(zone_id, zone_id)]
        zone_id = zone.id
        if zone.is_leaf:
            return [zone_id]
        out: list[str] = []
        for child in zone.children:
            out.extend(self.leaves(child))
        return out

    def channels(self) -> list[str]:
        return self.leaves()

    def contains(self, ancestor: str, zone_id: str) -> bool:
        return zone_id == ancestor or zone_id.startswith(ancestor + ".")

    def as_dict(self, zone_id: str) -> dict[str, object]:
        z = self.zones[zone_id]
        return {"id": z.id, "name": z.name,
                "children": [self.as_dict(c) for c in z.children]}
