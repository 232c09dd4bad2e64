"""The MQTT control plane against a real mosquitto and real ``loa speaker`` / ``loa relay``
processes: logins and ACL, last will, commands and their acks (checked by the level of what
the speakers recorded), group commands, malformed payloads both ways, proof of play.

The media comes from an in-test upstream built from the streamer's wire code (a steady
1 kHz tone on any channel), or from the real streamer for proof of play.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import aiomqtt
import numpy as np
import paho.mqtt.client as paho
import pytest
from aiomqtt.exceptions import MqttConnectError
from prometheus_client import CollectorRegistry

from clients.speaker.mqtt import TEST_TONE_PEAK
from clients.speaker.playout import volume_gain
from streamer.control.broker import (
    STREAMER_USER,
    Account,
    check_password,
    hash_password,
    new_password,
    write_acl,
)
from tests.harness.audio import peak_hz, rms_dbfs
from tests.harness.broker import client, fleet_on, start_broker
from tests.harness.keys import STREAM_KEY_ARGS
from tests.harness.speaker import mqtt_speakers
from tests.harness.upstream import TONE_DBFS, ToneUpstream, serving
from tests.harness.wait import until
from tests.harness.zones import AP_TAY, KP1, KP2
from wire.messages import (
    Ack,
    BadPayload,
    Command,
    Played,
    RelayTelemetry,
    SpeakerTelemetry,
    Status,
    encode,
    parse,
)

pytestmark = pytest.mark.realtime  # audio against the wall clock: see conftest.py

REPO = Path(__file__).resolve().parents[1]
RATE = 48_000
NOT_AUTHORIZED = 135  # MQTT 5 reason code


# --------------------------------------------------------------------------- media upstream


@pytest.fixture
async def tone() -> AsyncIterator[ToneUpstream]:
    async with serving(ToneUpstream) as up:
        yield up


# --------------------------------------------------------------------------- speaker process


def level(x: np.ndarray) -> float:
    return rms_dbfs(x)


# --------------------------------------------------------------------------- credentials, ACL


async def test_broker_accepts_our_password_hash_and_refuses_wrong_logins(
        mosquitto: Any, tmp_path: Path) -> None:
    password = new_password()
    # our hash and mosquitto_passwd's are the same function of the password
    plain = tmp_path / "plain"
    plain.write_text(f"u:{password}\n")
    subprocess.run(["mosquitto_passwd", "-U", str(plain)], check=True)
    theirs = plain.read_text().strip().split(":", 1)[1]
    assert theirs.startswith("$7$") and check_password(password, theirs)
    assert not check_password(password + "x", theirs)
    ours = hash_password(password)
    assert ours != hash_password(password)  # salted
    assert password not in ours

    mosquitto.set_accounts([Account("spk-a", ours, "speaker", KP1)])
    mosquitto.start()
    assert password not in mosquitto.password_path.read_text()
    assert oct(mosquitto.password_path.stat().st_mode & 0o777) == "0o600"
    async with client(mosquitto, "spk-a", password) as c:
        await c.publish("loa/v1/speakers/spk-a/status", b"{}", qos=1)
    for user, pw in (("spk-a", password + "x"), ("spk-a", ""), ("nobody", password),
                     (None, None)):  # the last one anonymous
        with pytest.raises(MqttConnectError) as refused:
            async with aiomqtt.Client(mosquitto.host, mosquitto.port, username=user,
                                      password=pw):
                pass
        assert "authori" in str(refused.value), refused.value


def test_acl_file_refuses_names_that_could_widen_it(tmp_path: Path) -> None:
    h = hash_password("x")
    for bad in (Account("spk/b", h, "speaker"), Account("spk+", h, "speaker"),
                Account("#", h, "relay"), Account("spk-a\ntopic readwrite #", h, "speaker"),
                Account("spk-a", h, "speaker", "brvt/#"), Account("spk-a", h, "speaker", "brvt.+"),
                Account("relay-1", h, "relay", KP1), Account("spk-a", "plain", "speaker"),
                Account("spk-a", h + "\nuser x", "speaker")):
        with pytest.raises(ValueError):
            write_acl(tmp_path / "acl", [bad])
    with pytest.raises(ValueError, match="twice"):  # a relay and a speaker sharing a login
        write_acl(tmp_path / "acl", [Account("x1", h, "speaker"), Account("x1", h, "relay")])
    assert not (tmp_path / "acl").exists()  # nothing half-written
    write_acl(tmp_path / "acl", [Account("relay-1", h, "relay")])
    assert (tmp_path / "acl").read_text().splitlines()[1:] == [
        "", "user relay-1", "topic write loa/v1/relays/relay-1/status",
        "topic write loa/v1/relays/relay-1/telemetry", "topic write loa/v1/relays/relay-1/ack",
        "topic read loa/v1/relays/relay-1/cmd", "topic read loa/v1/relays/relay-1/token",
        "topic read loa/v1/keys"]


def test_bad_mqtt_settings_stop_speaker_and_relay_at_start_naming_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clients.speaker.main import run as speaker_main
    from relay.main import main as relay_main

    empty = tmp_path / "empty"
    empty.write_text("\n")
    base = ["--id", "spk-a", "--channel", KP1, "--upstream", "127.0.0.1:9", *STREAM_KEY_ARGS]
    url = ["--mqtt-url", "mqtt://127.0.0.1:1"]
    cases = [
        (base + ["--mqtt-url", "http://broker:1883", "--mqtt-password-file", str(empty)],
         "mqtt_url"),
        (base + ["--mqtt-url", "mqtt://user:secret@broker", "--mqtt-password-file", str(empty)],
         "mqtt_url"),
        (base + url, "mqtt_password_file"),
        (base + url + ["--mqtt-password-file", str(tmp_path / "missing")], "mqtt_password_file"),
        (base + url + ["--mqtt-password-file", str(empty)], "mqtt_password_file"),
        (base + url + ["--mqtt-password-file", str(empty), "--zone", "brvt/#"], "zone"),
        (base + url + ["--mqtt-password-file", str(empty), "--mqtt-keepalive-s", "0"],
         "mqtt_keepalive_s"),
    ]
    for argv, key in cases:
        assert speaker_main(argv) == 2, argv
        assert f"{key}:" in capsys.readouterr().err, argv
    relay = ["--id", "relay-1", "--media", "127.0.0.1:0", "--http", "127.0.0.1:0",
             "--upstream", "127.0.0.1:9", *STREAM_KEY_ARGS, *url]
    assert relay_main(relay) == 2
    assert "mqtt_password_file:" in capsys.readouterr().err
    assert relay_main(relay + ["--mqtt-password-file", str(empty)]) == 2
    assert "mqtt_password_file:" in capsys.readouterr().err


def publish_v5(broker: Any, user: str, password: str,
               messages: list[tuple[str, bytes]]) -> list[int]:
    """Publish at QoS 1 over MQTT 5 and return each PUBACK's reason code (aiomqtt hides
    them)."""
    codes: dict[int, int] = {}
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.username_pw_set(user, password)
    c.on_publish = lambda _c, _u, mid, rc, _p: codes.__setitem__(mid, rc.value)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        mids = [c.publish(topic, payload, qos=1).mid for topic, payload in messages]
        deadline = time.monotonic() + 5
        while not all(m in codes for m in mids):
            assert time.monotonic() < deadline, "no PUBACK"
            time.sleep(0.02)
        return [codes[m] for m in mids]
    finally:
        c.disconnect()
        c.loop_stop()


async def test_acl_a_device_writes_and_reads_only_its_own_topics(mosquitto: Any) -> None:
    pw = start_broker(mosquitto, {"spk-a": KP1, "spk-b": AP_TAY}, relays=("relay-1",))
    async with client(mosquitto, STREAMER_USER, pw[STREAMER_USER]) as watcher, \
            client(mosquitto, "spk-a", pw["spk-a"]) as a:
        await watcher.subscribe("loa/v1/#", qos=1)
        await a.subscribe("loa/v1/#", qos=1)  # granted, but the broker filters every delivery
        denied = [
            ("loa/v1/speakers/spk-b/status", b'{"state":"offline"}'),  # another speaker
            ("loa/v1/speakers/spk-b/ack", b"{}"),
            ("loa/v1/speakers/spk-b/cmd", b"{}"),  # commanding a neighbour
            ("loa/v1/speakers/spk-a/cmd", b"{}"),  # commanding itself
            ("loa/v1/speakers/spk-a/config", b"{}"),
            ("loa/v1/zones/brvt/cmd", b"{}"),  # a group command
            ("loa/v1/relays/relay-1/status", b"{}"),
            ("loa/v1/other", b"{}"),
            ("loa/v1/keys", b"{}"),  # the stream key set: only the streamer writes it
        ]
        allowed = [("loa/v1/speakers/spk-a/status", b'{"state":"online"}'),
                   ("loa/v1/speakers/spk-a/played", b"{}")]
        codes = await asyncio.to_thread(publish_v5, mosquitto, "spk-a", pw["spk-a"],
                                        denied + allowed)
        assert codes[: len(denied)] == [NOT_AUTHORIZED] * len(denied)
        assert all(c < 128 for c in codes[len(denied):]), codes
        # reading: the streamer commands everyone; spk-a hears its own and its zones' only
        sent = ["loa/v1/speakers/spk-b/cmd", "loa/v1/speakers/spk-b/config",
                "loa/v1/zones/brvt.chau-duc/cmd", f"loa/v1/zones/{KP2}/cmd",
                "loa/v1/zones/brvt.vung-tau/cmd", "loa/v1/zones/brvt/cmd",
                f"loa/v1/zones/{KP1}/cmd", "loa/v1/keys", "loa/v1/speakers/spk-a/config",
                "loa/v1/speakers/spk-a/cmd"]
        for topic in sent:
            await watcher.publish(topic, b"{}", qos=1)

        async def collect(c: aiomqtt.Client, last: str) -> list[str]:
            out: list[str] = []
            async for m in c.messages:
                out.append(str(m.topic))
                if str(m.topic) == last:
                    return out
            return out

        heard_a = await asyncio.wait_for(collect(a, "loa/v1/speakers/spk-a/cmd"), 5)
        heard_w = await asyncio.wait_for(collect(watcher, "loa/v1/speakers/spk-a/cmd"), 5)
    assert heard_a == ["loa/v1/zones/brvt.vung-tau/cmd", "loa/v1/zones/brvt/cmd",
                       f"loa/v1/zones/{KP1}/cmd", "loa/v1/keys", "loa/v1/speakers/spk-a/config",
                       "loa/v1/speakers/spk-a/cmd"]
    # the streamer saw both allowed publishes and none of the denied ones
    assert [t for t in heard_w if t not in sent] == [t for t, _ in allowed]


# --------------------------------------------------------------------------- presence


async def test_last_will_marks_a_dead_speaker_offline_and_it_comes_back_online(
        mosquitto: Any, tone: ToneUpstream, tmp_path: Path) -> None:
    pw = start_broker(mosquitto, {"spk-a": KP1})
    keepalive_s = 2
    async with fleet_on(mosquitto, pw) as (fleet, rec):
        async with mqtt_speakers(tmp_path, mosquitto, pw, tone.addr, ("spk-a", KP1),
                            extra=("--mqtt-keepalive-s", str(keepalive_s))) as (a,):
            await until(lambda: rec.state("spk-a") == "online", 10, "online")
            st = rec.status("spk-a")
            assert st is not None and (st.zone, st.channel, st.upstream) == (KP1, KP1, tone.addr)
            assert st.ts is not None and abs(st.ts - time.time()) < 5 and st.version
            # Frozen: its socket stays open, so only the broker's keepalive timer can tell.
            # Mosquitto 2.0 checks it in whole seconds: 1.5 x 2 s came after 3.7-5.0 s here,
            # and once past 7 s with the whole suite loading both cores: allow 10 s over.
            a.proc.send_signal(signal.SIGSTOP)
            await until(lambda: rec.state("spk-a") == "offline", 1.5 * keepalive_s + 10,
                        "offline by keepalive")
            will = rec.status("spk-a")
            assert will is not None and will.ts is None and will.zone == KP1  # the last will
            a.proc.send_signal(signal.SIGCONT)
            await until(lambda: rec.state("spk-a") == "online", 10, "online after SIGCONT")
            a.proc.send_signal(signal.SIGKILL)
            await a.proc.wait()
            await until(lambda: rec.state("spk-a") == "offline", 1.5 * keepalive_s,
                        "offline after SIGKILL")
        # retained: a newcomer learns it at once
        async with client(mosquitto, STREAMER_USER, pw[STREAMER_USER]) as c:
            await c.subscribe("loa/v1/speakers/spk-a/status", qos=1)
            m = await asyncio.wait_for(anext(aiter(c.messages)), 5)
            assert m.retain and parse(Status, cast(bytes, m.payload)).state == "offline"
        async with mqtt_speakers(tmp_path, mosquitto, pw, tone.addr, ("spk-a", KP1)) as (a,):
            await until(lambda: rec.state("spk-a") == "online", 10, "online after restart")
            # the broker restarts: fleet and speaker both reconnect; the speaker says online
            # again, newer than anything the broker kept
            await asyncio.to_thread(mosquitto.stop)
            await until(lambda: not fleet.connected, 5, "fleet notices")
            restarted = time.time()
            await asyncio.to_thread(mosquitto.start)
            await until(lambda: any(s.state == "online" and (s.ts or 0) >= restarted
                                    for _, d, s in rec.statuses if d == "spk-a"),
                        10, "online after broker restart")
            assert fleet.connected
            a.proc.send_signal(signal.SIGTERM)  # a clean stop says offline itself
            assert await asyncio.wait_for(a.proc.wait(), 10) == 0
            await until(lambda: rec.state("spk-a") == "offline", 5, "offline after SIGTERM")
            bye = rec.status("spk-a")
            assert bye is not None and bye.ts is not None  # not the will: the speaker's own


# --------------------------------------------------------------------------- commands


async def test_set_volume_round_trip_lowers_the_recorded_level_by_the_volume_law(
        mosquitto: Any, tone: ToneUpstream, tmp_path: Path) -> None:
    pw = start_broker(mosquitto, {"spk-a": KP1, "spk-b": KP1})
    async with fleet_on(mosquitto, pw) as (fleet, rec), \
            client(mosquitto, STREAMER_USER, pw[STREAMER_USER]) as sniffer, \
            mqtt_speakers(tmp_path, mosquitto, pw, tone.addr, ("spk-a", KP1), ("spk-b", KP1)) as sp:
        a, b = sp
        await sniffer.subscribe("loa/v1/speakers/spk-a/cmd", qos=1)
        await until(lambda: rec.state("spk-a") == rec.state("spk-b") == "online", 10)
        await until(a.subscribed, 5)
        await until(b.subscribed, 5)
        await asyncio.sleep(1.8)  # 1.5 s of tone at full volume, after the playout delay
        t_cmd = time.time()
        ack = await fleet.command("speaker", "spk-a", "set_volume", {"volume": 70}, timeout_s=5)
        t_ack = time.time()
        sent = parse(Command, cast(bytes, (await asyncio.wait_for(
            anext(aiter(sniffer.messages)), 5)).payload))
        assert (sent.cmd, sent.args) == ("set_volume", {"volume": 70})
        assert ack.id == sent.id and ack.ok and ack.error is None
        assert ack.state["volume"] == 70 and ack.state["muted"] is False
        await asyncio.sleep(1.3)
        before = await a.wait_window(t_cmd - 1.2, t_cmd - 0.2)
        after = await a.wait_window(t_ack + 0.2, t_ack + 1.2)
        ctl_before = await b.wait_window(t_cmd - 1.2, t_cmd - 0.2)
        ctl_after = await b.wait_window(t_ack + 0.2, t_ack + 1.2)
        tele = [t for _, d, t in rec.reports if d == "spk-a" and t.ts > t_ack + 0.6]
    expected_db = 20 * math.log10(volume_gain(70) / volume_gain(100))  # -15 dB
    assert abs(level(before) - TONE_DBFS) < 1.0, level(before)
    assert abs(level(after) - level(before) - expected_db) < 0.5, (level(before), level(after))
    assert abs(peak_hz(after) - 1000) < 5
    assert abs(level(ctl_after) - level(ctl_before)) < 0.5  # the other speaker kept its volume
    assert tele, "no telemetry after the change"
    t = cast(SpeakerTelemetry, tele[-1])
    assert t.volume == 70 and not t.muted and t.upstream == tone.addr
    assert abs(t.level_dbfs - (TONE_DBFS + expected_db)) < 1.5, t.level_dbfs
    assert t.buffer_ms > 0 and t.loss_ratio < 0.05


async def test_zone_command_reaches_only_the_speakers_of_that_subtree(
        mosquitto: Any, tone: ToneUpstream, tmp_path: Path) -> None:
    pw = start_broker(mosquitto, {"spk-a": KP1, "spk-b": KP2, "spk-c": AP_TAY})
    async with fleet_on(mosquitto, pw) as (fleet, rec), \
            mqtt_speakers(tmp_path, mosquitto, pw, tone.addr, ("spk-a", KP1), ("spk-b", KP2),
                     ("spk-c", AP_TAY)) as (a, b, c):
        await until(lambda: all(rec.state(s) == "online" for s in ("spk-a", "spk-b", "spk-c")),
                    10, "all online")
        for s in (a, b, c):
            await until(s.subscribed, 5)
        res = await fleet.zone_command("brvt.vung-tau.thang-tam", "mute", timeout_s=2)
        t_done = time.time()
        assert sorted(res.acks) == ["spk-a", "spk-b"]
        assert all(k.id == res.id and k.ok and k.state["muted"] for k in res.acks.values())
        assert (await fleet.command("speaker", "spk-c", "ping")).state["muted"] is False
        leaf = await fleet.zone_command(KP2, "unmute", timeout_s=1.5)  # a leaf zone
        assert sorted(leaf.acks) == ["spk-b"] and not leaf.acks["spk-b"].state["muted"]
        t_leaf = time.time()
        await asyncio.sleep(1.2)
        muted = await a.wait_window(t_done + 0.3, t_leaf)
        unmuted = await b.wait_window(t_leaf + 0.3, t_leaf + 1.0)
        untouched = await c.wait_window(t_done + 0.3, t_leaf)
    assert level(muted) < -90
    assert abs(level(unmuted) - TONE_DBFS) < 1.0
    assert abs(level(untouched) - TONE_DBFS) < 1.0


async def test_test_tone_plays_on_the_horn_and_set_upstream_moves_the_speaker(
        mosquitto: Any, tone: ToneUpstream, tmp_path: Path) -> None:
    pw = start_broker(mosquitto, {"spk-a": KP1})
    loop = asyncio.get_running_loop()
    dead, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                  local_addr=("127.0.0.1", 0))
    dead_addr = f"127.0.0.1:{dead.get_extra_info('sockname')[1]}"
    async with fleet_on(mosquitto, pw) as (fleet, rec), \
            mqtt_speakers(tmp_path, mosquitto, pw, dead_addr, ("spk-a", KP1),
                     extra=("--volume", "80")) as (a,):
        await until(lambda: rec.state("spk-a") == "online", 10)
        ack = await fleet.command("speaker", "spk-a", "test_tone", {"hz": 440, "seconds": 1})
        t_tone = time.time()
        assert ack.ok and ack.state["test_tone"] is True
        horn = await a.wait_window(t_tone + 0.1, t_tone + 0.9)
        after = await a.wait_window(t_tone + 1.2, t_tone + 1.5)
        # now to the live upstream: the old one never answered, so nothing played until here
        ack = await fleet.command("speaker", "spk-a", "set_upstream", {"upstream": [tone.addr]})
        assert ack.ok and ack.state["upstreams"] == [tone.addr], ack
        t_move = time.time()
        await until(a.subscribed, 5)
        await until(lambda: rec.state("spk-a") == "online"
                    and cast(Status, rec.status("spk-a")).upstream == tone.addr, 5,
                    "status names the new upstream")
        await asyncio.sleep(1.0)
        playing = await a.wait_window(time.time() - 0.6, time.time() - 0.1)
        bad = await fleet.command("speaker", "spk-a", "set_upstream",
                                  {"upstream": ["no-such-host.invalid:5004"]})
    dead.close()
    assert abs(peak_hz(horn) - 440) < 5
    expected = 20 * math.log10(TEST_TONE_PEAK / math.sqrt(2) * volume_gain(80))
    assert abs(level(horn) - expected) < 0.5, level(horn)
    assert level(after) < -90  # one second, as asked
    assert t_move > t_tone
    assert abs(peak_hz(playing) - 1000) < 5
    assert abs(level(playing) - (TONE_DBFS + 20 * math.log10(volume_gain(80)))) < 1.0
    assert not bad.ok and bad.error and bad.error.startswith("args.upstream")
    assert bad.state["upstreams"] == [tone.addr]  # a failed change changes nothing


# --------------------------------------------------------------------------- bad payloads


def test_a_payload_that_could_not_be_encoded_again_is_refused() -> None:
    """Found by loadtest/fuzz.py: a JSON escape of a lone surrogate inside a free-form field
    (an ack's ``state``) was accepted, and encoding the message again raised."""
    lone = b'{"id": "c-1", "ok": true, "state": {"v": "\\ud800"}}'
    with pytest.raises(BadPayload) as e:
        parse(Ack, lone)
    assert e.value.reason == "invalid_json" and "surrogate" in e.value.message
    with pytest.raises(BadPayload) as e:
        parse(Ack, '{"id": "c-1", "ok": true, "state": {"\udfff": 1}}')
    assert e.value.reason == "not_utf8"
    pair = parse(Ack, b'{"id": "c-1", "ok": true, "state": {"v": "\\ud83d\\udca9"}}')
    assert parse(Ack, encode(pair)).state == {"v": "\U0001f4a9"}


async def test_malformed_reports_are_dropped_counted_and_the_fleet_goes_on(
        mosquitto: Any, caplog: pytest.LogCaptureFixture) -> None:
    pw = start_broker(mosquitto, {"spk-a": KP1})
    registry = CollectorRegistry()
    topic = "loa/v1/speakers/spk-a/{}".format
    good_played = Played(broadcast=3, start=1000.0, end=1002.0, level_dbfs=-20.0)
    bad = [
        ("status", b'{"state": "online", "ts": ', "invalid_json"),
        ("status", b'{"state": "online", "ts": NaN}', "invalid_json"),
        ("status", b'{"state": "sleeping"}', "invalid_fields"),
        ("status", b'["online"]', "invalid_fields"),
        ("telemetry", json.dumps({"ts": 1.0, "buffer_ms": 300, "loss_ratio": 0,
                                  "level_dbfs": -20, "volume": "loud", "muted": False,
                                  "uptime_s": 5}).encode(), "invalid_fields"),
        ("played", b'{"broadcast": "3", "start": 1, "end": 2, "level_dbfs": -20}',
         "invalid_fields"),
        ("played", b"\xff\xfe{\x00\x00", "not_utf8"),
        ("played", b'{"broadcast": 3, "pad": "' + b"x" * 1_000_000 + b'"}', "too_large"),
        ("ack", b'{"id": "x", "ok": "yes"}', "invalid_fields"),
    ]
    with caplog.at_level("WARNING", logger="loa.mqtt"):
        async with fleet_on(mosquitto, pw, registry) as (fleet, rec), \
                client(mosquitto, "spk-a", pw["spk-a"]) as dev:
            for leaf, payload, _ in bad:
                await dev.publish(topic(leaf), payload, qos=1)
            await dev.publish(topic("played"), encode(good_played), qos=1)
            await until(lambda: bool(rec.plays), 5, "the good message")
            assert fleet.connected
    assert rec.plays == [("spk-a", good_played)]
    assert rec.statuses == [] and rec.reports == []

    def bad_count(kind: str, reason: str) -> float:
        return registry.get_sample_value("loa_mqtt_bad_payloads_total",
                                         {"topic_kind": kind, "reason": reason}) or 0.0

    expected: dict[tuple[str, str], int] = {}
    for leaf, _, reason in bad:
        expected[leaf, reason] = expected.get((leaf, reason), 0) + 1
    for (leaf, reason), n in expected.items():
        assert bad_count(leaf, reason) == n, (leaf, reason)
    assert registry.get_sample_value("loa_mqtt_messages_total", {"kind": "played"}) == 4
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    for leaf, _, reason in bad:  # one line per kind of fault at least, naming the topic
        assert any(topic(leaf) in line for line in dropped), (leaf, reason)
    assert any("volume" in line for line in dropped)  # the field at fault is named


async def test_malformed_commands_are_refused_and_the_speaker_keeps_playing(
        mosquitto: Any, tone: ToneUpstream, tmp_path: Path) -> None:
    pw = start_broker(mosquitto, {"spk-a": KP1})
    cmd_topic = "loa/v1/speakers/spk-a/cmd"
    junk = [b"\xff\xfe\xfd", b"{oops", b"[" * 60_000, b" " * 1_000_000,
            b'{"cmd": "mute"}']  # no id: nobody to answer
    refused = {  # correlation id → the field the error must name
        "c1": ({"id": "c1", "cmd": "set_volume", "args": {"volume": "loud"}}, "args.volume"),
        "c2": ({"id": "c2", "cmd": "set_volume", "args": {"volume": 500}}, "args.volume"),
        "c3": ({"id": "c3", "cmd": "self_destruct"}, "cmd"),
        "c4": ({"id": "c4", "cmd": "mute", "args": {"now": True}}, "args.now"),
        "c5": ({"id": "c5", "cmd": "set_upstream", "args": {"upstream": ["nowhere"]}},
               "args.upstream"),
        "c6": ({"id": "c6", "cmd": "ping", "extra": 1}, "extra"),
        "c7": ({"id": "c7", "cmd": "test_tone", "args": {"hz": 1e9}}, "args.hz"),
        "c8": ({"id": "c8", "cmd": "set_volume", "args": []}, "args"),
    }
    async with client(mosquitto, STREAMER_USER, pw[STREAMER_USER]) as ctl, \
            mqtt_speakers(tmp_path, mosquitto, pw, tone.addr, ("spk-a", KP1)) as (a,):
        await ctl.subscribe("loa/v1/speakers/spk-a/#", qos=1)
        await until(a.subscribed, 10)

        async def online() -> bool:
            return (await a.metrics()).get("loa_mqtt_connected", 0) == 1

        await until(online, 10, "speaker connected to the broker")
        await asyncio.sleep(0.5)  # subscriptions are made right after the connection
        for payload in junk:
            await ctl.publish(cmd_topic, payload, qos=1)
        for body, _ in refused.values():
            await ctl.publish(cmd_topic, json.dumps(body).encode(), qos=1)
        await ctl.publish(cmd_topic, b'{"id": "last", "cmd": "ping"}', qos=1)
        acks: dict[str, Ack] = {}

        async def collect() -> None:
            async for m in ctl.messages:
                if str(m.topic).endswith("/ack"):
                    ack = parse(Ack, cast(bytes, m.payload))
                    acks[ack.id] = ack
                    if ack.id == "last":
                        return

        await asyncio.wait_for(collect(), 10)
        await asyncio.sleep(1.0)
        metrics = await a.metrics()
        assert await a.subscribed()
        end = time.time() - 0.1
        playing = await a.wait_window(end - 0.5, end)
    assert set(acks) == {*refused, "last"}  # junk got no answer: it had no id to answer to
    for cid, (_, where) in refused.items():
        ack = acks[cid]
        assert not ack.ok and ack.error, cid
        assert ack.error.split(":")[0] == where or ack.error.startswith(where + "."), ack.error
        assert ack.state["volume"] == 100 and ack.state["muted"] is False
    assert acks["last"].ok
    bad = {k: v for k, v in metrics.items() if k.startswith("loa_mqtt_bad_payloads_total")}
    key = "loa_mqtt_bad_payloads_total[reason={}][topic_kind=cmd]".format
    assert bad == {key("not_utf8"): 1, key("invalid_json"): 2, key("too_large"): 1,
                   key("invalid_fields"): 1 + len(refused)}
    assert abs(peak_hz(playing) - 1000) < 5 and abs(level(playing) - TONE_DBFS) < 1.0
    assert "Traceback" not in a.stderr.read_text()
    assert pw["spk-a"] not in a.stderr.read_text()


# --------------------------------------------------------------------------- proof of play


async def test_played_event_names_the_broadcast_and_the_level_it_played_at(
        streamer: Any, mosquitto: Any, tmp_path: Path) -> None:
    """What a speaker reports is what it played, on the streamer's timeline: this speaker's
    own clock is 400 ms fast (its play log and WAV are on it), and the times it reports are
    the streamer's (``docs/protocol.md``, "Playout")."""
    pw = start_broker(mosquitto, {"spk-a": KP1})
    async with fleet_on(mosquitto, pw) as (fleet, rec), \
            mqtt_speakers(tmp_path, mosquitto, pw, streamer.media_addr, ("spk-a", KP1),
                     extra=("--clock-offset-ms", "400")) as (a,), \
            aiohttp.ClientSession() as http:
        await until(a.subscribed, 10)
        await until(lambda: rec.state("spk-a") == "online", 10)
        await asyncio.sleep(1.0)  # a few TIME answers: the speaker knows the streamer's clock
        async with http.post(f"{streamer.http_url}/api/v1/broadcasts", headers=streamer.admin,
                             json={"zones": [KP1], "source": {"kind": "tone", "hz": 1000,
                                                              "seconds": 1.5}}) as r:
            assert r.status == 201, await r.text()
            bid = (await r.json())["id"]
        await until(lambda: any(ev.broadcast == bid for _, ev in rec.plays), 10, "played")
        # one play: a split one (two events) would mean the horn went quiet mid-bulletin
        plays = [ev for s, ev in rec.plays if s == "spk-a" and ev.broadcast == bid]
        assert len(plays) == 1, rec.plays
        (ev,) = plays
        (logged,) = [e for e in a.events() if e["event"] == "play"]
        x = await a.wait_window(logged["start"], logged["end"])
        async with http.get(f"{streamer.http_url}/api/v1/broadcasts/{bid}",
                            headers=streamer.admin) as r:
            aired = await r.json()
    assert 1.45 < ev.end - ev.start < 1.6
    assert abs(peak_hz(x[2400:-2400]) - 1000) < 5
    assert abs(ev.level_dbfs - level(x)) < 0.5, (ev.level_dbfs, level(x))
    assert -40 < ev.level_dbfs < -10
    assert (logged["broadcast"], logged["level_dbfs"]) == (ev.broadcast, ev.level_dbfs)
    # the log is on the speaker's clock, the report on the streamer's: 400 ms apart
    assert abs((logged["start"] - ev.start) - 0.4) < 0.005, (logged["start"], ev.start)
    assert abs((logged["end"] - logged["start"]) - (ev.end - ev.start)) < 0.001
    # and on the streamer's clock it played when the streamer aired it, plus the delay
    assert abs(ev.start - (aired["started"] + 0.3)) < 0.1, (ev.start, aired["started"])


async def test_speaker_paused_mid_bulletin_logs_one_play_not_two(
        streamer: Any, mosquitto: Any, tmp_path: Path) -> None:
    """A 1.5 s pause of the speaker's CPU (a neighbour's burst, the hypervisor) leaves the
    stream queued in its socket. Read before the playout's next turn, the backlog continues
    the bulletin; left for later, the playout would find a second missing, end the play and
    start a second one: the operator's log would show the horn going quiet."""
    pw = start_broker(mosquitto, {"spk-a": KP1})
    async with mqtt_speakers(tmp_path, mosquitto, pw, streamer.media_addr,
                             ("spk-a", KP1)) as (a,), aiohttp.ClientSession() as http:
        await until(a.subscribed, 10)
        async with http.post(f"{streamer.http_url}/api/v1/broadcasts", headers=streamer.admin,
                             json={"zones": [KP1], "source": {"kind": "tone", "hz": 1000,
                                                              "seconds": 4}}) as r:
            assert r.status == 201, await r.text()
            bid = (await r.json())["id"]

        def logged(event: str) -> list[dict[str, Any]]:
            return [e for e in a.events() if e["event"] == event and e["broadcast"] == bid]

        await until(lambda: bool(logged("play_start")), 10, "play_start")
        await asyncio.sleep(0.5)
        a.proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(1.5)
        finally:
            a.proc.send_signal(signal.SIGCONT)
        await until(lambda: bool(logged("play")), 10, "play")
        await asyncio.sleep(1.5)  # a split would have logged its second play by now
    plays = logged("play")
    assert len(plays) == 1 and len(logged("play_start")) == 1, plays
    # all of it, in one play (its span is the stream's timeline: longer if the streamer in
    # this busy test process had to skip frames)
    assert 3.9 < plays[0]["end"] - plays[0]["start"] < 5.5, plays


# --------------------------------------------------------------------------- relay


async def test_relay_reports_status_and_telemetry_and_obeys_commands(
        mosquitto: Any, tone: ToneUpstream, tmp_path: Path) -> None:
    pw = start_broker(mosquitto, {"spk-a": KP1}, relays=("relay-1",))
    pw_file = tmp_path / "relay.password"
    pw_file.write_text(pw["relay-1"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOA_RELAY_")}
    with open(tmp_path / "relay.stderr", "wb") as err:
        relay = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.main", "--id", "relay-1", "--media", "127.0.0.1:0",
            "--http", "127.0.0.1:0", "--upstream", tone.addr, "--mqtt-url", mosquitto.url,
            "--mqtt-password-file", str(pw_file), "--telemetry-s", "0.5", *STREAM_KEY_ARGS,
            cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=err)
    try:
        assert relay.stdout is not None
        info = json.loads(await asyncio.wait_for(relay.stdout.readline(), 15))
        async with fleet_on(mosquitto, pw) as (fleet, rec), \
                mqtt_speakers(tmp_path, mosquitto, pw, info["media"], ("spk-a", KP1)) as (a,):
            await until(lambda: rec.state("relay-1") == "online", 10, "relay online")
            assert cast(Status, rec.status("relay-1")).upstream == tone.addr
            await until(a.subscribed, 10)
            t_sub = time.time()

            def flowing() -> bool:
                return any(d == "relay-1" and t.ts > t_sub and isinstance(t, RelayTelemetry)
                           and t.subscribers == 1 and t.packets_out > 0
                           for _, d, t in rec.reports)

            await until(flowing, 5, "relay telemetry with a subscriber")
            ack = await fleet.command("relay", "relay-1", "reconnect")
            assert ack.ok and ack.state["upstreams"] == [tone.addr]
            await asyncio.sleep(1.0)
            assert await a.subscribed()  # the speaker never noticed
            assert (await fleet.command("relay", "relay-1", "ping")).ok
            t_stop = time.time()
            wrong = await fleet.command("relay", "relay-1", "set_volume", {"volume": 5})
            assert not wrong.ok and wrong.error and wrong.error.startswith("cmd:")
            relay.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(relay.wait(), 10) == 0
            await until(lambda: rec.state("relay-1") == "offline", 5, "relay offline")
            playing = await a.wait_window(t_sub + 0.5, t_stop)
    finally:
        if relay.returncode is None:
            relay.kill()
            await relay.wait()
    assert abs(peak_hz(playing) - 1000) < 5 and abs(level(playing) - TONE_DBFS) < 1.0


async def test_a_device_password_changes_with_no_restart_and_no_gap(
        mosquitto: Any, tone: ToneUpstream, tmp_path: Path) -> None:
    """The device's password file gets the new password, the broker the new hash; the
    session goes on, the next one (the broker restarts) logs in with the new password, the
    old one is refused, and the speaker plays throughout."""
    pw = start_broker(mosquitto, {"spk-a": KP1})
    async with mqtt_speakers(tmp_path, mosquitto, pw, tone.addr, ("spk-a", KP1)) as (a,):
        async with fleet_on(mosquitto, pw) as (_, rec):
            await until(lambda: rec.state("spk-a") == "online", 10, "online")
        await until(lambda: len(a.samples()) > 4800 and level(a.samples()[-4800:]) > -30, 10,
                    "the tone on the speaker")
        t0 = time.time()
        new = new_password()
        (tmp_path / "spk-a.password").write_text(new + "\n")
        mosquitto.set_accounts([
            Account(STREAMER_USER, hash_password(pw[STREAMER_USER]), "service"),
            Account("spk-a", hash_password(new), "speaker", KP1)])
        mosquitto.stop()
        restarted = time.time()
        mosquitto.start()  # every session has to log in again
        async with fleet_on(mosquitto, pw) as (_, rec):
            await until(lambda: _online_since(rec, "spk-a", restarted), 20,
                        "online again, logged in with the new password")
        with pytest.raises(aiomqtt.MqttError):
            async with client(mosquitto, "spk-a", pw["spk-a"]):
                pass
        t1 = time.time()
        played = await a.wait_window(t0, t1)
        blocks = played[: len(played) // 960 * 960].reshape(-1, 960)
        levels = [round(level(b)) for b in blocks]
        assert min(levels) > -30, levels  # the tone, with no gap


def _online_since(rec: Any, device_id: str, since: float) -> bool:
    """``device_id`` said it is online in a session begun after ``since`` (not the retained
    status of an older one)."""
    st = rec.status(device_id)
    return st is not None and st.state == "online" and (st.ts or 0.0) > since
