"""The console's zones page (#/zones, ``streamer/console/static/zones.js``) in Chromium: an
admin merges one commune into another after a confirmation that says what will happen, sees
the mapping and the new tree, and the API agrees; a merge whose hamlet keys clash is refused,
changes nothing, and goes through once a new key is typed; an operator gets no such page."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tests.harness.api import call, make_user
from tests.harness.browser import by_testid
from tests.harness.console import (
    COMMUNE,
    NEIGHBOUR,
    PASSWORD,
    admin_credentials,
    console_page,
    go,
    sign_in,
)

if TYPE_CHECKING:
    from playwright.async_api import Page

#: two communes whose hamlets share one key (ap-tay) in streamer/data/zones-brvt.toml
HOA_LONG = "brvt.ba-ria.hoa-long"
KIM_LONG = "brvt.chau-duc.kim-long"


async def confirm(page: Page, says: str) -> None:
    """The confirmation dialog is open and says ``says``: confirm."""
    dialog = page.locator(by_testid("confirm-dialog"))
    await dialog.wait_for(state="visible")
    assert says in await dialog.inner_text()
    await page.click(by_testid("confirm-yes"))


async def merge_on_page(page: Page, zone: str, into: str) -> None:
    await page.click(by_testid(f"zones-pick-{zone}"))
    await page.click(by_testid("zones-action-merge"))
    await page.check(by_testid(f"zf-into-{into}"))
    await page.click(by_testid("zones-submit"))


async def mapping_shown(page: Page) -> dict[str, str]:
    items = page.locator(by_testid("zones-mapping") + " li[data-old]")
    await items.first.wait_for()
    return dict(await items.evaluate_all("els => els.map(e => [e.dataset.old, e.dataset.new])"))


async def test_an_admin_merges_communes_on_the_zones_page(streamer, tmp_path: Path) -> None:
    await make_user(streamer, "op-tt", ("operator", COMMUNE), password=PASSWORD)
    user, password = admin_credentials(tmp_path)
    async with console_page() as page:
        # an operator: no entry in the nav, and the page says why
        await sign_in(page, streamer.http_url, "op-tt", PASSWORD)
        assert await page.locator(by_testid("nav-zones")).count() == 0
        await go(page, "/zones")
        await page.locator(by_testid("not-allowed")).wait_for()
        assert await page.locator(by_testid("zones-tree")).count() == 0

        await sign_in(page, streamer.http_url, user, password)
        await page.click(by_testid("nav-zones"))
        await page.locator(by_testid(f"zones-node-{COMMUNE}.kp-1")).wait_for()
        assert await page.get_attribute(by_testid(f"zones-node-{COMMUNE}.kp-1"),
                                        "data-channel") == "true"

        # Thắng Tam into Long Sơn: asked in plain words first, then the answer and the tree
        await merge_on_page(page, COMMUNE, NEIGHBOUR)
        await confirm(page, "Sáp nhập Phường Thắng Tam vào Xã Long Sơn: 3 khu phố (Khu phố 1, "
                            "Khu phố 2, Khu phố 3) chuyển sang Xã Long Sơn; lịch phát, loa và "
                            "người dùng đi theo.")
        mapping = await mapping_shown(page)
        assert mapping[COMMUNE] == NEIGHBOUR
        assert mapping[f"{COMMUNE}.kp-1"] == f"{NEIGHBOUR}.kp-1"
        assert await page.get_attribute(by_testid("zones-channels-added"), "data-value") == \
            ",".join(f"{NEIGHBOUR}.kp-{i}" for i in (1, 2, 3))
        await page.locator(by_testid(f"zones-node-{NEIGHBOUR}.kp-1")).wait_for()
        assert await page.locator(by_testid(f"zones-node-{COMMUNE}")).count() == 0
        assert await page.inner_text(by_testid("zones-selected")) == NEIGHBOUR
        await page.screenshot(path=str(tmp_path / "zones-merged-vi.png"), full_page=True)
        status, z = await call(streamer, "GET", f"/api/v1/zones/{NEIGHBOUR}")
        assert status == 200
        assert [c["id"] for c in z["children"]] == [
            f"{NEIGHBOUR}.ap-1", f"{NEIGHBOUR}.ap-2", *(f"{NEIGHBOUR}.kp-{i}" for i in (1, 2, 3))]
        assert (await call(streamer, "GET", f"/api/v1/zones/{COMMUNE}"))[0] == 404

        # Hòa Long into Kim Long: both have an Ấp Tây (ap-tay). Refused, nothing changes, and
        # the page asks for a new key for the clashing hamlet
        await merge_on_page(page, HOA_LONG, KIM_LONG)
        await confirm(page, "Sáp nhập Xã Hòa Long vào Xã Kim Long: 3 ấp (Ấp Bắc, Ấp Nam, Ấp Tây)")
        new_key = page.locator(by_testid("zf-newkey-ap-tay"))
        await new_key.wait_for()
        assert "ap-tay" in await page.inner_text(by_testid("zf-keys"))
        assert await page.evaluate("document.activeElement.dataset.testid") == "zf-newkey-ap-tay"
        assert await page.locator(by_testid("zf-keys") + " input").count() == 1
        assert await page.locator(by_testid(f"zones-node-{HOA_LONG}.ap-tay")).count() == 1
        assert (await call(streamer, "GET", f"/api/v1/zones/{HOA_LONG}"))[0] == 200
        await new_key.fill("ap-tay-hoa-long")
        await page.click(by_testid("zones-submit"))
        await confirm(page, f"Ấp Tây nhận mã mới {KIM_LONG}.ap-tay-hoa-long.")
        await page.locator(by_testid(f"zones-node-{KIM_LONG}.ap-tay-hoa-long")).wait_for()
        mapping = await mapping_shown(page)
        assert mapping[f"{HOA_LONG}.ap-tay"] == f"{KIM_LONG}.ap-tay-hoa-long"
        assert mapping[f"{HOA_LONG}.ap-bac"] == f"{KIM_LONG}.ap-bac"
        status, z = await call(streamer, "GET", f"/api/v1/zones/{KIM_LONG}")
        assert sorted(c["id"] for c in z["children"]) == [
            f"{KIM_LONG}.{k}" for k in ("ap-bac", "ap-dong", "ap-nam", "ap-tay",
                                        "ap-tay-hoa-long", "ap-trung")]


async def test_an_admin_renames_adds_and_moves_zones(streamer, tmp_path: Path) -> None:
    user, password = admin_credentials(tmp_path)
    renamed = "brvt.vung-tau.phuong-vung-tau"
    async with console_page() as page:
        await sign_in(page, streamer.http_url, user, password)
        await go(page, "/zones")
        # a new name and a new key: one move, then the name
        await page.click(by_testid(f"zones-pick-{COMMUNE}"))
        await page.click(by_testid("zones-action-rename"))
        await page.fill(by_testid("zf-name"), "Phường Vũng Tàu")
        await page.fill(by_testid("zf-key"), "phuong-vung-tau")
        await page.click(by_testid("zones-submit"))
        await confirm(page, f"Đổi mã Phường Vũng Tàu từ {COMMUNE} thành {renamed}.")
        await page.locator(by_testid("zones-renamed")).wait_for()
        assert (await mapping_shown(page))[f"{COMMUNE}.kp-2"] == f"{renamed}.kp-2"
        status, z = await call(streamer, "GET", f"/api/v1/zones/{renamed}")
        assert (status, z["name"]) == (200, "Phường Vũng Tàu")

        # a hamlet under it: a key it has is refused next to the key field, then a new one
        await page.click(by_testid("zones-action-add"))
        await page.fill(by_testid("zf-name"), "Khu phố 4")
        await page.fill(by_testid("zf-key"), "kp-1")
        await page.click(by_testid("zones-submit"))
        await confirm(page, f"Thêm Khu phố 4 (mã {renamed}.kp-1) vào Phường Vũng Tàu.")
        error = page.locator("#zf-key-err")
        await error.wait_for(state="visible")
        assert "exists" in await error.inner_text()
        assert await page.get_attribute(by_testid("zf-key"), "aria-invalid") == "true"
        await page.fill(by_testid("zf-key"), "kp-4")
        await page.click(by_testid("zones-submit"))
        await confirm(page, f"Thêm Khu phố 4 (mã {renamed}.kp-4) vào Phường Vũng Tàu.")
        await page.locator(by_testid(f"zones-node-{renamed}.kp-4")).wait_for()
        assert await page.get_attribute(by_testid("zones-channels-added"), "data-value") == \
            f"{renamed}.kp-4"
        assert f"{renamed}.kp-4" in streamer.mixer.channels

        # the new hamlet moves to the commune next door
        await page.click(by_testid("zones-action-move"))
        await page.check(by_testid(f"zf-parent-{NEIGHBOUR}"))
        await page.click(by_testid("zones-submit"))
        await confirm(page, f"Chuyển Khu phố 4 vào Xã Long Sơn: mã mới là {NEIGHBOUR}.kp-4.")
        await page.locator(by_testid(f"zones-node-{NEIGHBOUR}.kp-4")).wait_for()
        assert await mapping_shown(page) == {f"{renamed}.kp-4": f"{NEIGHBOUR}.kp-4"}
        status, z = await call(streamer, "GET", f"/api/v1/zones/{NEIGHBOUR}")
        assert f"{NEIGHBOUR}.kp-4" in [c["id"] for c in z["children"]]
