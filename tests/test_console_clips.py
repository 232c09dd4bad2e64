"""The console's clip library, clip upload with its progress bar, the composer's clip picker
and test tone, and the speakers page (``docs/console.md``), in a real Chromium: against a
whole ``loa up`` stack (a clip uploaded over a throttled link, aired, and heard by every
speaker of the commune; a speaker's volume and mute set from the page, checked in its ack and
its telemetry) and against the in-process streamer (a refused upload, a test tone aired, a
commune operator's speakers)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import wave
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import numpy as np
import pytest

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
    screenshot,
    sign_in,
    switch_lang,
    tab_to,
)
from tests.harness.loaup import RATE, LoaUp

if TYPE_CHECKING:
    from playwright.async_api import Page



def chirp_wav(path: Path, seconds: float = 5.0) -> np.ndarray:
    """A rising chirp (300 Hz to 3 kHz) under a slow two-tone beat, as a 48 kHz WAV at
    ``path``: every second of it differs from the others, so a one-second probe correlates
    with one place only. Returns the samples."""
    t = np.arange(int(seconds * RATE)) / RATE
    f0, f1 = 300.0, 3000.0
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds))
    x = 0.15 * np.sin(phase) + 0.05 * np.sin(2 * np.pi * 523.25 * t) * np.sin(2 * np.pi * 0.7 * t)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return x.astype(np.float32)


async def record_progress(page: Page, testid: str) -> None:
    """From now on, every value the progress bar ``testid`` shows goes to window.progress."""
    await page.evaluate("""(testid) => {
        window.progress = [];
        const bar = document.querySelector(`[data-testid="${testid}"]`);
        new MutationObserver(() => window.progress.push(Number(bar.dataset.value)))
            .observe(bar, { attributes: true, attributeFilter: ["data-value"] });
    }""", testid)


async def throttle_upload(page: Page, bytes_per_s: int) -> None:
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Network.enable")
    await cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1,
        "uploadThroughput": bytes_per_s})


async def submit(page: Page, state: str = "") -> int:
    """Press the composer's submit button; the broadcast id it shows."""
    await page.click(by_testid("compose-submit"))
    where = f'[data-state="{state}"]' if state else "[data-broadcast]"
    result = page.locator(by_testid("compose-result") + where)
    await result.wait_for()
    return int(str(await result.get_attribute("data-broadcast")))


# ---- against a whole loa up stack ----------------------------------------------------------


@pytest.mark.realtime
async def test_on_loa_up_a_clip_uploaded_with_its_progress_shown_airs_to_the_commune(
        tmp_path: Path) -> None:
    audio = chirp_wav(tmp_path / "chirp.wav")
    size = (tmp_path / "chirp.wav").stat().st_size
    async with loa_up_stack(tmp_path) as (up, creds):
        ours = up.speakers(COMMUNE)
        assert len(ours) == 3
        async with console_page() as page:
            await sign_in(page, up.url, creds["user"], creds["password"])
            await go(page, "/clips")
            await page.locator(by_testid("clips-empty")).wait_for()
            await page.set_input_files(by_testid("clip-upload-file"), str(tmp_path / "chirp.wav"))
            await page.fill(by_testid("clip-upload-name"), "Thông báo thử")
            await record_progress(page, "clip-upload-progress")
            await throttle_upload(page, 200_000)  # about 2.4 s for the 480 kB file
            await page.click(by_testid("clip-upload-send"))
            percent = page.locator(by_testid("clip-upload-percent"))
            deadline = time.monotonic() + 10
            while not any(0 < v < 100 for v in await page.evaluate("window.progress")):
                assert time.monotonic() < deadline, "no progress shown while uploading"
                await asyncio.sleep(0.05)
            assert "%" in await percent.inner_text()
            await screenshot(page, "clips-upload-vi")
            await page.locator(by_testid("clip-upload-percent") + '[data-state="done"]').wait_for()
            seen = await page.evaluate("window.progress")
            assert any(0 < v < 100 for v in seen), seen
            assert seen[-1] == 100 and seen == sorted(seen), seen
            assert await page.get_attribute(by_testid("clip-upload-progress"),
                                            "aria-valuenow") == "100"

            # the library has it, on the page and in the API
            clips = (await asyncio.to_thread(up.api, "GET", "/api/v1/clips"))["clips"]
            assert [(c["name"], c["bytes"], c["created_by"]) for c in clips] == [
                ("Thông báo thử", size, creds["user"])]
            cid = clips[0]["id"]
            row = page.locator(by_testid(f"clip-{cid}"))
            await row.wait_for()
            assert "Thông báo thử" in await row.inner_text() and "0:05" in await row.inner_text()
            await page.fill(by_testid("clips-search"), "thong bao")  # marks ignored
            assert await row.is_visible()
            await page.fill(by_testid("clips-search"), "không có")
            assert await row.is_hidden()
            await page.fill(by_testid("clips-search"), "")
            assert await low_contrast(page) == []
            await screenshot(page, "clips-vi")
            await switch_lang(page, "en")
            assert "Air this clip" in await row.inner_text()
            await screenshot(page, "clips-en")
            await switch_lang(page, "vi")

            # "Air this clip": the composer opens with it chosen
            await page.click(by_testid(f"clip-air-{cid}"))
            await page.locator('#view[data-route="compose"]').wait_for()
            assert await page.is_checked(by_testid("compose-kind-clip"))
            await page.locator(by_testid(f"compose-clip-{cid}")).wait_for()
            assert await page.is_checked(by_testid(f"compose-clip-{cid}"))
            assert await page.locator(by_testid("compose-text")).is_hidden()
            await page.check(by_testid(f"compose-zone-{COMMUNE}"))
            assert await low_contrast(page) == []
            await screenshot(page, "compose-clip-vi")
            bid = await submit(page)
            await click_until(page, "compose-reload", by_testid("compose-reach") +
                              '[data-confirmed="3"][data-expected="3"]', 40,
                              "reach fills to the commune's three speakers")

        b = await asyncio.to_thread(up.api, "GET", f"/api/v1/broadcasts/{bid}")
        assert (b["source"]["kind"], b["source"]["clip"], b["zones"]) == ("clip", cid, [COMMUNE])
        reach = await asyncio.to_thread(up.api, "GET", f"/api/v1/broadcasts/{bid}/reach")
        assert sorted(s["id"] for s in reach["confirmed"]) == sorted(s.id for s in ours)
        # what each speaker played is the uploaded audio
        await assert_heard(ours, bid, audio, at_s=(0.5, 2.0, 3.5))


