"""The operator console (``streamer/console/``, ``docs/console.md``): served at ``/`` with the
security headers, every string in both languages, and, in a real Chromium against a real
streamer, sign-in, the dashboard, the language switch, a commune operator's narrower view,
keyboard use at 390 px, and the composer airing a TTS bulletin (checked through the API).
Screenshots of each page in Vietnamese and English go to ``tests/harness/console.ARTIFACTS``.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.conftest import NIGHT
from tests.harness.api import call, make_user
from tests.harness.browser import by_testid
from tests.harness.console import (
    COMMUNE,
    NEIGHBOUR,
    PASSWORD,
    admin_credentials,
    assert_heard,
    click_until,
    console_page,
    focus_is_visible,
    go,
    loa_up_stack,
    low_contrast,
    open_console,
    screenshot,
    sign_in,
    switch_lang,
    tab_to,
    tree_zones,
    tts_reference,
)

if TYPE_CHECKING:
    from playwright.async_api import Page

STATIC = Path(__file__).resolve().parent.parent / "streamer" / "console" / "static"
#: every route of the console (CONSOLE.md)
ROUTES = ["/", "/compose", "/emergency", "/schedules", "/clips", "/board", "/speakers",
          "/audit", "/reports", "/users", "/zones", "/lexicon", "/listen", "/approvals"]


# ---- serving -----------------------------------------------------------------------------


async def get(url: str) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        await r.read()
        return r.status, r.content_type, r.headers


async def test_console_is_served_at_root_with_the_security_headers(streamer) -> None:
    base = streamer.http_url
    status, ctype, headers = await get(base + "/")
    assert (status, ctype) == (200, "text/html")
    assert headers["Cache-Control"] == "no-cache"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    for path, want in [("/console/app.js", "text/javascript"), ("/console/console.css", "text/css"),
                       ("/console/i18n/vi.json", "application/json"),
                       ("/console/i18n/en.json", "application/json")]:
        status, ctype, headers = await get(base + path)
        assert (status, ctype) == (200, want), path
        assert headers["Cache-Control"] == "no-cache", path
        assert headers["X-Frame-Options"] == "DENY", path
        assert "Content-Security-Policy" not in headers, path  # only pages get one
    for path in ["/console/nothing.js", "/console/%2e%2e/__init__.py", "/console/../app.py",
                 "/console/i18n/"]:
        status, _, headers = await get(base + path)
        assert status == 404, path
        assert headers["X-Content-Type-Options"] == "nosniff", path


def literal_keys() -> set[str]:
    """Every i18n key the static files name literally: t("…") and data-i18n*="…"."""
    keys: set[str] = set()
    for f in STATIC.glob("*.*"):
        text = f.read_text()
        keys |= set(re.findall(r"""\bt\(\s*["']([a-z_]+\.[a-z_.0-9]+)["']""", text))
        keys |= set(re.findall(r'data-i18n(?:-label|-placeholder)?="([^"]+)"', text))
    return keys


def test_every_string_is_in_both_languages() -> None:
    vi = json.loads((STATIC / "i18n" / "vi.json").read_text())
    en = json.loads((STATIC / "i18n" / "en.json").read_text())
    assert set(vi) == set(en), set(vi) ^ set(en)
    used = literal_keys()
    assert len(used) > 50, "the key scan found too little: has the t() call changed?"
    assert not used - set(vi), sorted(used - set(vi))
    assert all(v.strip() for v in [*vi.values(), *en.values()])
    assert vi["nav.dashboard"] != en["nav.dashboard"]


# ---- in the browser ------------------------------------------------------------------------


async def test_admin_signs_in_and_sees_the_dashboard_in_both_languages(
        streamer, tmp_path: Path) -> None:
    user, password = admin_credentials(tmp_path)
    async with console_page() as page:
        await open_console(page, streamer.http_url)
        assert await page.get_attribute("html", "lang") == "vi"
        assert await low_contrast(page) == []
        await screenshot(page, "sign-in-vi")
        # a wrong password: the API's message next to the password field, nothing else opens
        await page.fill(by_testid("sign-in-user"), user)
        await page.fill(by_testid("sign-in-password"), "not the password")
        await page.click(by_testid("sign-in-submit"))
        error = page.locator(by_testid("sign-in-password-error"))
        await error.wait_for(state="visible")
        assert "wrong user name or password" in await error.inner_text()
        assert await low_contrast(page) == []
        assert await page.get_attribute(by_testid("sign-in-password"), "aria-invalid") == "true"
        assert await page.locator(by_testid("view")).is_hidden()

        await sign_in(page, streamer.http_url, user, password)
        assert user in await page.inner_text(by_testid("who-name"))
        zones = await tree_zones(page)
        assert zones[0] == "brvt" and COMMUNE in zones and NEIGHBOUR in zones
        assert "Phường Thắng Tam" in await page.inner_text(by_testid(f"zone-{COMMUNE}"))
        assert "Quản trị viên" in await page.inner_text(by_testid("who-grants"))
        assert await page.inner_text(by_testid("nav-dashboard")) == "Tổng quan"
        await screenshot(page, "dashboard-vi")

        await switch_lang(page, "en")
        assert await page.inner_text(by_testid("nav-dashboard")) == "Dashboard"
        assert "Admin" in await page.inner_text(by_testid("who-grants"))
        assert COMMUNE in await tree_zones(page)  # the page is rebuilt, not emptied
        await screenshot(page, "dashboard-en")
        await page.reload()  # the choice is kept, and so is the session (this tab)
        await page.locator(by_testid("zone-tree") + "[data-state]").wait_for()
        assert await page.inner_text(by_testid("nav-dashboard")) == "Dashboard"
        for route in ROUTES:
            await go(page, route)
            await screenshot(page, f"{route.strip('/') or 'dashboard'}-en")
        await switch_lang(page, "vi")
        assert await page.inner_text(by_testid("nav-compose")) == "Soạn bản tin"
        for route in ROUTES:
            await go(page, route)
            assert await low_contrast(page) == [], route
            await screenshot(page, f"{route.strip('/') or 'dashboard'}-vi")
        await page.click(by_testid("who-grants") + " summary")  # who may do what, unfolded
        assert "quản lý người dùng" in await page.inner_text(by_testid("who-grants"))
        assert await low_contrast(page) == []
        await screenshot(page, "who-vi")

        await page.click(by_testid("sign-out"))
        await page.locator(by_testid("sign-in")).wait_for(state="visible")
        assert await page.evaluate("sessionStorage.getItem('loa.console.token')") is None
        await screenshot(page, "sign-in-after-sign-out-vi")


async def test_a_commune_operator_sees_and_targets_only_their_commune(streamer) -> None:
    await make_user(streamer, "op-thang-tam", ("operator", COMMUNE), password=PASSWORD)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "op-thang-tam", PASSWORD)
        kps = [f"{COMMUNE}.kp-{i}" for i in (1, 2, 3)]
        assert await tree_zones(page) == ["brvt", "brvt.vung-tau", COMMUNE, *kps]
        assert NEIGHBOUR not in await page.inner_text("body")
        grants = await page.inner_text(by_testid("who-grants"))
        assert "Điều hành viên" in grants and "Quản trị viên" not in grants
        # the pages they may not open: users left out, emergency disabled with the reason
        assert await page.locator(by_testid("nav-users")).count() == 0
        emergency = page.locator(by_testid("nav-emergency"))
        assert await emergency.get_attribute("aria-disabled") == "true"
        assert "Cần vai trò phát khẩn cấp" in await emergency.inner_text()
        assert await page.locator(f'{by_testid("nav")} a[href="#/emergency"]').count() == 0
        await screenshot(page, "dashboard-operator-vi")

        await go(page, "/compose")
        boxes = await page.locator(by_testid("compose-zones") + " input").evaluate_all(
            "els => els.map(e => e.value)")
        assert boxes == [COMMUNE, *kps]  # the province and district shown, not tickable
        assert "không thuộc quyền điều hành" in await page.inner_text(by_testid("compose-zones"))
        priorities = await page.locator(by_testid("compose-priority") + " option").evaluate_all(
            "els => els.map(e => e.value)")
        assert "emergency" not in priorities
        await screenshot(page, "compose-operator-vi")


async def test_the_composer_airs_a_tts_bulletin_to_one_commune(streamer) -> None:
    await make_user(streamer, "op-thang-tam", ("operator", COMMUNE), password=PASSWORD)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "op-thang-tam", PASSWORD)
        await go(page, "/compose")
        # the API's refusal lands next to the field it names, and nothing airs
        await page.fill(by_testid("compose-text"), "...")
        await page.check(by_testid(f"compose-zone-{COMMUNE}"))
        await page.click(by_testid("compose-submit"))
        error = page.locator(by_testid("compose-text-error"))
        await error.wait_for(state="visible")
        assert await error.inner_text()
        assert await page.get_attribute(by_testid("compose-text"), "aria-invalid") == "true"
        status, listed = await call(streamer, "GET", "/api/v1/broadcasts")
        assert (status, listed["broadcasts"]) == (200, [])
        assert await low_contrast(page) == []
        await screenshot(page, "compose-refused-vi")

        text = "Thông báo lịch tiêm chủng lúc 7 giờ 30 sáng ngày 25/11/2026 tại nhà văn hoá."
        await page.fill(by_testid("compose-text"), text)
        await page.click(by_testid("preview-make"))
        await page.locator(by_testid("preview-state") + '[data-state="ready"]').wait_for()
        assert not await page.locator(by_testid("preview-play")).is_disabled()
        await page.fill(by_testid("compose-label"), "Tiêm chủng")
        # a ticked commune covers its hamlets: they show ticked and locked
        assert await page.locator(by_testid(f"compose-zone-{COMMUNE}.kp-1")).is_disabled()
        bid = await submit(page, "on_air")
        await screenshot(page, "compose-on-air-vi")

        # the effect, through the API: on air in the commune's channels and nowhere else
        status, b = await call(streamer, "GET", f"/api/v1/broadcasts/{bid}")
        assert status == 200
        assert (b["state"], b["zones"], b["created_by"]) == ("on_air", [COMMUNE], "op-thang-tam")
        assert b["source"]["kind"] == "tts" and b["source"]["text"] == text
        assert b["label"] == "Tiêm chủng"
        status, ch = await call(streamer, "GET", "/api/v1/channels")
        on_air = {c["id"]: c["on_air"] for c in ch["channels"]}
        hamlets = {f"{COMMUNE}.kp-{i}" for i in (1, 2, 3)}
        assert {z for z, i in on_air.items() if i == bid} == hamlets

        await page.click(by_testid("compose-stop"))
        await page.locator(by_testid("compose-result") + '[data-state="stopped"]').wait_for()
        status, b = await call(streamer, "GET", f"/api/v1/broadcasts/{bid}")
        assert b["state"] == "stopped"


