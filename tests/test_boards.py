"""E-boards (``streamer/control/board.py``, ``streamer/board``): registered like speakers, with
presence over MQTT; every broadcast with text and every emergency becomes an item on its
zones' boards, and operators post text-only items. A board reads its zone's items from a
real Mosquitto (retained, nothing of other zones) and the kiosk page shows them in Chromium;
an emergency from the inbound door fills the page in red."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from types import SimpleNamespace

import aiohttp
from prometheus_client import CollectorRegistry

from streamer.control.board import BoardFeed, item_of, relevant
from streamer.control.broker import STREAMER_USER, Account, hash_password, new_password
from streamer.control.fleet import Fleet
from streamer.control.models import BroadcastRecord, EmergencyPlan
from streamer.zones import ZoneTree
from tests.harness.api import audit, call, make_user
from tests.harness.broker import client
from tests.harness.browser import chromium_page
from tests.harness.console import screenshot
from tests.harness.senders import Sender, register, send
from tests.harness.wait import until
from tests.harness.zones import KP1, OP, OTHER
from wire.messages import BoardItem, BoardState, zone_board_topic


async def fleet_for(streamer, mosquitto) -> Fleet:
    """The streamer's fleet on a real Mosquitto whose accounts the streamer keeps."""
    pw = new_password()
    service = Account(STREAMER_USER, hash_password(pw), "service")
    mosquitto.set_accounts([service])
    mosquitto.start()
    devices = streamer.plane.devices
    devices.broker_dir, devices.service = mosquitto.directory, service
    fleet = Fleet(mosquitto.url, STREAMER_USER, pw, streamer.plane.recorder, CollectorRegistry())
    await fleet.start()
    await fleet.wait_connected(5)
    streamer.plane.fleet = fleet
    return fleet


async def next_state(messages, zone: str, timeout: float = 5.0) -> BoardState:
    async def first() -> BoardState:
        async for m in messages:
            if str(m.topic) == zone_board_topic(zone):
                return BoardState.model_validate_json(m.payload)
        raise AssertionError("the subscription ended")
    return await asyncio.wait_for(first(), timeout)


async def test_a_board_reads_its_zones_items_over_mqtt_and_nothing_else(streamer,
                                                                        mosquitto) -> None:
    fleet = await fleet_for(streamer, mosquitto)
    try:
        status, reg = await call(streamer, "POST", "/api/v1/boards", json={
            "id": "board-tt", "zone": OP, "name": "UBND phường Thắng Tam"})
        assert status == 201 and reg["page"].startswith(f"/board/{OP}?token="), reg
        user, password = reg["mqtt"]["user"], reg["mqtt"]["password"]
        async with client(mosquitto, user, password) as c:
            await c.publish(f"loa/v1/boards/{user}/status",
                            json.dumps({"state": "online", "ts": time.time()}), qos=1)
            await c.subscribe(zone_board_topic(OP), qos=1)
            await c.subscribe(zone_board_topic(OTHER), qos=1)  # not its zone: refused
            operator = await make_user(streamer, "op-tt", ("operator", OP))
            status, item = await call(streamer, "POST", "/api/v1/board/items",
                                      headers=operator, json={
                                          "zones": [OP], "title": "Lịch cắt điện",
                                          "body": "Thứ Bảy 8 giờ đến 11 giờ.",
                                          "expires_s": 3600})
            assert status == 201, item
            state = await next_state(c.messages, OP)
            assert [i.title for i in state.items] == ["Lịch cắt điện"]
            # a spoken bulletin to a hamlet below shows on the commune's board too
            status, b = await call(streamer, "POST", "/api/v1/broadcasts", json={
                "zones": [KP1], "label": "Tiêm chủng",
                "source": {"kind": "tts", "text": "Tiêm chủng sáng mai."}})
            assert status == 201, b
            state = await next_state(c.messages, OP)
            assert [(i.title, i.body, i.broadcast) for i in state.items][0] == (
                "Tiêm chủng", "Tiêm chủng sáng mai.", b["id"])
            # another commune's items never reach it
            status, _ = await call(streamer, "POST", "/api/v1/board/items", json={
                "zones": [OTHER], "title": "Kim Long"})
            assert status == 201
            status, _ = await call(streamer, "DELETE", f"/api/v1/board/items/{item['id']}",
                                   headers=operator)
            assert status == 200
            state = await next_state(c.messages, OP)
            assert [i.title for i in state.items] == ["Tiêm chủng"]
            await until(lambda: _online(streamer, user), 5, "the board's presence")
        outsider = await make_user(streamer, "op-kl", ("operator", OTHER))
        status, body = await call(streamer, "POST", "/api/v1/board/items", headers=outsider,
                                  json={"zones": [OP], "title": "x"})
        assert status == 403
        status, body = await call(streamer, "POST", "/api/v1/board/items", headers=operator,
                                  json={"zones": [OP], "title": "x", "level": "emergency"})
        assert status == 403  # an emergency item needs the emergency role
        assert [e["target"] for e in await audit(streamer, action="post_board_item")]
    finally:
        streamer.plane.fleet = None
        await fleet.close()


async def _online(streamer, board_id: str) -> bool:
    status, body = await call(streamer, "GET", "/api/v1/boards")
    return status == 200 and any(b["id"] == board_id and b["presence"]["state"] == "online"
                                 for b in body["boards"])


