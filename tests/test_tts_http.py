"""The HTTP voice (streamer/mixer/sources/tts_http.py) against a fake service started by each
test on a free port (tests/harness/fake_tts.py): the request carries the normalised bulletin,
the two example shapes work, failures are retried then fall back to espeak-ng visibly, and the
cache answers a repeated bulletin without asking the service."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from common.config import ConfigError
from streamer.mixer.sources.tts import EspeakProvider, TtsError
from streamer.mixer.sources.tts_http import HttpTtsProvider, HttpVoiceConfig, load_voice_file
from tests.harness.fake_tts import SPEECH_S, FakeTts

STORM = ("Hồi 13 giờ ngày 05/9, vị trí tâm bão ở vào khoảng 17,5 độ Vĩ Bắc; 110,2 độ Kinh Đông. "
         "Sức gió mạnh nhất cấp 12 (118-133 km/h), giật cấp 15. Mưa 150-250 mm. UBND tỉnh cấm "
         "xe qua QL51 từ 17h–19h.")
STORM_SPOKEN_PARTS = ["mười ba giờ ngày năm tháng chín", "mười bảy phẩy năm độ Vĩ Bắc",
                      "một trăm mười tám đến một trăm ba mươi ba ki-lô-mét trên giờ",
                      "hai trăm năm mươi mi-li-mét", "Ủy ban nhân dân tỉnh",
                      "quốc lộ năm mươi mốt", "mười bảy giờ đến mười chín giờ"]
VOICES = {"north": {"http": "banmai", "espeak": "vi"},
          "south": {"http": "lannhi", "espeak": "vi-vn-x-south"}}


@pytest.fixture
def fake():
    f = FakeTts().start()
    yield f
    f.stop()


def viettel_like(fake: FakeTts, **kw) -> HttpVoiceConfig:
    """POST JSON with the token in the body; audio bytes back."""
    return HttpVoiceConfig(**{
        "url": f"{fake.url}/speak", "body": "json",
        "request": {"text": "{text}", "voice": "{voice}", "speed": "{speed}", "token": "{token}",
                    "tts_return_option": 2},
        "voices": VOICES, "default_voice": "north", "backoff_s": 0.5, **kw})


def provider(cfg: HttpVoiceConfig, tmp_path, token: str = "s3cret") -> HttpTtsProvider:
    key = tmp_path / "tts-key"
    key.write_text(token + "\n")
    cfg.credentials_file = str(key)
    p = HttpTtsProvider(cfg, var_dir=tmp_path, registry=CollectorRegistry())
    p.slept = []  # type: ignore[attr-defined]
    p.sleep = p.slept.append  # type: ignore[attr-defined]  # the backoff, counted not waited
    return p


def seconds(clip) -> float:
    return clip.length / 48_000


def fallbacks(p: HttpTtsProvider, reason: str) -> float:
    return p.fallbacks.labels(reason)._value.get()


def test_storm_bulletin_spoken_by_the_http_voice(fake, tmp_path) -> None:
    p = provider(viettel_like(fake, speed=1.1), tmp_path)
    speech = p.speak(STORM, "south")
    assert (speech.voice, speech.fallback) == ("http:lannhi", "")
    assert abs(seconds(speech.clip) - SPEECH_S) < 0.05
    assert np.sqrt(np.mean(speech.clip.read(0, speech.clip.length) ** 2)) > 0.01
    [req] = fake.requests
    body = req.json()
    assert (body["voice"], body["speed"], body["token"], body["tts_return_option"]) == (
        "lannhi", 1.1, "s3cret", 2)
    for part in STORM_SPOKEN_PARTS:
        assert part in body["text"]
    assert not any(c.isdigit() for c in body["text"])
    assert "km/h" not in body["text"] and "UBND" not in body["text"]


def test_storm_bulletin_spoken_by_espeak_ng() -> None:
    speech = EspeakProvider().speak(STORM, None)
    assert speech.voice == "espeak-ng:vi"
    pcm = speech.clip.read(0, speech.clip.length)
    assert 10 < seconds(speech.clip) < 120  # ~60 words
    assert np.sqrt(np.mean(pcm**2)) > 0.01


def test_fpt_like_async_url_is_fetched_once_ready(fake, tmp_path) -> None:
    """POST the bare text with the key and voice in headers; JSON with an audio URL that
    answers 404 while the service prepares it."""
    fake.not_ready = 2
    cfg = HttpVoiceConfig(url=f"{fake.url}/async", body="text",
                          headers={"api-key": "{token}", "voice": "{voice}",
                                   "speed": "{speed}"},
                          response="json", audio_url="async", voices=VOICES, speed=0)
    p = provider(cfg, tmp_path, token="k-123")
    speech = p.speak("Thông báo của UBND phường.", "north")
    assert (speech.voice, speech.fallback) == ("http:banmai", "")
    post, *gets = fake.requests
    assert post.body.decode() == "Thông báo của Ủy ban nhân dân phường."
    assert (post.headers["api-key"], post.headers["voice"], post.headers["speed"]) == (
        "k-123", "banmai", "0")
    assert [g.method for g in gets] == ["GET"] * 3  # 404, 404, the audio


def test_base64_audio_in_json(fake, tmp_path) -> None:
    cfg = HttpVoiceConfig(url=f"{fake.url}/b64", body="form",
                          request={"q": "{text}", "v": "{voice}"}, response="json",
                          audio_base64="data.audio", voices=VOICES)
    p = provider(cfg, tmp_path)
    speech = p.speak("Xin chào", None)  # no zone voice: the default (the first)
    assert (speech.voice, speech.fallback) == ("http:banmai", "")
    assert fake.requests[0].body == b"q=Xin+ch%C3%A0o&v=banmai"


def test_500s_are_retried_then_espeak_speaks_visibly(fake, tmp_path, caplog) -> None:
    fake.mode = "500"
    p = provider(viettel_like(fake, attempts=3), tmp_path)
    with caplog.at_level(logging.WARNING, "loa.tts"):
        speech = p.speak(STORM, "south")
    assert fake.calls("/speak") == 3
    assert p.slept == [0.5, 1.0]  # doubling backoff between the attempts
    assert speech.voice == "espeak-ng:vi-vn-x-south"
    assert speech.fallback == ("http:lannhi: the service answered 500 Internal Server Error "
                               "(after 3 attempts)")
    assert seconds(speech.clip) > 5
    assert fallbacks(p, "http_error") == 1
    assert "espeak-ng speaks instead" in caplog.text


def test_a_passing_failure_is_retried_to_success(fake, tmp_path) -> None:
    fake.mode, fake.failures = "503", 2
    p = provider(viettel_like(fake, attempts=3), tmp_path)
    speech = p.speak("Bản tin sáng", "north")
    assert (speech.voice, speech.fallback, fake.calls("/speak")) == ("http:banmai", "", 3)
    assert fallbacks(p, "http_error") == 0


def test_a_refusal_is_not_retried(fake, tmp_path) -> None:
    fake.mode = "400"
    p = provider(viettel_like(fake, attempts=3), tmp_path)
    speech = p.speak("Bản tin sáng", "north")
    assert fake.calls("/speak") == 1
    assert speech.fallback == "http:banmai: the service answered 400 Bad Request"


def test_timeouts_fall_back(fake, tmp_path) -> None:
    fake.mode = "slow"
    p = provider(viettel_like(fake, attempts=2, timeout_s=0.3), tmp_path)
    speech = p.speak("Bản tin sáng", "north")
    assert fake.calls("/speak") == 2
    assert speech.voice == "espeak-ng:vi"
    assert speech.fallback == "http:banmai: no answer within 0.3 s (after 2 attempts)"
    assert fallbacks(p, "timeout") == 1


def test_garbage_audio_falls_back_and_is_not_cached(fake, tmp_path) -> None:
    fake.mode, fake.failures = "garbage", 1
    p = provider(viettel_like(fake), tmp_path)
    speech = p.speak("Bản tin sáng", "north")
    assert speech.fallback.startswith("http:banmai: the audio does not decode")
    assert fallbacks(p, "bad_audio") == 1
    assert fake.calls("/speak") == 1
    again = p.speak("Bản tin sáng", "north")  # the service works again: asked again
    assert (again.voice, again.fallback, fake.calls("/speak")) == ("http:banmai", "", 2)


def test_an_unreachable_service_falls_back(tmp_path) -> None:
    from tests.harness.net import free_port

    cfg = HttpVoiceConfig(url=f"http://127.0.0.1:{free_port()}/speak", voices=VOICES,
                          attempts=2)
    p = provider(cfg, tmp_path)
    speech = p.speak("Bản tin sáng", "north")
    assert speech.fallback.startswith("http:banmai: cannot reach the service")
    assert fallbacks(p, "unreachable") == 1


def test_the_cache_serves_a_repeated_bulletin(fake, tmp_path) -> None:
    p = provider(viettel_like(fake), tmp_path)
    first = p.speak(STORM, "south")
    second = p.speak(STORM, "south")
    assert fake.calls("/speak") == 1
    assert p.cache_hits._value.get() == 1
    assert np.array_equal(first.clip.read(0, first.clip.length),
                          second.clip.read(0, second.clip.length))
    p.speak(STORM, "north")  # another voice is another recording
    assert fake.calls("/speak") == 2
    files = list((tmp_path / "tts-cache").iterdir())
    assert len(files) == 2 and all(f.suffix == ".audio" for f in files)  # no temporary left
    # a new provider (a restart) finds them too
    again = provider(viettel_like(fake), tmp_path)
    again.speak(STORM, "south")
    assert fake.calls("/speak") == 2


def test_the_cache_is_bounded(fake, tmp_path) -> None:
    p = provider(viettel_like(fake, cache_mb=0.1), tmp_path)  # ~1.5 WAVs of 66 kB
    for text in ("một", "hai", "ba"):
        p.speak(text, "north")
    assert len(list((tmp_path / "tts-cache").glob("*.audio"))) == 1


def test_text_errors_are_not_fallbacks(fake, tmp_path) -> None:
    p = provider(viettel_like(fake), tmp_path)
    with pytest.raises(TtsError, match="empty"):
        p.speak("   ", "north")
    assert fake.requests == []


def test_voice_file(tmp_path, fake) -> None:
    key = tmp_path / "key"
    key.write_text("abc")
    path = tmp_path / "voice.toml"
    path.write_text(f'''
default_voice = "south"
[http]
url = "{fake.url}/speak"
body = "json"
request = {{ text = "{{text}}", voice = "{{voice}}" }}
headers = {{ Authorization = "Bearer {{token}}" }}
credentials_file = "{key}"
[voices]
north = {{ http = "banmai" }}
south = {{ http = "lannhi", espeak = "vi-vn-x-south" }}
''')
    cfg = load_voice_file(path)
    p = HttpTtsProvider(cfg, var_dir=tmp_path)
    assert p.voice_names == ("north", "south")
    assert p.speak("Xin chào").voice == "http:lannhi"
    assert fake.requests[0].headers["authorization"] == "Bearer abc"


@pytest.mark.parametrize("text, field", [
    ('[http]\nurl = "ftp://x"\n[voices]\nn = {http = "a"}', "http.url"),
    ('[http]\nurl = "http://x"\nresponse = "json"\n[voices]\nn = {http = "a"}',
     "http.audio_url"),
    ('[http]\nurl = "http://x"\nattempts = 9\n[voices]\nn = {http = "a"}', "http.attempts"),
    ('[http]\nurl = "http://x"\nbogus = 1\n[voices]\nn = {http = "a"}', "http.bogus"),
    ('[http]\nurl = "http://x"\n[voices]\nn = {espeak = "vi"}', "voices.n"),
    ('[http]\nurl = "http://x"\n', "voices"),
    ('default_voice = "x"\n[http]\nurl = "http://x"\n[voices]\nn = {http = "a"}',
     "default_voice"),
    ("[voices]\n", "http.url"),
    ("[http", "tts_voice_file"),
])
def test_bad_voice_files_name_the_setting(tmp_path, text, field) -> None:
    path = tmp_path / "voice.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_voice_file(path)
    assert e.value.field == field


def test_a_missing_credentials_file_fails_at_start(tmp_path, fake) -> None:
    cfg = viettel_like(fake)
    cfg.credentials_file = str(tmp_path / "nope")
    with pytest.raises(ConfigError) as e:
        HttpTtsProvider(cfg, var_dir=tmp_path)
    assert e.value.field == "http.credentials_file"


def test_the_documented_voice_files_load(tmp_path) -> None:
    """docs/operations.md, "Voices": the full example and the two vendor-style ones."""
    import re
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "operations.md").read_text("utf-8")
    section = doc.split("## Voices", 1)[1].split("### The bulletin lexicon", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    for i, block in enumerate(blocks):
        path = tmp_path / f"voice{i}.toml"
        path.write_text(block, "utf-8")
        cfg = load_voice_file(path)
        assert cfg.voices and cfg.default_voice in cfg.voices


def test_a_down_service_is_not_asked_again_for_a_while(fake, tmp_path) -> None:
    """After a failure that may pass, espeak-ng speaks at once for cooldown_s: an outage
    delays one bulletin (the first), not each one."""
    fake.mode = "503"
    p = provider(viettel_like(fake, attempts=2, cooldown_s=60), tmp_path)
    now = [1000.0]
    p.clock = lambda: now[0]
    p.speak("Bản tin một", "north")
    assert fake.calls("/speak") == 2
    now[0] += 20
    speech = p.speak("Bản tin hai", "north")
    assert fake.calls("/speak") == 2  # not asked
    assert speech.fallback == ("http:banmai: not asked: it failed 20 s ago (the service "
                               "answered 503 Service Unavailable (after 2 attempts))")
    assert fallbacks(p, "down") == 1
    fake.mode = "ok"
    now[0] += 41
    assert p.speak("Bản tin ba", "north").fallback == ""
    assert fake.calls("/speak") == 3


def test_a_refusal_does_not_stop_asking(fake, tmp_path) -> None:
    fake.mode, fake.failures = "400", 1
    p = provider(viettel_like(fake), tmp_path)
    assert p.speak("Bản tin một", "north").fallback
    assert p.speak("Bản tin hai", "north").fallback == ""
    assert fake.calls("/speak") == 2


def test_async_audio_never_ready_falls_back(fake, tmp_path) -> None:
    fake.not_ready = 10**6
    cfg = HttpVoiceConfig(url=f"{fake.url}/async", body="text", response="json",
                          audio_url="async", voices=VOICES, audio_wait_s=5)
    p = provider(cfg, tmp_path)
    now = [0.0]
    p.clock = lambda: now[0]
    p.sleep = lambda s: now.__setitem__(0, now[0] + s)
    speech = p.speak("Xin chào", "north")
    assert speech.fallback == "http:banmai: the audio was not ready within 5 s"
    assert fake.calls("/async") == 1
    assert 5 <= len(fake.requests) - 1 <= 7  # about one fetch a second


def test_both_voices_failing_says_both_whys(fake, tmp_path) -> None:
    fake.mode = "400"
    cfg = viettel_like(fake)
    cfg.credentials_file = ""
    p = HttpTtsProvider(cfg, var_dir=tmp_path,
                        fallback=EspeakProvider(binary=str(tmp_path / "no-espeak")))
    with pytest.raises(TtsError) as e:
        p.speak("Bản tin", "north")
    assert str(e.value) == (f"http:banmai failed (the service answered 400 Bad Request), and "
                            f"espeak-ng too: {tmp_path / 'no-espeak'} is not installed")