async def test_at_390_px_the_console_works_by_keyboard(streamer, tmp_path: Path) -> None:
    user, password = admin_credentials(tmp_path)
    async with console_page(viewport=(390, 844)) as page:
        await open_console(page, streamer.http_url)
        await tab_to(page, "sign-in-user")
        assert await focus_is_visible(page)
        await page.keyboard.type(user)
        await page.keyboard.press("Tab")
        await page.keyboard.type(password)
        await page.keyboard.press("Enter")
        await page.locator(by_testid("zone-tree") + "[data-state]").wait_for()
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390

        # the nav is folded behind its menu button
        assert not await page.locator(by_testid("nav-compose")).is_visible()
        await tab_to(page, "nav-toggle")
        assert await focus_is_visible(page)
        await page.keyboard.press("Enter")
        assert await page.get_attribute(by_testid("nav-toggle"), "aria-expanded") == "true"
        await screenshot(page, "menu-390-vi")
        await tab_to(page, "nav-compose")
        await page.keyboard.press("Enter")
        await page.locator('#view[data-route="compose"]').wait_for()
        assert not await page.locator(by_testid("nav-compose")).is_visible()  # folded again
        await screenshot(page, "compose-390-vi")

        await tab_to(page, "nav-toggle", backwards=True)
        await page.keyboard.press("Enter")
        await tab_to(page, "nav-dashboard")
        await page.keyboard.press("Enter")
        await page.locator('#view[data-route="dashboard"]').wait_for()
        # a branch of the tree folds and unfolds with Enter
        hamlet = page.locator(by_testid(f"zone-{COMMUNE}.kp-1"))
        assert await hamlet.is_visible()
        await tab_to(page, f"zone-toggle-{COMMUNE}")
        assert await focus_is_visible(page)
        await page.keyboard.press("Enter")
        assert not await hamlet.is_visible()
        await page.keyboard.press("Enter")
        assert await hamlet.is_visible()
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        assert await low_contrast(page) == []
        await screenshot(page, "dashboard-390-vi")
        await switch_lang(page, "en")
        await screenshot(page, "dashboard-390-en")


