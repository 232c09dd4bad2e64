"""Bulk import of speakers and relays (``POST /api/v1/devices/import``,
``streamer/control/provision.py``): a file is checked whole and written whole, every bad row is
named by line and field, the broker's accounts are written once and a device logs in to a real
Mosquitto with the password the import answered once."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import aiomqtt
import pytest

from streamer.control import provision
from tests.harness.api import audit, call, make_user
from tests.harness.broker import client
from tests.harness.zones import KP1, KP2, OP, OTHER

LEAVES = (KP1, KP2)


def speakers_csv(n: int, bad: dict[int, str] | None = None) -> str:
    """``n`` speakers over two leaves; ``bad``: row index → a replacement line."""
    lines = ["kind,id,zone,name,lat,lon,relays"]
    for i in range(n):
        lines.append((bad or {}).get(i) or
                     f"speaker,spk-{i:05d},{LEAVES[i % 2]},Loa {i},10.34,107.08,"
                     "10.0.0.1:5004 10.0.0.2:5004")
    return "\n".join(lines) + "\n"


async def post(streamer, body: str | bytes, content_type: str = "text/csv",
               headers: dict | None = None, **params):
    h = {**(streamer.admin if headers is None else headers), "Content-Type": content_type}
    return await call(streamer, "POST", "/api/v1/devices/import", headers=h, data=body,
                      params={k: str(v).lower() for k, v in params.items()})


async def test_five_thousand_rows_are_all_or_nothing_and_every_bad_row_is_named(
        streamer) -> None:
    bad = {
        17: f"speaker,spk-00001,{KP1},again,,,",  # an id already on line 3
        999: f"speaker,spk-00999,{OP},not a leaf,,,",
        2500: f"speaker,spk-02500,{KP1},far,,200,",
        4998: f"speaker,spk-04998,{KP1},x,,,10.0.0.1",
        4999: f"lamp,spk-04999,{KP1},,,,",
    }
    status, body = await post(streamer, speakers_csv(5000, bad))
    assert status == 400 and body["field"] == "rows" and body["bad_rows"] == 5, body
    assert [(r["line"], r["field"]) for r in body["rows"]] == [
        (19, "id"), (1001, "zone"), (2502, "lon"), (5000, "relays"), (5001, "kind")]
    assert "line 3" in body["rows"][0]["message"]
    assert await streamer.state.device_ids() == set()  # nothing written
    # fixed, it goes in whole
    status, body = await post(streamer, speakers_csv(5000))
    assert status == 201 and body["speakers"] == 5000, body
    assert len(body["credentials"]) == 5000 and len({c["password"] for c in body["credentials"]}) \
        == 5000
    assert len(await streamer.state.device_ids()) == 5000
    s = await streamer.state.speakers.get("spk-00003")
    assert s is not None and s.zone == KP2 and s.relays == ["10.0.0.1:5004", "10.0.0.2:5004"]
    # the same file again: every row is registered already, nothing changes
    status, body = await post(streamer, speakers_csv(3))
    assert status == 400 and body["bad_rows"] == 3 and {r["field"] for r in body["rows"]} == {"id"}
    entries = [e for e in await audit(streamer, action="import_devices")]
    assert len(entries) == 1 and len(entries[0]["detail"]["speakers"]) == 5000


async def test_json_relays_dry_run_and_the_callers_zones(streamer) -> None:
    devices = {"devices": [
        {"kind": "relay", "id": "relay-vt", "media": "10.0.0.1:5004", "zone": OP},
        {"kind": "speaker", "id": "spk-x", "zone": KP1, "relays": ["10.0.0.1:5004"]}]}
    status, body = await post(streamer, json.dumps(devices), "application/json", dry_run=True)
    assert status == 201 and body["dry_run"] and body["credentials"] == [], body
    assert await streamer.state.device_ids() == set()
    admin_op = await make_user(streamer, "admin-op", ("admin", OP))
    other = {"devices": [{"kind": "speaker", "id": "spk-y",
                          "zone": f"{OTHER}.ap-tay"}]}
    status, body = await post(streamer, json.dumps(other), "application/json",
                              headers=admin_op)
    assert status == 403 and body["field"] == "zones", body
    status, body = await post(streamer, json.dumps(devices), "application/json",
                              headers=admin_op)
    assert status == 201 and (body["speakers"], body["relays"]) == (1, 1), body
    assert await streamer.state.device_ids() == {"relay-vt", "spk-x"}


@pytest.mark.parametrize(("body", "content_type", "status", "field"), [
    (b"", "text/csv", 400, "file"),
    (b"id,colour\nspk-1,red\n", "text/csv", 400, "file"),
    (b"\xff\xfe", "text/csv", 400, "file"),
    (b'{"speakers": []}', "application/json", 400, "file"),
    (b"{not json", "application/json", 400, "file"),
    (b"kind,id\n", "text/csv", 400, "file"),
    (b"kind,id\n", "text/plain", 415, "Content-Type"),
])
async def test_a_file_that_cannot_be_read_is_refused_by_name(streamer, body, content_type,
                                                             status, field) -> None:
    got, answer = await post(streamer, body, content_type)
    assert (got, answer["field"]) == (status, field), answer
    assert await streamer.state.device_ids() == set()


def test_rows_are_checked_like_the_single_device_api() -> None:
    rows = provision.read_csv("kind,id,zone,relays,media\n"
                              f"speaker,spk-1,{KP1},,\n"
                              "relay,r-1,,,10.0.0.1:5004\n"
                              f"speaker,spk-2,{KP1},,10.0.0.1:5004\n"
                              f"relay,r-2,{KP1},10.0.0.9:1,\n"
                              f'speaker,"bad id!",{KP1},,\n'
                              f"speaker,spk-3,{KP1},,,extra\n")
    checked = provision.check(rows, is_leaf=lambda z: z == KP1, is_zone=lambda z: True,
                              registered=set(), now=0.0)
    assert [s.id for s in checked.speakers] == ["spk-1"]
    assert [r.id for r in checked.relays] == ["r-1"]
    assert [(e.line, e.field) for e in checked.errors] == [
        (4, "media"), (5, "relays"), (6, "id"), (7, "-")]


async def test_the_broker_takes_the_imported_logins_in_one_sync(streamer, mosquitto,
                                                                tmp_path: Path) -> None:
    mosquitto.set_accounts([])
    mosquitto.start()
    devices = streamer.plane.devices
    devices.broker_dir = Path(mosquitto.directory)
    syncs = 0
    write = devices._write

    def counted(accounts):
        nonlocal syncs
        syncs += 1
        write(accounts)

    devices._write = counted
    status, body = await post(streamer, speakers_csv(50), headers={**streamer.admin,
                                                                   "Accept": "text/csv"})
    assert status == 201 and syncs == 1
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert len(rows) == 50 and rows[7]["user"] == "spk-00007"
    async with client(mosquitto, rows[7]["user"], rows[7]["password"]) as c:
        await c.publish("loa/v1/speakers/spk-00007/status", b"{}", qos=1)
    with pytest.raises(aiomqtt.MqttError):
        async with client(mosquitto, rows[7]["user"], rows[8]["password"]):
            pass