#: the speakers page's stack sends telemetry every second, not every 10 s (``telemetry_s``,
#: ``docs/mqtt.md``): what a telemetry message reports is the same, it only comes sooner
FAST_TELEMETRY = {"LOA_SPEAKER_TELEMETRY_S": "1"}


async def telemetry_of(up: LoaUp, sid: str, key: str, want: object, timeout_s: float) -> None:
    """Wait for the speaker's telemetry (every ``telemetry_s``) to report ``key`` as ``want``."""
    deadline = time.monotonic() + timeout_s
    while True:
        s = await asyncio.to_thread(up.api, "GET", f"/api/v1/speakers/{sid}")
        if (s["telemetry"] or {}).get(key) == want:
            return
        assert time.monotonic() < deadline, f"{sid} telemetry {key}: {s['telemetry']}"
        await asyncio.sleep(0.5)


@pytest.mark.realtime
async def test_on_loa_up_the_speakers_page_sets_volume_and_mutes_with_their_acks(
        tmp_path: Path) -> None:
    async with loa_up_stack(tmp_path, lift_quiet_hours=False, env=FAST_TELEMETRY) as (up, creds):
        ours = sorted(s.id for s in up.speakers(COMMUNE))
        total = len(up.state()["speakers"])
        sid = ours[0]
        async with console_page() as page:
            await sign_in(page, up.url, creds["user"], creds["password"])
            await go(page, "/speakers")
            await click_until(page, "speakers-refresh", by_testid(f"speaker-{sid}") +
                              '[data-state="online"]', 30, "the speaker shows online")
            assert await page.locator("[data-speaker]").count() == total
            await page.select_option(by_testid("speakers-zone"), COMMUNE)
            shown = await page.locator("[data-speaker]:visible").evaluate_all(
                "els => els.map(e => e.dataset.speaker)")
            assert shown == ours
            await page.select_option(by_testid("speakers-state"), "offline")
            assert await page.locator("[data-speaker]:visible").count() == 0
            await page.select_option(by_testid("speakers-state"), "")
            await page.select_option(by_testid("speakers-zone"), "")
            assert await page.locator("[data-speaker]:visible").count() == total
            assert await low_contrast(page) == []
            await screenshot(page, "speakers-vi")

            ack = page.locator(by_testid(f"speaker-ack-{sid}"))
            await page.fill(by_testid(f"speaker-set-volume-{sid}"), "40")
            await page.click(by_testid(f"speaker-volume-send-{sid}"))
            await page.locator(by_testid(f"speaker-ack-{sid}") + '[data-state="ok"]').wait_for()
            assert "Đặt âm lượng" in await ack.inner_text()
            assert await page.get_attribute(by_testid(f"speaker-volume-{sid}"),
                                            "data-volume") == "40"
            await telemetry_of(up, sid, "volume", 40, 25)
            await page.click(by_testid("speakers-refresh"))  # the page also reads it every 10 s
            await page.locator(by_testid(f"speaker-level-{sid}")).filter(
                has_text="dBFS").wait_for()
            assert await page.get_attribute(by_testid(f"speaker-volume-{sid}"),
                                            "data-volume") == "40"

            mute = page.locator(by_testid(f"speaker-mute-{sid}"))
            assert await mute.inner_text() == "Tắt tiếng"
            await mute.click()
            await page.locator(by_testid(f"speaker-ack-{sid}") + '[data-state="ok"]'
                               ).filter(has_text="Tắt tiếng").wait_for()
            assert await mute.inner_text() == "Bật tiếng"  # the button now unmutes
            assert await low_contrast(page) == []
            await screenshot(page, "speakers-ack-vi")
            await telemetry_of(up, sid, "muted", True, 25)

            # a speaker that does not answer (stopped, still online for the broker): said so
            other = ours[1]
            pid = up.pid_of(other)
            os.kill(pid, signal.SIGSTOP)
            try:
                await page.click(by_testid(f"speaker-tone-{other}"))
                late = page.locator(by_testid(f"speaker-ack-{other}") + '[data-state="timeout"]')
                await late.wait_for()
                assert "không trả lời kịp" in await late.inner_text()
            finally:
                os.kill(pid, signal.SIGCONT)
            await switch_lang(page, "en")
            assert await page.inner_text(by_testid(f"speaker-mute-{sid}")) == "Unmute"
            assert await ack.inner_text() == "Mute: done by the speaker"  # in English now
            await screenshot(page, "speakers-en")

        # at 390 px the table is a list of cards, worked by keyboard alone
        async with console_page(viewport=(390, 844)) as page:
            await sign_in(page, up.url, creds["user"], creds["password"])
            await go(page, "/speakers")
            await page.locator(by_testid(f"speaker-{sid}")).wait_for()
            assert await page.evaluate("document.documentElement.scrollWidth") <= 390
            assert await page.evaluate("""(sel) => getComputedStyle(
                document.querySelector(sel)).display""", by_testid(f"speaker-{sid}")) == "block"
            await page.focus(by_testid("speakers-refresh"))
            await tab_to(page, f"speaker-mute-{sid}", limit=200)
            assert await focus_is_visible(page)
            assert await page.inner_text(by_testid(f"speaker-mute-{sid}")) == "Bật tiếng"
            await page.keyboard.press("Enter")
            await page.locator(by_testid(f"speaker-ack-{sid}") + '[data-state="ok"]'
                               ).filter(has_text="Bật tiếng").wait_for()
            assert await low_contrast(page) == []
            await screenshot(page, "speakers-390-vi")
        await telemetry_of(up, sid, "muted", False, 25)


