"""The zone tree: any depth, loaded from data, bad files refused with the reason; where the
sample zones are, and bad locations and boundaries refused naming the zone and the field."""

import numpy as np
import pytest

from streamer.geo import inside_ring
from streamer.zones import ZoneError, ZoneTree
from tests.harness.api import call


def test_sample_tree_has_any_depth():
    t = ZoneTree.load()
    assert t.roots == ["brvt"]
    # Côn Đảo: clusters directly under the district-level unit (depth 3), elsewhere depth 4
    assert t.leaves("brvt.con-dao") == [f"brvt.con-dao.cum-{i}" for i in (1, 2, 3)]
    assert t.leaves("brvt.chau-duc.kim-long.ap-tay") == ["brvt.chau-duc.kim-long.ap-tay"]
    assert len(t.leaves("brvt")) == len(t.channels()) == 30
    assert t.contains("brvt.chau-duc", "brvt.chau-duc.kim-long") and not t.contains(
        "brvt.chau", "brvt.chau-duc")


@pytest.mark.parametrize("text, words", [
    ("", "no zone"),
    ("[a]\nname = 1", "name must be a string"),
    ("[a]\nx = 1", "unexpected key"),
    ("[A]\nname='x'", "must be a zone table"),
    ("[a.B]\nname='x'", "bad child key"),
    ("[a\n", "not valid TOML"),
])
def test_bad_zone_files_are_refused_with_the_reason(text, words):
    with pytest.raises(ZoneError, match=words):
        ZoneTree.from_toml(text)


# -- where zones are -------------------------------------------------------------------------

def test_every_sample_zone_has_a_location_inside_the_boundaries_above_it():
    t = ZoneTree.load()
    vung_tau = t.zones["brvt.vung-tau"].location
    assert vung_tau is not None and abs(vung_tau[0] - 10.35) < 0.02 and abs(
        vung_tau[1] - 107.08) < 0.02
    for z in t.zones.values():
        assert z.location is not None, z.id
        lat, lon = z.location
        assert 8.5 < lat < 10.9 and 106.4 < lon < 107.7, z.id  # the province, Côn Đảo included
        if z.code is not None and z.parent is not None:  # districts and communes
            assert z.boundary is not None and z.boundary[0] == z.boundary[-1], z.id
        parent = z.parent
        while parent is not None:
            ring = t.zones[parent].boundary
            if ring is not None:
                assert inside_ring(np.array([lat]), np.array([lon]), ring)[0], (z.id, parent)
            parent = t.zones[parent].parent


def test_location_and_boundary_are_read_and_the_boundary_closed():
    t = ZoneTree.from_toml(
        "[a]\nlocation = { lat = 10.05, lon = 107.05 }\n"
        "boundary = [[10.0, 107.0], [10.1, 107.0], [10.1, 107.1], [10.0, 107.1]]\n"
        "[a.b]\nboundary = [[10.0, 107.0], [10.05, 107.0], [10.05, 107.05], [10.0, 107.0]]\n"
        "[a.c]\n")
    a, b, c = (t.zones[z] for z in ("a", "a.b", "a.c"))
    assert a.location == (10.05, 107.05)
    assert a.boundary == [(10.0, 107.0), (10.1, 107.0), (10.1, 107.1), (10.0, 107.1),
                          (10.0, 107.0)]
    assert b.location is None and len(b.boundary) == 4  # already closed: kept as written
    assert c.location is None and c.boundary is None
    assert t.leaves() == ["a.b", "a.c"]  # location and boundary are fields, not child zones


SQUARE = "boundary = [[10.0, 10.5], [10.1, 10.5], [10.1, 10.6], [10.0, 10.6]]"


