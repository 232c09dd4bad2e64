"""The console's schedules page (``#/schedules``, ``streamer/console/static/schedules.js``) in
a real Chromium against an in-process streamer: the week calendar of what the streamer
expands (``GET /schedules/occurrences``), quiet hours shaded, the form's presets building the
RRULE, the API's refusals shown next to their field before and at saving, editing and
deleting, a commune operator's narrower view, and the phone layout. Every effect is checked
through the API. The streamer's clock is pinned to a Monday computed from today
(``tests/harness/week.py``), never to a literal date.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import aiohttp

from tests.harness.api import call, make_user
from tests.harness.audio import tone_wav
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
    tab_to,
)
from tests.harness.week import local, monday

if TYPE_CHECKING:
    from pathlib import Path

    from playwright.async_api import Page

MORNING_EVENING = "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA;BYHOUR=6,17;BYMINUTE=0;BYSECOND=0"
TONE = {"kind": "tone", "hz": 700, "seconds": 2}


def pin_monday(streamer: Any) -> Any:
    """Pin the streamer's clock to Monday 10:00 local of a week ahead; returns that Monday."""
    week = monday()
    streamer.plane.now = lambda: local(week, 10)
    return week


async def open_schedules(page: Page) -> None:
    await go(page, "/schedules")
    await page.locator(by_testid("calendar") + '[data-state="ready"]').wait_for()


async def occurrences(page: Page) -> list[dict[str, str]]:
    """The calendar's items: schedule id, local day and time, kind."""
    return list(await page.locator(by_testid("occurrence")).evaluate_all(
        "els => els.map(e => ({schedule: e.dataset.schedule, day: e.dataset.day, "
        "time: e.dataset.time, kind: e.dataset.kind, text: e.innerText}))"))


async def schedules(streamer: Any) -> list[dict[str, Any]]:
    status, body = await call(streamer, "GET", "/api/v1/schedules")
    assert status == 200
    return list(body["schedules"])


async def saved(page: Page, text: str) -> None:
    """Wait until the page says ``text`` (e.g. "Đã lưu lịch s1.") in its status line."""
    await page.locator(f'{by_testid("sched-status")}:has-text("{text}")').wait_for()


async def refusals(streamer: Any, operation: str, status: int) -> int:
    """How many requests of ``operation`` the API answered with ``status`` (its metrics)."""
    async with aiohttp.ClientSession() as http, http.get(f"{streamer.http_url}/metrics") as r:
        text = await r.text()
    line = f'loa_api_requests_total{{operation="{operation}",status="{status}"}} '
    return next((int(float(x[len(line):])) for x in text.splitlines() if x.startswith(line)), 0)


async def new_schedule(page: Page, text: str, zone: str = COMMUNE) -> None:
    await page.click(by_testid("schedule-new"))
    await page.fill(by_testid("sf-text"), text)
    await page.check(by_testid(f"sf-zone-{zone}"))


