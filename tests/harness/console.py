"""The operator console (``streamer/console/static/``) step by step in a real Chromium,
through its data-testid handles, and where its screenshots go."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tests.harness.audio import correlation
from tests.harness.browser import by_testid, chromium_page
from tests.harness.loaup import RATE, LoaUp, Speaker

if TYPE_CHECKING:
    from playwright.async_api import Page

ROOT = Path(__file__).resolve().parents[2]
#: the sample tree's commune the console tests work in, the one next door, a test password
COMMUNE = "brvt.vung-tau.thang-tam"
NEIGHBOUR = "brvt.vung-tau.long-son"
PASSWORD = "correct horse battery"
#: screenshots of every page in both languages (gitignored; CI keeps the directory as an
#: artifact); LOA_TEST_ARTIFACTS moves it
ARTIFACTS = Path(os.environ.get("LOA_TEST_ARTIFACTS", ROOT / "tests" / "artifacts")) / "console"


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


#: WCAG 2 contrast of every visible text against the background it sits on: the elements whose
#: text (or that of a form control) reads below 4.5:1 (3:1 for large text: 24 px, or 18.66 px
#: bold). Backgrounds are the nearest opaque ancestor's; text in SVG is left out.
_LOW_CONTRAST_JS = """
() => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] === 1)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const out = [];
  const seen = new Set();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const els = [...document.querySelectorAll("input, select, textarea, button")];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (n.textContent.trim()) els.push(n.parentElement);
  }
  for (const el of els) {
    if (seen.has(el) || el.closest("svg")) continue;
    seen.add(el);
    const r = el.getBoundingClientRect();
    const s = getComputedStyle(el);
    if (!r.width || !r.height || !el.checkVisibility({ visibilityProperty: true })) continue;
    const fg = rgb(s.color).slice(0, 3);
    const [a, b] = [lum(fg), lum(background(el))].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    const size = parseFloat(s.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(s.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) {
      const text = (el.textContent || el.value || "").trim().slice(0, 40);
      out.push(`${el.tagName.toLowerCase()}.${el.className} "${text}": ${ratio.toFixed(2)}`);
    }
  }
  return out;
}
"""


async def low_contrast(page: Page) -> list[str]:
    """The visible texts of the page that read below the WCAG AA contrast."""
    return [str(x) for x in await page.evaluate(_LOW_CONTRAST_JS)]


async def click_until(page: Page, button: str, done: str, timeout_s: float, what: str) -> None:
    """Wait for ``done`` (a selector), looking every 0.2 s; while the page has no live event
    stream, press the page's own refresh ``button`` once a second, as an operator would."""
    deadline = time.monotonic() + timeout_s
    clicked = float("-inf")
    while not await page.locator(done).count():
        now = time.monotonic()
        assert now < deadline, f"timed out: {what}"
        if now - clicked >= 1.0 and await page.get_attribute(
                by_testid("live-state"), "data-state") != "live":
            await page.click(by_testid(button))
            clicked = now
        await asyncio.sleep(0.2)


@asynccontextmanager
async def loa_up_stack(tmp_path: Path, lift_quiet_hours: bool = True,
                       env: dict[str, str] | None = None
                       ) -> AsyncIterator[tuple[LoaUp, dict[str, str]]]:
    """A whole ``loa up`` stack (streamer, relay, speakers) for the block, quiet hours lifted
    (the test runs at any hour), with the first admin's credentials; ``env`` as for
    :class:`LoaUp`."""
    (tmp_path / "up").mkdir()
    up = await asyncio.to_thread(LoaUp, tmp_path / "up", env=env)
    try:
        if lift_quiet_hours:
            await asyncio.to_thread(up.lift_quiet_hours)
        yield up, json.loads(Path(up.state()["admin_credentials"]).read_text())
    finally:
        await asyncio.to_thread(up.kill)


async def assert_heard(speakers: list[Speaker], bid: int, reference: np.ndarray,
                       at_s: tuple[float, ...] = (0.5, 1.5, 2.5)) -> None:
    """Each speaker's one play of ``bid`` holds ``reference`` (float, full scale 1): a
    second of it from each of ``at_s`` correlates at 0.8 or more with what it played."""
    probes = [reference[int(t * RATE): int((t + 1) * RATE)] for t in at_s]
    for spk in speakers:
        (play,) = [p for p in spk.plays(bid) if p["end"] - p["start"] > 1]
        heard = await asyncio.to_thread(spk.window, play["start"], play["end"])
        corr = [correlation(p, heard) for p in probes]
        assert min(corr) >= 0.8, f"{spk.id}: correlation per second {corr}"


async def tts_reference(up: LoaUp, text: str) -> np.ndarray:
    """What the streamer's TTS makes of ``text`` (its preview), float, full scale 1."""
    from clients.ctl import call as call_ctl

    wav = await asyncio.to_thread(
        call_ctl, up.url, "POST", "/api/v1/tts/preview", {"text": text}, token=up.token)
    with wave.open(io.BytesIO(wav)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