async def test_the_dashboard_maps_speakers_and_shows_an_emergency_unmistakably(
        streamer, tmp_path: Path) -> None:
    user, password = admin_credentials(tmp_path)
    for i, (lat, lon) in enumerate([(10.3460, 107.0843), (10.3492, 107.0870),
                                    (10.3515, 107.0801)], 1):
        status, body = await call(streamer, "POST", "/api/v1/speakers", json={
            "id": f"spk-tt-{i}", "zone": f"{COMMUNE}.kp-{min(i, 2)}", "name": f"Loa {i}",
            "lat": lat, "lon": lon})
        assert status == 201, body
    status, body = await call(streamer, "POST", "/api/v1/speakers", json={
        "id": "spk-ls-1", "zone": f"{NEIGHBOUR}.ap-1"})  # no coordinates: not on the map
    assert status == 201, body
    async with console_page() as page:
        await sign_in(page, streamer.http_url, user, password)
        kp2 = page.locator(by_testid(f"zone-{COMMUNE}.kp-2"))
        assert await kp2.get_attribute("data-unknown") == "2"  # registered, never reported
        assert await kp2.get_attribute("data-online") == "0"
        assert await page.locator(by_testid(f"zone-{COMMUNE}")).get_attribute(
            "data-unknown") == "3"
        for i in (1, 2, 3):
            dot = page.locator(by_testid(f"map-speaker-spk-tt-{i}"))
            assert "spk-unknown" in str(await dot.get_attribute("class"))
        assert await page.locator(by_testid("map-speaker-spk-ls-1")).count() == 0
        # the map shows one area at a time: the commune's speakers, then none next door
        await page.select_option(by_testid("map-area"), COMMUNE)
        assert await page.locator("circle[data-speaker]").count() == 3
        await page.select_option(by_testid("map-area"), NEIGHBOUR)
        assert await page.locator("circle[data-speaker]").count() == 0
        # with zone coordinates (zone file) the area is still drawn, with no speaker on it
        shown = page.locator(by_testid("map-empty")).or_(page.locator(by_testid("map-summary")))
        assert (await shown.inner_text()).startswith(("0 loa", "Chưa có toạ độ"))
        await page.select_option(by_testid("map-area"), "brvt")
        # Côn Đảo, 180 km out to sea, sits in an inset: the mainland fills the map's width
        inset = page.locator(by_testid("map-inset"))
        assert "Côn Đảo" in await page.inner_text(by_testid("map-inset-note"))
        box = await inset.bounding_box()
        con_dao = await page.locator('g.zone-loc[data-zone="brvt.con-dao"] rect').bounding_box()
        assert box and con_dao and box["x"] <= con_dao["x"] <= box["x"] + box["width"]
        assert box["y"] <= con_dao["y"] <= box["y"] + box["height"]
        xs = await page.locator("g.zone-loc:not([data-inset]) rect").evaluate_all(
            "els => els.map(e => e.getBoundingClientRect().x)")
        svg_box = await page.locator("svg.map").bounding_box()
        assert svg_box and (max(xs) - min(xs)) > 0.35 * svg_box["width"]
        await page.select_option(by_testid("map-area"), "brvt.vung-tau")
        assert await inset.count() == 0  # nothing far inside a city
        await page.select_option(by_testid("map-area"), "brvt")
        assert await page.locator(by_testid("emergency-banner")).is_hidden()

        status, e = await call(streamer, "POST", "/api/v1/emergency", json={
            "zones": [f"{COMMUNE}.kp-2"], "label": "Bão số 9 đổ bộ",
            "source": {"kind": "tone", "hz": 880, "seconds": 60}, "chime": False})
        assert status == 201, e
        if await page.get_attribute(by_testid("live-state"), "data-state") != "live":
            await page.click(by_testid("refresh"))  # no event stream on this streamer
        banner = page.locator(by_testid("emergency-banner"))
        await banner.wait_for(state="visible")
        text = await banner.inner_text()
        assert "KHẨN CẤP" in text and "Bão số 9 đổ bộ" in text and "Khu phố 2" in text
        assert await banner.get_attribute("role") == "alert"
        assert "has-emergency" in str(await page.locator(
            by_testid(f"zone-{COMMUNE}.kp-2")).get_attribute("class"))
        assert "spk-emergency" in str(await page.locator(
            by_testid("map-speaker-spk-tt-2")).get_attribute("class"))
        assert await low_contrast(page) == []
        await screenshot(page, "dashboard-emergency-vi")
        await go(page, "/compose")
        assert await banner.is_visible()  # on every page
        await go(page, "/")
        await switch_lang(page, "en")
        assert "EMERGENCY ON AIR" in await banner.inner_text()
        await screenshot(page, "dashboard-emergency-en")

        status, _ = await call(streamer, "DELETE", f"/api/v1/emergency/{e['id']}")
        assert status == 200
        if await page.get_attribute(by_testid("live-state"), "data-state") != "live":
            await page.click(by_testid("refresh"))
        await banner.wait_for(state="hidden")


