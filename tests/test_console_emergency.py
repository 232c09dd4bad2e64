"""The console's emergency panel (``#/emergency``, ``streamer/console/static/emergency.js``) in
a real Chromium: nothing airs before the confirmation step is confirmed, the API's refusal is
shown by its field, who may open the panel and tick which zones, "stop everything in my area"
stops what the officer may stop there and nothing else, the whole flow by keyboard at 390 px,
and on a ``loa up`` stack an emergency that preempts a playing bulletin on every speaker of a
commune while the reach counter fills, then "stop everything". Effects are checked through the
API and in what the speakers recorded, not only on the page.
"""

from __future__ import annotations

import asyncio
import io
import time
import wave
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
import pytest

from tests.harness.api import call, make_user
from tests.harness.audio import correlation, peak_hz
from tests.harness.browser import by_testid
from tests.harness.console import (
    COMMUNE,
    NEIGHBOUR,
    PASSWORD,
    admin_credentials,
    click_until,
    console_page,
    focus_is_visible,
    focused_testid,
    go,
    loa_up_stack,
    low_contrast,
    screenshot,
    sign_in,
    switch_lang,
    tab_to,
    tts_reference,
)
from tests.harness.loaup import RATE
from tests.harness.wait import until

if TYPE_CHECKING:
    from playwright.async_api import Page

HAMLETS = [f"{COMMUNE}.kp-{i}" for i in (1, 2, 3)]
WARNING = "Cảnh báo lũ quét: người dân khu phố ven suối di chuyển lên vùng cao ngay."
IN_FORCE = ("on_air", "waiting")


async def broadcasts(streamer: Any) -> list[dict]:
    status, listed = await call(streamer, "GET", "/api/v1/broadcasts")
    assert status == 200, listed
    return list(listed["broadcasts"])


async def on_air(streamer: Any) -> dict[str, int | None]:
    """Leaf zone → the broadcast its channel plays now."""
    status, ch = await call(streamer, "GET", "/api/v1/channels")
    assert status == 200, ch
    return {c["id"]: c["on_air"] for c in ch["channels"]}


async def register_speakers(streamer: Any) -> None:
    for i, zone in enumerate(HAMLETS, 1):
        status, body = await call(streamer, "POST", "/api/v1/speakers", json={
            "id": f"spk-tt-{i}", "zone": zone, "name": f"Loa {i}"})
        assert status == 201, body


def share_near(pcm: np.ndarray, hz: float, width_hz: float = 10.0) -> float:
    """The share of the energy of ``pcm`` within ``width_hz`` of ``hz`` (Hann window)."""
    power = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm)))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / RATE)
    return float(power[np.abs(freqs - hz) <= width_hz].sum() / power.sum())


async def open_dialog(page: Page) -> Any:
    await page.click(by_testid("emergency-submit"))
    dialog = page.locator(by_testid("confirm-dialog"))
    await dialog.wait_for(state="visible")
    return dialog


async def aired_item(page: Page) -> int:
    """The id of the (one) emergency the panel lists in force."""
    item = page.locator("[data-emergency]")
    await item.wait_for()
    return int(str(await item.get_attribute("data-emergency")))


# ---- with an in-process streamer -----------------------------------------------------------


