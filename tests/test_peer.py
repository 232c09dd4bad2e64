"""``GET /peer/clips/{id}`` (``streamer/control/peer.py``): a standby streamer copies the
active one's clips with a peer token signed by the key the pair shares; nobody else reads a
clip that has not aired yet."""

from __future__ import annotations

import time

import aiohttp

from streamer.control.peer import SCHEME, peer_token
from tests.harness.api import call
from tests.harness.audio import tone_wav
from tests.harness.keys import TEST_KEY, listen_query
from wire import token
from wire.auth import SigningKey


async def _get(streamer, path: str, authorization: str | None) -> tuple[int, bytes]:
    headers = {"Authorization": authorization} if authorization else {}
    async with aiohttp.ClientSession() as http, http.get(streamer.http_url + path,
                                                         headers=headers) as r:
        return r.status, await r.read()


async def test_only_the_pair_reads_a_clip_and_gets_it_as_uploaded(streamer) -> None:
    upload = tone_wav(440, 1.0)
    form = aiohttp.FormData()
    form.add_field("file", upload, filename="a.wav")
    status, clip = await call(streamer, "POST", "/api/v1/clips", data=form)
    assert status == 201, clip
    path = f"/peer/clips/{clip['id']}"
    assert (await _get(streamer, path, f"{SCHEME} {peer_token(TEST_KEY)}")) == (200, upload)
    stranger = token.to_url(token.issue(SigningKey.generate(), "peer:streamer", ["clips"],
                                        time.time(), 300))
    listen = listen_query("brvt.vung-tau.thang-tam.kp-1").removeprefix("?token=")
    for authorization in (None, f"{SCHEME} {stranger}", f"{SCHEME} {listen}",
                          f"Bearer {peer_token(TEST_KEY)}", f"{SCHEME} garbage"):
        status, body = await _get(streamer, path, authorization)
        assert status == 401 and b"peer token" in body, (authorization, body)
    status, body = await _get(streamer, "/peer/clips/" + "0" * 32,
                              f"{SCHEME} {peer_token(TEST_KEY)}")
    assert status == 404 and b"no clip" in body
    status, _ = await _get(streamer, "/peer/clips/..%2Fsigning-key.pem",
                           f"{SCHEME} {peer_token(TEST_KEY)}")
    assert status == 404