# ---- the event stream client ---------------------------------------------------------------

SSE = (": ping\n\nevent: hello\nid: 1\ndata: {\"user\": \"admin\", \"zones\": [\"brvt\"]}\n\n"
       "event: onair\r\nid: 2\r\ndata: {\"zone\": \"brvt.x\", \"broadcast\": null}\r\n\r\n"
       "data: one\ndata:two\n\nevent: presence\rdata: {\"speaker\": \"s\", \"online\": true}\r\r\n")
SSE_EVENTS = [
    {"event": "hello", "id": "1", "data": '{"user": "admin", "zones": ["brvt"]}'},
    {"event": "onair", "id": "2", "data": '{"zone": "brvt.x", "broadcast": null}'},
    {"event": "message", "id": "", "data": "one\ntwo"},
    {"event": "presence", "id": "", "data": '{"speaker": "s", "online": true}'},
]


async def test_the_event_parser_reads_sse_however_it_is_split(streamer) -> None:
    """The console's SSE parser (events.js, in Chromium) gives the same events whether the
    stream comes whole, a character at a time, or cut between a CR and its LF."""
    async with console_page() as page:
        await page.goto(f"{streamer.http_url}/")
        for size in (len(SSE), 1, 2, 7):
            chunks = [SSE[i:i + size] for i in range(0, len(SSE), size)]
            got = await page.evaluate("""async (chunks) => {
                const { SseParser } = await import("/console/events.js");
                const p = new SseParser();
                return chunks.flatMap((c) => p.push(c));
            }""", chunks)
            assert got == SSE_EVENTS, size


