"""Geometry on WGS 84 latitude and longitude: points, rings and circles, for zone locations and
boundaries (``zones.py``) and CAP areas (``control/cap.py``).

Sans-IO and vectorised with numpy: a CAP polygon of thousands of points against thousands of
speakers is a few thousand numpy passes, never a Python double loop that would stall the API.
Rings are treated as planar in degrees (even-odd ray casting, straight edges in lat/lon): at
commune and province scale the difference from great-circle edges is metres, and it would only
be wrong across the antimeridian or near a pole, where Loa has no speakers. A geometry library
(shapely, GEOS) would be a heavy dependency for these few functions. Distances are great-circle
(haversine). A point is ``(lat, lon)`` in decimal degrees, as CAP writes it; a ring is a list
of points whose last equals its first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Point = tuple[float, float]  # (lat, lon), WGS 84 decimal degrees

EARTH_RADIUS_KM = 6371.0088
KM_PER_DEGREE = EARTH_RADIUS_KM * math.pi / 180
#: edge pairs compared at once when two rings are checked for crossing edges (memory bound)
_PAIRS_PER_PASS = 1_000_000


def inside_ring(lat: np.ndarray, lon: np.ndarray, ring: Sequence[Point]) -> np.ndarray:
    """Which of the points (``lat[i]``, ``lon[i]``) lie inside ``ring``: even-odd ray casting,
    every edge against every point in a few large numpy passes (a CAP polygon of 10 000 points
    against one zone's outline is then as quick as against 2000 speakers)."""
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    r = np.asarray(ring, dtype=np.float64)
    crossings = np.zeros(lat.shape, dtype=np.int64)
    if len(r) < 2 or lat.size == 0:
        return crossings.astype(bool)
    step = max(1, _PAIRS_PER_PASS // lat.size)
    for start in range(0, len(r) - 1, step):
        edges = r[start:start + step + 1]
        lat1, lon1 = edges[:-1, 0, None], edges[:-1, 1, None]
        lat2, lon2 = edges[1:, 0, None], edges[1:, 1, None]
        crosses = (lat1 > lat) != (lat2 > lat)  # never true for a horizontal edge
        with np.errstate(divide="ignore", invalid="ignore"):
            lon_at = lon1 + (lat - lat1) * (lon2 - lon1) / (lat2 - lat1)
        crossings += (crosses & (lon < lon_at)).sum(axis=0)
    return np.asarray(crossings % 2 == 1)


def within_km(lat: np.ndarray, lon: np.ndarray, centre: Point, radius_km: float) -> np.ndarray:
    """Which points lie within ``radius_km`` of ``centre`` (great-circle distance)."""
    return np.asarray(distance_km(lat, lon, centre) <= radius_km)


def distance_km(lat: np.ndarray, lon: np.ndarray, centre: Point) -> np.ndarray:
    """Haversine great-circle distance of each point from ``centre``."""
    lat1, lon1 = math.radians(centre[0]), math.radians(centre[1])
    lat2, lon2 = np.radians(lat), np.radians(lon)
    h = (np.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2)
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(h, 1.0))))


def closed(points: Sequence[Point]) -> list[Point]:
    """``points`` as a ring: the first point repeated at the end unless it already is."""
    ring = list(points)
    return ring if ring and ring[0] == ring[-1] else [*ring, *ring[:1]]


def ring_area(ring: Sequence[Point]) -> float:
    """The ring's area in square degrees (shoelace formula); 0 when all points are on a line."""
    a = np.asarray(ring, dtype=np.float64)
    return float(abs(np.sum(a[:-1, 0] * a[1:, 1] - a[1:, 0] * a[:-1, 1])) / 2)


def rings_overlap(a: Sequence[Point], b: Sequence[Point]) -> bool:
    """Whether two rings share any point: one has a vertex inside the other, or two of their
    edges cross or touch (a thin band crossing a zone has no vertex inside it)."""
    pa, pb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if (pa[:, 0].max() < pb[:, 0].min() or pb[:, 0].max() < pa[:, 0].min()
            or pa[:, 1].max() < pb[:, 1].min() or pb[:, 1].max() < pa[:, 1].min()):
        return False
    if inside_ring(pa[:, 0], pa[:, 1], b).any() or inside_ring(pb[:, 0], pb[:, 1], a).any():
        return True
    q1, q2 = pb[:-1, None, :], pb[1:, None, :]
    step = max(1, _PAIRS_PER_PASS // max(1, len(pb) - 1))
    for start in range(0, len(pa) - 1, step):
        chunk = pa[start:start + step + 1]  # the vertices of `step` edges of a
        if _segments_meet(chunk[None, :-1, :], chunk[None, 1:, :], q1, q2).any():
            return True
    return False


def _segments_meet(p1: np.ndarray, p2: np.ndarray, q1: np.ndarray,
                   q2: np.ndarray) -> np.ndarray:
    """Whether segment p1–p2 meets segment q1–q2, for every pair (broadcast arrays of
    points): each segment's ends lie on both sides of (or on) the other's line, and their
    bounding boxes meet (which settles collinear segments)."""
    d1, d2 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    d3, d4 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    boxes = ((np.minimum(p1, p2) <= np.maximum(q1, q2))
             & (np.minimum(q1, q2) <= np.maximum(p1, p2))).all(axis=-1)
    return np.asarray((d1 * d2 <= 0) & (d3 * d4 <= 0) & boxes)


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The z of (a - o) × (b - o): which side of the line o→a the point b lies on."""
    return np.asarray((a[..., 0] - o[..., 0]) * (b[..., 1] - o[..., 1])
                      - (a[..., 1] - o[..., 1]) * (b[..., 0] - o[..., 0]))


def ring_within_km(ring: Sequence[Point], centre: Point, radius_km: float) -> bool:
    """Whether the ring's area and the disc of ``radius_km`` around ``centre`` share a point:
    the centre is inside the ring, a vertex is within the radius, or an edge passes within
    it. Edges are measured in a flat projection around the centre (metres off at the tens of
    km a warning circle spans)."""
    r = np.asarray(ring, dtype=np.float64)
    if inside_ring(np.array([centre[0]]), np.array([centre[1]]), ring)[0]:
        return True
    if within_km(r[:, 0], r[:, 1], centre, radius_km).any():
        return True
    # flat km around the centre: x east, y north
    x = (r[:, 1] - centre[1]) * KM_PER_DEGREE * math.cos(math.radians(centre[0]))
    y = (r[:, 0] - centre[0]) * KM_PER_DEGREE
    ax, ay, bx, by = x[:-1], y[:-1], x[1:], y[1:]
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(length2 > 0, np.clip(-(ax * dx + ay * dy) / length2, 0.0, 1.0), 0.0)
    nearest = np.hypot(ax + t * dx, ay + t * dy)
    return bool((nearest <= radius_km).any())