async def test_nothing_airs_before_the_confirmation_and_a_refusal_shows_by_its_field(
        streamer, tmp_path: Path) -> None:
    await register_speakers(streamer)
    user, password = admin_credentials(tmp_path)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, user, password)
        await go(page, "/emergency")
        assert await page.locator(by_testid("emergency-none")).is_visible()
        assert await low_contrast(page) == []
        await screenshot(page, "emergency-vi")

        # nothing chosen: each field says what it needs, no dialog opens
        await page.click(by_testid("emergency-submit"))
        await page.locator(by_testid("emergency-zones-error")).wait_for(state="visible")
        assert await page.locator(by_testid("emergency-text-error")).is_visible()
        assert await page.locator(by_testid("confirm-dialog")).is_hidden()

        await page.check(by_testid(f"emergency-zone-{COMMUNE}"))
        assert await page.locator(by_testid(f"emergency-zone-{HAMLETS[0]}")).is_disabled()
        await page.fill(by_testid("emergency-text"), WARNING)
        await page.fill(by_testid("emergency-label"), "Lũ quét")
        await page.select_option(by_testid("emergency-cadence"), "1800")
        await page.select_option(by_testid("emergency-expiry"), "21600")
        dialog = await open_dialog(page)
        # the summary: zones, content, the speakers it will reach; the focus on "go back"
        assert await page.get_attribute(by_testid("confirm-zones"), "data-value") == COMMUNE
        assert "Phường Thắng Tam" in await page.inner_text(by_testid("confirm-zones"))
        assert await page.get_attribute(by_testid("confirm-speakers"), "data-value") == "3"
        assert "Lũ quét" in await dialog.inner_text()
        assert WARNING in await page.inner_text(by_testid("confirm-content"))
        assert "Mỗi 30 phút" in await page.inner_text(by_testid("confirm-options"))
        assert await focused_testid(page) == "confirm-no"
        assert await low_contrast(page) == []
        await screenshot(page, "emergency-confirm-vi")

        # Escape and "go back" send nothing, and the focus is back on the button
        await page.keyboard.press("Escape")
        await dialog.wait_for(state="hidden")
        assert await focused_testid(page) == "emergency-submit"
        await open_dialog(page)
        await page.click(by_testid("confirm-no"))
        await dialog.wait_for(state="hidden")
        assert "Chưa phát" in await page.inner_text(by_testid("emergency-status"))
        assert await broadcasts(streamer) == []

        # the API refuses a text with nothing to read: shown by the text, nothing airs
        await page.fill(by_testid("emergency-text"), "...")
        await open_dialog(page)
        await page.click(by_testid("confirm-yes"))
        error = page.locator(by_testid("emergency-text-error"))
        await error.wait_for(state="visible")
        assert await error.inner_text()
        assert await page.get_attribute(by_testid("emergency-text"), "aria-invalid") == "true"
        assert await focused_testid(page) == "emergency-text"
        assert await broadcasts(streamer) == []
        assert await low_contrast(page) == []
        await screenshot(page, "emergency-refused-vi")

        # confirmed: one emergency, as the form said, in the commune's three channels
        await page.fill(by_testid("emergency-text"), WARNING)
        await open_dialog(page)
        await page.click(by_testid("confirm-yes"))
        bid = await aired_item(page)
        assert await error.is_hidden()
        (b,) = await broadcasts(streamer)
        assert (b["id"], b["priority"], b["zones"], b["label"]) == (bid, "emergency", [COMMUNE],
                                                                     "Lũ quét")
        assert b["source"]["kind"] == "tts" and b["source"]["text"] == WARNING
        assert b["state"] in IN_FORCE
        plan = b["emergency"]
        assert (plan["chime"], plan["volume"], plan["repeat_s"]) == (True, 100.0, 1800)
        assert abs(plan["expires"] - (time.time() + 21600)) < 120
        reach = page.locator(by_testid(f"emergency-reach-{bid}"))
        await page.locator(by_testid(f"emergency-reach-{bid}") + '[data-expected="3"]').wait_for()
        assert await reach.get_attribute("data-confirmed") == "0"  # nobody listens in here
        missing = page.locator(by_testid(f"emergency-offline-{bid}"))
        assert await missing.locator("li").count() == 3  # never reported: offline
        assert "Loa 1 (spk-tt-1)" in await missing.inner_text()

        # a reload still shows it, in either language, with its cancel button
        await page.reload()
        await page.locator(by_testid(f"emergency-item-{bid}")).wait_for()
        await switch_lang(page, "en")
        await page.locator(by_testid(f"emergency-item-{bid}")).wait_for()
        assert "Emergency" in await page.inner_text(by_testid(f"emergency-item-{bid}"))
        assert await low_contrast(page) == []
        await screenshot(page, "emergency-en")
        await switch_lang(page, "vi")

        await page.click(by_testid(f"emergency-cancel-{bid}"))
        await page.locator(by_testid("confirm-dialog")).wait_for(state="visible")
        await page.click(by_testid("confirm-yes"))
        await page.locator(by_testid(f"emergency-item-{bid}")).wait_for(state="detached")
        assert await page.locator(by_testid("emergency-none")).is_visible()
        status, b = await call(streamer, "GET", f"/api/v1/broadcasts/{bid}")
        assert b["state"] == "stopped"
        assert bid not in (await on_air(streamer)).values()


