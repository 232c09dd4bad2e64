"""The zone tree (province → … → cluster group, any depth), loaded from data.

A zone id is the dotted path of keys from the root ("brvt.chau-duc.kim-long.ap-1"), so "is X
inside Y" is a prefix test. Every leaf zone has one channel, whose id is the leaf's zone id.
A zone may say where it is: a ``location`` (a point inside it) and a ``boundary`` (its
outline), checked here so that a typo (a swapped latitude and longitude, a ring that encloses
nothing) stops the load with the zone and the field named. ``docs/zones.md`` has the format.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from streamer.geo import Point, closed, inside_ring, ring_area
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


class ZoneTree:
    def __init__(self, zones: dict[str, Zone]) -> None:
        self.zones = zones
        self.roots = [z.id for z in zones.values() if z.parent is None]

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
        codes: dict[str, str] = {}
        for zone in zones.values():
            if zone.code is not None and codes.setdefault(zone.code, zone.id) != zone.id:
                raise ZoneError(f"zones {codes[zone.code]} and {zone.id} share code {zone.code}")
        tree = cls(zones)
        # Relays demultiplex channels by SSRC, a 32-bit hash of the channel id: refuse a tree
        # in which two channels would share one (rename a zone key to fix it).
        seen: dict[int, str] = {}
        for leaf in tree.leaves():
            other = seen.setdefault(ssrc_for(leaf), leaf)
            if other != leaf:
                raise ZoneError(f"channels {other} and {leaf} hash to the same SSRC")
        return tree

    @classmethod
    def load(cls, path: str | Path | None = None) -> ZoneTree:
        if path is None:
            text = resources.files("streamer").joinpath("data/zones-brvt.toml").read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
        return cls.from_toml(text)

    def leaves(self, zone_id: str | None = None) -> list[str]:
        """Leaf zones (channels) under ``zone_id`` (itself if it is a leaf); all when None."""
        if zone_id is None:
            return [z.id for z in self.zones.values() if z.is_leaf]
        zone = self.zones[zone_id]
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
