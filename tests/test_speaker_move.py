"""A speaker follows its channel when the streamer moves it to another leaf zone.

The end-to-end test runs the in-process streamer with its fleet link and token issuer on a
real Mosquitto, and a real speaker process holding a token for its first zone only: two
channels play different tones, the speaker is moved with ``PATCH /api/v1/speakers/{id}``,
and what it plays (the FFT peak of its output), what it reports (status, health) and the
token it presents all follow. The unit tests drive the config's validation and the
subscribe client's move sans-IO.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from clients.speaker import placement
from clients.speaker.net import token_allows
from clients.speaker.playout import OpusDecoder, Playout
from clients.speaker.store import ClipStore, ForwardPath
from streamer.control.broker import STREAMER_USER
from streamer.control.fleet import CONFIG_CONCURRENCY
from streamer.control.forward import render
from streamer.control.moves import move_speakers
from streamer.mixer.sources import Tone
from tests.harness.api import call
from tests.harness.audio import peak_hz
from tests.harness.broker import client
from tests.harness.keys import token_args, token_for
from tests.harness.net import free_port
from tests.harness.sink import SparseSink
from tests.harness.speaker import (
    last_second,
    mqtt_speakers,
    retained_status,
    speaker_process,
    tone_on,
)
from tests.harness.streamer import with_fleet
from tests.harness.zones import KP1, KP2
from wire import subscribe
from wire.auth import Keyring, SigningKey
from wire.messages import BadPayload, DeviceConfig, device_topic, parse
from wire.plan import Plan, PlanEntry, sha256_hex, sign_plan
from wire.priority import Priority
from wire.subscribe import MsgType, SubscribeClient

RATE = 48_000
T0 = 1_795_402_800.0  # a fixed instant, never today
UP = ("127.0.0.1", 5004)


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize("channel", ["KP1", "brvt..kp-1", "brvt/kp-1", "a" * 401, "", 7])
def test_a_config_naming_no_zone_id_is_refused_naming_the_channel(channel: Any) -> None:
    payload = DeviceConfig(volume=40.0).model_dump() | {"channel": channel}
    with pytest.raises(BadPayload) as e:
        parse(DeviceConfig, json.dumps(payload).encode())
    assert e.value.reason == "invalid_fields"
    assert e.value.message.startswith("channel"), e.value.message
    # the good one moves; left out, nothing moves
    assert parse(DeviceConfig, b'{"channel": "%s"}' % KP2.encode()).channel == KP2
    assert parse(DeviceConfig, b'{"volume": 40}').channel is None


def handshake(c: SubscribeClient, now: float) -> None:
    """HELLO → COOKIE → SUBSCRIBE → SUBACK for ``c.channel`` from ``UP``."""
    cookie = subscribe.Message(MsgType.COOKIE, c.channel, cookie=bytes(24)).build()
    assert c.handle(cookie, UP, now)[0][0][4] == MsgType.SUBSCRIBE
    c.handle(subscribe.Message(MsgType.SUBACK, c.channel, ssrc=9, keepalive_s=5).build(),
             UP, now)
    assert c.state is subscribe.ClientState.SUBSCRIBED


def test_a_move_byes_the_old_channel_and_says_hello_for_the_new_one() -> None:
    c = SubscribeClient(identity="spk-a", channel=KP1, upstreams=[UP], token=b"t")
    c.start(0.0)
    handshake(c, 0.1)
    assert c.move(KP1, 1.0) == []  # the channel it plays: nothing happens
    assert c.state is subscribe.ClientState.SUBSCRIBED
    out = c.move(KP2, 1.0)
    msgs = [subscribe.parse(data) for data, _ in out]
    assert [(m.type, m.channel) for m in msgs] == [(MsgType.BYE, KP1), (MsgType.HELLO, KP2)]
    assert all(addr == UP for _, addr in out) and msgs[1].token == b"t"
    assert (c.channel, c.state, c.ssrc) == (KP2, subscribe.ClientState.HELLO, None)
    # an answer about the old channel is not taken for the new one
    stale = subscribe.Message(MsgType.COOKIE, KP1, cookie=bytes(24)).build()
    assert c.handle(stale, UP, 1.1) == [] and c.state is subscribe.ClientState.HELLO
    handshake(c, 1.2)


def test_a_token_for_the_new_channel_only_is_kept_for_the_move() -> None:
    assert token_allows(token_for("spk-a", [KP1]), KP1)
    assert not token_allows(token_for("spk-a", [KP2]), KP1)
    assert token_allows(token_for("spk-a", ["brvt"]), KP1)
    assert token_allows(b"not a token", KP1)  # the upstream judges what we cannot read


def test_the_old_zones_plan_stops_and_is_dropped_and_its_clips_stay(tmp_path: Path) -> None:
    """Store and forward after a move: a local play of the old zone's plan stops, the plan
    goes (from memory and disk), the old zone's plans are refused, the new zone's taken."""
    key = SigningKey.generate()
    clip = render(Tone(1000.0, 2.0), None).data
    sha = sha256_hex(clip)

    def plan_for(zone: str, bid: int) -> bytes:
        e = PlanEntry(schedule="s1", at=T0 + 1, clip=sha, bytes=len(clip), duration_s=2.0,
                      priority=Priority.NORMAL, broadcast=bid)
        return sign_plan(key, Plan(zone=zone, made=T0, valid_until=T0 + 3600, entries=[e]))

    playout = Playout(SparseSink(), OpusDecoder(), T0 - 10, volume_pct=100)
    store = ClipStore(tmp_path, 10_000_000)
    fp = ForwardPath(playout, store, KP1, Keyring([key.public]), new_decoder=OpusDecoder,
                     delay_s=0.3)
    assert fp.on_plan(plan_for(KP1, 41), T0) == "accepted"
    assert fp.on_clip(sha, clip) == "stored"
    for now in (T0, T0 + 1.35):  # decoded, then due with no stream: it plays on its own
        playout.tick(now)
        fp.tick(now, lost=True)
    assert playout.local_playing and playout.local_broadcast_id == 41
    fp.move(KP2)
    assert not playout.local_playing and fp.plan is None and store.load_plan() is None
    assert store.has(sha)  # named by its content: the new zone's plan may want it
    assert fp.on_plan(plan_for(KP1, 41), T0) == "wrong_zone"
    assert fp.on_plan(plan_for(KP2, 42), T0) == "accepted" and fp.missing() == set()


def test_a_kept_move_is_taken_only_while_the_config_names_the_channel_moved_from(
        tmp_path: Path) -> None:
    assert placement.moved_to(tmp_path, KP1) is None  # never moved
    placement.remember(tmp_path, KP1, KP2)
    assert placement.moved_to(tmp_path, KP1) == KP2
    # an installer wrote another channel into the config: obeyed, and the move forgotten
    assert placement.moved_to(tmp_path, "long-son.ap-1") is None
    assert placement.moved_to(tmp_path, KP1) is None
    placement.remember(tmp_path, KP1, KP2)
    placement.remember(tmp_path, KP1, KP1)  # moved back to where it was installed
    assert placement.moved_to(tmp_path, KP1) is None
    for damaged in (b"{", b"[]", b'{"from": "%s", "to": "../etc"}' % KP1.encode()):
        (tmp_path / placement.FILE).write_bytes(damaged)
        assert placement.moved_to(tmp_path, KP1) is None


# --------------------------------------------------------------------------- end to end


@pytest.mark.realtime
async def test_a_moved_speaker_plays_reports_and_obeys_its_new_zone(
        mosquitto: Any, redis_url: str, tmp_path: Path) -> None:
    streamer, pw = await with_fleet(tmp_path, redis_url, mosquitto)
    try:
        fleet = streamer.plane.fleet
        status, body = await call(streamer, "POST", "/api/v1/speakers",
                                  json={"id": "spk-a", "zone": KP1})
        assert status == 201, body
        pw["spk-a"] = body["mqtt"]["password"]
        for zone, hz in ((KP1, 440.0), (KP2, 880.0)):
            status, body = await call(streamer, "POST", "/api/v1/broadcasts", json={
                "zones": [zone], "source": {"kind": "tone", "hz": hz, "seconds": 120}})
            assert status == 201, body
        # its token names its first zone's channel only: the move needs the streamer's next
        token = token_args(tmp_path, "spk-a", [KP1])
        async with mqtt_speakers(tmp_path, mosquitto, pw, streamer.media_addr,
                                 ("spk-a", KP1), extra=tuple(token)) as (spk,):
            await tone_on(spk, 440.0, 15)
            assert (await retained_status(mosquitto, pw[STREAMER_USER], "spk-a")).channel == KP1
            assert "spk-a" in (await fleet.zone_command(KP1, "ping", timeout_s=1.5)).acks

            status, body = await call(streamer, "PATCH", "/api/v1/speakers/spk-a",
                                      json={"zone": KP2})
            assert status == 200 and body["zone"] == KP2, body
            await tone_on(spk, 880.0, 8)
            assert abs(peak_hz(last_second(spk)) - 880.0) < 10
            assert (await spk.health())["channel"] == KP2
            s = await retained_status(mosquitto, pw[STREAMER_USER], "spk-a")
            assert (s.state, s.channel, s.zone) == ("online", KP2, KP2)
            # its group commands are the new zone's
            assert "spk-a" in (await fleet.zone_command(KP2, "ping", timeout_s=1.5)).acks
            assert "spk-a" not in (await fleet.zone_command(KP1, "ping", timeout_s=1.5)).acks
            # the token it keeps for its next start is the streamer's, for the new channel
            kept = base64.b64decode(Path(token[1]).read_text())
            assert token_allows(kept, KP2) and not token_allows(kept, KP1)
            # the same config again (as at every reconnect) is no move: it plays on
            await fleet.push_config("spk-a", DeviceConfig(channel=KP2))
            await asyncio.sleep(1.0)
            assert abs(peak_hz(last_second(spk)) - 880.0) < 10
            assert spk.stderr.read_text().count("config: moving from channel") == 1

        # Started again from the same config file (channel KP1) with no broker to move it:
        # it plays the channel it was moved to, which it kept.
        dead_broker = f"mqtt://127.0.0.1:{free_port()}"
        async with speaker_process(
                tmp_path, "spk-a-again", "--channel", KP1, "--upstream", streamer.media_addr,
                "--mqtt-url", dead_broker, "--mqtt-password-file", str(tmp_path / "spk-a.password"),
                *token, speaker_id="spk-a") as again:
            await tone_on(again, 880.0, 8)
            assert (await again.health())["channel"] == KP2
    finally:
        await streamer.close()


async def retained_configs(broker: Any, password: str, ids: list[str]) -> dict[str, DeviceConfig]:
    """The retained config of each of ``ids``, read as the speaker would."""
    out: dict[str, DeviceConfig] = {}
    async with client(broker, STREAMER_USER, password) as c:
        await c.subscribe([(device_topic("speaker", i, "config"), 1) for i in ids])
        async with asyncio.timeout(5):
            async for m in c.messages:
                assert isinstance(m.payload, bytes)
                out[str(m.topic).split("/")[3]] = parse(DeviceConfig, m.payload)
                if len(out) == len(ids):
                    break
    return out


async def test_many_speakers_move_at_once_and_keep_their_relays(
        mosquitto: Any, redis_url: str, tmp_path: Path) -> None:
    """``move_speakers`` (what a zone edit calls): records, one ACL write, and each retained
    config naming the new channel beside the relays it had, a bounded number in flight."""
    streamer, pw = await with_fleet(tmp_path, redis_url, mosquitto)
    try:
        fleet = streamer.plane.fleet
        ids = [f"spk-{i}" for i in range(12)]
        for sid in ids:
            status, body = await call(streamer, "POST", "/api/v1/speakers", json={
                "id": sid, "zone": KP1, "relays": ["127.0.0.1:7000"] if sid == "spk-0" else []})
            assert status == 201, body
        in_flight, most = 0, 0
        push = fleet.push_config

        async def counted(*args: Any, **kw: Any) -> None:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            try:
                await push(*args, **kw)
            finally:
                in_flight -= 1

        fleet.push_config = counted
        moved = await move_speakers(streamer.plane, {sid: KP2 for sid in ids} | {"nobody": KP2})
        fleet.push_config = push
        assert sorted(s.id for s in moved) == sorted(ids) and {s.zone for s in moved} == {KP2}
        assert {s.zone for s in await streamer.plane.state.speakers.all()} == {KP2}
        assert 1 < most <= CONFIG_CONCURRENCY
        configs = await retained_configs(mosquitto, pw[STREAMER_USER], ids)
        assert configs["spk-0"] == DeviceConfig(channel=KP2, upstream=["127.0.0.1:7000"])
        assert {configs[sid] for sid in ids[1:]} == {DeviceConfig(channel=KP2)}
        acl = mosquitto.acl_path.read_text()
        assert f"zones/{KP2}/cmd" in acl and f"zones/{KP1}/cmd" not in acl
    finally:
        await streamer.close()
