"""CAP 1.2 alerts: parse and check an OASIS Common Alerting Protocol document, map its areas to
Loa zones, and decide at which level it airs.

A CAP document comes from outside (a provincial warning system, a national hydro-met feed), so
this module must never expand an entity, read a DTD or follow an external reference (billion
laughs, XXE): ``defusedxml`` refuses any document that carries a DTD, and anything larger than
:data:`MAX_CAP_BYTES` is refused before it is parsed. Nothing half-checked gets through: every
refusal is a :class:`CapError` naming the field (``info[0].urgency``, ``alert.sent``) so that
the API can answer 400 with it. Sans-IO: bytes in, a typed :class:`Alert` out; zones and
speakers are passed in. ``docs/cap.md`` has the mapping rules and the classification table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from xml.etree.ElementTree import Element, ParseError

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from streamer.control.models import Speaker, Zone
from streamer.control.schemas import MAX_TTS_CHARS
from streamer.geo import Point, inside_ring, ring_within_km, rings_overlap, within_km
from streamer.zones import ZoneTree
from wire.ids import ancestors

NS = "urn:oasis:names:tc:emergency:cap:1.2"
MAX_CAP_BYTES = 256 * 1024
#: geocode valueName that names a Loa zone id directly; any other valueName is matched
#: against the zones' administrative unit codes
ZONE_GEOCODE = "loa:zone"

STATUSES = frozenset({"Actual", "Exercise", "System", "Test", "Draft"})
MSG_TYPES = frozenset({"Alert", "Update", "Cancel", "Ack", "Error"})
SCOPES = frozenset({"Public", "Restricted", "Private"})
CATEGORIES = frozenset({"Geo", "Met", "Safety", "Security", "Rescue", "Fire", "Health", "Env",
                        "Transport", "Infra", "CBRNE", "Other"})
URGENCIES = frozenset({"Immediate", "Expected", "Future", "Past", "Unknown"})
SEVERITIES = frozenset({"Extreme", "Severe", "Moderate", "Minor", "Unknown"})
CERTAINTIES = frozenset({"Observed", "Likely", "Possible", "Unlikely", "Unknown"})
EMERGENCY_SEVERITIES = frozenset({"Extreme", "Severe"})
EMERGENCY_URGENCIES = frozenset({"Immediate", "Expected"})

MAX_RADIUS_KM = 20_000.0  # about half the Earth's circumference
# CAP's dateTime: the zone offset is mandatory and "Z" is forbidden (UTC is "-00:00")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}$")
_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")
# CAP forbids these in identifier and sender: references are "sender,identifier,sent" triples
# separated by whitespace, so they would make a reference ambiguous
_NOT_IN_IDENTIFIER = re.compile(r"[\s,<&]")
_SENTENCE_END = re.compile(r"[.!?…](?=\s)")

Level = Literal["emergency", "priority"]


class CapError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Reference:
    """One earlier alert that an Update, Cancel, Ack or Error refers to."""

    sender: str
    identifier: str
    sent: datetime

    @property
    def key(self) -> str:
        """``sender,identifier,sent`` as CAP writes a reference; the same alert always gives the
        same key (a UTC offset written "-00:00" comes out as "+00:00" on both sides)."""
        return f"{self.sender},{self.identifier},{self.sent.isoformat()}"


@dataclass(frozen=True, slots=True)
class Circle:
    lat: float
    lon: float
    radius_km: float


@dataclass(slots=True)
class Area:
    desc: str
    polygons: list[list[Point]]
    circles: list[Circle]
    geocodes: list[tuple[str, str]]  # (valueName, value)


@dataclass(slots=True)
class Info:
    language: str
    categories: list[str]
    event: str
    urgency: str
    severity: str
    certainty: str
    headline: str = ""
    description: str = ""
    instruction: str = ""
    effective: datetime | None = None
    onset: datetime | None = None
    expires: datetime | None = None
    areas: list[Area] = field(default_factory=list)


@dataclass(slots=True)
class Alert:
    identifier: str
    sender: str
    sent: datetime
    status: str
    msg_type: str
    scope: str
    references: list[Reference]
    infos: list[Info]

    @property
    def reference(self) -> Reference:
        """How a later Update, Cancel or Ack refers to this alert."""
        return Reference(self.sender, self.identifier, self.sent)

    @property
    def info(self) -> Info | None:
        """The info block Loa acts on: the first in Vietnamese, else the first of all."""
        for info in self.infos:
            lang = info.language.lower()
            if lang == "vi" or lang.startswith("vi-"):
                return info
        return self.infos[0] if self.infos else None


@dataclass(slots=True)
class AreaMatch:
    zones: set[str]
    #: areaDesc of every area that reached no zone
    unmatched_areas: list[str]
    #: "valueName=value" of every geocode that names no zone
    unknown_geocodes: list[str]
    #: "valueName=value" of every geocode that names a zone merged or renamed away, with the
    #: zones it reached instead (what that zone was made of, ``ZoneTree.formerly``)
    retired_geocodes: dict[str, list[str]] = field(default_factory=dict)


# -- parsing ------------------------------------------------------------------------------


def parse_cap(data: bytes) -> Alert:
    """Parse and check a CAP 1.2 ``<alert>``; raises :class:`CapError` naming the field."""
    if len(data) > MAX_CAP_BYTES:
        raise CapError("alert", f"document is {len(data)} bytes, more than {MAX_CAP_BYTES}")
    try:
        root = fromstring(data, forbid_dtd=True)
    except DefusedXmlException as e:
        raise CapError("alert", f"DTDs and entities are not allowed in CAP ({e})") from None
    except ParseError as e:
        raise CapError("alert", f"not well-formed XML: {e}") from None
    except (LookupError, ValueError) as e:  # expat asks Python for the declared encoding
        raise CapError("alert", f"unsupported encoding: {e}") from None
    if root.tag != _q("alert"):
        raise CapError("alert", f"root element must be <alert> in namespace {NS}, "
                                f"got {_show(root.tag)}")
    return _alert(root)


def _alert(root: Element) -> Alert:
    identifier = _identifier(root, "identifier")
    sender = _identifier(root, "sender")
    sent = _datetime(_required(root, "sent", "alert"), "alert.sent")
    status = _choice(root, "status", "alert", STATUSES)
    msg_type = _choice(root, "msgType", "alert", MSG_TYPES)
    scope = _choice(root, "scope", "alert", SCOPES)
    if scope == "Restricted":
        _required(root, "restriction", "alert")
    if scope == "Private":
        _required(root, "addresses", "alert")
    references = _references(_optional(root, "references", "alert"))
    if msg_type in ("Update", "Cancel") and not references:
        raise CapError("alert.references", f"is required for msgType {msg_type}")
    infos = [_info(el, f"info[{i}]") for i, el in enumerate(root.findall(_q("info")))]
    if msg_type in ("Alert", "Update") and not infos:
        raise CapError("alert.info", f"a {msg_type} needs at least one info block")
    return Alert(identifier, sender, sent, status, msg_type, scope, references, infos)


def _info(el: Element, where: str) -> Info:
    categories = _texts(el, "category")
    if not categories:
        raise CapError(f"{where}.category", "is required")
    for category in categories:
        _check_choice(category, f"{where}.category", CATEGORIES)
    return Info(
        language=_optional(el, "language", where) or "en-US",
        categories=categories,
        event=_required(el, "event", where),
        urgency=_choice(el, "urgency", where, URGENCIES),
        severity=_choice(el, "severity", where, SEVERITIES),
        certainty=_choice(el, "certainty", where, CERTAINTIES),
        headline=_optional(el, "headline", where),
        description=_optional(el, "description", where),
        instruction=_optional(el, "instruction", where),
        effective=_optional_datetime(el, "effective", where),
        onset=_optional_datetime(el, "onset", where),
        expires=_optional_datetime(el, "expires", where),
        areas=[_area(a, f"{where}.area[{i}]") for i, a in enumerate(el.findall(_q("area")))],
    )


def _area(el: Element, where: str) -> Area:
    return Area(
        desc=_required(el, "areaDesc", where),
        polygons=[_polygon(text, f"{where}.polygon[{i}]")
                  for i, text in enumerate(_texts(el, "polygon"))],
        circles=[_circle(text, f"{where}.circle[{i}]")
                 for i, text in enumerate(_texts(el, "circle"))],
        geocodes=[(_required(g, "valueName", f"{where}.geocode[{i}]"),
                   _required(g, "value", f"{where}.geocode[{i}]"))
                  for i, g in enumerate(el.findall(_q("geocode")))],
    )


def _polygon(text: str, where: str) -> list[Point]:
    points = [_point(pair, where) for pair in text.split()]
    if len(points) < 4:
        raise CapError(where, f"a polygon needs at least 4 'lat,lon' points, got {len(points)}")
    if points[0] != points[-1]:
        raise CapError(where, "a polygon must be closed: its last point must equal its first")
    return points


def _circle(text: str, where: str) -> Circle:
    parts = text.split()
    if len(parts) != 2 or not _NUMBER.match(parts[1]):
        raise CapError(where, f"{_show(text)} is not 'lat,lon radius_km'")
    lat, lon = _point(parts[0], where)
    radius_km = float(parts[1])
    if not 0 <= radius_km <= MAX_RADIUS_KM:
        raise CapError(where, f"radius {radius_km} km is outside 0..{MAX_RADIUS_KM:.0f} km")
    return Circle(lat, lon, radius_km)


def _point(pair: str, where: str) -> Point:
    lat_text, _, lon_text = pair.partition(",")
    if not (_NUMBER.match(lat_text) and _NUMBER.match(lon_text)):
        raise CapError(where, f"{_show(pair)} is not a 'lat,lon' pair of decimal degrees")
    lat, lon = float(lat_text), float(lon_text)
    if not -90 <= lat <= 90:
        raise CapError(where, f"latitude {lat} is outside -90..90")
    if not -180 <= lon <= 180:
        raise CapError(where, f"longitude {lon} is outside -180..180")
    return lat, lon


def _references(text: str) -> list[Reference]:
    out: list[Reference] = []
    for i, triple in enumerate(text.split()):
        where = f"alert.references[{i}]"
        parts = triple.split(",")
        if len(parts) != 3 or not all(parts):
            raise CapError(where, f"{_show(triple)} is not 'sender,identifier,sent'")
        out.append(Reference(parts[0], parts[1], _datetime(parts[2], where)))
    return out


def _identifier(el: Element, name: str) -> str:
    value = _required(el, name, "alert")
    if _NOT_IN_IDENTIFIER.search(value):
        raise CapError(f"alert.{name}", "must not contain spaces, commas, '<' or '&'")
    return value


def _optional_datetime(el: Element, name: str, where: str) -> datetime | None:
    text = _optional(el, name, where)
    return _datetime(text, f"{where}.{name}") if text else None


def _datetime(text: str, where: str) -> datetime:
    if not _DATETIME.match(text):
        raise CapError(where, f"{_show(text)} is not a CAP dateTime such as "
                              "2024-11-24T05:30:00+07:00 (zone offset required, no 'Z')")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise CapError(where, f"{_show(text)} is not a valid date and time") from None


def _choice(el: Element, name: str, where: str, allowed: frozenset[str]) -> str:
    return _check_choice(_required(el, name, where), f"{where}.{name}", allowed)


def _check_choice(value: str, where: str, allowed: frozenset[str]) -> str:
    if value not in allowed:
        raise CapError(where, f"must be one of {', '.join(sorted(allowed))}, got {_show(value)}")
    return value


def _required(el: Element, name: str, where: str) -> str:
    value = _optional(el, name, where)
    if not value:
        raise CapError(f"{where}.{name}", "is required")
    return value


def _optional(el: Element, name: str, where: str) -> str:
    values = _texts(el, name)
    if len(values) > 1:
        raise CapError(f"{where}.{name}", "must appear at most once")
    return values[0] if values else ""


def _texts(el: Element, name: str) -> list[str]:
    return [(child.text or "").strip() for child in el.findall(_q(name))]


def _q(name: str) -> str:
    return f"{{{NS}}}{name}"


def _show(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:60] + "…")


# -- what Loa does with an alert ----------------------------------------------------------


def classify(alert: Alert) -> Level:
    """``emergency`` when the acted-on info is Severe/Extreme *and* Immediate/Expected, else
    ``priority``: a CAP alert always preempts normal programmes, but only a serious and
    imminent one takes the forced-volume emergency path."""
    info = _acted_on(alert)
    if info.severity in EMERGENCY_SEVERITIES and info.urgency in EMERGENCY_URGENCIES:
        return "emergency"
    return "priority"


def speech_text(alert: Alert) -> str:
    """Headline, description and instruction as sentences for TTS, repeats dropped, cut at a
    sentence end to fit the TTS limit. The event name when the alert has no text."""
    info = _acted_on(alert)
    sentences: list[str] = []
    for text in (info.headline, info.description, info.instruction):
        # XML indentation leaves runs of spaces and newlines inside the text
        sentence = _end_sentence(" ".join(text.split()))
        if sentence and sentence not in sentences:
            sentences.append(sentence)
    return _fit("\n".join(sentences) or _end_sentence(info.event), MAX_TTS_CHARS)


def expires(alert: Alert) -> datetime | None:
    info = alert.info
    return info.expires if info else None


def resolve_areas(alert: Alert, zones: Mapping[str, Zone], speakers: Iterable[Speaker],
                  tree: ZoneTree | None = None) -> AreaMatch:
    """Zones covered by the acted-on info's areas, an ancestor standing for its descendants.

    A geocode ``loa:zone`` names a zone id; any other geocode matches the zones whose ``code``
    equals its value. A polygon or circle covers the zones of the speakers placed inside it;
    a leaf zone none of whose speakers has a position is covered by its own place instead (its
    boundary meets the area, or, with no boundary, its location lies in it), or by its nearest
    ancestor's place when it has none (``docs/cap.md``, "Areas to zones"). With the ``tree``
    of runtime zone edits, a zone id or a code of a zone merged or renamed away reaches what
    that zone was, and is reported in ``retired_geocodes``.
    """
    info = alert.info
    placed = _Placed(speakers, zones)
    places = _ZonePlaces(zones, without=set(placed.zones))
    by_code: dict[str, set[str]] = {}
    for zone in zones.values():
        if zone.code is not None:
            by_code.setdefault(zone.code, set()).add(zone.id)
    match = AreaMatch(set(), [], [])
    for area in info.areas if info else []:
        hits: set[str] = set()
        for name, value in area.geocodes:
            if name == ZONE_GEOCODE:
                found = {value} if value in zones else set()
            else:
                found = by_code.get(value, set())
            if not found and tree is not None:
                was = tree.formerly(value) if name == ZONE_GEOCODE else tree.by_old_code(value)
                if was:
                    found = set(was)
                    match.retired_geocodes[f"{name}={value}"] = sorted(was)
            if not found:
                match.unknown_geocodes.append(f"{name}={value}")
            hits |= found
        for ring in area.polygons:
            hits |= placed.zones_where(inside_ring(placed.lat, placed.lon, ring))
            hits |= places.meeting_polygon(ring)
        for circle in area.circles:
            centre = (circle.lat, circle.lon)
            hits |= placed.zones_where(within_km(placed.lat, placed.lon, centre,
                                                 circle.radius_km))
            hits |= places.meeting_circle(centre, circle.radius_km)
        if not hits:
            match.unmatched_areas.append(area.desc)
        match.zones |= hits
    match.zones = {z for z in match.zones if not any(a in match.zones for a in ancestors(z)[:-1])}
    return match


def _acted_on(alert: Alert) -> Info:
    info = alert.info
    if info is None:
        raise CapError("alert.info", f"this {alert.msg_type} has no info block to broadcast")
    return info


def _end_sentence(text: str) -> str:
    return text if not text or text[-1] in ".!?…" else text + "."


def _fit(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters at the last sentence end, or at a word boundary
    when no sentence ends in the second half."""
    if len(text) <= limit:
        return text
    last_end = 0
    # one character past the limit, so that a sentence ending exactly at the limit is seen
    for m in _SENTENCE_END.finditer(text[: limit + 1]):
        last_end = m.end()
    if last_end > limit // 2:
        return text[:last_end]
    return text[:limit].rsplit(None, 1)[0]


