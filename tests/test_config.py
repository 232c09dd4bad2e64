"""The one configuration loader every process uses: file < environment < flags, typed."""

from pathlib import Path

import pytest

from common.config import ConfigError, load
from common.opus import OpusSettings
from streamer.app import StreamerConfig


def test_precedence_and_types(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('[streamer]\nhttp_port = 9000\nptime_ms = 40\nzones = "z.toml"\n'
                 'redis_url = "redis://10.0.0.5:6379/0"\n')
    cfg = load(StreamerConfig, {"ptime_ms": None}, env_prefix="LOA_STREAMER_", path=str(f),
               env={"LOA_STREAMER_HTTP_PORT": "9100"}, section="streamer")
    assert (cfg.http_port, cfg.ptime_ms, cfg.zones) == (9100, 40, "z.toml")
    cfg = load(StreamerConfig, {"http_port": 9200}, env_prefix="LOA_STREAMER_",
               env={"LOA_STREAMER_CONFIG": str(f), "LOA_STREAMER_HTTP_PORT": "9100"},
               section="streamer")
    assert cfg.http_port == 9200 and cfg.ptime_ms == 40


def test_opus_settings_from_file_environment_and_flags(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('[streamer]\nredis_url = "redis://127.0.0.1:1/0"\nopus_application = "voip"\n'
                 "opus_complexity = 2\nbitrate = 24000\n")
    env = {"LOA_STREAMER_OPUS_FEC": "off", "LOA_STREAMER_OPUS_COMPLEXITY": "3"}
    cfg = load(StreamerConfig, {"opus_loss_perc": 20}, env_prefix="LOA_STREAMER_",
               path=str(f), env=env, section="streamer")
    assert cfg.opus == OpusSettings(application="voip", complexity=3, fec=False, loss_perc=20,
                                    bitrate=24_000)
    plain = load(StreamerConfig, {}, env_prefix="LOA_STREAMER_", path=str(f), env={},
                 section="streamer")
    assert plain.opus == OpusSettings(application="voip", complexity=2, bitrate=24_000)
    default = load(StreamerConfig, {"redis_url": "redis://h:1"}, env_prefix="LOA_STREAMER_",
                   env={})
    assert default.opus == OpusSettings()


@pytest.mark.parametrize("text, env, field", [
    ("nope = 1\n", {}, "config"),
    ("", {}, "redis_url"),
    ('redis_url = "localhost:6379"\n', {}, "redis_url"),
    ("ptime_ms = 30\n", {}, "ptime_ms"),
    ("http_port = true\n", {}, "http_port"),
    ("media_host = 5\n", {}, "media_host"),
    ("", {"LOA_STREAMER_BITRATE": "fast"}, "bitrate"),
    ("bitrate = 4000\n", {}, "bitrate"),
    ('opus_application = "music"\n', {}, "opus_application"),
    ("opus_complexity = 11\n", {}, "opus_complexity"),
    ("", {"LOA_STREAMER_OPUS_COMPLEXITY": "high"}, "opus_complexity"),
    ('opus_fec = "maybe"\n', {}, "opus_fec"),
    ("opus_loss_perc = -1\n", {}, "opus_loss_perc"),
    ("opus_loss_perc = 0\n", {}, "opus_loss_perc"),  # FEC on by default: it needs a loss
    ('opus_application = "lowdelay"\n', {}, "opus_fec"),
    ("[streamer\n", {}, "config"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, env: dict, field: str) -> None:
    f = tmp_path / "s.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(StreamerConfig, {}, env_prefix="LOA_STREAMER_", path=str(f), env=env,
             section="streamer")
    assert e.value.field == field
