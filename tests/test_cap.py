"""CAP 1.2: the shipped examples parse, bad documents are refused naming the field, XML attacks
are refused before any expansion, areas map to the right zones, levels follow the table."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from streamer.control.cap import (
    MAX_CAP_BYTES,
    CapError,
    classify,
    expires,
    parse_cap,
    resolve_areas,
    speech_text,
)
from streamer.control.models import GeoPoint, Speaker, Zone
from streamer.control.schemas import MAX_TTS_CHARS
from streamer.zones import ZoneError, ZoneTree

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"

MINIMAL = """<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>T-1</identifier>
  <sender>canhbao@brvt.gov.vn</sender>
  <sent>2024-11-24T05:30:00+07:00</sent>
  <status>Actual</status>
  <msgType>Alert</msgType>
  <scope>Public</scope>
  <info>
    <category>Met</category>
    <event>Bão</event>
    <urgency>Immediate</urgency>
    <severity>Severe</severity>
    <certainty>Likely</certainty>
    <area><areaDesc>Vùng ven biển</areaDesc>AREA</area>
  </info>
</alert>"""


def doc(*edits: tuple[str, str], area: str = "") -> bytes:
    """The minimal alert with each (old, new) replaced once and ``area`` inside its area."""
    text = MINIMAL.replace("AREA", area)
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text.encode()


def example(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def refused(data: bytes) -> CapError:
    with pytest.raises(CapError) as e:
        parse_cap(data)
    return e.value


# -- the shipped examples ------------------------------------------------------------------

# Where speakers stand (lat, lon); kp-3 has a speaker with no coordinates.
SPEAKERS = {
    "bai-sau": ("brvt.vung-tau.thang-tam.kp-1", 10.3435, 107.0870),
    "bai-sau-2": ("brvt.vung-tau.thang-tam.kp-1", 10.3440, 107.0890),
    "thang-tam-2": ("brvt.vung-tau.thang-tam.kp-2", 10.3480, 107.0800),
    "thang-tam-3": ("brvt.vung-tau.thang-tam.kp-3", None, None),
    "long-son": ("brvt.vung-tau.long-son.ap-1", 10.4560, 107.0900),
    "long-hai": ("brvt.long-dien.long-hai.kp-hai-trung", 10.3890, 107.2380),
    "phuoc-hai": ("brvt.dat-do.phuoc-hai.kp-hai-tan", 10.4010, 107.2750),
    "phuoc-hung": ("brvt.ba-ria.phuoc-hung.kp-1", 10.4960, 107.1750),
    "hoa-long": ("brvt.ba-ria.hoa-long.ap-bac", 10.5350, 107.2100),
    "kim-long": ("brvt.chau-duc.kim-long.ap-tay", 10.6300, 107.2500),
    "toc-tien": ("brvt.phu-my.toc-tien.ap-1", 10.6000, 107.1000),
    "binh-chau": ("brvt.xuyen-moc.binh-chau.ap-thanh-son", 10.5560, 107.5450),
    "con-dao": ("brvt.con-dao.cum-1", 8.6830, 106.6080),
}
COAST = {"brvt.vung-tau.thang-tam.kp-1", "brvt.vung-tau.thang-tam.kp-2",
         "brvt.long-dien.long-hai.kp-hai-trung", "brvt.dat-do.phuoc-hai.kp-hai-tan"}


@pytest.fixture(scope="module")
def zones() -> dict[str, Zone]:
    """The sample tree as the control plane's zone records, codes included."""
    tree = ZoneTree.load()
    return {z.id: Zone(id=z.id, name=z.name, parent=z.parent, code=z.code)
            for z in tree.zones.values()}


@pytest.fixture(scope="module")
def speakers() -> list[Speaker]:
    return [Speaker(id=sid, zone=zone, lat=lat, lon=lon)
            for sid, (zone, lat, lon) in SPEAKERS.items()]


def test_typhoon_warning_acts_on_the_vietnamese_info(zones, speakers):
    alert = parse_cap(example("typhoon-warning.xml"))
    assert (alert.identifier, alert.sender, alert.status, alert.msg_type, alert.scope) == (
        "BRVT-PCTT-2024-0112", "canhbao@brvt.gov.vn", "Actual", "Alert", "Public")
    assert alert.sent.isoformat() == "2024-11-24T05:30:00+07:00"
    assert [i.language for i in alert.infos] == ["en-US", "vi-VN"]
    assert alert.info is alert.infos[1]
    assert classify(alert) == "emergency"
    assert expires(alert).isoformat() == "2024-11-25T18:00:00+07:00"
    text = speech_text(alert)
    assert text.startswith("Tin bão khẩn cấp: bão số 9 đang tiến vào vùng biển ven bờ")
    assert "Typhoon" not in text and "  " not in text
    # headline, description, instruction: one line each, each a finished sentence
    lines = text.split("\n")
    assert len(lines) == 3 and all(line.endswith(".") for line in lines)
    assert lines[2].startswith("Người dân vùng ven biển") and lines[2].endswith("số 112.")
    match = resolve_areas(alert, zones, speakers)
    assert match.zones == COAST
    assert match.unmatched_areas == [] and match.unknown_geocodes == []


