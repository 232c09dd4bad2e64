"""Voices through the API of an in-process streamer configured with an HTTP voice file that
points at a fake service the test starts (tests/harness/fake_tts.py): a zone's voice reads
its storm bulletin, the fake failing falls back to espeak-ng visibly (the broadcast record,
the metric, the preview's header), and the cache answers a repeated bulletin."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.harness.api import call
from tests.harness.fake_tts import FakeTts
from tests.harness.streamer import in_process

DISTRICT = "brvt.vung-tau"
LEAF = "brvt.vung-tau.thang-tam.kp-1"
STORM = ("Hồi 13 giờ ngày 05/9, tâm bão ở khoảng 17,5 độ Vĩ Bắc; 110,2 độ Kinh Đông, gió cấp 12 "
         "(118-133 km/h). UBND tỉnh cấm xe qua QL51 từ 17h–19h.")


@pytest.fixture
def fake():
    f = FakeTts().start()
    yield f
    f.stop()


@pytest.fixture
async def voiced(tmp_path, redis_url, fake):
    """The ``streamer`` fixture's streamer, with a voice file and a province lexicon."""
    from tests.conftest import DAYTIME

    (tmp_path / "tts-key").write_text("s3cret\n")
    voice_file = tmp_path / "voice.toml"
    voice_file.write_text(f'''
default_voice = "north"
[http]
url = "{fake.url}/speak"
request = {{ text = "{{text}}", voice = "{{voice}}", speed = "{{speed}}" }}
headers = {{ token = "{{token}}" }}
credentials_file = "{tmp_path / 'tts-key'}"
attempts = 2
backoff_s = 0
cooldown_s = 0
[voices]
north = {{ http = "banmai", espeak = "vi" }}
south = {{ http = "lannhi", espeak = "vi-vn-x-south" }}
''')
    lexicon = tmp_path / "brvt.json"
    lexicon.write_text(json.dumps({"terms": {"BR-VT": "Bà Rịa – Vũng Tàu"}}))
    s = await in_process(tmp_path, redis_url, DAYTIME, tts_voice_file=str(voice_file),
                         tts_lexicon=str(lexicon))
    yield s
    await s.close()


async def bulletin(s, text: str) -> dict:
    status, b = await call(s, "POST", "/api/v1/broadcasts", json={
        "zones": [LEAF], "source": {"kind": "tts", "text": text}})
    assert status == 201, b
    return b


