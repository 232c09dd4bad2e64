"""The settings panel of the console's zones page (``streamer/console/static/zonesettings.js``)
in Chromium, against an in-process streamer with a voice file (its voices are listed, never
spoken here): an admin sees what a commune inherits and from where, a refused quiet-hours
value shows the API's error by the field and changes nothing, quiet hours and approval are
saved in one PATCH that leaves the unchanged voice out, a voice is chosen, and "inherit"
drops the commune's own values; the API agrees at every step."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.harness.api import call
from tests.harness.browser import by_testid
from tests.harness.console import (
    COMMUNE,
    admin_credentials,
    console_page,
    go,
    low_contrast,
    screenshot,
    sign_in,
)

if TYPE_CHECKING:
    from playwright.async_api import Page

DISTRICT = "brvt.vung-tau"
HAMLET = f"{COMMUNE}.kp-1"


@pytest.fixture
async def voiced(tmp_path: Path, redis_url: str) -> Any:
    """The ``streamer`` fixture's streamer with a voice file of two voices; its service URL
    is a closed port: nothing here is read aloud."""
    from tests.conftest import DAYTIME
    from tests.harness.streamer import in_process

    voice_file = tmp_path / "voice.toml"
    voice_file.write_text('''
default_voice = "north"
[http]
url = "http://127.0.0.1:9/speak"
request = { text = "{text}", voice = "{voice}" }
[voices]
north = { http = "banmai", espeak = "vi" }
south = { http = "lannhi", espeak = "vi-vn-x-south" }
''')
    s = await in_process(tmp_path, redis_url, DAYTIME, tts_voice_file=str(voice_file))
    yield s
    await s.close()


async def zone(s: Any, zid: str) -> dict[str, Any]:
    status, z = await call(s, "GET", f"/api/v1/zones/{zid}")
    assert status == 200, z
    return dict(z)


async def save(page: Page, patches: list[Any]) -> Any:
    """Press "save"; the PATCH body it sent, once the panel says it is saved."""
    sent = len(patches)
    await page.click(by_testid("zs-save"))
    await page.locator(by_testid("zs-status") + ":text('Đã lưu')").wait_for()
    assert len(patches) == sent + 1
    return patches[-1]


async def test_an_admin_sets_a_communes_quiet_hours_approval_and_voice(
        voiced: Any, tmp_path: Path) -> None:
    status, _ = await call(voiced, "PATCH", f"/api/v1/zones/{DISTRICT}",
                           json={"quiet_hours": "21:30-06:00", "voice": "south"})
    assert status == 200
    user, password = admin_credentials(tmp_path)
    async with console_page() as page:
        patches: list[Any] = []
        page.on("request", lambda r: patches.append(r.post_data_json)
                if r.method == "PATCH" else None)
        await sign_in(page, voiced.http_url, user, password)
        await go(page, "/zones")
        await page.click(by_testid(f"zones-pick-{COMMUNE}"))

        # what the commune inherits, and from where
        in_force = page.locator(by_testid("zs-quiet-in-force"))
        await in_force.wait_for()
        assert await in_force.get_attribute("data-value") == "21:30-06:00"
        assert "theo Thành phố Vũng Tàu" in await in_force.inner_text()
        assert await page.is_checked(by_testid("zs-quiet-inherit"))
        voice = page.locator(by_testid("zs-voice"))
        assert await voice.locator("option").evaluate_all(
            "os => os.map(o => o.value)") == ["", "north", "south"]
        assert await voice.input_value() == ""
        assert "south (theo Thành phố Vũng Tàu)" in await voice.locator("option").first.inner_text()
        assert await page.get_attribute(by_testid("zs-voice-in-force"), "data-value") == "south"

        # a quiet-hours value the API refuses: its message by the field, nothing saved
        await page.fill(by_testid("zs-quiet"), "10:00-10:00")
        assert await page.is_checked(by_testid("zs-quiet-own"))
        await page.click(by_testid("zs-save"))
        error = page.locator("#zs-quiet-err")
        await error.wait_for(state="visible")
        assert "HH:MM-HH:MM" in await error.inner_text()
        assert await page.get_attribute(by_testid("zs-quiet"), "aria-invalid") == "true"
        assert patches == [{"quiet_hours": "10:00-10:00"}]
        assert await page.inner_text(by_testid("zs-status")) == ""
        assert (await zone(voiced, COMMUNE))["quiet_hours"] is None

        # own quiet hours and approval: one PATCH without the unchanged voice
        await page.fill(by_testid("zs-quiet"), "21:00-05:30")
        await page.check(by_testid("zs-requires_approval"))
        assert await save(page, patches) == {"quiet_hours": "21:00-05:30",
                                             "requires_approval": True}
        await page.locator("#zs-quiet-err:empty").wait_for(state="attached")
        z = await zone(voiced, COMMUNE)
        assert (z["quiet_hours"], z["requires_approval"], z["voice"]) == (
            "21:00-05:30", True, None)
        assert await in_force.get_attribute("data-value") == "21:00-05:30"
        assert await page.input_value(by_testid("zs-quiet")) == "21:00-05:30"
        assert await page.is_checked(by_testid("zs-requires_approval"))
        assert await low_contrast(page) == []
        await screenshot(page, "zones-settings-vi")

        # a voice of the voice file
        await voice.select_option("north")
        assert await save(page, patches) == {"voice": "north"}
        assert (await zone(voiced, COMMUNE))["voice"] == "north"
        assert await page.get_attribute(by_testid("zs-voice-in-force"), "data-value") == "north"

        # the hamlet below now inherits the commune's (the answer updated the tree)
        await page.click(by_testid(f"zones-pick-{HAMLET}"))
        await page.locator(f'{by_testid("zones-settings")}[data-zone="{HAMLET}"] '
                           + by_testid("zs-form")).wait_for()
        assert await in_force.get_attribute("data-value") == "21:00-05:30"
        assert "theo Phường Thắng Tam" in await in_force.inner_text()
        assert await page.get_attribute(by_testid("zs-voice-in-force"), "data-value") == "north"

        # "inherit" drops the commune's own quiet hours and voice
        await page.click(by_testid(f"zones-pick-{COMMUNE}"))
        await page.locator(f'{by_testid("zones-settings")}[data-zone="{COMMUNE}"] '
                           + by_testid("zs-form")).wait_for()
        await page.check(by_testid("zs-quiet-inherit"))
        await voice.select_option("")
        assert await save(page, patches) == {"inherit_quiet_hours": True, "inherit_voice": True}
        z = await zone(voiced, COMMUNE)
        assert (z["quiet_hours"], z["voice"], z["requires_approval"]) == (None, None, True)
        assert z["quiet_hours_in_force"] == "21:30-06:00"
        assert await in_force.get_attribute("data-value") == "21:30-06:00"
        assert await page.input_value(by_testid("zs-quiet")) == ""

        # nothing changed: no call
        await page.click(by_testid("zs-save"))
        await page.locator(by_testid("zs-status") + ":text('Chưa có gì thay đổi')").wait_for()
        assert len(patches) == 4