# ---- against the in-process streamer -------------------------------------------------------


async def test_an_upload_the_api_refuses_shows_its_message_by_the_file_field(
        streamer, tmp_path: Path) -> None:
    user, password = admin_credentials(tmp_path)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, user, password)
        await go(page, "/clips")
        await page.locator(by_testid("clips-empty")).wait_for()
        await page.click(by_testid("clip-upload-send"))  # nothing chosen: said here
        error = page.locator(by_testid("clip-upload-file-error"))
        await error.wait_for(state="visible")
        assert "Hãy chọn" in await error.inner_text()
        await page.set_input_files(by_testid("clip-upload-file"), files=[{
            "name": "bien-ban.txt", "mimeType": "text/plain",
            "buffer": "Biên bản họp tổ dân phố, không phải âm thanh.\n".encode() * 50}])
        await page.click(by_testid("clip-upload-send"))
        await page.locator(by_testid("clip-upload-percent") + '[data-state="failed"]').wait_for()
        assert "not playable audio" in await error.inner_text()
        assert "/" not in (await error.inner_text()).split(":", 1)[1]  # no server path
        assert await page.get_attribute(by_testid("clip-upload-file"), "aria-invalid") == "true"
        assert await low_contrast(page) == []
        await screenshot(page, "clips-refused-vi")
    status, listed = await call(streamer, "GET", "/api/v1/clips")
    assert (status, listed) == (200, {"clips": []})


