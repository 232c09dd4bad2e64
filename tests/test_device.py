"""The device side apart from the server (``device/``): relays and speakers run without the
streamer's code, share one MQTT settings type loaded from the documented flat keys, and take
their topics, like the broker's ACL and the streamer's subscriptions, from one table."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clients.speaker.main import load_config as speaker_config
from common.config import ConfigError
from device.mqtt_config import DeviceMqtt, device_mqtt
from relay.main import load_config as relay_config
from streamer.control.broker import Account, acl_rules, hash_password
from streamer.control.fleet import FLEET_TOPICS
from tests.harness.keys import STREAM_KEY_ARGS
from wire.messages import DEVICE_TOPICS, DOWN_LEAVES, KINDS, UP_LEAVES

REPO = Path(__file__).resolve().parents[1]


def test_relay_and_speaker_import_no_server_code() -> None:
    code = ("import json, sys, relay.main, clients.speaker.main; "
            "print(json.dumps(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('streamer', 'wire'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    loaded = json.loads(out)
    assert "wire.messages" in loaded  # the check sees what is imported
    assert [m for m in loaded if m.split(".")[0] == "streamer"] == []


def test_relay_mqtt_settings_from_flags_environment_and_file(tmp_path: Path) -> None:
    f = tmp_path / "relay.toml"
    f.write_text('[relay]\nmqtt_url = "mqtt://broker.example:1884"\nmqtt_keepalive_s = 20\n')
    argv = ["--id", "relay-1", "--upstream", "127.0.0.1:5004", "--config", str(f),
            "--telemetry-s", "5", *STREAM_KEY_ARGS]
    cfg = relay_config(argv, env={"LOA_RELAY_MQTT_PASSWORD_FILE": "/run/secrets/mqtt"})
    assert cfg.mqtt == DeviceMqtt(url="mqtt://broker.example:1884", user="relay-1",
                                  password_file="/run/secrets/mqtt", keepalive_s=20,
                                  telemetry_s=5.0)
    assert relay_config(["--id", "relay-1", "--upstream", "127.0.0.1:5004", *STREAM_KEY_ARGS],
                        env={}).mqtt is None


def test_speaker_mqtt_settings_and_their_errors(tmp_path: Path) -> None:
    base = ["--id", "spk-a", "--channel", "brvt.kp-1", "--upstream", "127.0.0.1:5004",
            "--var-dir", str(tmp_path), *STREAM_KEY_ARGS]
    env = {"LOA_SPEAKER_MQTT_URL": "mqtts://broker", "LOA_SPEAKER_MQTT_USER": "installer-7",
           "LOA_SPEAKER_MQTT_PASSWORD_FILE": "pw"}
    cfg = speaker_config(base, env=env)
    assert cfg.mqtt == DeviceMqtt(url="mqtts://broker", user="installer-7", password_file="pw")
    assert cfg.zone == "brvt.kp-1"  # with MQTT, the zone defaults to the channel
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mqtt.url = "mqtt://elsewhere"  # type: ignore[misc]
    # the periods are checked even without a broker; each error names its key
    with pytest.raises(ConfigError) as e:
        speaker_config(base + ["--telemetry-s", "0"], env={})
    assert e.value.field == "telemetry_s"
    for key, args in (("mqtt_url", ("http://broker", "pw")), ("mqtt_password_file", (
            "mqtt://broker", None))):
        with pytest.raises(ConfigError) as e:
            device_mqtt("spk-a", args[0], "", args[1], 30, 10.0)
        assert e.value.field == key
    with pytest.raises(ConfigError) as e:
        device_mqtt("spk a", "mqtt://broker", "", "pw", 30, 10.0)
    assert e.value.field == "id"


def test_password_errors_name_the_file_never_its_content(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path in (empty, tmp_path / "missing"):
        with pytest.raises(ConfigError) as e:
            DeviceMqtt(url="mqtt://b", user="u", password_file=str(path)).password()
        assert e.value.field == "mqtt_password_file" and str(path) in str(e.value)
    secret = tmp_path / "secret"
    secret.write_text("s3cret\nignored\n")
    assert DeviceMqtt(url="mqtt://b", user="u", password_file=str(secret)).password() == "s3cret"


def test_acl_and_streamer_subscriptions_come_from_the_one_table() -> None:
    assert set(DEVICE_TOPICS) == set(KINDS)
    assert UP_LEAVES == ("status", "telemetry", "ack", "played")
    assert DOWN_LEAVES == ("cmd", "config", "token")
    assert FLEET_TOPICS == [f"loa/v1/speakers/+/{leaf}" for leaf in
                            ("status", "telemetry", "ack", "played")] + [
        f"loa/v1/relays/+/{leaf}" for leaf in ("status", "telemetry", "ack")] + [
        "loa/v1/boards/+/status"]
    h = hash_password("x")
    # an e-board: its presence, and its zone's board, nothing else
    assert acl_rules(Account("board-a", h, "board", "brvt.vung-tau")) == [
        "topic write loa/v1/boards/board-a/status", "topic read loa/v1/zones/brvt.vung-tau/board"]
    assert acl_rules(Account("spk-a", h, "speaker", "brvt.kp-1")) == [
        "topic write loa/v1/speakers/spk-a/status", "topic write loa/v1/speakers/spk-a/telemetry",
        "topic write loa/v1/speakers/spk-a/ack", "topic write loa/v1/speakers/spk-a/played",
        "topic read loa/v1/speakers/spk-a/cmd", "topic read loa/v1/speakers/spk-a/config",
        "topic read loa/v1/speakers/spk-a/token", "topic read loa/v1/zones/brvt/cmd",
        "topic read loa/v1/zones/brvt.kp-1/cmd",
        "topic read loa/v1/zones/brvt/emergency", "topic read loa/v1/zones/brvt.kp-1/emergency",
        # store and forward: its leaf zone's plan only, and clip files by their hash
        "topic read loa/v1/zones/brvt.kp-1/plan", "topic read loa/v1/clips/+",
        "topic read loa/v1/keys"]
    with pytest.raises(ValueError, match="zone"):  # only a kind that reads zones has one
        Account("relay-1", h, "relay", "brvt").check()