def test_flood_warning_by_circle(zones, speakers):
    alert = parse_cap(example("flood-warning.xml"))
    assert alert.info.categories == ["Met", "Env"]
    (area,) = alert.info.areas
    assert (area.circles[0].lat, area.circles[0].lon, area.circles[0].radius_km) == (
        10.496, 107.169, 8.0)
    assert classify(alert) == "emergency"  # Severe and Expected
    # Phước Hưng 0.7 km and Hòa Long 6.3 km from the centre; Kim Long and Tóc Tiên are beyond
    assert resolve_areas(alert, zones, speakers).zones == {
        "brvt.ba-ria.phuoc-hung.kp-1", "brvt.ba-ria.hoa-long.ap-bac"}


def test_geocodes_match_codes_and_zone_ids_and_report_the_rest(zones, speakers):
    alert = parse_cap(example("sea-wind-geocode.xml"))
    assert alert.info.language == "vi"
    assert classify(alert) == "priority"  # Moderate
    match = resolve_areas(alert, zones, speakers)
    assert match.zones == {"brvt.con-dao", "brvt.xuyen-moc.binh-chau"}
    assert match.unknown_geocodes == ["MaDVHC=22933"]
    assert match.unmatched_areas == ["Xã Tân Thành, huyện Hàm Thuận Nam, tỉnh Bình Thuận"]


def test_minor_future_advisory_for_the_province(zones, speakers):
    alert = parse_cap(example("depression-advisory.xml"))
    assert (alert.info.severity, alert.info.urgency) == ("Minor", "Future")
    assert classify(alert) == "priority"
    assert resolve_areas(alert, zones, speakers).zones == {"brvt"}


def test_update_and_cancel_reference_the_warning():
    warning = parse_cap(example("typhoon-warning.xml"))
    update = parse_cap(example("typhoon-update.xml"))
    cancel = parse_cap(example("typhoon-cancel.xml"))
    assert update.msg_type == "Update" and cancel.msg_type == "Cancel"
    assert classify(update) == "emergency" and update.info.severity == "Extreme"
    assert [(r.sender, r.identifier, r.sent) for r in update.references] == [
        (warning.sender, warning.identifier, warning.sent)]
    # the cancel's two triples are split across a line break
    assert [(r.sender, r.identifier, r.sent) for r in cancel.references] == [
        (warning.sender, warning.identifier, warning.sent),
        (update.sender, update.identifier, update.sent)]
    assert classify(cancel) == "priority" and expires(cancel) is None
    assert [r.key for r in cancel.references] == [warning.reference.key, update.reference.key]
    assert warning.reference.key == (
        "canhbao@brvt.gov.vn,BRVT-PCTT-2024-0112,2024-11-24T05:30:00+07:00")


def test_a_utc_reference_has_the_key_of_the_alert_it_names():
    utc = "2024-11-23T22:30:00-00:00"
    first = parse_cap(doc(("2024-11-24T05:30:00+07:00", utc)))
    update = parse_cap(doc(("<msgType>Alert</msgType>", "<msgType>Update</msgType>"),
                           ("<scope>Public</scope>", "<scope>Public</scope><references>"
                            f"canhbao@brvt.gov.vn,T-1,{utc}</references>")))
    assert update.references[0].key == first.reference.key


def test_test_alert(zones, speakers):
    alert = parse_cap(example("test-alert.xml"))
    assert alert.status == "Test"
    assert resolve_areas(alert, zones, speakers).zones == {"brvt.vung-tau.thang-tam.kp-1"}
    assert speech_text(alert).startswith("Đây là bản tin thử nghiệm hệ thống cảnh báo thiên tai.")


def test_every_example_parses():
    names = sorted(p.name for p in EXAMPLES.glob("*.xml"))
    assert len(names) >= 7
    for name in names:
        assert speech_text(parse_cap(example(name)))


# -- refused documents ---------------------------------------------------------------------

REQUIRED = [
    ("<identifier>T-1</identifier>", "alert.identifier"),
    ("<sender>canhbao@brvt.gov.vn</sender>", "alert.sender"),
    ("<sent>2024-11-24T05:30:00+07:00</sent>", "alert.sent"),
    ("<status>Actual</status>", "alert.status"),
    ("<msgType>Alert</msgType>", "alert.msgType"),
    ("<scope>Public</scope>", "alert.scope"),
    ("<category>Met</category>", "info[0].category"),
    ("<event>Bão</event>", "info[0].event"),
    ("<urgency>Immediate</urgency>", "info[0].urgency"),
    ("<severity>Severe</severity>", "info[0].severity"),
    ("<certainty>Likely</certainty>", "info[0].certainty"),
    ("<areaDesc>Vùng ven biển</areaDesc>", "info[0].area[0].areaDesc"),
]


@pytest.mark.parametrize("element, field", REQUIRED)
def test_missing_required_field_is_named(element, field):
    assert parse_cap(doc())  # the minimal alert itself is valid
    err = refused(doc((element, "")))
    assert (err.field, err.message) == (field, "is required")
    name = element[1:element.index(">")]
    err = refused(doc((element, f"<{name}>  </{name}>")))
    assert err.field == field, "an empty element is as missing"