def siren_wav(seconds: float = 2.0, hz: float = 660.0) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    pcm = (0.3 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return out.getvalue()


async def test_a_clip_or_a_live_input_is_picked_from_the_lists(streamer) -> None:
    upload = aiohttp.FormData()
    upload.add_field("file", siren_wav(), filename="coi.wav", content_type="audio/wav")
    upload.add_field("name", "Còi báo động")
    status, clip = await call(streamer, "POST", "/api/v1/clips", data=upload)
    assert status == 201, clip
    status, created = await call(streamer, "POST", "/api/v1/inputs", json={
        "id": "mic-ubnd", "name": "Micro UBND phường", "zones": [COMMUNE],
        "priority": "emergency"})
    assert status == 201, created
    await make_user(streamer, "em-thang-tam", ("emergency", COMMUNE), password=PASSWORD)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "em-thang-tam", PASSWORD)
        await go(page, "/emergency")
        await page.check(by_testid(f"emergency-zone-{COMMUNE}"))
        # a live input that is not sending: the API's refusal lands by the input's list
        await page.check(by_testid("emergency-kind-live"))
        assert await page.locator(by_testid("emergency-text")).is_hidden()
        picker = page.locator(by_testid("emergency-input"))
        await picker.locator('option[value="mic-ubnd"]').wait_for(state="attached")
        assert "không có tín hiệu" in await picker.locator(
            'option[value="mic-ubnd"]').inner_text()
        await page.select_option(by_testid("emergency-input"), "mic-ubnd")
        await open_dialog(page)
        assert "Micro UBND phường" in await page.inner_text(by_testid("confirm-content"))
        await page.click(by_testid("confirm-yes"))
        error = page.locator(by_testid("emergency-input-error"))
        await error.wait_for(state="visible")
        assert "mic-ubnd" in await error.inner_text()
        assert await page.get_attribute(by_testid("emergency-input"), "aria-invalid") == "true"
        assert await broadcasts(streamer) == []
        await screenshot(page, "emergency-live-refused-vi")

        # a clip from the library airs
        await page.check(by_testid("emergency-kind-clip"))
        await page.locator(by_testid("emergency-clip") + f' option[value="{clip["id"]}"]').wait_for(
            state="attached")
        await page.select_option(by_testid("emergency-clip"), clip["id"])
        await page.uncheck(by_testid("emergency-chime"))
        await page.select_option(by_testid("emergency-expiry"), "0")
        await open_dialog(page)
        assert "Còi báo động" in await page.inner_text(by_testid("confirm-content"))
        await page.click(by_testid("confirm-yes"))
        bid = await aired_item(page)
        assert await error.is_hidden()
    (b,) = await broadcasts(streamer)
    assert (b["id"], b["source"]["kind"], b["source"]["clip"]) == (bid, "clip", clip["id"])
    assert b["created_by"] == "em-thang-tam"
    assert b["emergency"] == {"chime": False, "volume": 100.0, "repeat_s": None, "expires": None}


async def test_without_the_emergency_role_the_panel_does_not_open(streamer) -> None:
    await make_user(streamer, "op-thang-tam", ("operator", COMMUNE), password=PASSWORD)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "op-thang-tam", PASSWORD)
        entry = page.locator(by_testid("nav-emergency"))
        assert await entry.get_attribute("aria-disabled") == "true"
        await go(page, "/emergency")  # typed into the address bar
        assert "Cần vai trò phát khẩn cấp" in await page.inner_text(by_testid("not-allowed"))
        assert await page.locator(by_testid("emergency-form")).count() == 0
        assert await page.locator(by_testid("stop-all")).count() == 0


