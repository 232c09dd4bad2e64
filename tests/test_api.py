"""The streamer's HTTP API: broadcasts, clips, zones; bad input refused with the field named."""

import asyncio
import subprocess

import aiohttp
import pytest

from tests.harness.api import call


def clip_form(data: bytes, name: str = "a.wav") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type="application/octet-stream")
    return form


@pytest.mark.parametrize("body, field", [
    ({"zones": [], "source": {"kind": "tone"}}, "zones"),
    ({"zones": "brvt", "source": {"kind": "tone"}}, "zones"),
    ({"zones": ["brvt.nowhere"], "source": {"kind": "tone"}}, "zones"),
    ({"zones": ["brvt"], "priority": "loud", "source": {"kind": "tone"}}, "priority"),
    ({"zones": ["brvt"], "priority": 3, "source": {"kind": "tone"}}, "priority"),
    ({"zones": ["brvt"]}, "source"),
    ({"zones": ["brvt"], "source": {"kind": "radio"}}, "source.kind"),
    ({"zones": ["brvt"], "source": {"kind": "tone", "hz": "loud"}}, "source.hz"),
    ({"zones": ["brvt"], "source": {"kind": "tone", "hz": 1e9}}, "source.hz"),
    ({"zones": ["brvt"], "source": {"kind": "tone", "seconds": -1}}, "source.seconds"),
    ({"zones": ["brvt"], "source": {"kind": "tts", "text": "  "}}, "source.text"),
    ({"zones": ["brvt"], "source": {"kind": "tts", "text": "a" * 5001}}, "source.text"),
    ({"zones": ["brvt"], "source": {"kind": "clip", "clip": "feedbeef"}}, "source.clip"),
    ({"zones": ["brvt"], "source": {"kind": "tone"}, "label": 5}, "label"),
    ([1, 2], "body"),
])
async def test_bad_broadcast_bodies_get_400_naming_the_field(streamer, body, field):
    status, err = await call(streamer, "POST", "/api/v1/broadcasts", json=body)
    assert status == 400 and err["field"] == field and err["error"]
    assert streamer.broadcasts.live == {} and streamer.mixer.items == {}
    assert await streamer.state.broadcasts.count() == 0


async def test_not_json_and_oversized_bodies(streamer):
    url = "/api/v1/broadcasts"
    status, err = await call(streamer, "POST", url, data=b"{nope")
    assert (status, err["field"]) == (400, "body")
    status, err = await call(streamer, "POST", url, data=b" " * (300 * 1024))
    assert (status, err["field"]) == (413, "body")
    async with aiohttp.ClientSession() as s, s.get(f"{streamer.http_url}/metrics") as m:
        text = await m.text()
    assert 'loa_api_bad_requests_total{field="body"} 2.0' in text


async def test_broadcast_lifecycle(streamer):
    base = "/api/v1/broadcasts"
    status, b = await call(streamer, "POST", base, json={
        "zones": ["brvt.chau-duc.kim-long"], "source": {"kind": "tone", "hz": 440, "seconds": 30}})
    assert status == 201 and b["channels"] == 3 and b["priority"] == "normal"
    await asyncio.sleep(0.1)
    status, got = await call(streamer, "GET", f"{base}/{b['id']}")
    assert got["state"] == "on_air" and got["on_air_channels"] == 3
    status, e = await call(streamer, "POST", base, json={
        "zones": ["brvt.chau-duc.kim-long.ap-tay"], "priority": "emergency",
        "source": {"kind": "tone", "seconds": 30}})
    await asyncio.sleep(0.1)
    _, got = await call(streamer, "GET", f"{base}/{b['id']}")
    assert got["on_air_channels"] == 2  # preempted in one of its three channels
    status, stopped = await call(streamer, "DELETE", f"{base}/{e['id']}")
    assert status == 200 and stopped["state"] == "stopped"
    await asyncio.sleep(0.1)
    _, got = await call(streamer, "GET", f"{base}/{b['id']}")
    assert got["on_air_channels"] == 3  # resumed
    _, listing = await call(streamer, "GET", base)
    assert [x["id"] for x in listing["broadcasts"]] == [e["id"], b["id"]]  # newest first
    assert (await call(streamer, "GET", f"{base}/999"))[0] == 404
    assert (await call(streamer, "DELETE", f"{base}/abc"))[1]["field"] == "id"


async def test_clip_upload_plays_and_garbage_is_refused(streamer, tmp_path):
    wav = tmp_path / "a.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "sine=f=700:d=1",
                    "-ac", "2", "-ar", "44100", str(wav)], check=True)
    url = "/api/v1/clips"
    status, clip = await call(streamer, "POST", url, data=clip_form(wav.read_bytes()))
    assert status == 201 and abs(clip["seconds"] - 1.0) < 0.05 and clip["name"] == "a.wav"
    status, b = await call(streamer, "POST", "/api/v1/broadcasts", json={
        "zones": ["brvt.con-dao"], "source": {"kind": "clip", "clip": clip["id"]}})
    assert status == 201 and b["channels"] == 3
    status, err = await call(streamer, "POST", url, data=clip_form(b"this is not audio" * 100))
    assert status == 400 and err["field"] == "file"
    status, err = await call(streamer, "POST", url, data=clip_form(b""))
    assert status == 400 and err["field"] == "file"
    status, err = await call(streamer, "POST", url, data=b"raw body")
    assert status == 400 and err["field"] == "body"
    status, err = await call(streamer, "POST", url, data=clip_form(b"\0" * (64 * 1024 * 1024 + 1)))
    assert status == 413 and err["field"] == "file"
    _, listing = await call(streamer, "GET", url)
    assert [c["id"] for c in listing["clips"]] == [clip["id"]]


async def test_zones_and_channels(streamer):
    _, z = await call(streamer, "GET", "/api/v1/zones")
    assert z["zones"][0]["id"] == "brvt" and len(z["zones"][0]["children"]) == 8
    _, c = await call(streamer, "GET", "/api/v1/channels")
    assert len(c["channels"]) == 30