@pytest.mark.parametrize("text, words", [
    ("[a]\nlocation = { lat = 91, lon = 107 }", "zone a: location.lat 91 is outside -90..90"),
    ("[a]\n[a.b]\nlocation = { lat = 10, lon = -180.5 }",
     "zone a.b: location.lon -180.5 is outside -180..180"),
    ('[a]\nlocation = { lat = "10.3", lon = 107 }',
     "zone a: location.lat must be a number of decimal degrees, got '10.3'"),
    ("[a]\nlocation = { lat = true, lon = 107 }", "zone a: location.lat must be a number"),
    ("[a]\nlocation = { lat = nan, lon = 107 }", "zone a: location.lat must be a number"),
    ("[a]\nlocation = [10.3, 107.0]", r"zone a: location must be \{ lat = …, lon = … \}"),
    ("[a]\nlocation = { lat = 10.3, lon = 107.0, alt = 2 }", "zone a: location must be"),
    ("[a]\nlocation = { lat = 10.3 }", "zone a: location must be"),
    ("[a]\nboundary = [[10.0, 107.0], [10.1, 107.0]]",
     "zone a: boundary must be a list of 3 to 10000 \\[lat, lon\\] points"),
    ('[a]\nboundary = "10,107 10.1,107 10.1,107.1"', "zone a: boundary must be a list"),
    ("[a]\nboundary = [[10.0, 107.0], [10.1, 107.0], [10.1]]",
     r"zone a: boundary\[2\] must be a \[lat, lon\] pair"),
    ("[a]\nboundary = [[10.0, 107.0], [10.1, 107.0], [10.1, 200]]",
     r"zone a: boundary\[2\] longitude 200 is outside -180..180"),
    ("[a]\nboundary = [[10.0, 107.0], [-95, 107.0], [10.1, 107.1]]",
     r"zone a: boundary\[1\] latitude -95 is outside -90..90"),
    ("[a]\nboundary = [[10.0, 107.0], [10.1, 107.1], [10.2, 107.2]]",
     "zone a: boundary encloses no area"),
    ("[a]\nboundary = [[10.0, 107.0], [10.1, 107.1], [10.0, 107.0]]",
     "zone a: boundary encloses no area"),
    # latitude and longitude swapped: the point lands far outside the outline
    (f"[a]\nlocation = {{ lat = 10.55, lon = 10.05 }}\n{SQUARE}",
     r"zone a: location \(10.55, 10.05\) lies outside its boundary \(are latitude and "
     r"longitude swapped\?\)"),
])
def test_bad_geography_is_refused_naming_the_zone_and_field(text, words):
    with pytest.raises(ZoneError, match=words):
        ZoneTree.from_toml(text)


async def test_the_api_gives_each_zone_its_place_from_the_zone_file(streamer):
    status, z = await call(streamer, "GET", "/api/v1/zones/brvt.vung-tau.thang-tam")
    assert status == 200, z
    assert z["location"] == {"lat": 10.345, "lon": 107.089}
    assert z["boundary"][0] == z["boundary"][-1] == [10.338, 107.080] and len(z["boundary"]) == 5
    kp1 = z["children"][0]
    assert kp1["id"].endswith(".kp-1") and kp1["boundary"] is None
    assert kp1["location"] == {"lat": 10.342, "lon": 107.086}
    status, tree = await call(streamer, "GET", "/api/v1/zones")
    assert status == 200 and tree["zones"][0]["id"] == "brvt"
    assert tree["zones"][0]["location"] is not None and tree["zones"][0]["boundary"] is None
    # A zone stored before the file had a place (an older Redis) gets it from the file again,
    # and a PATCH cannot set it.
    plane = streamer.plane
    old = plane.zones["brvt.vung-tau.thang-tam"].model_copy(update={"location": None,
                                                                   "boundary": None})
    await plane.state.zones.put(old.id, old)
    await plane.load()
    status, z = await call(streamer, "GET", "/api/v1/zones/brvt.vung-tau.thang-tam")
    assert z["location"] == {"lat": 10.345, "lon": 107.089} and len(z["boundary"]) == 5
    status, body = await call(streamer, "PATCH", "/api/v1/zones/brvt.vung-tau.thang-tam",
                              json={"location": {"lat": 10.0, "lon": 107.0}})
    assert status == 400 and body["field"] == "location", body