async def test_a_commune_officer_targets_and_stops_only_their_commune(streamer) -> None:
    await make_user(streamer, "em-thang-tam", ("emergency", COMMUNE), password=PASSWORD)
    tone = {"kind": "tone", "hz": 440, "seconds": 120}
    status, bulletin = await call(streamer, "POST", "/api/v1/broadcasts", json={
        "zones": [COMMUNE], "source": tone, "label": "Bản tin sáng"})
    assert status == 201, bulletin
    ids = {}
    for zone in (f"{COMMUNE}.kp-2", NEIGHBOUR):
        status, e = await call(streamer, "POST", "/api/v1/emergency", json={
            "zones": [zone], "source": {**tone, "hz": 880}, "chime": False, "label": zone})
        assert status == 201, e
        ids[zone] = e["id"]
    ours, theirs = ids[f"{COMMUNE}.kp-2"], ids[NEIGHBOUR]
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "em-thang-tam", PASSWORD)
        await go(page, "/emergency")
        boxes = await page.locator(by_testid("emergency-zones") + " input").evaluate_all(
            "els => els.map(e => e.value)")
        assert boxes == [COMMUNE, *HAMLETS]  # the province and district shown, not tickable
        assert "không có quyền phát khẩn cấp" in await page.inner_text(
            by_testid("emergency-zones"))
        # what is in force in their commune is listed; the neighbour's is not theirs to see
        await page.locator(by_testid(f"emergency-item-{ours}")).wait_for()
        assert await page.locator(by_testid(f"emergency-item-{theirs}")).count() == 0
        assert "Phường Thắng Tam" in await page.inner_text(by_testid("stop-all-area"))
        # no operator role: "stop everything" stops emergencies, and says so
        assert await page.locator(by_testid("stop-all-only-emergencies")).is_visible()
        await page.click(by_testid("stop-all"))
        await page.locator(by_testid("confirm-dialog")).wait_for(state="visible")
        assert await page.get_attribute(by_testid("confirm-channels"), "data-value") == "3"
        await page.click(by_testid("confirm-yes"))
        result = page.locator(by_testid("stop-all-result") + "[data-stopped]")
        await result.wait_for()
        assert await result.get_attribute("data-stopped") == str(ours)
        assert f"#{ours}" in await result.inner_text()
        await page.locator(by_testid(f"emergency-item-{ours}")).wait_for(state="detached")
        assert await low_contrast(page) == []
        await screenshot(page, "emergency-commune-officer-vi")
    # the effect: their emergency stopped; the bulletin and the neighbour's emergency play on
    states = {b["id"]: b["state"] for b in await broadcasts(streamer)}
    assert states[ours] == "stopped"
    assert states[bulletin["id"]] == states[theirs] == "on_air"

    async def bulletin_back() -> bool:  # kp-2 resumes the bulletin the emergency preempted
        playing = await on_air(streamer)
        return [playing[z] for z in HAMLETS] == [bulletin["id"]] * 3 and playing[
            f"{NEIGHBOUR}.ap-1"] == theirs
    await until(bulletin_back, 5, "the bulletin back in kp-2, the neighbour's emergency on")


# ---- by keyboard at 390 px -----------------------------------------------------------------


async def test_at_390_px_an_emergency_airs_and_stops_by_keyboard(streamer, tmp_path: Path) -> None:
    user, password = admin_credentials(tmp_path)
    async with console_page(viewport=(390, 844)) as page:
        await sign_in(page, streamer.http_url, user, password)
        await tab_to(page, "nav-toggle")
        await page.keyboard.press("Enter")
        await tab_to(page, "nav-emergency")
        assert await focus_is_visible(page)
        await page.keyboard.press("Enter")
        await page.locator('#view[data-route="emergency"]').wait_for()
        await tab_to(page, f"emergency-zone-{COMMUNE}")
        assert await focus_is_visible(page)
        await page.keyboard.press("Space")
        assert await page.is_checked(by_testid(f"emergency-zone-{COMMUNE}"))
        await tab_to(page, "emergency-text")
        await page.keyboard.type(WARNING)
        await tab_to(page, "emergency-cadence")
        await page.keyboard.press("ArrowDown")  # every 15 minutes: it stays in force
        await tab_to(page, "emergency-submit")
        assert await focus_is_visible(page)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        assert await low_contrast(page) == []
        await screenshot(page, "emergency-390-vi")
        await page.keyboard.press("Enter")
        await page.locator(by_testid("confirm-dialog")).wait_for(state="visible")
        assert await focused_testid(page) == "confirm-no"
        await tab_to(page, "confirm-yes", backwards=True, limit=5)
        assert await focus_is_visible(page)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        assert await low_contrast(page) == []
        await screenshot(page, "emergency-confirm-390-vi")
        await page.keyboard.press("Enter")
        bid = await aired_item(page)
        (b,) = await broadcasts(streamer)
        assert (b["id"], b["priority"], b["zones"]) == (bid, "emergency", [COMMUNE])
        assert b["state"] in IN_FORCE and b["emergency"]["repeat_s"] == 900

        await tab_to(page, f"emergency-cancel-{bid}")
        assert await focus_is_visible(page)
        await page.keyboard.press("Enter")
        await page.locator(by_testid("confirm-dialog")).wait_for(state="visible")
        await tab_to(page, "confirm-yes", backwards=True, limit=5)
        await page.keyboard.press("Enter")
        await page.locator(by_testid(f"emergency-item-{bid}")).wait_for(state="detached")
        status, b = await call(streamer, "GET", f"/api/v1/broadcasts/{bid}")
        assert b["state"] == "stopped"
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        await screenshot(page, "emergency-cancelled-390-vi")


# ---- against a whole loa up stack: streamer, relay, speakers -------------------------------


