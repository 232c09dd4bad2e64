"""The bulletin lexicon through the API of an in-process streamer on a real Redis: a province
admin's term is read by the very next normalisation, kept over a restart, gone when deleted;
bad entries are refused naming the field; only admins of the province may change it."""

from __future__ import annotations

from urllib.parse import quote

from tests.harness.api import audit, call, make_user

TERM = "BCH PCTT"
READING = "Ban chỉ huy phòng chống thiên tai"
TEXT = "Họp BCH PCTT xã lúc 8h. BCH PCTT trực 24/24."


async def spoken(s, text: str = TEXT) -> str:
    status, out = await call(s, "POST", "/api/v1/tts/normalize", json={"text": text})
    assert status == 200, out
    return str(out["spoken"])


def path(term: str) -> str:
    return "/api/v1/tts/lexicon/" + quote(term, safe="")


async def test_an_admins_term_is_read_at_once_kept_and_removed(streamer) -> None:
    from streamer.app import Streamer

    s = streamer
    # the built-in readings of BCH and PCTT, one by one
    assert await spoken(s) == ("Họp Ban Chỉ huy phòng, chống thiên tai xã lúc tám giờ. Ban Chỉ "
                               "huy phòng, chống thiên tai trực hai mươi tư/hai mươi tư.")
    status, entry = await call(s, "PUT", path(TERM), json={"reading": READING})
    assert status == 200, entry
    assert (entry["term"], entry["reading"], entry["added_by"]) == (TERM, READING, "admin")
    assert await spoken(s) == (f"Họp {READING} xã lúc tám giờ. {READING} trực hai mươi tư/hai "
                               "mươi tư.")
    # and the voice reads what the preview shows
    assert s.plane.tts.lexicon.expand(TERM) == READING
    [put] = [a for a in await audit(s) if a["action"] == "lexicon_put"]
    assert (put["target"], put["zones"], put["detail"]["reading"]) == (TERM, ["brvt"], READING)

    _, listed = await call(s, "GET", "/api/v1/tts/lexicon")
    rows = {(r["term"], r["source"]): r for r in listed["entries"]}
    assert rows[(TERM, "admin")]["reading"] == READING
    assert rows[("UBND", "built-in")]["in_use"] and rows[("km/h", "built-in")]["kind"] == "unit"

    # over a restart on the same Redis
    await s.close()
    again = Streamer(s.cfg)
    await again.start()
    try:
        again.admin = s.admin
        assert (await spoken(again)).startswith(f"Họp {READING} xã")
        status, gone = await call(again, "DELETE", path(TERM))
        assert (status, gone["reading"]) == (200, READING)
        assert (await spoken(again)).startswith("Họp Ban Chỉ huy phòng, chống thiên tai xã")
        assert (await call(again, "DELETE", path(TERM)))[1]["field"] == "term"
        assert [a["target"] for a in await audit(again) if a["action"] == "lexicon_delete"] == [
            TERM]
    finally:
        await again.close()


async def test_an_override_of_a_built_in_term_and_a_dotted_one(streamer) -> None:
    s = streamer
    assert (await call(s, "PUT", path("KCN"), json={"reading": "cụm công nghiệp"}))[0] == 200
    assert (await call(s, "PUT", path("TT."), json={"reading": "trung tâm"}))[0] == 200
    assert await spoken(s, "KCN Phú Mỹ. TT.Y tế huyện") == "Cụm công nghiệp Phú Mỹ. Trung tâm " \
        "Y tế huyện"
    _, listed = await call(s, "GET", "/api/v1/tts/lexicon")
    kcn = [r for r in listed["entries"] if r["term"] == "KCN"]
    assert [(r["source"], r["in_use"]) for r in kcn] == [("built-in", False), ("admin", True)]


async def test_bad_entries_are_refused_naming_the_field(streamer) -> None:
    s = streamer
    await call(s, "PUT", path("VT"), json={"reading": "Vũng Tàu"})
    for term, body, field in [
        (TERM, {"reading": ""}, "reading"),
        (TERM, {"reading": "   "}, "reading"),
        (TERM, {}, "reading"),
        (TERM, {"reading": "x" * 201}, "reading"),
        (TERM, {"reading": READING, "by": "me"}, "by"),
        ("x" * 65, {"reading": "x"}, "term"),
        (" ", {"reading": "x"}, "term"),
        ("24/24", {"reading": "x"}, "term"),
        ("BCH  PCTT", {"reading": "x"}, "term"),
        ("BCH\tPCTT", {"reading": "x"}, "term"),
        # read again: its own term, another term, or a term inside another's reading
        (TERM, {"reading": "BCH PCTT mở rộng"}, "reading"),
        ("BR-VT", {"reading": "Bà Rịa – VT"}, "reading"),
        ("Tàu", {"reading": "tàu thuyền"}, "term"),
    ]:
        status, err = await call(s, "PUT", path(term), json=body)
        assert (status, err["field"]) == (400, field), (term, body, err)
    _, listed = await call(s, "GET", "/api/v1/tts/lexicon")
    assert [r["term"] for r in listed["entries"] if r["source"] == "admin"] == ["VT"]
    status, err = await call(s, "POST", "/api/v1/tts/normalize", json={"text": ""})
    assert (status, err["field"]) == (400, "text")


async def test_only_admins_of_the_province_change_it(streamer) -> None:
    s = streamer
    district_admin = await make_user(s, "dadmin", ("admin", "brvt.vung-tau"))
    viewer = await make_user(s, "viewer1", ("viewer", "brvt.vung-tau.thang-tam"))
    for method, body in [("PUT", {"reading": READING}), ("DELETE", None)]:
        status, err = await call(s, method, path(TERM), headers=district_admin, json=body)
        assert (status, err["field"]) == (403, "zones")
    assert (await call(s, "GET", "/api/v1/tts/lexicon", headers=viewer))[0] == 200
    assert (await call(s, "POST", "/api/v1/tts/normalize", headers=viewer,
                       json={"text": "UBND"}))[1] == {"spoken": "Ủy ban nhân dân"}
    assert (await call(s, "GET", "/api/v1/tts/lexicon", headers={}))[0] == 401
    assert [a["outcome"] for a in await audit(s, action="put_lexicon")] == ["denied"]
    assert "BCH PCTT" not in [r["term"] for r in (await call(
        s, "GET", "/api/v1/tts/lexicon"))[1]["entries"] if r["source"] == "admin"]


async def test_a_takeover_reads_the_terms_the_last_active_streamer_left(streamer) -> None:
    """A standby's takeover runs ``Plane.load`` (``Streamer._take_control``): the admins' terms
    in Redis, written while it stood by, are read from then on."""
    from streamer.control.models import LexiconEntry

    s = streamer
    await s.state.lexicon.put("LH", LexiconEntry(term="LH", reading="Long Hải",
                                                 added_by="admin", added=1.0))
    assert await spoken(s, "xã LH") == "xã LH"
    await s.plane.load()
    assert await spoken(s, "xã LH") == "xã Long Hải"