@pytest.mark.parametrize("edit, field, words", [
    (("<urgency>Immediate</urgency>", "<urgency>Soon</urgency>"), "info[0].urgency",
     "must be one of Expected, Future, Immediate, Past, Unknown, got 'Soon'"),
    (("<severity>Severe</severity>", "<severity>severe</severity>"), "info[0].severity",
     "must be one of"),
    (("<status>Actual</status>", "<status>Real</status>"), "alert.status", "must be one of"),
    (("<msgType>Alert</msgType>", "<msgType>Notice</msgType>"), "alert.msgType",
     "must be one of"),
    (("<scope>Public</scope>", "<scope>Everyone</scope>"), "alert.scope", "must be one of"),
    (("<category>Met</category>", "<category>Weather</category>"), "info[0].category",
     "must be one of"),
    (("<certainty>Likely</certainty>", "<certainty>Very Likely</certainty>"),
     "info[0].certainty", "must be one of"),
    (("2024-11-24T05:30:00+07:00", "2024-11-24T05:30:00Z"), "alert.sent", "no 'Z'"),
    (("2024-11-24T05:30:00+07:00", "2024-11-24T05:30:00"), "alert.sent", "zone offset"),
    (("2024-11-24T05:30:00+07:00", "24/11/2024 05:30"), "alert.sent", "not a CAP dateTime"),
    (("2024-11-24T05:30:00+07:00", "2024-13-24T05:30:00+07:00"), "alert.sent",
     "not a valid date"),
    (("<identifier>T-1</identifier>", "<identifier>T 1</identifier>"), "alert.identifier",
     "spaces, commas"),
    (("<sender>canhbao@brvt.gov.vn</sender>", "<sender>a,b</sender>"), "alert.sender",
     "spaces, commas"),
    (("<identifier>T-1</identifier>", "<identifier>T-1</identifier><identifier>T-2</identifier>"),
     "alert.identifier", "at most once"),
    (("<scope>Public</scope>", "<scope>Restricted</scope>"), "alert.restriction", "required"),
    (("<scope>Public</scope>", "<scope>Private</scope>"), "alert.addresses", "required"),
    (("<certainty>Likely</certainty>", "<certainty>Likely</certainty><expires>soon</expires>"),
     "info[0].expires", "not a CAP dateTime"),
    (("<certainty>Likely</certainty>",
      "<certainty>Likely</certainty><onset>2024-02-30T00:00:00+07:00</onset>"),
     "info[0].onset", "not a valid date"),
])
def test_bad_value_is_named(edit, field, words):
    err = refused(doc(edit))
    assert err.field == field
    assert words in err.message
    assert str(err).startswith(f"{field}: ")


def test_second_info_block_is_named_by_its_index():
    second = ("</info>\n</alert>", "</info><info><category>Met</category><event>Bão</event>"
              "<urgency>Immediate</urgency><severity>Big</severity><certainty>Likely</certainty>"
              "</info></alert>")
    err = refused(doc(second))
    assert err.field == "info[1].severity"


def test_alert_and_update_need_an_info_block_cancel_does_not(zones, speakers):
    no_info = doc(("<info>", "<!--"), ("</info>", "-->"))
    assert refused(no_info).field == "alert.info"
    cancel = parse_cap(doc(("<info>", "<!--"), ("</info>", "-->"),
                           ("<msgType>Alert</msgType>", "<msgType>Cancel</msgType>"),
                           ("<scope>Public</scope>", "<scope>Public</scope><references>"
                            "canhbao@brvt.gov.vn,T-0,2024-11-24T01:00:00+07:00</references>")))
    assert cancel.infos == [] and cancel.info is None
    assert expires(cancel) is None
    assert resolve_areas(cancel, zones, speakers).zones == set()
    with pytest.raises(CapError) as e:
        classify(cancel)
    assert e.value.field == "alert.info"
    with pytest.raises(CapError):
        speech_text(cancel)


@pytest.mark.parametrize("msg_type", ["Update", "Cancel"])
def test_update_and_cancel_need_references(msg_type):
    err = refused(doc(("<msgType>Alert</msgType>", f"<msgType>{msg_type}</msgType>")))
    assert err.field == "alert.references"
    assert msg_type in err.message


@pytest.mark.parametrize("references, field, words", [
    ("canhbao@brvt.gov.vn,T-0", "alert.references[0]", "not 'sender,identifier,sent'"),
    ("canhbao@brvt.gov.vn,,2024-11-24T01:00:00+07:00", "alert.references[0]", "not 'sender"),
    ("a,T-0,2024-11-24T01:00:00+07:00 b,T-1,2024-11-24T01:00:00+07:00,x",
     "alert.references[1]", "not 'sender"),
    ("a,T-0,2024-11-24T01:00:00+07:00 b,T-1,yesterday", "alert.references[1]",
     "not a CAP dateTime"),
])
def test_bad_references_are_named(references, field, words):
    err = refused(doc(("<msgType>Alert</msgType>", "<msgType>Update</msgType>"),
                      ("<scope>Public</scope>",
                       f"<scope>Public</scope><references>{references}</references>")))
    assert err.field == field and words in err.message


