"""The console's reading lexicon page (#/lexicon, ``streamer/console/static/lexicon.js``) in
Chromium: a province admin tries a sentence, adds a term, sees the sentence read with it (as
the API reads it) and the entry listed as theirs, gets an empty reading refused next to the
reading field, and removes the term after a confirmation, the API agreeing at each step; a
commune admin only reads, and sees another admin's changes as they are made; an operator gets
no such page."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.harness.api import call, make_user
from tests.harness.browser import by_testid
from tests.harness.console import (
    COMMUNE,
    PASSWORD,
    admin_credentials,
    console_page,
    go,
    screenshot,
    sign_in,
)

if TYPE_CHECKING:
    from playwright.async_api import Page

SENTENCE = "BCH PCTT tỉnh họp khẩn"
TERM = "BCH PCTT"
READING = "Ban chỉ huy phòng chống thiên tai"
ADMIN_ROW = by_testid("lex-row") + f'[data-term="{TERM}"][data-source="admin"]'


async def spoken(streamer: Any) -> str:
    status, out = await call(streamer, "POST", "/api/v1/tts/normalize", json={"text": SENTENCE})
    assert status == 200, out
    return str(out["spoken"])


async def admin_rows(streamer: Any) -> dict[str, str]:
    status, out = await call(streamer, "GET", "/api/v1/tts/lexicon")
    assert status == 200, out
    return {r["term"]: r["reading"] for r in out["entries"] if r["source"] == "admin"}


async def try_on_page(page: Page, want: str) -> None:
    """Ask the page how SENTENCE reads; wait until it shows ``want``."""
    await page.fill(by_testid("lex-try-text"), SENTENCE)
    await page.click(by_testid("lex-try-submit"))
    await page.wait_for_function(
        "want => (document.getElementById('lex-spoken') || {}).textContent === want", arg=want)


async def test_an_admin_tries_adds_and_removes_a_term(streamer: Any, tmp_path: Path) -> None:
    await make_user(streamer, "op-tt", ("operator", COMMUNE), password=PASSWORD)
    await make_user(streamer, "adm-tt", ("admin", COMMUNE), password=PASSWORD)
    user, password = admin_credentials(tmp_path)
    async with console_page() as page:
        # an operator: no entry in the nav, and the page says why
        await sign_in(page, streamer.http_url, "op-tt", PASSWORD)
        assert await page.locator(by_testid("nav-lexicon")).count() == 0
        await go(page, "/lexicon")
        await page.locator(by_testid("not-allowed")).wait_for()
        assert await page.locator(by_testid("lex-list")).count() == 0

        # a commune admin reads the lexicon but may not change it (the API's rule)
        await sign_in(page, streamer.http_url, "adm-tt", PASSWORD)
        await page.click(by_testid("nav-lexicon"))
        await page.locator(by_testid("lex-row")).first.wait_for()
        await page.locator(by_testid("lex-read-only")).wait_for()
        assert await page.locator(by_testid("lex-form")).count() == 0
        assert await page.locator(by_testid("lex-delete")).count() == 0
        # the province's admin changes the lexicon elsewhere: the open page follows, unasked
        other = by_testid("lex-row") + '[data-term="BQL DA"][data-source="admin"]'
        status, out = await call(streamer, "PUT", "/api/v1/tts/lexicon/BQL DA",
                                 json={"reading": "Ban quản lý dự án"})
        assert status == 200, out
        await page.locator(other).wait_for(timeout=5000)
        status, out = await call(streamer, "DELETE", "/api/v1/tts/lexicon/BQL DA")
        assert status == 200, out
        await page.locator(other).wait_for(state="detached", timeout=5000)

        await sign_in(page, streamer.http_url, user, password)
        await page.click(by_testid("nav-lexicon"))
        await page.locator(by_testid("lex-row") + '[data-term="UBND"]').wait_for()

        # before: read as the API reads it now (the built-in BCH and PCTT, one by one)
        before = await spoken(streamer)
        await try_on_page(page, before)

        await page.fill(by_testid("lex-term"), TERM)
        await page.fill(by_testid("lex-reading"), READING)
        await page.click(by_testid("lex-save"))
        await page.locator(ADMIN_ROW).wait_for()
        assert await admin_rows(streamer) == {TERM: READING}
        assert READING in await page.inner_text(ADMIN_ROW)
        assert user in await page.inner_text(ADMIN_ROW)
        assert TERM in await page.inner_text(by_testid("lex-status"))

        # after: the page reads what the API reads, the term read as one
        after = await spoken(streamer)
        assert after != before
        assert after.lower() == f"{READING} tỉnh họp khẩn".lower()
        await try_on_page(page, after)

        # the search narrows the list to the entries that match, marks ignored
        total = await page.locator(by_testid("lex-row")).count()
        await page.fill(by_testid("lex-search"), "phong chong")
        await page.locator(ADMIN_ROW).wait_for()
        assert 0 < await page.locator(by_testid("lex-row")).count() < total

        # an empty reading: the API's refusal next to the reading field, the entry unchanged
        await page.click(ADMIN_ROW + " " + by_testid("lex-edit"))  # "Sửa" fills the form
        assert await page.input_value(by_testid("lex-term")) == TERM
        assert await page.input_value(by_testid("lex-reading")) == READING
        await page.fill(by_testid("lex-reading"), "")
        await page.click(by_testid("lex-save"))
        error = page.locator("#lex-reading-err")
        await error.wait_for(state="visible")
        assert await error.inner_text()
        assert await page.get_attribute(by_testid("lex-reading"), "aria-invalid") == "true"
        assert await page.inner_text("#lex-term-err") == ""
        assert await admin_rows(streamer) == {TERM: READING}
        await screenshot(page, "lexicon-refused-vi")

        # removed after a confirmation; the sentence reads as before again
        await page.click(ADMIN_ROW + " " + by_testid("lex-delete"))
        dialog = page.locator(by_testid("confirm-dialog"))
        await dialog.wait_for(state="visible")
        assert TERM in await dialog.inner_text() and READING in await dialog.inner_text()
        await page.click(by_testid("confirm-yes"))
        await page.locator(ADMIN_ROW).wait_for(state="detached")
        assert await admin_rows(streamer) == {}
        assert await spoken(streamer) == before
        await page.wait_for_function(
            "want => document.getElementById('lex-spoken').textContent === want", arg=before)
