"""Listen-in needs a signed-in user, a listen token, or a zone an admin made public: on the
in-process streamer and on a real relay, which checks the streamer's listen tokens offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness.api import call, make_user
from tests.harness.keys import TEST_KEY
from tests.harness.relay import relay_process
from tests.harness.zones import AP_TAY, KP1, KP2, OP
from wire import token
from wire.auth import SigningKey


async def listen(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """The status, and the first 4 bytes of the stream (or the JSON error)."""
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers or {}) as r:
        if r.status == 200:
            return r.status, await r.content.readexactly(4)
        return r.status, await r.json()


def url_token(identity: str, channel: str, now: float, lifetime_s: float = 600) -> str:
    return token.to_url(token.issue(TEST_KEY, identity, [channel], now, lifetime_s))


async def test_the_streamer_serves_listen_in_only_to_whom_may_hear_it(streamer) -> None:
    base = f"{streamer.http_url}/listen/{KP1}.ogg"
    now = time.time()
    status, body = await listen(base)
    assert status == 401 and body["field"] == "token", body
    for bad in ("garbage", url_token("listen:x", KP2, now), url_token("spk-1", KP1, now),
                url_token("listen:x", KP1, now - 7200, 3600),
                token.to_url(token.issue(SigningKey.generate(), "listen:x", [KP1], now, 600))):
        status, body = await listen(f"{base}?token={bad}")
        assert status == 401, (bad, body)
    assert await listen(base, streamer.admin) == (200, b"OggS")  # a signed-in admin
    status, got = await call(streamer, "POST", "/api/v1/listen", json={"channel": KP1})
    assert status == 200 and got["path"].startswith(f"/listen/{KP1}.ogg?token="), got
    assert await listen(streamer.http_url + got["path"]) == (200, b"OggS")
    assert await listen(f"{streamer.http_url}/listen/{KP2}.ogg?token={got['token']}") == (
        401, {"error": "listen token refused: forbidden", "field": "token"})


async def test_who_gets_a_listen_token_and_a_public_zone(streamer) -> None:
    elsewhere = await make_user(streamer, "op-elsewhere", ("operator", AP_TAY))
    here = await make_user(streamer, "op-here", ("operator", OP))
    assert (await call(streamer, "POST", "/api/v1/listen", here, json={"channel": KP1}))[0] == 200
    status, body = await call(streamer, "POST", "/api/v1/listen", elsewhere, json={"channel": KP1})
    assert status == 403, body
    status, body = await call(streamer, "POST", "/api/v1/listen", {}, json={"channel": KP1})
    assert status == 401 and body["field"] == "Authorization", body
    status, body = await call(streamer, "POST", "/api/v1/listen", {}, json={"channel": "no.such"})
    assert status == 404 and body["field"] == "channel", body
    # an admin opens the district: anyone may listen to its channels, and to no other
    status, body = await call(streamer, "PATCH", f"/api/v1/zones/{OP}",
                              json={"public_listen": True})
    assert status == 200 and body["public_listen"] is True, body
    assert await listen(f"{streamer.http_url}/listen/{KP2}.ogg") == (200, b"OggS")
    status, got = await call(streamer, "POST", "/api/v1/listen", {}, json={"channel": KP2})
    assert status == 200 and token.parse(token.from_url(got["token"])).identity == "listen:public"
    assert (await listen(f"{streamer.http_url}/listen/{AP_TAY}.ogg"))[0] == 401


async def test_a_relay_serves_listen_in_to_holders_of_a_streamer_listen_token(
        streamer, tmp_path: Path) -> None:
    async with relay_process(tmp_path, "relay", "--upstream", streamer.media_addr) as relay:
        base = f"{relay.http}/listen/{KP1}.ogg"
        status, body = await listen(base)
        assert status == 401 and "POST /api/v1/listen" in body["error"], body
        status, got = await call(streamer, "POST", "/api/v1/listen", json={"channel": KP1})
        assert status == 200
        assert await listen(relay.http + got["path"]) == (200, b"OggS")
        expired = url_token("listen:x", KP1, time.time() - 7200, 3600)
        assert (await listen(f"{base}?token={expired}"))[1]["error"] == (
            "listen token refused: expired_token")


async def test_registering_a_device_gives_the_key_it_must_pin(streamer) -> None:
    for kind, body in (("speakers", {"id": "spk-pin", "zone": KP1}), ("relays", {"id": "r-pin"})):
        status, got = await call(streamer, "POST", f"/api/v1/{kind}", json=body)
        assert status == 201, got
        assert got["stream_keys"] == [TEST_KEY.public_text]  # the fixture signs with it