def test_which_broadcasts_make_items() -> None:
    base = dict(id=7, zones=[OP], created=1.0, started=1000.0)
    tts = BroadcastRecord(**base, priority="normal", label="Bản tin",
                          source={"kind": "tts", "text": "Xin chào", "seconds": 2.0})
    item = item_of(tts)
    assert item is not None and item.body == "Xin chào" and item.expires == 1000 + 2 + 3600
    assert item_of(BroadcastRecord(**base, priority="normal", source={"kind": "tone"})) is None
    em = item_of(BroadcastRecord(**base, priority="emergency", source={"kind": "clip"},
                                 emergency=EmergencyPlan(expires=5000.0)))
    assert em is not None and em.level == "emergency" and em.title == "Cảnh báo khẩn cấp" \
        and em.expires == 5000.0


async def test_the_kiosk_page_shows_items_and_an_emergency_from_above_fills_it(
        streamer) -> None:
    status, reg = await call(streamer, "POST", "/api/v1/boards", json={
        "id": "board-tt", "zone": OP})
    assert status == 201
    url = streamer.http_url + reg["page"]
    async with aiohttp.ClientSession() as http:
        for bad in (f"/board/{OP}/state", f"/board/{OP}/state?token=abc",
                    f"/board/{OTHER}/state?" + reg["page"].split("?")[1]):
            async with http.get(streamer.http_url + bad) as r:
                assert r.status == 401 and (await r.json())["field"] == "token", bad
    async with chromium_page(None, viewport=(1280, 720)) as page:
        await page.goto(url)
        await page.wait_for_selector('[data-testid="empty"]:not([hidden])')
        status, _ = await call(streamer, "POST", "/api/v1/board/items", json={
            "zones": [OP], "title": "Lịch cắt điện", "body": "Thứ Bảy 8 giờ đến 11 giờ."})
        assert status == 201
        await page.wait_for_selector('[data-testid="item"] >> text=Lịch cắt điện')
        assert not await page.evaluate("document.body.classList.contains('emergency')")
        central = Sender("central")
        await register(streamer, central)
        status, got = await send(streamer, central, {
            "ref": "BAO-9", "level": "emergency", "zones": [OP], "title": "Bão số 9",
            "text": "Bão số 9 đổ bộ đêm nay, người dân không ra khơi."})
        assert status == 201 and got["state"] == "aired", got
        await page.wait_for_selector('[data-level="emergency"] >> text=Bão số 9')
        assert await page.evaluate("document.body.classList.contains('emergency')")
        levels = await page.eval_on_selector_all('[data-testid="item"]',
                                                 "els => els.map(e => e.dataset.level)")
        assert levels == ["emergency", "normal"]  # the emergency first
        color = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert color == "rgb(176, 0, 0)"
        shot = await screenshot(page, "board-emergency")
        assert shot.stat().st_size > 10_000
        # stopped, it comes down; the page follows
        status, _ = await call(streamer, "DELETE", f"/api/v1/emergency/{got['broadcast']}")
        assert status == 200
        await page.wait_for_function("!document.body.classList.contains('emergency')")


async def test_a_quiet_kiosk_stream_ends_when_the_streamer_stops(streamer) -> None:
    """The streamer's HTTP server waits for its handlers when it stops: a kiosk page's event
    stream must end at once then, not at its next heartbeat (15 s) or never."""
    status, reg = await call(streamer, "POST", "/api/v1/boards", json={
        "id": "board-quiet", "zone": OP})
    assert status == 201
    path, query = reg["page"].split("?")
    async with aiohttp.ClientSession() as http, http.get(
            f"{streamer.http_url}{path}/events?{query}") as r:
        assert r.status == 200
        assert (await r.content.readuntil(b"\n\n")).startswith(b"event: board")
        streamer.plane.board.close()  # what Streamer.close does before the server stops
        rest = await asyncio.wait_for(r.content.read(), 2.0)  # not HEARTBEAT_S
    assert b": alive" not in rest


def test_each_zones_board_is_read_from_its_own_items_as_relevant_says():
    """The index by zone (kept as items come and go) shows every zone exactly the items
    ``relevant`` picks from all of them: addressed to it, above it or below it."""
    tree = ZoneTree.load()
    feed = BoardFeed(SimpleNamespace(tree=tree, fleet=None), now=lambda: 1000.0)
    rng = random.Random(17)
    ids = list(tree.zones)
    items = [BoardItem(id=f"i-{n}", zones=rng.sample(ids, rng.randint(1, 3)), start=900.0,
                       title=str(n)) for n in range(60)]
    for item in items:
        feed._keep(item)
    for gone in rng.sample(items, 20):
        feed._drop(gone.id)
    left = [i for i in items if i.id in feed.items]
    assert len(left) == 40
    for zone in tree.zones:
        want = {i.id for i in left if relevant(zone, i)}
        assert {i.id for i in feed.state(zone).items} == want, zone
        assert {i.id for i in left if zone in feed.shown_on(i)} == want, zone


def test_the_board_benchmark_runs_and_both_ways_agree():
    """``loadtest/bench_board.py`` at a small size: it checks the index against every item
    for every zone before timing, so a run that prints its table found them equal."""
    from loadtest import bench_board

    args = ["--districts", "2", "--communes", "3", "--hamlets", "2", "--items", "40",
            "--province-wide", "2", "--rounds", "1"]
    r = bench_board.run(argparse.Namespace(districts=2, communes=3, hamlets=2, items=40,
                                           province_wide=2, rounds=1))
    assert r["zones"] == 1 + 2 + 6 + 12 and r["index_all"] > 0 and r["brute_all"] > 0
    assert bench_board.main(args) == 0