@pytest.mark.parametrize("data, words", [
    (b"", "not well-formed"),
    (b"<alert", "not well-formed"),
    (b"this is not xml", "not well-formed"),
    (b"\xff\xfe\x00garbage", "not well-formed"),
    (MINIMAL.replace("</alert>", "").encode(), "not well-formed"),
    (MINIMAL.replace("cap:1.2", "cap:1.1").encode(),
     "namespace urn:oasis:names:tc:emergency:cap:1.2, got '{urn:oasis:names:tc:emergency:cap:1.1}"),
    (MINIMAL.replace(' xmlns="urn:oasis:names:tc:emergency:cap:1.2"', "").encode(),
     "got 'alert'"),
    (b'<feed xmlns="urn:oasis:names:tc:emergency:cap:1.2"/>', "root element must be <alert>"),
    # found by loadtest/fuzz.py: expat asks Python for the declared encoding, whose errors
    # escaped as LookupError or ValueError (a 500 from the API)
    (b'<?xml version="1.0" encoding="bogus-8"?><alert/>', "unsupported encoding"),
    (b'<?xml version="1.0" encoding="rot13"?><alert/>', "unsupported encoding"),
    (b'<?xml version="1.0" encoding="utf-32"?><alert/>', "unsupported encoding"),
])
def test_malformed_xml_and_wrong_namespace_are_refused(data, words):
    err = refused(data)
    assert err.field == "alert"
    assert words in err.message


