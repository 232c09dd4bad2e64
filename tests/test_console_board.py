"""The console's e-boards page (#/board, ``streamer/console/static/board.js``) in Chromium: an
operator posts a notice on the boards of their commune (it reaches the kiosk page's state),
airs a bulletin from above that waits for them, and takes a notice down."""

from __future__ import annotations

import aiohttp

from tests.harness.api import call, make_user
from tests.harness.browser import by_testid
from tests.harness.console import console_page, go, screenshot, sign_in
from tests.harness.senders import Sender, register, send
from tests.harness.zones import OP

PASSWORD = "correct horse battery"


async def test_an_operator_posts_a_notice_and_airs_a_bulletin_from_above(streamer) -> None:
    await make_user(streamer, "op-tt", ("operator", OP), password=PASSWORD)
    central = Sender("central")
    await register(streamer, central)
    status, waiting = await send(streamer, central, {
        "ref": "TB-7", "level": "normal", "zones": [OP], "title": "Lịch tiêm chủng",
        "text": "Tiêm chủng mở rộng sáng thứ Bảy."})
    assert status == 201 and waiting["state"] == "pending"
    status, reg = await call(streamer, "POST", "/api/v1/boards", json={"id": "board-tt",
                                                                       "zone": OP})
    assert status == 201
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "op-tt", PASSWORD)
        await go(page, "/board")
        await page.locator(by_testid(f"inbound-{waiting['id']}")).wait_for()
        await page.check(by_testid(f"board-zone-{OP}"))
        await page.fill(by_testid("board-title"), "Lịch cắt điện")
        await page.fill(by_testid("board-body"), "Thứ Bảy từ 8 giờ đến 11 giờ.")
        await page.click(by_testid("board-submit"))
        await page.locator(by_testid("board-items") + " >> text=Lịch cắt điện").wait_for()
        async with aiohttp.ClientSession() as http, http.get(
                streamer.http_url + reg["page"].replace(f"/board/{OP}?", f"/board/{OP}/state?")
        ) as r:
            state = await r.json()
        assert [i["title"] for i in state["items"]] == ["Lịch cắt điện"]
        await screenshot(page, "board-vi")
        await page.click(by_testid(f"inbound-air-{waiting['id']}"))
        await page.locator(by_testid("inbound-empty")).wait_for()
        status, got = await call(streamer, "GET", "/api/v1/inbound?state=aired")
        assert [(b["id"], b["decided_by"]) for b in got["bulletins"]] == [(waiting["id"], "op-tt")]
        item_id = state["items"][0]["id"]
        await page.click(by_testid(f"board-down-{item_id}"))
        await page.locator(by_testid(f"board-item-{item_id}")).wait_for(state="detached")
    assert item_id not in streamer.plane.board.items