async def test_the_dashboard_follows_the_event_stream(streamer, tmp_path: Path) -> None:
    """With the event stream (GET /api/v1/events), an emergency shows without a reload."""
    status, _ = await call(streamer, "GET", "/api/v1/events", headers={})
    assert status == 401  # the stream is there, and needs a signed-in user
    user, password = admin_credentials(tmp_path)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, user, password)
        await page.locator(by_testid("live-state") + '[data-state="live"]').wait_for()
        status, e = await call(streamer, "POST", "/api/v1/emergency", json={
            "zones": [f"{COMMUNE}.kp-2"], "label": "Lũ quét",
            "source": {"kind": "tone", "hz": 880, "seconds": 60}, "chime": False})
        assert status == 201, e
        banner = page.locator(by_testid("emergency-banner"))
        await banner.wait_for(state="visible")
        assert "Lũ quét" in await banner.inner_text()
        status, _ = await call(streamer, "DELETE", f"/api/v1/emergency/{e['id']}")
        assert status == 200
        await banner.wait_for(state="hidden")


# ---- against a whole loa up stack: streamer, relay, speakers -------------------------------


@pytest.mark.realtime
async def test_on_loa_up_a_bulletin_composed_in_the_console_reaches_every_speaker_of_the_commune(
        tmp_path: Path) -> None:
    async with loa_up_stack(tmp_path) as (up, creds):
        ours = up.speakers(COMMUNE)
        assert len(ours) == 3
        # 4.3 s spoken: the reach fills once it has played through; assert_heard reads 3.5 s
        text = "Chiều nay lúc 17 giờ, phường Thắng Tam ra quân dọn vệ sinh."
        async with console_page() as page:
            await sign_in(page, up.url, creds["user"], creds["password"])
            total = len(up.state()["speakers"])
            await click_until(page, "refresh", by_testid("stat-speakers") +
                              f'[data-value="{total}/{total}"]', 30, "every speaker shows online")
            assert await page.locator(by_testid(f"zone-{COMMUNE}")).get_attribute(
                "data-online") == "3"
            await screenshot(page, "loa-up-dashboard-vi")

            await go(page, "/compose")
            await page.fill(by_testid("compose-text"), text)
            await page.check(by_testid(f"compose-zone-{COMMUNE}"))
            bid = await submit(page)
            await click_until(page, "compose-reload", by_testid("compose-reach") +
                              '[data-confirmed="3"][data-expected="3"]', 40,
                              "reach fills to the commune's three speakers")
            assert "3/3" in await page.inner_text(by_testid("compose-reach"))
            await screenshot(page, "loa-up-compose-reach-vi")

        # the effect: the API's reach, and what each speaker played is the speech
        reach = await asyncio.to_thread(up.api, "GET", f"/api/v1/broadcasts/{bid}/reach")
        assert sorted(s["id"] for s in reach["confirmed"]) == sorted(s.id for s in ours)
        await assert_heard(ours, bid, await tts_reference(up, text))


