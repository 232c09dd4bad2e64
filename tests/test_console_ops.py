"""The console's operations pages in a real Chromium against a real streamer: the approver's
queue, the audit log with its filters, reports with charts and CSV, users and roles, and
listen-in. Each test checks the effect through the API (or, for listen-in, the sound), not
only the page."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tests.harness.api import call, make_user
from tests.harness.browser import by_testid
from tests.harness.console import (
    COMMUNE,
    NEIGHBOUR,
    PASSWORD,
    admin_credentials,
    console_page,
    go,
    low_contrast,
    screenshot,
    sign_in,
    switch_lang,
)

TONE = {"kind": "tone", "hz": 1000, "seconds": 60}


async def test_an_approver_approves_one_bulletin_and_rejects_another(streamer) -> None:
    status, _ = await call(streamer, "PATCH", f"/api/v1/zones/{NEIGHBOUR}",
                           json={"requires_approval": True})
    assert status == 200
    op = await make_user(streamer, "op-vung-tau", ("operator", "brvt.vung-tau"))
    await make_user(streamer, "duyet-long-son", ("approver", NEIGHBOUR), password=PASSWORD)
    ids = []
    for label in ("Họp tổ dân phố", "Thu phí vệ sinh"):
        status, b = await call(streamer, "POST", "/api/v1/broadcasts", headers=op, json={
            "zones": [f"{NEIGHBOUR}.ap-1"], "label": label,
            "source": {"kind": "tts", "text": f"{label} lúc 19 giờ tối nay."}})
        assert (status, b["state"]) == (201, "pending_approval"), b
        ids.append(b["id"])
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "duyet-long-son", PASSWORD)
        await page.click(by_testid("nav-approvals"))
        await page.locator(by_testid("approvals-list") + '[data-count="2"]').wait_for()
        first, second = (f"broadcasts-{i}" for i in ids)
        assert "Họp tổ dân phố lúc 19 giờ" in await page.inner_text(by_testid(f"approval-{first}"))
        assert await low_contrast(page) == []
        await screenshot(page, "approvals-vi")
        await switch_lang(page, "en")
        await screenshot(page, "approvals-en")
        await switch_lang(page, "vi")
        await page.locator(by_testid("approvals-list") + '[data-count="2"]').wait_for()

        await page.click(by_testid(f"approve-{first}"))
        done = by_testid("approvals-done")
        await page.locator(f'{done} [data-id="{ids[0]}"][data-decision="approve"]').wait_for()
        await page.fill(by_testid(f"approval-note-{second}"), "Sai giờ, soạn lại")
        await page.click(by_testid(f"reject-{second}"))
        await page.locator(f'{done} [data-id="{ids[1]}"][data-decision="reject"]').wait_for()
        # the queue empties (from the event stream, or the page's own reload)
        await page.locator(by_testid("approvals-empty")).wait_for()
    states = [(await call(streamer, "GET", f"/api/v1/broadcasts/{i}"))[1]["state"] for i in ids]
    assert states[0] in ("on_air", "done") and states[1] == "rejected"
    status, log = await call(streamer, "GET", "/api/v1/audit?user=duyet-long-son")
    decided = {(e["action"], e["target"], e["detail"].get("note")) for e in log["entries"]
               if e["action"] in ("approve", "reject")}
    assert decided == {("approve", str(ids[0]), ""), ("reject", str(ids[1]), "Sai giờ, soạn lại")}


async def test_the_approvals_page_is_only_for_approvers(streamer) -> None:
    await make_user(streamer, "op-thang-tam", ("operator", COMMUNE), password=PASSWORD)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "op-thang-tam", PASSWORD)
        assert await page.locator(by_testid("nav-approvals")).count() == 0
        await go(page, "/approvals")  # typed in by hand: the page says why, and asks nothing
        assert "người duyệt" in await page.inner_text(by_testid("not-allowed"))


async def audit_ids(streamer, **q: str) -> list[str]:
    status, log = await call(streamer, "GET", "/api/v1/audit", params={"limit": 50, **q})
    assert status == 200
    return [e["id"] for e in log["entries"]]


async def page_ids(page) -> list[str]:
    return [str(x) for x in await page.locator(by_testid("audit-row")).evaluate_all(
        "rows => rows.map(r => r.dataset.id)")]


async def test_the_audit_page_shows_and_filters_what_the_api_does(
        streamer, tmp_path: Path) -> None:
    op = await make_user(streamer, "op-thang-tam", ("operator", COMMUNE))
    status, _ = await call(streamer, "POST", "/api/v1/broadcasts", headers=op,
                           json={"zones": [NEIGHBOUR], "source": TONE})
    assert status == 403  # audited as denied
    for i in range(60):  # more than one page of 50
        status, _ = await call(streamer, "PATCH", f"/api/v1/zones/{COMMUNE}.kp-{i % 3 + 1}",
                               json={"requires_approval": bool(i % 2)})
        assert status == 200
    user, password = admin_credentials(tmp_path)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, user, password)
        await go(page, "/audit")
        await page.locator(by_testid("audit-state") + '[data-count="50"]').wait_for()
        assert await page_ids(page) == await audit_ids(streamer)
        await page.click(by_testid("audit-more"))
        await page.locator(by_testid("audit-state") + "[data-count]:not([data-count='50'])"
                           ).wait_for()
        assert await page_ids(page) == await audit_ids(streamer, limit="100")
        await screenshot(page, "audit-vi")

        await page.select_option(by_testid("audit-outcome"), "denied")
        await page.click(by_testid("audit-apply"))
        await page.locator(by_testid("audit-state") + '[data-count="1"]').wait_for()
        row = page.locator(by_testid("audit-row"))
        assert await row.get_attribute("data-outcome") == "denied"
        assert "op-thang-tam" in await row.inner_text()
        assert await low_contrast(page) == []
        await screenshot(page, "audit-denied-vi")

        await page.click(by_testid("audit-clear"))
        await page.select_option(by_testid("audit-zone"), f"{COMMUNE}.kp-2")
        await page.fill(by_testid("audit-user"), user)
        await page.click(by_testid("audit-apply"))
        want = await audit_ids(streamer, zone=f"{COMMUNE}.kp-2", user=user)
        assert len(want) == 20
        await page.locator(by_testid("audit-state") + f'[data-count="{len(want)}"]').wait_for()
        assert await page_ids(page) == want
        await switch_lang(page, "en")
        await screenshot(page, "audit-en")


def local_day(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, ZoneInfo("Asia/Ho_Chi_Minh")).date().isoformat()


async def test_reports_chart_airtime_per_zone_and_export_the_apis_csv(
        streamer, tmp_path: Path) -> None:
    status, b = await call(streamer, "POST", "/api/v1/broadcasts", json={
        "zones": [f"{COMMUNE}.kp-1"], "source": {"kind": "tone", "hz": 1000, "seconds": 3}})
    assert status == 201, b
    deadline = time.monotonic() + 20
    while (rec := (await call(streamer, "GET", f"/api/v1/broadcasts/{b['id']}"))[1]
           )["state"] != "done":
        assert time.monotonic() < deadline, rec
        await asyncio.sleep(0.2)
    day = local_day(rec["started"])
    query = {"from": day, "to": day, "zone": COMMUNE, "group": "leaf"}
    status, want = await call(streamer, "GET", "/api/v1/reports/broadcast-minutes",
                              params=query)
    assert status == 200
    minutes = {r["zone"]: r["minutes"] for r in want["rows"]}
    assert 0.04 < minutes[f"{COMMUNE}.kp-1"] < 0.2  # 3 s of tone

    user, password = admin_credentials(tmp_path)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, user, password)
        await go(page, "/reports")
        await page.locator(by_testid("report-availability") + "[data-rows]").wait_for()
        # a span the API refuses: its message next to the field it names, and nothing drawn
        await page.fill(by_testid("reports-from"), day)
        await page.fill(by_testid("reports-to"), "2001-01-01")
        await page.click(by_testid("reports-show"))
        error = page.locator("#reports-to-error")
        await error.wait_for(state="visible")
        assert "before" in await error.inner_text()
        assert await page.get_attribute(by_testid("reports-to"), "aria-invalid") == "true"

        await page.fill(by_testid("reports-to"), day)
        await page.select_option(by_testid("reports-zone"), COMMUNE)
        await page.select_option(by_testid("reports-group"), "leaf")
        await page.click(by_testid("reports-show"))
        await page.locator(by_testid("report-minutes") + f'[data-rows="{len(want["rows"])}"]'
                           ).wait_for()
        bar = page.locator(f'{by_testid("report-minutes-chart")} rect[data-zone="{COMMUNE}.kp-1"]'
                           f'[data-day="{day}"]')
        assert abs(float(str(await bar.get_attribute("data-value")))
                   - minutes[f"{COMMUNE}.kp-1"]) < 0.001
        assert float(str(await bar.get_attribute("height"))) > 100  # the tallest bar
        others = page.locator(by_testid("report-minutes-chart") +
                              f' rect[data-zone="{COMMUNE}.kp-2"]')
        assert float(str(await others.get_attribute("data-value"))) == 0
        assert await low_contrast(page) == []
        await screenshot(page, "reports-vi")

        async with page.expect_download() as download_info:
            await page.click(by_testid("report-minutes-csv"))
        download = await download_info.value
        assert download.suggested_filename == f"broadcast-minutes-{day}-{day}.csv"
        got = Path(await download.path()).read_bytes()
        status, csv = await call(streamer, "GET", "/api/v1/reports/broadcast-minutes",
                                 params={**query, "format": "csv"})
        assert status == 200 and got == csv and f"{day},{COMMUNE}.kp-1,".encode() in got
        await switch_lang(page, "en")
        await screenshot(page, "reports-en")


async def test_an_admin_creates_changes_and_removes_a_user(streamer, tmp_path: Path) -> None:
    user, password = admin_credentials(tmp_path)
    async with console_page() as page:
        page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await sign_in(page, streamer.http_url, user, password)
        await go(page, "/users")
        await page.locator(by_testid(f"user-{user}")).wait_for()
        await page.click(by_testid("user-new"))
        await page.fill(by_testid("user-name"), "op-moi")
        await page.fill(by_testid("user-full-name"), "Trần Thị Mới")
        await page.fill(by_testid("user-password"), "ngan")  # too short: refused by the API
        await page.click(by_testid("grant-add"))
        await page.select_option(by_testid("grant-role-0"), "operator")
        await page.select_option(by_testid("grant-zone-0"), COMMUNE)
        await page.click(by_testid("user-save"))
        error = page.locator("#user-password-error")
        await error.wait_for(state="visible")
        assert "10" in await error.inner_text()
        assert (await call(streamer, "GET", "/api/v1/users/op-moi"))[0] == 404  # nothing saved
        assert await low_contrast(page) == []
        await screenshot(page, "users-form-refused-vi")

        await page.fill(by_testid("user-password"), PASSWORD)
        await page.click(by_testid("user-save"))
        await page.locator(by_testid("user-op-moi")).wait_for()
        status, u = await call(streamer, "GET", "/api/v1/users/op-moi")
        assert (status, u["full_name"], u["grants"]) == (
            200, "Trần Thị Mới", [{"role": "operator", "zone": COMMUNE}])
        status, _ = await call(streamer, "POST", "/api/v1/login", headers={},
                               json={"user": "op-moi", "password": PASSWORD})
        assert status == 200
        await screenshot(page, "users-vi")

        # another grant, then disabled: the user can no longer sign in
        await page.click(by_testid("user-edit-op-moi"))
        await page.click(by_testid("grant-add"))
        await page.select_option(by_testid("grant-role-1"), "viewer")
        await page.select_option(by_testid("grant-zone-1"), NEIGHBOUR)
        await page.check(by_testid("user-disabled"))
        await page.click(by_testid("user-save"))
        await page.locator(by_testid("user-op-moi") + '[data-disabled="true"]').wait_for()
        status, u = await call(streamer, "GET", "/api/v1/users/op-moi")
        assert u["disabled"] is True and u["grants"] == [
            {"role": "operator", "zone": COMMUNE}, {"role": "viewer", "zone": NEIGHBOUR}]
        status, _ = await call(streamer, "POST", "/api/v1/login", headers={},
                               json={"user": "op-moi", "password": PASSWORD})
        assert status == 401

        # an admin may not lock themselves out: the API's 409 lands by the grants
        await page.click(by_testid(f"user-edit-{user}"))
        await page.check(by_testid("user-disabled"))
        await page.click(by_testid("user-save"))
        await page.locator("#user-grants-error").wait_for(state="visible")
        assert "may not disable yourself" in await page.inner_text("#user-grants-error")
        assert (await call(streamer, "GET", f"/api/v1/users/{user}"))[1]["disabled"] is False
        await page.click(by_testid("user-cancel"))

        await page.click(by_testid("user-edit-op-moi"))
        await page.click(by_testid("user-delete"))
        await page.locator(by_testid("user-op-moi")).wait_for(state="detached")
        assert (await call(streamer, "GET", "/api/v1/users/op-moi"))[0] == 404
        await switch_lang(page, "en")
        await screenshot(page, "users-en")


async def test_listen_in_plays_what_the_channel_airs(streamer) -> None:
    channel = f"{COMMUNE}.kp-1"
    await make_user(streamer, "xem-thang-tam", ("viewer", COMMUNE), password=PASSWORD)
    status, b = await call(streamer, "POST", "/api/v1/broadcasts",
                           json={"zones": [channel], "source": TONE, "label": "Âm thử"})
    assert status == 201, b
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "xem-thang-tam", PASSWORD)
        await go(page, "/listen")
        options = await page.locator(by_testid("listen-channel") + " option").evaluate_all(
            "els => els.map(e => e.value)")
        assert options == [f"{COMMUNE}.kp-{i}" for i in (1, 2, 3)]  # nothing next door
        await page.select_option(by_testid("listen-channel"), channel)
        await page.click(by_testid("listen-play"))
        await page.locator(by_testid("listen-now") + f'[data-channel="{channel}"]').wait_for()
        # sound arrives, and it is the channel's 1 kHz tone
        deadline = time.monotonic() + 15
        while float(await page.eval_on_selector(by_testid("listen-level"), "m => m.value")) < -30:
            assert time.monotonic() < deadline, "no sound from the listen-in stream"
            await asyncio.sleep(0.25)
        peak = await page.evaluate(
            "async () => (await import('/console/listen.js')).peakHz()")
        assert abs(peak - 1000) < 25, peak
        assert await low_contrast(page) == []
        await screenshot(page, "listen-vi")
        await page.click(by_testid("listen-stop"))
        assert await page.evaluate(
            "document.querySelector('[data-testid=listen-audio]').paused") is True
        await switch_lang(page, "en")
        await screenshot(page, "listen-en")


async def test_a_commune_operator_never_meets_a_403_on_any_page(streamer) -> None:
    """Every page a commune operator can open, and the ones they cannot typed in by hand:
    the console asks the API only what they may ask, so no call is refused and the audit log
    holds no denied entry for them."""
    await make_user(streamer, "op-thang-tam", ("operator", COMMUNE), password=PASSWORD)
    refused: list[str] = []
    pending: set[Any] = set()  # API calls in flight (the event stream aside)

    def asked(r: Any) -> None:
        if "/api/v1/" in r.url and "/api/v1/events" not in r.url:
            pending.add(r)

    async def settled() -> None:
        """Every call the page made has been answered, and none followed for 0.3 s."""
        quiet_since = time.monotonic()
        deadline = quiet_since + 20
        while time.monotonic() - quiet_since < 0.3:
            assert time.monotonic() < deadline, [r.url for r in pending]
            if pending:
                quiet_since = time.monotonic()
            await asyncio.sleep(0.05)

    async with console_page() as page:
        page.on("response", lambda r: refused.append(f"{r.status} {r.url}")
                if r.status == 403 else None)
        page.on("request", asked)
        page.on("requestfinished", lambda r: pending.discard(r))
        page.on("requestfailed", lambda r: pending.discard(r))
        await sign_in(page, streamer.http_url, "op-thang-tam", PASSWORD)
        links = await page.locator(by_testid("nav") + " a").evaluate_all(
            "els => els.map(e => e.getAttribute('href').slice(1))")
        assert "/users" not in links and "/emergency" not in links and "/approvals" not in links
        for route in [*links, "/users", "/emergency", "/approvals"]:
            await go(page, route)
            await settled()
            assert NEIGHBOUR not in await page.inner_text("#view"), route
    assert refused == []
    status, log = await call(streamer, "GET", "/api/v1/audit?user=op-thang-tam&outcome=denied")
    assert (status, log["entries"]) == (200, [])
