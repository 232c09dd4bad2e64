"""The operator console (``streamer/console/static/``) step by step in a real Chromium,
through its data-testid handles, and where its screenshots go."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from tests.harness.browser import by_testid

if TYPE_CHECKING:
    from playwright.async_api import Page

ROOT = Path(__file__).resolve().parents[2]
#: screenshots of every page in both languages (gitignored; CI keeps the directory as an
#: artifact); LOA_TEST_ARTIFACTS moves it
ARTIFACTS = Path(os.environ.get("LOA_TEST_ARTIFACTS", ROOT / "tests" / "artifacts")) / "console"


async def open_console(page: Page, base_url: str, lang: str = "vi") -> None:
    """Open ``/`` signed out (a token the tab kept is forgotten), in ``lang``."""
    await page.goto(f"{base_url}/")
    await page.evaluate("sessionStorage.clear(); localStorage.setItem('loa.console.lang', "
                        f"{lang!r})")
    await page.reload()
    await page.locator(by_testid("sign-in")).wait_for(state="visible")


async def sign_in(page: Page, base_url: str, user: str, password: str,
                  lang: str = "vi") -> None:
    """Sign in afresh; returns once the dashboard shows the zone tree."""
    await open_console(page, base_url, lang)
    await page.fill(by_testid("sign-in-user"), user)
    await page.fill(by_testid("sign-in-password"), password)
    await page.click(by_testid("sign-in-submit"))
    await page.locator(by_testid("zone-tree") + "[data-state]").wait_for(state="visible")


async def go(page: Page, route: str) -> None:
    """Follow the hash route ``route`` ("/", "/compose") and wait for its page."""
    await page.evaluate(f"location.hash = '#{route}'")
    key = {"/": "dashboard"}.get(route, route.strip("/"))
    await page.locator(f'#view[data-route="{key}"]').wait_for()


async def switch_lang(page: Page, lang: str) -> None:
    await page.click(by_testid(f"lang-{lang}"))
    await page.locator(f'html[lang="{lang}"]').wait_for(state="attached")


async def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def tree_zones(page: Page) -> list[str]:
    """The zone ids the dashboard's tree shows, in order."""
    return [str(z) for z in await page.locator(
        by_testid("zone-tree") + " [data-zone]").evaluate_all(
        "els => els.map(e => e.dataset.zone)")]


async def focused_testid(page: Page) -> str:
    return str(await page.evaluate(
        "document.activeElement && document.activeElement.dataset.testid || ''"))


async def tab_to(page: Page, testid: str, backwards: bool = False, limit: int = 60) -> None:
    """Press Tab (Shift+Tab) until the element ``testid`` has the focus, as a keyboard user
    would; fails if it is not reached within ``limit`` presses."""
    for _ in range(limit):
        if await focused_testid(page) == testid:
            return
        await page.keyboard.press("Shift+Tab" if backwards else "Tab")
    raise AssertionError(f"{testid} cannot be reached with the Tab key "
                         f"(focus is on {await focused_testid(page)!r})")


async def focus_is_visible(page: Page) -> bool:
    """Whether the focused element draws a focus outline."""
    return bool(await page.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement); "
        "return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2; })()"))