@pytest.mark.realtime
async def test_on_loa_up_a_confirmed_emergency_preempts_a_bulletin_and_stop_everything_ends_it(
        tmp_path: Path) -> None:
    async with loa_up_stack(tmp_path) as (up, creds):
        ours = up.speakers(COMMUNE)
        assert len(ours) == 3
        async with console_page() as page:
            await sign_in(page, up.url, creds["user"], creds["password"])
            total = len(up.state()["speakers"])
            await click_until(page, "refresh", by_testid("stat-speakers") +
                              f'[data-value="{total}/{total}"]', 30, "every speaker shows online")
            bulletin = await asyncio.to_thread(up.broadcast, zones=[COMMUNE], label="Bản tin",
                                               source={"kind": "tone", "hz": 440, "seconds": 120})
            await asyncio.sleep(3)  # the bulletin plays on every speaker of the commune

            await go(page, "/emergency")
            await page.check(by_testid(f"emergency-zone-{COMMUNE}"))
            await page.fill(by_testid("emergency-text"), WARNING)
            await page.select_option(by_testid("emergency-cadence"), "1800")  # stays in force
            await open_dialog(page)
            assert await page.get_attribute(by_testid("confirm-speakers"), "data-value") == "3"
            assert "3 đang trực tuyến" in await page.inner_text(by_testid("confirm-speakers"))
            await page.click(by_testid("confirm-yes"))
            bid = await aired_item(page)
            # the effect: the commune's channels switch to the emergency
            channels = await asyncio.to_thread(up.api, "GET", "/api/v1/channels")
            assert {c["id"]: c["on_air"] for c in channels["channels"]
                    if c["id"].startswith(COMMUNE)} == dict.fromkeys(HAMLETS, bid)
            # the reach counter fills as each speaker confirms (after it played it through)
            await click_until(page, f"emergency-reload-{bid}", by_testid(f"emergency-reach-{bid}")
                              + '[data-confirmed="3"][data-expected="3"]', 60,
                              "the reach counter fills to the commune's three speakers")
            assert "3/3" in await page.inner_text(by_testid(f"emergency-reach-{bid}"))
            # the list of who did not confirm follows the counter (read again after it moves)
            await page.locator(by_testid(f"emergency-missing-{bid}")).get_by_text(
                "Mọi loa đã xác nhận").wait_for(timeout=5000)
            confirmed = page.locator(by_testid(f"emergency-confirmed-{bid}"))
            await confirmed.locator("summary").click()
            assert sorted(await confirmed.locator("li").evaluate_all(
                "els => els.map(e => e.dataset.speaker)")) == sorted(s.id for s in ours)
            assert await low_contrast(page) == []
            await screenshot(page, "emergency-reach-vi")

            # "stop everything in my area": the emergency (waiting for its next airing) and the
            # bulletin (back on the air after it) both stop
            await page.click(by_testid("stop-all"))
            await page.locator(by_testid("confirm-dialog")).wait_for(state="visible")
            await page.click(by_testid("confirm-yes"))
            result = page.locator(by_testid("stop-all-result") + "[data-stopped]")
            await result.wait_for()
            stopped = {int(i) for i in str(await result.get_attribute("data-stopped")).split(",")}
            assert stopped == {bid, bulletin["id"]}
            await page.locator(by_testid(f"emergency-item-{bid}")).wait_for(state="detached")
            assert await page.locator(by_testid("emergency-none")).is_visible()
            await page.locator(by_testid("emergency-banner")).wait_for(state="hidden")
            await screenshot(page, "emergency-stopped-vi")
        channels = await asyncio.to_thread(up.api, "GET", "/api/v1/channels")
        assert not [c for c in channels["channels"] if c["on_air"]]
        for b in (bid, bulletin["id"]):
            rec = await asyncio.to_thread(up.api, "GET", f"/api/v1/broadcasts/{b}")
            assert rec["state"] == "stopped", rec

        # what the speakers played: the 440 Hz bulletin, then the spoken warning in its place
        speech = await tts_reference(up, WARNING)
        probes = [speech[int(t * RATE): int((t + 1) * RATE)] for t in (0.5, 1.5, 2.5)]
        for spk in ours:
            (play,) = [p for p in spk.plays(bid) if p["end"] - p["start"] > 1]
            before = await asyncio.to_thread(spk.window, play["start"] - 1.5, play["start"] - 0.5)
            assert abs(peak_hz(before) - 440) < 5, f"{spk.id}: the bulletin before"
            heard = await asyncio.to_thread(spk.window, play["start"], play["end"])
            corr = [correlation(p, heard) for p in probes]
            assert min(corr) >= 0.8, f"{spk.id}: speech correlation per second {corr}"
            spoken = heard[int(2.0 * RATE):]  # past the chime
            assert share_near(spoken, 440) < 0.05, f"{spk.id}: the tone went on under it"
            assert share_near(before, 440) > 0.8, f"{spk.id}: the bulletin was a pure tone"