def test_oversized_document_is_refused_before_parsing():
    body = doc()
    at_limit = body + b"<!--" + b"x" * (MAX_CAP_BYTES - len(body) - 7) + b"-->"
    assert len(at_limit) == MAX_CAP_BYTES
    assert parse_cap(at_limit).identifier == "T-1"
    # one byte more is refused, even though it would parse
    err = refused(at_limit.replace(b"-->", b" -->"))
    assert err.field == "alert" and f"more than {MAX_CAP_BYTES}" in err.message


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE alert [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&lol9;</identifier></alert>"""


def test_entity_expansion_is_refused_fast():
    started = time.perf_counter()
    err = refused(BILLION_LAUGHS)
    # expanding would take about 3 GB and minutes; a generous bound for a loaded machine
    assert time.perf_counter() - started < 5.0
    assert err.field == "alert" and "DTDs and entities are not allowed" in err.message


def test_external_entity_is_never_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("mật khẩu bí mật")
    xxe = MINIMAL.replace('<?xml version="1.0" encoding="UTF-8"?>',
                          '<?xml version="1.0" encoding="UTF-8"?>\n'
                          f'<!DOCTYPE alert [<!ENTITY x SYSTEM "file://{secret}">]>')
    xxe = xxe.replace("<event>Bão</event>", "<event>&x;</event>")
    err = refused(xxe.encode())
    assert "DTDs and entities are not allowed" in err.message
    assert "mật khẩu" not in str(err)
    plain_doctype = MINIMAL.replace("<alert ", "<!DOCTYPE alert>\n<alert ", 1)
    assert "DTDs" in refused(plain_doctype.encode()).message


# -- areas: coordinates, polygons, circles -------------------------------------------------

@pytest.mark.parametrize("area, field, words", [
    ("<polygon>10.0,107.0 10.1,107.0 10.0,107.0</polygon>", "info[0].area[0].polygon[0]",
     "at least 4"),
    ("<polygon>10.0,107.0 10.1,107.0 10.1,107.1 10.0,107.1</polygon>",
     "info[0].area[0].polygon[0]", "closed"),
    ("<polygon>91.0,107.0 10.1,107.0 10.1,107.1 91.0,107.0</polygon>",
     "info[0].area[0].polygon[0]", "latitude 91.0 is outside -90..90"),
    ("<polygon>10.0,107.0 10.1,181.0 10.1,107.1 10.0,107.0</polygon>",
     "info[0].area[0].polygon[0]", "longitude 181.0 is outside -180..180"),
    ("<polygon>10.0,107.0 10.1,107.0 10.1,107.1 10.0,107.0</polygon>"
     "<polygon>10.0;107.0 10.1,107.0 10.1,107.1 10.0,107.0</polygon>",
     "info[0].area[0].polygon[1]", "not a 'lat,lon' pair"),
    ("<polygon>nan,107.0 10.1,107.0 10.1,107.1 nan,107.0</polygon>",
     "info[0].area[0].polygon[0]", "not a 'lat,lon' pair"),
    ("<circle>10.5,107.2</circle>", "info[0].area[0].circle[0]", "not 'lat,lon radius_km'"),
    ("<circle>10.5,107.2 ten</circle>", "info[0].area[0].circle[0]", "not 'lat,lon radius_km'"),
    ("<circle>10.5,107.2 -1</circle>", "info[0].area[0].circle[0]", "radius -1.0 km"),
    ("<circle>10.5,107.2 30000</circle>", "info[0].area[0].circle[0]", "radius 30000.0 km"),
    ("<circle>-95.5,107.2 5</circle>", "info[0].area[0].circle[0]", "latitude -95.5"),
    ("<geocode><valueName>MaDVHC</valueName></geocode>", "info[0].area[0].geocode[0].value",
     "is required"),
    ("<geocode><value>77</value></geocode>", "info[0].area[0].geocode[0].valueName",
     "is required"),
])
def test_bad_area_is_named(area, field, words):
    err = refused(doc(area=area))
    assert err.field == field and words in err.message


def at(*points: tuple[float, float]) -> list[Speaker]:
    """One speaker per point, each in its own leaf zone z.p0, z.p1, …"""
    return [Speaker(id=f"s{i}", zone=f"z.p{i}", lat=lat, lon=lon)
            for i, (lat, lon) in enumerate(points)]


def covered(area: str, speakers: list[Speaker]) -> list[int]:
    """Indexes of the speakers whose zone the alert's area covers."""
    zones = {"z": Zone(id="z", name="z")}
    zones |= {s.zone: Zone(id=s.zone, name=s.zone, parent="z") for s in speakers}
    match = resolve_areas(parse_cap(doc(area=area)), zones, speakers)
    return sorted(int(z.removeprefix("z.p")) for z in match.zones)


def ring(*points: tuple[float, float]) -> str:
    return "<polygon>" + " ".join(f"{lat:.6f},{lon:.6f}" for lat, lon in points) + "</polygon>"


SQUARE = ring((10.0, 107.0), (10.1, 107.0), (10.1, 107.1), (10.0, 107.1), (10.0, 107.0))
EPS = 0.0005  # about 55 m


def test_polygon_membership_near_every_edge():
    inside = [(10.0 + EPS, 107.05), (10.1 - EPS, 107.05), (10.05, 107.0 + EPS),
              (10.05, 107.1 - EPS), (10.05, 107.05), (10.1 - EPS, 107.1 - EPS)]
    outside = [(10.0 - EPS, 107.05), (10.1 + EPS, 107.05), (10.05, 107.0 - EPS),
               (10.05, 107.1 + EPS), (10.1 + EPS, 107.1 + EPS), (-10.05, -107.05)]
    assert covered(SQUARE, at(*inside, *outside)) == list(range(len(inside)))


def test_concave_polygon_and_rays_through_vertices():
    # a U open to the north: the notch between the arms is outside
    u_shape = ring((10.0, 107.0), (10.3, 107.0), (10.3, 107.1), (10.1, 107.1), (10.1, 107.2),
                   (10.3, 107.2), (10.3, 107.3), (10.0, 107.3), (10.0, 107.0))
    speakers = at((10.2, 107.05), (10.2, 107.25), (10.05, 107.15),  # arms and base
                  (10.2, 107.15), (10.3 - EPS, 107.15))  # in the notch
    assert covered(u_shape, speakers) == [0, 1, 2]
    # a diamond: points level with its side vertices, where a ray passes through a vertex
    diamond = ring((10.0, 107.1), (10.1, 107.0), (10.2, 107.1), (10.1, 107.2), (10.0, 107.1))
    speakers = at((10.1, 107.1), (10.1, 107.0 + EPS), (10.1, 107.0 - EPS), (10.1, 107.25),
                  (10.2 + EPS, 107.1))
    assert covered(diamond, speakers) == [0, 1]


def north_east_of(lat: float, lon: float, km: float) -> list[tuple[float, float]]:
    """Points ``km`` due north and due east of (lat, lon), on a sphere of radius 6371 km."""
    deg = math.degrees(km / 6371.0)
    return [(lat + deg, lon), (lat, lon + deg / math.cos(math.radians(lat)))]


def test_circle_membership_near_the_edge():
    centre = (10.5, 107.2)
    inside = north_east_of(*centre, 9.9) + [centre]
    outside = north_east_of(*centre, 10.1) + [(-10.5, 107.2), (10.5, -72.8)]
    assert covered("<circle>10.5,107.2 10</circle>", at(*inside, *outside)) == [0, 1, 2]


def test_large_polygon_against_many_speakers():
    # a 5 km "circle" of 10,000 vertices (the size cap allows about that many), and 2,000
    # speakers alternately at 4.8 km and 5.2 km from the centre
    n = 10_000
    deg = math.degrees(5.0 / 6371.0)
    vertices = [(10.5 + deg * math.cos(2 * math.pi * k / n),
                 107.2 + deg * math.sin(2 * math.pi * k / n)) for k in range(n)]
    points = [(10.5 + deg * r * math.cos(a), 107.2 + deg * r * math.sin(a))
              for i in range(2000)
              for r, a in [((0.96, 1.04)[i % 2], 2 * math.pi * i / 2000 + 0.0001)]]
    assert covered(ring(*vertices, vertices[0]), at(*points)) == list(range(0, 2000, 2))


def test_result_is_the_smallest_set(zones):
    speakers = [Speaker(id="a", zone="brvt.con-dao.cum-1", lat=10.05, lon=107.05),
                Speaker(id="b", zone="brvt.con-dao.cum-1", lat=10.06, lon=107.06),
                Speaker(id="c", zone="brvt.con-dao.cum-2", lat=10.07, lon=107.07),
                Speaker(id="d", zone="brvt.con-dao.cum-3", lat=None, lon=None),
                Speaker(id="e", zone="nowhere.at-all", lat=10.05, lon=107.05)]
    alone = parse_cap(doc(area=SQUARE))
    # two speakers of cum-1 give it once; a speaker of an unknown zone adds nothing
    assert resolve_areas(alone, zones, speakers).zones == {"brvt.con-dao.cum-1",
                                                           "brvt.con-dao.cum-2"}
    # the district (code 755) covers its clusters: only the district is kept
    with_district = parse_cap(doc(area=SQUARE + "<geocode><valueName>MaDVHC</valueName>"
                                                "<value>755</value></geocode>"))
    assert resolve_areas(with_district, zones, speakers).zones == {"brvt.con-dao"}


def test_area_with_nothing_inside_is_reported(zones, speakers):
    alert = parse_cap(doc(area=SQUARE.replace("107.", "106.")))
    match = resolve_areas(alert, zones, speakers)
    assert match.zones == set() and match.unmatched_areas == ["Vùng ven biển"]
    zone_id = parse_cap(doc(area="<geocode><valueName>loa:zone</valueName>"
                                 "<value>brvt.nowhere</value></geocode>"))
    match = resolve_areas(zone_id, zones, speakers)
    assert match.unknown_geocodes == ["loa:zone=brvt.nowhere"]


# -- levels and speech ---------------------------------------------------------------------

@pytest.mark.parametrize("severity, urgency, level", [
    ("Extreme", "Immediate", "emergency"),
    ("Extreme", "Expected", "emergency"),
    ("Severe", "Immediate", "emergency"),
    ("Severe", "Expected", "emergency"),
    ("Extreme", "Future", "priority"),
    ("Extreme", "Past", "priority"),
    ("Severe", "Unknown", "priority"),
    ("Moderate", "Immediate", "priority"),
    ("Minor", "Immediate", "priority"),
    ("Minor", "Future", "priority"),
    ("Unknown", "Immediate", "priority"),
    ("Unknown", "Unknown", "priority"),
])
def test_classification_table(severity, urgency, level):
    alert = parse_cap(doc(("<severity>Severe</severity>", f"<severity>{severity}</severity>"),
                          ("<urgency>Immediate</urgency>", f"<urgency>{urgency}</urgency>")))
    assert classify(alert) == level


def two_infos(first_language: str, second_language: str) -> bytes:
    """An Extreme/Immediate info in ``first_language`` then a Minor/Future one."""
    second = (f"</info><info><language>{second_language}</language><category>Met</category>"
              "<event>Tin thứ hai</event><urgency>Future</urgency><severity>Minor</severity>"
              "<certainty>Possible</certainty></info></alert>")
    return doc(("<severity>Severe</severity>", "<severity>Extreme</severity>"),
               ("<category>", f"<language>{first_language}</language><category>"),
               ("</info>\n</alert>", second))


@pytest.mark.parametrize("first, second, level, event", [
    ("en-US", "vi-VN", "priority", "Tin thứ hai."),
    ("en-US", "VI", "priority", "Tin thứ hai."),
    ("vi-VN", "vi", "emergency", "Bão."),
    ("en-US", "fr", "emergency", "Bão."),
    ("en-US", "vie", "emergency", "Bão."),  # not a "vi" tag
])
def test_the_vietnamese_info_is_acted_on(first, second, level, event):
    alert = parse_cap(two_infos(first, second))
    assert classify(alert) == level
    assert speech_text(alert) == event  # with no text at all, the event is spoken


def test_language_defaults_to_en_us():
    assert parse_cap(doc()).info.language == "en-US"


def test_speech_drops_repeats_and_keeps_punctuation():
    alert = parse_cap(doc(("<certainty>Likely</certainty>",
                           "<certainty>Likely</certainty>"
                           "<headline>Cảnh báo lũ quét!</headline>"
                           "<description>\n   Cảnh báo   lũ quét!\n   </description>"
                           "<instruction>Di chuyển lên vùng cao</instruction>")))
    assert speech_text(alert) == "Cảnh báo lũ quét!\nDi chuyển lên vùng cao."


def test_long_speech_is_cut_at_a_sentence_end():
    sentences = [f"Mực nước sông tại trạm số {i} đang lên 1.000 mm." for i in range(400)]
    body = " ".join(sentences)
    assert len(body) > 2 * MAX_TTS_CHARS
    alert = parse_cap(doc(("<certainty>Likely</certainty>",
                           f"<certainty>Likely</certainty><description>{body}</description>")))
    text = speech_text(alert)
    assert MAX_TTS_CHARS - 60 < len(text) <= MAX_TTS_CHARS
    assert body.startswith(text) and text.endswith(" mm.")


def test_long_speech_without_sentences_is_cut_at_a_word():
    words = " ".join(f"từ{i}" for i in range(3000))
    alert = parse_cap(doc(("<certainty>Likely</certainty>",
                           f"<certainty>Likely</certainty><description>{words}</description>")))
    text = speech_text(alert)
    assert len(text) <= MAX_TTS_CHARS and words.startswith(text)
    assert words[len(text)] == " "


# -- zone codes from the data file -----------------------------------------------------------

def test_sample_tree_carries_unique_codes():
    tree = ZoneTree.load()
    assert tree.zones["brvt"].code == "77"
    assert tree.zones["brvt.con-dao"].code == "755"
    assert tree.zones["brvt.con-dao.cum-1"].code is None
    codes = [z.code for z in tree.zones.values() if z.code is not None]
    assert len(codes) == len(set(codes)) >= 20


@pytest.mark.parametrize("text, words", [
    ('[a]\ncode = 77', "code must be a string of 1 to 10 digits"),
    ('[a]\ncode = "7a"', "code must be a string of 1 to 10 digits"),
    ('[a]\ncode = "1"\n[a.b]\ncode = "1"', "zones a and a.b share code 1"),
])
def test_bad_zone_codes_are_refused(text, words):
    with pytest.raises(ZoneError, match=words):
        ZoneTree.from_toml(text)


# -- zones placed by the zone file, where no speaker has a position ---------------------------

def place(lat: float, lon: float) -> GeoPoint:
    return GeoPoint(lat=lat, lon=lon)


def box(lat1: float, lon1: float, lat2: float, lon2: float) -> list[tuple[float, float]]:
    return [(lat1, lon1), (lat2, lon1), (lat2, lon2), (lat1, lon2), (lat1, lon1)]


@pytest.fixture
def placed_tree() -> dict[str, Zone]:
    """d (a district with an outline) → c1 (a commune with an outline) → its hamlets h1 (a
    location), h2 (nothing: stands at c1's outline); c2 (a location only) → its hamlet h3
    (nothing: stands at c2's location); h4 (a location, and a positioned speaker)."""
    zones = [Zone(id="d", name="d", boundary=box(10.0, 107.0, 10.4, 107.4)),
             Zone(id="d.c1", name="c1", parent="d", boundary=box(10.0, 107.0, 10.1, 107.1)),
             Zone(id="d.c1.h1", name="h1", parent="d.c1", location=place(10.02, 107.02)),
             Zone(id="d.c1.h2", name="h2", parent="d.c1"),
             Zone(id="d.c2", name="c2", parent="d", location=place(10.3, 107.3)),
             Zone(id="d.c2.h3", name="h3", parent="d.c2"),
             Zone(id="d.c2.h4", name="h4", parent="d.c2", location=place(10.31, 107.31))]
    return {z.id: z for z in zones}


def reached(area: str, zones: dict[str, Zone], speakers: list[Speaker] | None = None) -> set[str]:
    return resolve_areas(parse_cap(doc(area=area)), zones, speakers or []).zones


def test_a_leaf_without_positioned_speakers_is_reached_by_its_own_place_or_its_parents(
        placed_tree):
    # around h1's location only: h1, not its sibling h2 (which stands at c1's whole outline,
    # and the polygon is inside that outline: it meets it, so h2 too)
    near_h1 = ring((10.01, 107.01), (10.03, 107.01), (10.03, 107.03), (10.01, 107.03),
                   (10.01, 107.01))
    assert reached(near_h1, placed_tree) == {"d.c1.h1", "d.c1.h2"}
    # inside c1's outline, away from h1's location: only h2
    corner = ring((10.07, 107.07), (10.09, 107.07), (10.09, 107.09), (10.07, 107.09),
                  (10.07, 107.07))
    assert reached(corner, placed_tree) == {"d.c1.h2"}
    # c2's location: h3 (stands there); h4's own location is elsewhere
    assert reached("<circle>10.3,107.3 0.5</circle>", placed_tree) == {"d.c2.h3"}
    assert reached("<circle>10.31,107.31 0.5</circle>", placed_tree) == {"d.c2.h4"}
    # outside every zone's outline and location: nothing, and the area is reported
    match = resolve_areas(parse_cap(doc(area=SQUARE.replace("107.", "106."))), placed_tree, [])
    assert match.zones == set() and match.unmatched_areas == ["Vùng ven biển"]


def test_positioned_speakers_decide_for_their_zone(placed_tree):
    around_h4 = "<circle>10.31,107.31 0.5</circle>"
    # h4's speaker stands 5 km away from h4's location: the speaker decides, not the location
    away = [Speaker(id="s", zone="d.c2.h4", lat=10.355, lon=107.31)]
    assert reached(around_h4, placed_tree, away) == set()
    assert reached("<circle>10.355,107.31 0.5</circle>", placed_tree, away) == {"d.c2.h4"}
    # a speaker without a position does not count: h4 is placed by its location again
    unknown = [Speaker(id="s", zone="d.c2.h4", lat=None, lon=None)]
    assert reached(around_h4, placed_tree, unknown) == {"d.c2.h4"}


def test_a_band_crossing_an_outline_reaches_it_though_no_vertex_is_inside_either():
    zones = {"z": Zone(id="z", name="z"),
             "z.a": Zone(id="z.a", name="a", parent="z", boundary=box(10.0, 107.0, 10.1, 107.1))}
    band = ring((10.04, 106.9), (10.06, 106.9), (10.06, 107.2), (10.04, 107.2), (10.04, 106.9))
    assert reached(band, zones) == {"z.a"}
    beside = ring((10.04, 107.11), (10.06, 107.11), (10.06, 107.2), (10.04, 107.2),
                  (10.04, 107.11))
    assert reached(beside, zones) == set()
    # the outline wholly inside the alert's polygon: reached
    assert reached(ring((9.9, 106.9), (10.2, 106.9), (10.2, 107.2), (9.9, 107.2),
                        (9.9, 106.9)), zones) == {"z.a"}


def test_a_circle_reaches_an_outline_whose_edge_passes_within_its_radius():
    zones = {"z": Zone(id="z", name="z"),
             "z.a": Zone(id="z.a", name="a", parent="z", boundary=box(10.0, 107.0, 10.1, 107.1))}
    # centres due south of the middle of the southern edge, 1.9 and 2.1 km away: no vertex is
    # within 2 km, only the edge
    inside, outside = (10.0 - math.degrees(km / 6371.0) for km in (1.9, 2.1))
    assert reached(f"<circle>{inside:.6f},107.05 2</circle>", zones) == {"z.a"}
    assert reached(f"<circle>{outside:.6f},107.05 2</circle>", zones) == set()
    # a circle of radius 0 inside the outline (the OASIS earthquake's form)
    assert reached("<circle>10.05,107.05 0</circle>", zones) == {"z.a"}


def test_sample_tree_places_reach_zones_without_any_speaker(zones_with_places):
    alert = parse_cap(example("typhoon-warning.xml"))
    assert resolve_areas(alert, zones_with_places, []).zones == {
        "brvt.vung-tau.thang-tam.kp-1", "brvt.vung-tau.thang-tam.kp-2",
        "brvt.vung-tau.thang-tam.kp-3", "brvt.long-dien.long-hai.kp-hai-trung",
        "brvt.long-dien.long-hai.kp-hai-hoa", "brvt.dat-do.phuoc-hai.kp-hai-tan",
        "brvt.dat-do.phuoc-hai.kp-hai-phong"}
    flood = parse_cap(example("flood-warning.xml"))
    assert resolve_areas(flood, zones_with_places, []).zones == {
        "brvt.ba-ria.phuoc-hung.kp-1", "brvt.ba-ria.phuoc-hung.kp-2",
        "brvt.ba-ria.hoa-long.ap-bac", "brvt.ba-ria.hoa-long.ap-nam",
        "brvt.ba-ria.hoa-long.ap-tay"}


@pytest.fixture(scope="module")
def zones_with_places() -> dict[str, Zone]:
    """The sample tree with its locations and boundaries, as the control plane holds it."""
    return {z.id: Zone(id=z.id, name=z.name, parent=z.parent, code=z.code, boundary=z.boundary,
                       location=None if z.location is None else place(*z.location))
            for z in ZoneTree.load().zones.values()}


# -- the OASIS CAP 1.2 specification's own examples (Appendix A) ------------------------------

OASIS = Path(__file__).resolve().parent / "data" / "oasis"


@pytest.mark.parametrize("name, identifier, msg_type, language, unmatched, unknown", [
    ("homeland-security.xml", "43b080713727", "Alert", "en-US",
     ["U.S. nationwide and interests worldwide"], []),
    ("thunderstorm.xml", "KSTO1055887203", "Alert", "en-US",
     ["EXTREME NORTH CENTRAL TUOLUMNE COUNTY IN CALIFORNIA, EXTREME NORTHEASTERN CALAVERAS "
      "COUNTY IN CALIFORNIA, SOUTHWESTERN ALPINE COUNTY IN CALIFORNIA"],
     ["SAME=006109", "SAME=006009", "SAME=006003"]),
    ("earthquake.xml", "TRI13970876.2", "Update", "en-US",
     ["1 mi. WSW of Brawley, CA; 11 mi. N of El Centro, CA; 30 mi. E of OCOTILLO (quarry); "
      "1 mi. N of the Imperial Fault"], []),
    ("amber-alert.xml", "KAR0-0306112239-SW", "Alert", "en-US", ["Los Angeles County"],
     ["SAME=006037"]),
])
def test_oasis_examples_parse_and_reach_no_zone_of_the_province(
        name, identifier, msg_type, language, unmatched, unknown, zones_with_places, speakers):
    alert = parse_cap((OASIS / name).read_bytes())
    assert (alert.identifier, alert.msg_type, alert.info.language) == (
        identifier, msg_type, language)
    assert speech_text(alert)
    match = resolve_areas(alert, zones_with_places, speakers)
    assert (match.zones, match.unmatched_areas, match.unknown_geocodes) == (
        set(), unmatched, unknown)


def test_oasis_amber_alert_has_two_languages_and_the_first_is_acted_on():
    alert = parse_cap((OASIS / "amber-alert.xml").read_bytes())
    assert [i.language for i in alert.infos] == ["en-US", "es-US"]
    assert alert.info is alert.infos[0] and classify(alert) == "emergency"
    assert speech_text(alert).startswith("Amber Alert in Los Angeles County.")
    quake = parse_cap((OASIS / "earthquake.xml").read_bytes())
    assert quake.references[0].key == "trinet@caltech.edu,TRI13970876.1,2003-06-11T20:30:00-07:00"
    assert quake.info.areas[0].circles[0].radius_km == 0.0