class _Placed:
    """The speakers that have coordinates, as arrays (``streamer/geo.py`` works on them whole)."""

    def __init__(self, speakers: Iterable[Speaker], zones: Mapping[str, Zone]) -> None:
        placed = [s for s in speakers if s.lat is not None and s.lon is not None
                  and s.zone in zones]
        self.zones = [s.zone for s in placed]
        self.lat = np.array([s.lat for s in placed], dtype=np.float64)
        self.lon = np.array([s.lon for s in placed], dtype=np.float64)

    def zones_where(self, mask: np.ndarray) -> set[str]:
        return {self.zones[i] for i in np.flatnonzero(mask)}


class _ZonePlaces:
    """Where the leaf zones ``without`` a placed speaker are, from the zone file: each leaf
    stands at its own place (boundary, else location), or at its nearest ancestor's when it
    has none; leaves that share a place are looked up once."""

    def __init__(self, zones: Mapping[str, Zone], without: set[str]) -> None:
        parents = {z.parent for z in zones.values()}
        self.leaves: dict[str, list[str]] = {}  # the zone whose place it is → leaves there
        for zid in zones:
            if zid in parents or zid in without:
                continue
            owner = next((a for a in reversed(ancestors(zid)) if a in zones and (
                zones[a].boundary is not None or zones[a].location is not None)), None)
            if owner is not None:
                self.leaves.setdefault(owner, []).append(zid)
        self.rings = {o: ring for o in self.leaves if (ring := zones[o].boundary)}
        points = {o: at for o in self.leaves
                  if o not in self.rings and (at := zones[o].location) is not None}
        self.located = list(points)
        self.lat = np.array([p.lat for p in points.values()], dtype=np.float64)
        self.lon = np.array([p.lon for p in points.values()], dtype=np.float64)
        # every outline's vertices in one array, so that one pass finds the outlines with a
        # vertex inside an area (under a large area, most of them)
        self.vertex_owner = [o for o, b in self.rings.items() for _ in b]
        self.vertex_lat = np.array([p[0] for b in self.rings.values() for p in b])
        self.vertex_lon = np.array([p[1] for b in self.rings.values() for p in b])

    def meeting_polygon(self, ring: list[Point]) -> set[str]:
        owners = {self.located[i] for i in np.flatnonzero(inside_ring(self.lat, self.lon, ring))}
        owners |= {self.vertex_owner[i] for i in np.flatnonzero(
            inside_ring(self.vertex_lat, self.vertex_lon, ring))}
        owners |= {o for o, b in self.rings.items() if o not in owners and rings_overlap(ring, b)}
        return self._leaves_of(owners)

    def meeting_circle(self, centre: Point, radius_km: float) -> set[str]:
        owners = {self.located[i] for i in np.flatnonzero(
            within_km(self.lat, self.lon, centre, radius_km))}
        owners |= {o for o, b in self.rings.items() if ring_within_km(b, centre, radius_km)}
        return self._leaves_of(owners)

    def _leaves_of(self, owners: set[str]) -> set[str]:
        return {leaf for o in owners for leaf in self.leaves[o]}