async def test_where_a_zone_needs_approval_the_composer_submits_for_approval(streamer) -> None:
    status, _ = await call(streamer, "PATCH", f"/api/v1/zones/{NEIGHBOUR}",
                           json={"requires_approval": True})
    assert status == 200
    await make_user(streamer, "op-vung-tau", ("operator", "brvt.vung-tau"), password=PASSWORD)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "op-vung-tau", PASSWORD)
        await go(page, "/compose")
        await page.fill(by_testid("compose-text"), "Họp tổ dân phố lúc 19 giờ.")
        await page.check(by_testid(f"compose-zone-{COMMUNE}"))
        assert await page.locator(by_testid("compose-approval")).is_hidden()
        assert await page.inner_text(by_testid("compose-submit")) == "Phát ngay"
        await page.check(by_testid(f"compose-zone-{NEIGHBOUR}.ap-1"))  # below the approval
        assert await page.locator(by_testid("compose-approval")).is_visible()
        assert await page.inner_text(by_testid("compose-submit")) == "Gửi duyệt"
        bid = await submit(page, "pending_approval")
        await screenshot(page, "compose-pending-approval-vi")
    status, b = await call(streamer, "GET", f"/api/v1/broadcasts/{bid}")
    assert (b["state"], b["zones"]) == ("pending_approval", [COMMUNE, f"{NEIGHBOUR}.ap-1"])
    status, ch = await call(streamer, "GET", "/api/v1/channels")
    assert not [c for c in ch["channels"] if c["on_air"] == bid]  # nothing airs meanwhile


async def test_at_night_the_quiet_hours_refusal_shows_by_the_zones_and_an_admin_may_override(
        streamer, tmp_path: Path) -> None:
    streamer.plane.now = lambda: NIGHT  # 00:00 local: inside the default quiet hours
    user, password = admin_credentials(tmp_path)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, user, password)
        await go(page, "/compose")
        await page.fill(by_testid("compose-text"), "Thông báo khẩn về cấp nước.")
        await page.check(by_testid(f"compose-zone-{COMMUNE}"))
        await page.click(by_testid("compose-submit"))
        error = page.locator(by_testid("compose-zones-error"))
        await error.wait_for(state="visible")
        assert "quiet hours" in await error.inner_text()
        status, listed = await call(streamer, "GET", "/api/v1/broadcasts")
        assert listed["broadcasts"] == []
        await screenshot(page, "compose-quiet-hours-vi")
        await page.check(by_testid("compose-override"))
        bid = await submit(page, "on_air")
        assert await error.is_hidden()
    status, b = await call(streamer, "GET", f"/api/v1/broadcasts/{bid}")
    assert (b["state"], b["override_quiet_hours"]) == ("on_air", True)


async def test_only_an_admin_of_every_chosen_zone_may_override_quiet_hours(streamer) -> None:
    await make_user(streamer, "mixed", ("admin", COMMUNE), ("operator", NEIGHBOUR),
                    password=PASSWORD)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "mixed", PASSWORD)
        await go(page, "/compose")
        override = page.locator(by_testid("compose-override"))
        await page.check(by_testid(f"compose-zone-{COMMUNE}"))
        assert not await override.is_disabled()
        await page.check(by_testid(f"compose-zone-{NEIGHBOUR}"))
        assert await override.is_disabled()
        assert "mọi khu vực đã chọn" in await page.inner_text(by_testid("compose-override-why"))


async def submit(page: Page, state: str = "") -> int:
    """Press the composer's submit button; the broadcast id it shows once the result is there
    (in ``state``, if given)."""
    await page.click(by_testid("compose-submit"))
    where = f'[data-state="{state}"]' if state else "[data-broadcast]"
    result = page.locator(by_testid("compose-result") + where)
    await result.wait_for()
    return int(str(await result.get_attribute("data-broadcast")))