async def test_an_operator_creates_06_and_17_every_day_but_sunday_from_the_preset(
        streamer) -> None:
    week = pin_monday(streamer)
    await make_user(streamer, "op-thang-tam", ("operator", COMMUNE), password=PASSWORD)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "op-thang-tam", PASSWORD)
        await open_schedules(page)
        assert await page.get_attribute(by_testid("cal-day"), "data-day") == str(week)
        await new_schedule(page, "Bản tin sáng chiều của phường Thắng Tam.")
        await page.fill(by_testid("sf-label"), "Bản tin sáng chiều")
        await page.select_option(by_testid("sf-preset"), "morning_evening")
        # before saving: the rule in words and the streamer's next occurrences
        await page.locator(by_testid("sf-next") + '[data-state="ok"]').wait_for()
        nxt = await page.locator(by_testid("sf-next-item")).all_inner_texts()
        assert len(nxt) == 5 and nxt[0].endswith("17:00") and nxt[1].endswith("06:00")
        assert "06:00 và 17:00" in await page.inner_text(by_testid("sf-rule-words"))
        assert await low_contrast(page) == []
        await screenshot(page, "schedules-form-vi")
        await page.click(by_testid("sf-save"))
        await saved(page, "Đã tạo lịch s1.")
        assert await page.locator(by_testid("schedule-editor")).is_hidden()

        [s] = await schedules(streamer)
        assert (s["rrule"], s["zones"], s["dtstart"]) == (MORNING_EVENING, [COMMUNE],
                                                          f"{week}T00:00:00")
        assert (s["source"], s["label"], s["created_by"], s["at"]) == (
            {"kind": "tts", "text": "Bản tin sáng chiều của phường Thắng Tam."},
            "Bản tin sáng chiều", "op-thang-tam", None)

        items = await occurrences(page)
        days = [str(week + timedelta(days=d)) for d in range(6)]
        assert len(items) == 12
        assert sorted((i["day"], i["time"]) for i in items) == sorted(
            (d, t) for d in days for t in ("06:00", "17:00"))  # none on Sunday
        assert all(i["kind"] == "recurring" and "Bản tin sáng chiều" in i["text"]
                   for i in items)
        # quiet hours (the default 22:00-05:00) shaded on every day: two bands a day
        bands = await page.locator(by_testid("quiet-band")).evaluate_all(
            "els => els.map(e => [e.dataset.day, e.dataset.start, e.dataset.end])")
        assert sorted(bands) == sorted(
            [str(week + timedelta(days=d)), a, b] for d in range(7)
            for a, b in (("00:00", "05:00"), ("22:00", "24:00")))
        assert await low_contrast(page) == []
        await screenshot(page, "schedules-vi")
        await switch_lang(page, "en")
        await page.locator(by_testid("calendar") + '[data-state="ready"]').wait_for()
        assert len(await occurrences(page)) == 12
        assert "Quiet hours 22:00–24:00" in await page.inner_text(by_testid("calendar"))
        await screenshot(page, "schedules-en")


async def test_a_0315_item_is_refused_by_quiet_hours_next_to_the_time(streamer) -> None:
    week = pin_monday(streamer)
    await make_user(streamer, "op-thang-tam", ("operator", COMMUNE), password=PASSWORD)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "op-thang-tam", PASSWORD)
        await open_schedules(page)
        text = "Thông báo cắt điện lúc 3 giờ 15."
        await new_schedule(page, text)
        await page.fill(by_testid("sf-date"), str(week + timedelta(days=1)))
        await page.fill(by_testid("sf-time-1"), "03:15")
        error = page.locator(by_testid("sf-time-error"))
        # shown before saving, from the dry run ...
        await page.locator(by_testid("sf-next") + '[data-state="refused"]').wait_for()
        assert "quiet hours" in await error.inner_text()
        # ... and on saving: the API's 409 by the time field, and nothing saved
        await page.click(by_testid("sf-save"))
        await error.wait_for(state="visible")
        message = await error.inner_text()
        assert "quiet hours" in message and f"{week + timedelta(days=1)} 03:15" in message
        assert await page.get_attribute(by_testid("sf-time-1"), "aria-invalid") == "true"
        assert await page.get_attribute(by_testid("sf-time-1"), "aria-describedby") == \
            "sf-time-error"
        assert await page.input_value(by_testid("sf-text")) == text  # what was typed stays
        assert await refusals(streamer, "create_schedule", 409) == 1  # the save was tried
        assert await schedules(streamer) == []
        assert await low_contrast(page) == []
        await screenshot(page, "schedules-refused-vi")

        # a relay window from 21:30 for an hour runs into the quiet hours: the API's 409
        # names duration_s, shown by the window's length
        await page.select_option(by_testid("sf-kind"), "relay")
        await page.fill(by_testid("sf-url"), "http://vov.vn/vov1.mp3")
        await page.fill(by_testid("sf-time-1"), "21:30")
        await page.fill(by_testid("sf-duration"), "60")
        await page.click(by_testid("sf-save"))
        duration = page.locator(by_testid("sf-duration-error"))
        await duration.wait_for(state="visible")
        assert "window" in await duration.inner_text()
        assert await page.get_attribute(by_testid("sf-duration"), "aria-invalid") == "true"
        assert await page.get_attribute(by_testid("sf-time-1"), "aria-invalid") is None
        assert await schedules(streamer) == []
        # 30 minutes ends at 22:00, as the quiet hours begin: saved
        await page.fill(by_testid("sf-duration"), "30")
        await page.click(by_testid("sf-save"))
        await saved(page, "Đã tạo lịch")  # its id: refused attempts took ids too
        [s] = await schedules(streamer)
        assert (s["source"], s["duration_s"], s["at"]) == (
            {"kind": "relay", "url": "http://vov.vn/vov1.mp3"}, 1800.0,
            f"{week + timedelta(days=1)}T21:30:00")
        [item] = await occurrences(page)
        assert (item["kind"], item["time"]) == ("relay", "21:30")
        assert "21:30–22:00" in item["text"]