async def test_a_cancelled_upload_stores_nothing(streamer, tmp_path: Path) -> None:
    user, password = admin_credentials(tmp_path)
    chirp_wav(tmp_path / "chirp.wav")
    async with console_page() as page:
        await sign_in(page, streamer.http_url, user, password)
        await go(page, "/clips")
        await page.set_input_files(by_testid("clip-upload-file"), str(tmp_path / "chirp.wav"))
        await record_progress(page, "clip-upload-progress")
        await throttle_upload(page, 50_000)  # about 10 s for the 480 kB file
        await page.click(by_testid("clip-upload-send"))
        deadline = time.monotonic() + 10
        while not any(0 < v < 100 for v in await page.evaluate("window.progress")):
            assert time.monotonic() < deadline, "no progress shown while uploading"
            await asyncio.sleep(0.05)
        await page.click(by_testid("clip-upload-cancel"))
        await page.locator(by_testid("clip-upload-percent") + '[data-state="cancelled"]'
                           ).wait_for()
        assert await page.locator(by_testid("clip-upload-cancel")).is_hidden()
        assert not await page.locator(by_testid("clip-upload-send")).is_disabled()
        assert await page.locator(by_testid("clips-empty")).is_visible()
    status, listed = await call(streamer, "GET", "/api/v1/clips")
    assert (status, listed) == (200, {"clips": []})
    assert not [f for f in (tmp_path / "var" / "clips").rglob("*") if f.is_file()]


async def test_at_390_px_a_clip_is_aired_from_the_library_by_keyboard(
        streamer, tmp_path: Path) -> None:
    user, password = admin_credentials(tmp_path)
    chirp_wav(tmp_path / "chirp.wav", seconds=1.0)
    form = aiohttp.FormData()
    form.add_field("file", (tmp_path / "chirp.wav").read_bytes(), filename="chirp.wav")
    form.add_field("name", "Kẻng báo họp")
    status, clip = await call(streamer, "POST", "/api/v1/clips", data=form)
    assert status == 201, clip
    async with console_page(viewport=(390, 844)) as page:
        await sign_in(page, streamer.http_url, user, password)
        await go(page, "/clips")
        row = page.locator(by_testid(f"clip-{clip['id']}"))
        await row.wait_for()
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        assert await row.evaluate("e => getComputedStyle(e).display") == "block"
        duration = row.locator("td").first  # each value says what it is, as a card
        assert await duration.inner_text() == "0:01"
        assert await duration.get_attribute("data-label") == "Thời lượng"
        assert await duration.evaluate("e => getComputedStyle(e, '::before').content") != "none"
        await page.focus(by_testid("clips-refresh"))
        await tab_to(page, f"clip-air-{clip['id']}")
        assert await focus_is_visible(page)
        assert await low_contrast(page) == []
        await screenshot(page, "clips-390-vi")
        await page.keyboard.press("Enter")
        await page.locator('#view[data-route="compose"]').wait_for()
        await page.locator(by_testid(f"compose-clip-{clip['id']}")).wait_for()
        assert await page.is_checked(by_testid(f"compose-clip-{clip['id']}"))
        assert await page.evaluate("sessionStorage.getItem('loa.console.clip')") is None


async def test_the_composer_airs_a_test_tone(streamer) -> None:
    await make_user(streamer, "op-thang-tam", ("operator", COMMUNE), password=PASSWORD)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "op-thang-tam", PASSWORD)
        await go(page, "/compose")
        assert await page.is_checked(by_testid("compose-kind-tts"))  # text is the default
        await page.check(by_testid("compose-kind-tone"))
        assert await page.locator(by_testid("compose-text")).is_hidden()
        await page.fill(by_testid("compose-tone-hz"), "10")  # below what a horn plays
        await page.fill(by_testid("compose-tone-seconds"), "3")
        await page.check(by_testid(f"compose-zone-{COMMUNE}"))
        await page.click(by_testid("compose-submit"))
        error = page.locator(by_testid("compose-tone-hz-error"))
        await error.wait_for(state="visible")
        assert await page.get_attribute(by_testid("compose-tone-hz"), "aria-invalid") == "true"
        status, listed = await call(streamer, "GET", "/api/v1/broadcasts")
        assert listed["broadcasts"] == []
        await screenshot(page, "compose-tone-refused-vi")
        await page.fill(by_testid("compose-tone-hz"), "440")  # corrected: the error goes
        assert await error.is_hidden()
        assert await page.get_attribute(by_testid("compose-tone-hz"), "aria-invalid") is None
        assert await low_contrast(page) == []
        await screenshot(page, "compose-tone-vi")
        bid = await submit(page, "on_air")
    status, b = await call(streamer, "GET", f"/api/v1/broadcasts/{bid}")
    assert status == 200
    assert (b["source"]["kind"], b["source"]["hz"], b["source"]["seconds"]) == ("tone", 440, 3)
    assert (b["zones"], b["created_by"]) == ([COMMUNE], "op-thang-tam")


