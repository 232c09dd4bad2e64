"""Real Chromium for tests: Debian's /usr/bin/chromium driven by Playwright, with a WAV file as
its microphone, and the steps an announcer takes on the studio page.

Playwright's own browser downloads need the internet, so the Debian build is launched by path.
``--use-fake-device-for-media-stream`` with ``--use-file-for-fake-audio-capture`` makes
getUserMedia capture the WAV (checked: a 1 s tone + 1 s silence file reads back at the file's
level, with the gaps where they are). Chromium loops the file; a ``%noloop`` suffix on the path
plays it once and then silence (also checked). A 48 kHz file is best: the fake device runs at
44.1 kHz and resamples anyway, but the file's rate should not add a second conversion.
``--use-fake-ui-for-media-stream`` grants the microphone without a prompt. getUserMedia needs a
secure context: serve the page from ``http://127.0.0.1:…`` (or https), not ``about:blank``.

The browser always closes, on failure too; without /usr/bin/chromium the test is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Page

CHROMIUM = Path("/usr/bin/chromium")
STEP_TIMEOUT_MS = 20_000

log = logging.getLogger("chromium")


def chromium_args(fake_audio_wav: Path | None) -> list[str]:
    args = [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ]
    if fake_audio_wav is not None:
        args += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={fake_audio_wav}"]
    return args


@asynccontextmanager
async def chromium_page(fake_audio_wav: Path | None,
                        viewport: tuple[int, int] | None = None) -> AsyncIterator[Page]:
    """A page of a fresh Chromium (own profile in tmp) whose microphone plays
    ``fake_audio_wav`` (None: no microphone), ``viewport`` (width, height) CSS pixels if
    given; console messages and page errors go to the ``chromium`` logger."""
    if not CHROMIUM.exists():
        pytest.skip(f"Debian Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.async_api import async_playwright

    if fake_audio_wav is not None and not Path(
            str(fake_audio_wav).removesuffix("%noloop")).is_file():
        raise FileNotFoundError(f"fake microphone file {fake_audio_wav} does not exist")
    with tempfile.TemporaryDirectory(prefix="loa-chromium-") as profile:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True,
                args=chromium_args(fake_audio_wav),
                viewport={"width": viewport[0], "height": viewport[1]} if viewport else None)
            try:
                context.set_default_timeout(STEP_TIMEOUT_MS)
                page = context.pages[0] if context.pages else await context.new_page()
                page.on("console", lambda m: log.info("console %s: %s", m.type, m.text))
                page.on("pageerror", lambda e: log.error("page error: %s", e))
                yield page
            finally:
                await context.close()


# The studio page, step by step, through its data-testid handles (streamer/live/static/).


def by_testid(name: str) -> str:
    return f'[data-testid="{name}"]'


async def sign_in(page: Page, base_url: str, user: str, password: str) -> None:
    """Open ``/studio`` and sign in afresh (forgetting a token the tab kept); returns once
    the zone tree is shown."""
    await page.goto(f"{base_url}/studio")
    await page.evaluate("sessionStorage.clear()")
    await page.reload()
    await page.fill(by_testid("login-user"), user)
    await page.fill(by_testid("login-password"), password)
    await page.click(by_testid("login-submit"))
    await _wait_for_either(page, by_testid("zones") + '[data-state="loaded"]')


async def choose(page: Page, zones: list[str], priority: str = "normal", label: str = "") -> None:
    """Tick ``zones`` (zone ids), pick the priority and, if given, the label."""
    for zone in zones:
        await page.check(by_testid(f"zone-{zone}"))
    await page.select_option(by_testid("priority"), priority)
    if label:
        await page.fill(by_testid("label"), label)


async def connect_microphone(page: Page) -> str:
    """Press "connect" and wait until the streamer says the call is up; returns the studio
    session id."""
    await page.click(by_testid("connect"))
    await _wait_for_either(page, by_testid("mic-status") + '[data-state="connected"]')
    return str(await page.get_attribute(by_testid("mic-status"), "data-session"))


async def press_talk(page: Page, expect: str = "on_air") -> None:
    """Hold the push-to-talk button down until the on-air indicator shows ``expect`` (the
    server's broadcast state: "on_air", "waiting", …)."""
    await page.hover(by_testid("talk"))
    await page.mouse.down()
    try:
        await _wait_for_either(page, by_testid("on-air") + f'[data-state="{expect}"]')
    except BaseException:
        await page.mouse.up()
        raise


async def release_talk(page: Page) -> None:
    """Let go of the button; returns once the server reports no talk any more."""
    await page.mouse.up()
    await _wait_for_either(page, by_testid("on-air") + '[data-state="off"]')


async def studio_talk(page: Page, base_url: str, *, user: str, password: str, zones: list[str],
                      hold_s: float, priority: str = "normal", label: str = "") -> str:
    """The whole announcer's path: sign in, tick zones, connect, hold talk for ``hold_s``
    seconds on air, release. Returns the studio session id."""
    await sign_in(page, base_url, user, password)
    await choose(page, zones, priority, label)
    session_id = await connect_microphone(page)
    await press_talk(page)
    await asyncio.sleep(hold_s)
    await release_talk(page)
    return session_id


async def error_text(page: Page) -> str:
    """What the page's error box says ('' when it shows nothing)."""
    box = page.locator(by_testid("error"))
    return (await box.inner_text()).strip() if await box.is_visible() else ""


async def _wait_for_either(page: Page, selector: str) -> None:
    """Wait for ``selector``, failing at once with the page's error if one shows first."""
    error = by_testid("error") + ":not(:empty)"
    hit = page.locator(selector).or_(page.locator(error))
    await hit.first.wait_for(state="visible")
    if not await page.locator(selector).is_visible():
        raise AssertionError(f"the studio page shows an error instead of {selector}: "
                             f"{await error_text(page)}")