async def test_an_operator_edits_one_schedule_and_deletes_another(streamer) -> None:
    week = pin_monday(streamer)
    await make_user(streamer, "op-thang-tam", ("operator", COMMUNE), password=PASSWORD)
    wednesday = week + timedelta(days=2)
    for body in [{"zones": [COMMUNE], "source": TONE, "at": f"{wednesday}T12:00:00",
                  "label": "Họp tổ dân phố"},
                 {"zones": [COMMUNE], "source": TONE, "label": "Thể dục buổi sáng",
                  "rrule": "FREQ=DAILY;BYHOUR=7;BYMINUTE=0;BYSECOND=0",
                  "dtstart": f"{week}T00:00:00"}]:
        status, got = await call(streamer, "POST", "/api/v1/schedules", json=body)
        assert status == 201, got
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "op-thang-tam", PASSWORD)
        await open_schedules(page)
        items = await occurrences(page)
        assert sorted(i["schedule"] for i in items) == ["s1"] + ["s2"] * 7

        await page.click(f'{by_testid("occurrence")}[data-schedule="s1"]')
        assert await page.input_value(by_testid("sf-label")) == "Họp tổ dân phố"
        assert await page.input_value(by_testid("sf-preset")) == "once"
        assert await page.input_value(by_testid("sf-date")) == str(wednesday)
        await page.fill(by_testid("sf-label"), "Họp tổ dân phố (dời giờ)")
        await page.fill(by_testid("sf-time-1"), "13:30")
        await page.click(by_testid("sf-save"))
        await saved(page, "Đã lưu lịch s1.")
        status, s1 = await call(streamer, "GET", "/api/v1/schedules/s1")
        assert (s1["at"], s1["label"], s1["source"]) == (
            f"{wednesday}T13:30:00", "Họp tổ dân phố (dời giờ)", TONE)
        moved = [i for i in await occurrences(page) if i["schedule"] == "s1"]
        assert [(i["day"], i["time"]) for i in moved] == [(str(wednesday), "13:30")]

        # the daily rule opens as its preset; a new label alone is all the PATCH sends, so
        # in a zone that now asks for approval the schedule stays approved
        status, z = await call(streamer, "PATCH", f"/api/v1/zones/{COMMUNE}",
                               json={"requires_approval": True})
        assert status == 200, z
        await page.click(f'{by_testid("occurrence")}[data-schedule="s2"] >> nth=0')
        assert await page.input_value(by_testid("sf-preset")) == "daily"
        assert await page.input_value(by_testid("sf-time-1")) == "07:00"
        await page.fill(by_testid("sf-label"), "Thể dục buổi sáng (loa ngoài trời)")
        await page.click(by_testid("sf-save"))
        await saved(page, "Đã lưu lịch s2.")
        status, s2 = await call(streamer, "GET", "/api/v1/schedules/s2")
        assert (s2["label"], s2["approved"]) == ("Thể dục buổi sáng (loa ngoài trời)", True)
        # deleting asks first
        await page.click(f'{by_testid("occurrence")}[data-schedule="s2"] >> nth=0')
        await page.click(by_testid("sf-delete"))
        await page.locator(by_testid("sf-confirm")).wait_for(state="visible")
        assert (await call(streamer, "GET", "/api/v1/schedules/s2"))[0] == 200
        await page.click(by_testid("sf-delete-yes"))
        await saved(page, "Đã xoá lịch s2.")
        assert (await call(streamer, "GET", "/api/v1/schedules/s2"))[0] == 404
        assert [i["schedule"] for i in await occurrences(page)] == ["s1"]

        # a hamlet with its own quiet hours: the filter on it shades those, and keeps the
        # schedules that reach it from the commune
        status, z = await call(streamer, "PATCH", f"/api/v1/zones/{COMMUNE}.kp-1",
                               json={"quiet_hours": "21:30-05:30"})
        assert status == 200, z
        await page.reload()
        await page.locator(by_testid("calendar") + '[data-state="ready"]').wait_for()
        await page.select_option(by_testid("cal-zone"), f"{COMMUNE}.kp-1")
        bands = await page.locator(by_testid("quiet-band") + f'[data-day="{week}"]'
                                   ).evaluate_all("els => els.map(e => [e.dataset.start, "
                                                  "e.dataset.end])")
        assert bands == [["00:00", "05:30"], ["21:30", "24:00"]]
        assert [i["schedule"] for i in await occurrences(page)] == ["s1"]
        await page.select_option(by_testid("cal-zone"), COMMUNE)
        bands = await page.locator(by_testid("quiet-band") + f'[data-day="{week}"]'
                                   ).evaluate_all("els => els.map(e => [e.dataset.start, "
                                                  "e.dataset.end])")
        assert bands == [["00:00", "05:00"], ["22:00", "24:00"]]

        # the next week and back
        await page.click(by_testid("week-next"))
        await page.locator(f'{by_testid("cal-day")}[data-day="{week + timedelta(days=7)}"]'
                           ).wait_for()
        assert await occurrences(page) == []
        await page.click(by_testid("week-this"))
        await page.locator(f'{by_testid("cal-day")}[data-day="{week}"]').wait_for()
        assert len(await occurrences(page)) == 1


