"""Security headers on every HTTP response of the streamer, a relay and a speaker
(``common/httpsec.py``): JSON, metrics, SDP, static files, listen-in, errors and aiohttp's own
404; a Content-Security-Policy on HTML; no ``Server`` header naming aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from loadtest.children import stop_process
from tests.harness.browser import by_testid, chromium_page, connect_microphone, sign_in
from tests.harness.keys import listen_query, with_trust
from tests.harness.speaker import speaker_process

ROOT = Path(__file__).resolve().parent.parent
ZONE = "brvt.vung-tau.thang-tam.kp-1"

EVERY_RESPONSE = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}


async def head_of(url: str, headers: dict[str, str] | None = None,
                  method: str = "GET") -> tuple[int, str, CIMultiDictProxy[str]]:
    """Status, content type and headers; reads no more of the body than the headers (the
    listen-in never ends)."""
    async with aiohttp.ClientSession() as s, s.request(method, url, headers=headers) as r:
        return r.status, r.content_type, r.headers


def assert_secured(headers: CIMultiDictProxy[str], **overrides: str) -> None:
    want = {**EVERY_RESPONSE, **overrides}
    assert {name: headers.get(name) for name in want} == want
    assert "aiohttp" not in headers.get("Server", "").lower()
    assert "Strict-Transport-Security" not in headers  # plain HTTP: no HSTS


async def test_streamer_responses_carry_the_security_headers(streamer) -> None:
    base = streamer.http_url
    cases: list[tuple[str, dict[str, str] | None, int, str]] = [
        ("/api/v1/zones", streamer.admin, 200, "application/json"),
        ("/api/v1/zones", None, 401, "application/json"),  # signed out: a JSON error
        ("/metrics", None, 200, "text/plain"),
        ("/healthz", None, 200, "application/json"),
        (f"/channels/{ZONE}.sdp?addr=127.0.0.1&port=5004", None, 200, "application/sdp"),
        ("/channels/nowhere.sdp", None, 404, "application/json"),
        ("/no/such/route", None, 404, "text/plain"),  # aiohttp's own 404
        ("/studio/studio.js", None, 200, "application/javascript"),
        ("/studio/studio.css", None, 200, "text/css"),
    ]
    for path, headers, status, ctype in cases:
        got = await head_of(base + path, headers)
        assert got[:2] == (status, ctype), path
        assert_secured(got[2])
        assert "Content-Security-Policy" not in got[2], path  # only pages get one
    status, _, headers = await head_of(base + "/api/v1/zones", method="PATCH")
    assert status == 405
    assert_secured(headers)


async def test_listen_in_may_be_played_by_a_page_on_another_origin(streamer) -> None:
    url = f"{streamer.http_url}/listen/{ZONE}.ogg{listen_query(ZONE)}"
    status, ctype, headers = await head_of(url)
    assert (status, ctype) == (200, "audio/ogg")
    assert_secured(headers, **{"Cross-Origin-Resource-Policy": "cross-origin"})


async def test_studio_page_has_a_strict_csp_and_cannot_be_framed(streamer) -> None:
    status, ctype, headers = await head_of(f"{streamer.http_url}/studio")
    assert (status, ctype) == (200, "text/html")
    assert_secured(headers)
    csp = {d.split()[0]: d.split()[1:] for d in headers["Content-Security-Policy"].split("; ")}
    assert csp["default-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert not any("'unsafe-inline'" in v or "'unsafe-eval'" in v for v in csp.values())


@pytest.fixture
async def relay_http(streamer, tmp_path: Path) -> AsyncIterator[str]:
    """A relay process subscribed to the in-process streamer: its HTTP base URL."""
    log = tmp_path / "relay.log"
    with open(log, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.main", "--id", "sec-relay", "--media", "127.0.0.1:0",
            "--http", "127.0.0.1:0", "--upstream", streamer.media_addr,
            *with_trust([], tmp_path, "sec-relay"),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=err)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line, log.read_text()
        yield json.loads(line)["http"]
    finally:
        await stop_process(proc)


async def test_relay_responses_carry_the_security_headers(relay_http: str) -> None:
    for path, status in [("/healthz", 200), ("/metrics", 200), ("/no/such/route", 404),
                         (f"/channels/{ZONE}.sdp?addr=127.0.0.1&port=0", 400)]:
        got = await head_of(relay_http + path)
        assert got[0] == status, path
        assert_secured(got[2])
    status, ctype, headers = await head_of(f"{relay_http}/listen/{ZONE}.ogg{listen_query(ZONE)}")
    assert (status, ctype) == (200, "audio/ogg")
    assert_secured(headers, **{"Cross-Origin-Resource-Policy": "cross-origin"})


async def test_speaker_responses_carry_the_security_headers(streamer, tmp_path: Path) -> None:
    async with speaker_process(tmp_path, "sec-speaker", "--channel", ZONE,
                               "--upstream", streamer.media_addr,
                               "--var-dir", str(tmp_path / "speaker")) as sp:
        base: Any = f"http://{sp.info['http']}"
        for path, status in [("/healthz", 200), ("/metrics", 200), ("/no/such/route", 404)]:
            got = await head_of(base + path)
            assert got[0] == status, path
            assert_secured(got[2])


def silent_wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48_000)
        w.writeframes(b"\0\0" * 48_000)
    return path


@contextlib.asynccontextmanager
async def framing_page(src: str) -> AsyncIterator[str]:
    """The URL of a page, on an origin of its own (localhost, not 127.0.0.1), that frames
    ``src``; its server sends no security headers."""
    async def page(_: web.Request) -> web.Response:
        return web.Response(text=f'<iframe src="{src}"></iframe>', content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://localhost:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()


async def test_studio_page_works_under_its_csp_and_refuses_to_be_framed(
        streamer, tmp_path: Path) -> None:
    creds = json.loads((tmp_path / "var" / "admin-credentials.json").read_text())
    async with chromium_page(silent_wav(tmp_path / "mic.wav")) as page:
        console: list[str] = []
        page.on("console", lambda m: console.append(m.text))
        await sign_in(page, streamer.http_url, creds["user"], creds["password"])
        await connect_microphone(page)  # getUserMedia, WebRTC and the API under the CSP
        assert not [m for m in console if "Content Security Policy" in m], console

        # a page of another origin that frames the studio gets no studio in its frame
        async with framing_page(f"{streamer.http_url}/studio") as framer:
            await page.goto(framer)  # returns once the frame has loaded or failed
            framed = page.frames[1]
            assert not framed.url.startswith(streamer.http_url), framed.url  # load refused
            assert await framed.locator(by_testid("login")).count() == 0