async def test_the_composer_uploads_a_clip_inline_chooses_it_and_airs_it(
        streamer, tmp_path: Path) -> None:
    await make_user(streamer, "op-thang-tam", ("operator", COMMUNE), password=PASSWORD)
    chirp_wav(tmp_path / "chirp.wav", seconds=2.0)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "op-thang-tam", PASSWORD)
        await go(page, "/compose")
        await page.check(by_testid("compose-kind-clip"))
        await page.locator(by_testid("compose-clips-empty")).wait_for()
        await page.check(by_testid(f"compose-zone-{COMMUNE}"))
        await page.click(by_testid("compose-submit"))  # no clip chosen: said by the picker
        error = page.locator(by_testid("compose-clip-error"))
        await error.wait_for(state="visible")
        assert "Hãy chọn" in await error.inner_text()

        await page.click(by_testid("compose-upload-open") + " summary")
        await page.set_input_files(by_testid("compose-upload-file"), str(tmp_path / "chirp.wav"))
        await page.focus(by_testid("compose-upload-name"))
        await page.keyboard.press("Enter")  # in the uploader: uploads, and airs nothing
        await page.locator(by_testid("compose-upload-percent") + '[data-state="done"]'
                           ).wait_for()
        status, listed = await call(streamer, "GET", "/api/v1/clips")
        ((cid, name),) = [(c["id"], c["name"]) for c in listed["clips"]]
        assert name == "chirp.wav"  # no name given: the file's
        assert await page.is_checked(by_testid(f"compose-clip-{cid}"))  # chosen for you
        assert await error.is_hidden()
        status, b = await call(streamer, "GET", "/api/v1/broadcasts")
        assert b["broadcasts"] == []
        await screenshot(page, "compose-clip-uploaded-vi")
        bid = await submit(page, "on_air")
    status, b = await call(streamer, "GET", f"/api/v1/broadcasts/{bid}")
    assert (b["source"]["kind"], b["source"]["clip"], b["zones"]) == ("clip", cid, [COMMUNE])


async def test_a_commune_operator_sees_and_commands_only_their_speakers(streamer) -> None:
    for sid, zone in [("spk-tt-1", f"{COMMUNE}.kp-1"), ("spk-tt-2", f"{COMMUNE}.kp-2"),
                      ("spk-ls-1", f"{NEIGHBOUR}.ap-1")]:
        status, body = await call(streamer, "POST", "/api/v1/speakers", json={
            "id": sid, "zone": zone, "name": f"Loa {sid}"})
        assert status == 201, body
    await make_user(streamer, "op-thang-tam", ("operator", COMMUNE), password=PASSWORD)
    await make_user(streamer, "xem-kp-2", ("viewer", f"{COMMUNE}.kp-2"), password=PASSWORD)
    async with console_page() as page:
        await sign_in(page, streamer.http_url, "op-thang-tam", PASSWORD)
        await go(page, "/speakers")
        await page.locator(by_testid("speaker-spk-tt-1")).wait_for()
        shown = await page.locator("[data-speaker]").evaluate_all(
            "els => els.map(e => e.dataset.speaker)")
        assert shown == ["spk-tt-1", "spk-tt-2"]
        assert "spk-ls-1" not in await page.inner_text("body")
        assert await page.inner_text(by_testid("speaker-state-spk-tt-1")) == "chưa rõ"
        assert await page.inner_text(by_testid("speaker-seen-spk-tt-1")) == "chưa bao giờ"
        # a command the API cannot send (no MQTT broker here): its message on the row
        await page.click(by_testid("speaker-tone-spk-tt-2"))
        ack = page.locator(by_testid("speaker-ack-spk-tt-2") + '[data-state="error"]')
        await ack.wait_for()
        assert "no MQTT broker configured" in await ack.inner_text()
        assert await page.locator(by_testid("speaker-ack-spk-tt-1")).is_hidden()
        await screenshot(page, "speakers-operator-vi")

        # a viewer of one hamlet sees its speaker and no commands
        await sign_in(page, streamer.http_url, "xem-kp-2", PASSWORD)
        await go(page, "/speakers")
        await page.locator(by_testid("speaker-spk-tt-2")).wait_for()
        assert await page.locator("[data-speaker]").count() == 1
        assert await page.locator(by_testid("speaker-mute-spk-tt-2")).count() == 0