async def test_a_commune_operator_sees_only_their_communes_schedules(streamer) -> None:
    week = pin_monday(streamer)
    for zone, label in [(COMMUNE, "Loa Thắng Tam"), (NEIGHBOUR, "Loa Long Sơn")]:
        status, got = await call(streamer, "POST", "/api/v1/schedules", json={
            "zones": [zone], "source": TONE, "label": label,
            "at": f"{week + timedelta(days=3)}T08:00:00"})
        assert status == 201, got
    await make_user(streamer, "op-thang-tam", ("operator", COMMUNE), password=PASSWORD)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "op-thang-tam", PASSWORD)
        await open_schedules(page)
        items = await occurrences(page)
        assert [i["schedule"] for i in items] == ["s1"] and "Loa Thắng Tam" in items[0]["text"]
        assert "Long Sơn" not in await page.inner_text("body")
        zones = await page.locator(by_testid("cal-zone") + " option").evaluate_all(
            "els => els.map(e => e.value)")
        assert NEIGHBOUR not in zones and COMMUNE in zones
        assert await page.input_value(by_testid("cal-zone")) == COMMUNE
        await page.click(by_testid("schedule-new"))
        boxes = await page.locator(by_testid("sf-zones") + " input").evaluate_all(
            "els => els.map(e => e.value)")
        assert boxes == [COMMUNE, *(f"{COMMUNE}.kp-{i}" for i in (1, 2, 3))]

    # a viewer sees the calendar, and has no form: no "new" button, items are not buttons
    await make_user(streamer, "xem-thang-tam", ("viewer", COMMUNE), password=PASSWORD)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "xem-thang-tam", PASSWORD)
        await open_schedules(page)
        assert [i["schedule"] for i in await occurrences(page)] == ["s1"]
        assert await page.locator(by_testid("schedule-new")).count() == 0
        assert await page.locator(f'button{by_testid("occurrence")}').count() == 0


