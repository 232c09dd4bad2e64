"""The operator console (``streamer/console/``, ``docs/console.md``): served at ``/`` with the
security headers, every string in both languages, and, in a real Chromium against a real
streamer, sign-in, the dashboard, the language switch, a commune operator's narrower view,
keyboard use at 390 px, and the composer airing a TTS bulletin (checked through the API).
Screenshots of each page in Vietnamese and English go to ``tests/harness/console.ARTIFACTS``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from tests.harness.api import call, make_user
from tests.harness.browser import by_testid, chromium_page
from tests.harness.console import go, open_console, screenshot, sign_in, switch_lang, tree_zones

if TYPE_CHECKING:
    from playwright.async_api import Page

STATIC = Path(__file__).resolve().parent.parent / "streamer" / "console" / "static"
COMMUNE = "brvt.vung-tau.thang-tam"
NEIGHBOUR = "brvt.vung-tau.long-son"
PASSWORD = "correct horse battery"


def admin_credentials(tmp_path: Path) -> tuple[str, str]:
    creds = json.loads((tmp_path / "var" / "admin-credentials.json").read_text())
    return creds["user"], creds["password"]


@asynccontextmanager
async def console_page(viewport: tuple[int, int] | None = None) -> AsyncIterator[Page]:
    """A Chromium page that fails the test on a script error or a CSP violation (an HTTP
    refusal the page was meant to show, "Failed to load resource", is not one)."""
    async with chromium_page(None, viewport=viewport) as page:
        problems: list[str] = []

        def on_console(m: Any) -> None:
            if "Content Security Policy" in m.text or (
                    m.type == "error" and not m.text.startswith("Failed to load resource")):
                problems.append(f"console: {m.text}")

        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("console", on_console)
        yield page
        assert not problems, problems


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
        await screenshot(page, "sign-in-vi")
        # a wrong password: the API's message next to the password field, nothing else opens
        await page.fill(by_testid("sign-in-user"), user)
        await page.fill(by_testid("sign-in-password"), "not the password")
        await page.click(by_testid("sign-in-submit"))
        error = page.locator(by_testid("sign-in-password-error"))
        await error.wait_for(state="visible")
        assert "wrong user name or password" in await error.inner_text()
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
        for route, name in [("/compose", "compose"), ("/schedules", "schedules")]:
            await go(page, route)
            await screenshot(page, f"{name}-en")
        await switch_lang(page, "vi")
        assert await page.inner_text(by_testid("nav-compose")) == "Soạn bản tin"
        for route, name in [("/compose", "compose"), ("/schedules", "schedules")]:
            await go(page, route)
            await screenshot(page, f"{name}-vi")

        await page.click(by_testid("sign-out"))
        await page.locator(by_testid("sign-in")).wait_for(state="visible")
        assert await page.evaluate("sessionStorage.getItem('loa.console.token')") is None
        await screenshot(page, "sign-in-after-sign-out-vi")