async def metric(s, line: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{s.http_url}/metrics") as m:
        text = await m.text()
    return next((x for x in text.splitlines() if x.startswith(line)), "")


async def test_zone_voice_fallback_and_cache(voiced, fake) -> None:
    s = voiced
    assert await call(s, "GET", "/api/v1/tts/voices") == (200, {"voices": ["north", "south"]})

    status, err = await call(s, "PATCH", f"/api/v1/zones/{DISTRICT}", json={"voice": "west"})
    assert (status, err["field"]) == (400, "voice")
    status, z = await call(s, "PATCH", f"/api/v1/zones/{DISTRICT}", json={"voice": "south"})
    assert (status, z["voice"]) == (200, "south")

    # the commune inherits its district's southern voice; the service gets the spoken words
    b = await bulletin(s, STORM)
    assert b["source"]["voice"] == "http:lannhi" and "tts_fallback" not in b["source"]
    assert b["source"]["seconds"] == pytest.approx(1.5, abs=0.05)
    [req] = fake.requests
    body = req.json()
    assert (body["voice"], body["speed"], req.headers["token"]) == ("lannhi", 1.0, "s3cret")
    assert "một trăm mười tám đến một trăm ba mươi ba ki-lô-mét trên giờ" in body["text"]
    assert "Ủy ban nhân dân tỉnh cấm xe qua quốc lộ năm mươi mốt" in body["text"]

    # the service fails: espeak-ng reads it, and the record, the metric and the log say so
    fake.mode = "500"
    b2 = await bulletin(s, "Bản tin của tỉnh BR-VT lúc 6h sáng.")
    assert b2["source"]["voice"] == "espeak-ng:vi-vn-x-south"
    assert b2["source"]["tts_fallback"] == (
        "http:lannhi: the service answered 500 Internal Server Error (after 2 attempts)")
    assert b2["source"]["seconds"] > 1.5
    assert fake.calls("/speak") == 3
    assert fake.requests[-1].json()["text"] == (
        "Bản tin của tỉnh Bà Rịa – Vũng Tàu lúc sáu giờ sáng.")  # the province's term
    _, got = await call(s, "GET", f"/api/v1/broadcasts/{b2['id']}")
    assert got["source"]["tts_fallback"] == b2["source"]["tts_fallback"]
    assert await metric(s, 'loa_tts_fallback_total{reason="http_error"}') == \
        'loa_tts_fallback_total{reason="http_error"} 1.0'

    # the first bulletin again: from the cache, the failing service is not asked
    b3 = await bulletin(s, STORM)
    assert b3["source"]["voice"] == "http:lannhi" and "tts_fallback" not in b3["source"]
    assert fake.calls("/speak") == 3
    assert await metric(s, "loa_tts_cache_hits_total") == "loa_tts_cache_hits_total 1.0"

    # the preview shows the fallback too
    async with aiohttp.ClientSession() as http, http.post(
            f"{s.http_url}/api/v1/tts/preview", headers=s.admin,
            json={"text": "Thử giọng", "voice": "north"}) as r:
        assert r.status == 200 and r.content_type == "audio/wav"
        assert r.headers["X-Loa-Voice"] == "espeak-ng:vi"
        assert r.headers["X-Loa-Tts-Fallback"].startswith("http:banmai: the service answered")

    # dropping the district's voice: the default (north) again
    status, z = await call(s, "PATCH", f"/api/v1/zones/{DISTRICT}",
                           json={"inherit_voice": True})
    assert (status, z["voice"]) == (200, None)
    fake.mode = "ok"
    b4 = await bulletin(s, "Bản tin chiều.")
    assert b4["source"]["voice"] == "http:banmai"


async def test_espeak_only_zone_voices(streamer) -> None:
    """Without a voice file the zone voices are espeak-ng's three Vietnamese dialects."""
    s = streamer
    assert await call(s, "GET", "/api/v1/tts/voices") == (
        200, {"voices": ["north", "central", "south"]})
    status, err = await call(s, "PATCH", f"/api/v1/zones/{DISTRICT}", json={"voice": "khmer"})
    assert (status, err["field"]) == (400, "voice")
    status, _ = await call(s, "PATCH", f"/api/v1/zones/{DISTRICT}", json={"voice": "central"})
    assert status == 200
    b = await bulletin(s, "Bão số 3 đổ bộ vào TP. Vũng Tàu, gió 90 km/h.")
    assert b["source"]["voice"] == "espeak-ng:vi-vn-x-central"
    assert "tts_fallback" not in b["source"] and b["source"]["seconds"] > 2
    # a zone elsewhere: the default voice
    status, other = await call(s, "POST", "/api/v1/broadcasts", json={
        "zones": ["brvt.chau-duc.kim-long"], "source": {"kind": "tts", "text": "Xin chào"}})
    assert (status, other["source"]["voice"]) == (201, "espeak-ng:vi")


async def test_an_approved_bulletin_records_the_voice_that_read_it(voiced, fake) -> None:
    """Approval rebuilds the source: its record says which voice read it then (here the
    service is back), not what the fallback did when it was asked for."""
    s = voiced
    status, _ = await call(s, "PATCH", f"/api/v1/zones/{DISTRICT}",
                           json={"requires_approval": True})
    assert status == 200
    fake.mode = "500"
    b = await bulletin(s, "Thông báo cắt điện chiều nay.")
    assert b["state"] == "pending_approval"
    assert b["source"]["voice"] == "espeak-ng:vi" and "tts_fallback" in b["source"]
    fake.mode = "ok"
    status, done = await call(s, "POST", f"/api/v1/approvals/broadcasts/{b['id']}",
                              json={"decision": "approve"})
    assert status == 200, done
    assert done["source"]["voice"] == "http:banmai" and "tts_fallback" not in done["source"]
    _, got = await call(s, "GET", f"/api/v1/broadcasts/{b['id']}")
    assert got["source"]["voice"] == "http:banmai" and "tts_fallback" not in got["source"]


async def test_the_voice_is_given_an_admins_term_on_top_of_the_file(voiced, fake) -> None:
    s = voiced
    status, _ = await call(s, "PUT", "/api/v1/tts/lexicon/LH", json={"reading": "Long Hải"})
    assert status == 200
    await bulletin(s, "UBND xã LH, tỉnh BR-VT thông báo.")
    assert fake.requests[-1].json()["text"] == (
        "Ủy ban nhân dân xã Long Hải, tỉnh Bà Rịa – Vũng Tàu thông báo.")
    _, listed = await call(s, "GET", "/api/v1/tts/lexicon")
    assert [(r["term"], r["source"]) for r in listed["entries"]
            if r["source"] != "built-in"] == [("BR-VT", "file"), ("LH", "admin")]