async def test_at_390_px_the_week_is_a_day_list_usable_by_keyboard(
        streamer, tmp_path: Path) -> None:
    week = pin_monday(streamer)
    status, got = await call(streamer, "POST", "/api/v1/schedules", json={
        "zones": [COMMUNE], "source": TONE, "rrule": MORNING_EVENING,
        "dtstart": f"{week}T00:00:00", "label": "Bản tin sáng chiều"})
    assert status == 201, got
    user, password = admin_credentials(tmp_path)
    async with console_page(viewport=(390, 844)) as page:
        await sign_in(page, streamer.http_url, user, password)
        await open_schedules(page)
        assert await page.eval_on_selector(by_testid("calendar"),
                                           "e => getComputedStyle(e).display") == "block"
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        assert len(await occurrences(page)) == 12
        await page.focus(by_testid("week-next"))
        await tab_to(page, "occurrence")
        await page.keyboard.press("Enter")
        await page.locator(by_testid("schedule-form")).wait_for()
        assert await page.input_value(by_testid("sf-preset")) == "morning_evening"
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        assert await low_contrast(page) == []
        await page.click(by_testid("sf-cancel"))
        await screenshot(page, "schedules-390-vi")




async def test_a_clip_weekly_on_chosen_days_and_an_experts_rrule(streamer) -> None:
    week = pin_monday(streamer)
    form = aiohttp.FormData()
    form.add_field("file", tone_wav(), filename="chuong.wav")
    status, clip = await call(streamer, "POST", "/api/v1/clips", data=form)
    assert status == 201, clip
    await make_user(streamer, "op-thang-tam", ("operator", COMMUNE), password=PASSWORD)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "op-thang-tam", PASSWORD)
        await open_schedules(page)
        await page.click(by_testid("schedule-new"))
        await page.select_option(by_testid("sf-kind"), "clip")
        await page.locator(f'{by_testid("sf-clip")} option[value="{clip["id"]}"]').wait_for(
            state="attached")
        await page.select_option(by_testid("sf-clip"), clip["id"])
        await page.check(by_testid(f"sf-zone-{COMMUNE}"))
        await page.select_option(by_testid("sf-priority"), "priority")
        await page.select_option(by_testid("sf-preset"), "weekly")
        await page.check(by_testid("sf-day-TU"))
        await page.check(by_testid("sf-day-TH"))
        await page.fill(by_testid("sf-time-1"), "07:30")

        # an expert's rule the streamer cannot read: its 400 by the RRULE field
        await page.select_option(by_testid("sf-preset"), "custom")
        await page.fill(by_testid("sf-rrule"), "FREQ=FORTNIGHTLY;BYHOUR=7")
        await page.click(by_testid("sf-save"))
        rule_error = page.locator(by_testid("sf-rrule-error"))
        await rule_error.wait_for(state="visible")
        assert "FREQ" in await rule_error.inner_text()
        assert await page.get_attribute(by_testid("sf-rrule"), "aria-invalid") == "true"
        assert await schedules(streamer) == []

        await page.select_option(by_testid("sf-preset"), "weekly")
        await page.check(by_testid("sf-day-TU"))
        await page.check(by_testid("sf-day-TH"))
        await page.fill(by_testid("sf-time-1"), "07:30")
        await page.click(by_testid("sf-save"))
        await saved(page, "Đã tạo lịch")
        [s] = await schedules(streamer)
        assert (s["source"], s["priority"], s["rrule"]) == (
            {"kind": "clip", "clip": clip["id"]}, "priority",
            "FREQ=WEEKLY;BYDAY=TU,TH;BYHOUR=7;BYMINUTE=30;BYSECOND=0")
        items = await occurrences(page)
        assert [(i["day"], i["time"]) for i in items] == [
            (str(week + timedelta(days=1)), "07:30"), (str(week + timedelta(days=3)), "07:30")]
        assert all("chuong" in i["text"] for i in items)
