"""End to end through `loa up`: streamer → relay → speaker processes, checked by what the
speakers recorded (their WAVs are anchored to wall time, see the README)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import correlate

from clients.ctl import call
from streamer.mixer.loudness import TARGET_LUFS, integrated_lufs
from tests.harness.audio import peak_hz, rms_dbfs
from tests.harness.loaup import RATE, LoaUp, Speaker, alive, children_of
from tests.harness.wait import wait_for

pytestmark = pytest.mark.realtime  # audio against the wall clock: see conftest.py

DELAY_S = 0.3
LOOKAHEAD = 312  # Opus encoder lookahead at 48 kHz


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    up = LoaUp(tmp_path_factory.mktemp("up"))
    up.lift_quiet_hours()
    time.sleep(1.0)  # speakers complete their handshakes
    children = children_of(up.proc.pid)
    yield up
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=20) == 0
    assert not up.state_file.exists()
    assert not any(alive(pid) for pid in children)  # every child was stopped


@pytest.fixture(scope="module")
def stack(up):
    state = up.state()
    state["token"] = up.token
    return state


def speakers(state, zone_prefix=""):
    return [Speaker(s) for s in state["speakers"] if s["zone"].startswith(zone_prefix)]


def broadcast(state, **body):
    return call(state["streamer_url"], "POST", "/api/v1/broadcasts", body, token=state["token"])


def test_state_file_lists_the_stack(stack):
    assert stack["streamer_url"].startswith("http://") and len(stack["relay_urls"]) == 1
    assert len(stack["speakers"]) == 6
    for s in stack["speakers"]:
        assert {"id", "zone", "channel", "pid", "wav", "media_addr"} <= set(s)


def test_tone_to_one_commune_reaches_only_its_speakers(stack):
    b = broadcast(stack, zones=["brvt.vung-tau.thang-tam"], source={
        "kind": "tone", "hz": 1000, "seconds": 2})
    inside = speakers(stack, "brvt.vung-tau.thang-tam")
    outside = [s for s in speakers(stack) if not s.zone.startswith("brvt.vung-tau.thang-tam")]
    assert len(inside) == 3 and len(outside) == 3
    wait_for(lambda: all(s.plays(b["id"]) for s in inside), timeout=8)
    for s in inside:
        (play,) = s.plays(b["id"])
        assert 1.95 < play["end"] - play["start"] < 2.1
        x = s.window(play["start"] + 0.1, play["end"] - 0.1)
        assert abs(peak_hz(x) - 1000) < 5, s.id
        assert abs(integrated_lufs(x) - TARGET_LUFS) < 1.0, s.id
    time.sleep(0.5)
    for s in outside:
        assert s.plays(b["id"]) == []
        x = s.window(play["start"], play["end"])
        assert rms_dbfs(x) < -60, s.id


def best_lag(window: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """Offset in ``reference`` where ``window`` fits best, and the correlation there."""
    c = correlate(reference, window, mode="valid", method="fft")
    lag = int(np.argmax(c))
    seg = reference[lag : lag + len(window)]
    return lag, float(c[lag] / (np.linalg.norm(seg) * np.linalg.norm(window) + 1e-12))


def test_emergency_preempts_and_the_bulletin_resumes_where_it_paused(stack):
    from streamer.mixer.sources import EspeakProvider

    # about 7 s spoken: 2 s before the emergency and 5 s after it, of which the test reads 1 s
    # (the test waits for the whole bulletin to end)
    text = ("Thông báo của Ủy ban nhân dân xã Kim Long: bà con ấp Tây và ấp Đông tham gia "
            "tổng vệ sinh môi trường.")
    clip = EspeakProvider().synthesize(text)
    ref = clip.read(0, clip.length)
    zone = "brvt.chau-duc.kim-long"
    b = broadcast(stack, zones=[zone], source={"kind": "tts", "text": text})
    time.sleep(2.0)
    t_req = time.time()
    e = broadcast(stack, zones=[zone], priority="emergency",
                  source={"kind": "tone", "hz": 1000, "seconds": 1.5})
    t_ok = time.time()
    spks = speakers(stack, zone)
    assert len(spks) == 2
    wait_for(lambda: all(len(s.plays(b["id"])) == 2 for s in spks), timeout=clip.length / RATE + 6)
    starts = []
    for s in spks:
        first, second = s.plays(b["id"])
        (emerg,) = s.plays(e["id"])
        starts.append(emerg["start"])
        # Switched within one frame plus the fade of the request (after the playout delay).
        # A play line starts with the first packet carrying the broadcast id; that packet's
        # decoded audio starts LOOKAHEAD samples before the frame it was mixed in.
        switch = emerg["start"] + LOOKAHEAD / RATE - DELAY_S
        assert t_req - 0.025 <= switch <= t_ok + 0.020 + 0.010 + 0.030, (s.id, switch - t_req)
        x = s.window(emerg["start"] + 0.03, emerg["end"] - 0.02)
        assert abs(peak_hz(x) - 1000) < 5
        # before: the bulletin from its beginning
        lag0, corr0 = best_lag(s.window(first["start"] + 0.02, first["start"] + 1.02), ref)
        assert corr0 > 0.8 and abs(lag0 - (0.02 * RATE - LOOKAHEAD)) <= 96, (s.id, lag0, corr0)
        # after: from where it paused (bulletin time played + the 10 ms fade-out), not from 0.
        # The 1.5 s tone began after that fade-out, so it ends 480 samples into a frame, where
        # the bulletin resumes.
        paused_at = (emerg["start"] - first["start"]) * RATE + 480
        lag1, corr1 = best_lag(s.window(second["start"] + 0.03, second["start"] + 1.03), ref)
        assert corr1 > 0.8, (s.id, corr1)
        expected = paused_at + 0.03 * RATE - LOOKAHEAD - 480
        assert abs(lag1 - expected) <= 96, (s.id, lag1, expected)
    assert max(starts) - min(starts) < 0.001  # every speaker of the zone at once


def test_speakers_of_one_channel_play_in_sync(stack):
    a, b = (s for s in speakers(stack, "brvt.vung-tau.thang-tam.kp-1"))
    bid = broadcast(stack, zones=["brvt.vung-tau.thang-tam.kp-1"],
                    source={"kind": "tts", "text": "Kiểm tra đồng bộ loa 1, 2, 3."})["id"]
    wait_for(lambda: a.plays(bid) and b.plays(bid), timeout=10)
    p = a.plays(bid)[0]
    xa = a.window(p["start"], p["end"])
    xb = b.window(p["start"] - 0.05, p["end"] + 0.05)
    lag, corr = best_lag(xa, xb)
    assert corr > 0.95 and abs(lag - 0.05 * RATE) <= 48, (lag, corr)  # ≤ 1 ms apart


def test_reach_confirms_every_speaker_of_a_province_wide_broadcast(stack):
    """Proof of play over MQTT: each speaker reports the broadcast it actually played."""
    url, token = stack["streamer_url"], stack["token"]
    speakers_api = call(url, "GET", "/api/v1/speakers", token=token)["speakers"]
    assert {s["id"] for s in speakers_api} == {s["id"] for s in stack["speakers"]}
    assert all(s["presence"]["state"] == "online" for s in speakers_api)
    b = broadcast(stack, zones=["brvt"], source={"kind": "tone", "hz": 800, "seconds": 1.0})
    started = time.monotonic()
    reach = {}
    while time.monotonic() - started < 5.0:
        reach = call(url, "GET", f"/api/v1/broadcasts/{b['id']}/reach", token=token)
        if len(reach["confirmed"]) == len(stack["speakers"]):
            break
        time.sleep(0.2)
    assert reach["expected"] == len(stack["speakers"]) == 6
    assert sorted(r["id"] for r in reach["confirmed"]) == sorted(
        s["id"] for s in stack["speakers"]), reach
    assert reach["offline"] == [] and reach["ratio"] == 1.0
    for r in reach["confirmed"]:  # the level each speaker measured is the tone's
        assert abs(r["level_dbfs"] - (TARGET_LUFS - 0.7)) < 3.0, r
        assert r["end"] - r["start"] > 0.9
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(f"{url}/metrics", timeout=10) as resp:
        families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    reach_metric = {s.labels["broadcast"]: s.value
                    for s in families["loa_broadcast_reach_confirmed"].samples}
    assert reach_metric[str(b["id"])] == 6
    online = {s.labels["zone"]: s.value for s in families["loa_speakers_online"].samples}
    assert sum(online.values()) == 6 and online["brvt.vung-tau.thang-tam.kp-1"] == 2
    registered = {s.labels["zone"]: s.value
                  for s in families["loa_speakers_registered"].samples}
    assert registered == online  # every registered speaker is online


def test_volume_command_through_the_api_lowers_what_the_speaker_plays(stack):
    """Operator → API → MQTT → speaker → ack, and the recorded level drops by 6 dB."""
    url, token = stack["streamer_url"], stack["token"]
    spk = speakers(stack, "brvt.con-dao")[0]
    before = broadcast(stack, zones=[spk.zone], source={"kind": "tone", "hz": 500, "seconds": 1})
    wait_for(lambda: spk.plays(before["id"]))
    ack = call(url, "POST", f"/api/v1/speakers/{spk.id}/commands",
               {"cmd": "set_volume", "args": {"volume": 50}}, token=token)
    assert ack["acked"] and ack["ok"] and ack["state"]["volume"] == 50, ack
    after = broadcast(stack, zones=[spk.zone], source={"kind": "tone", "hz": 500, "seconds": 1})
    wait_for(lambda: spk.plays(after["id"]))
    call(url, "POST", f"/api/v1/speakers/{spk.id}/commands",
         {"cmd": "set_volume", "args": {"volume": 100}}, token=token)
    levels = [spk.plays(b["id"])[0]["level_dbfs"] for b in (before, after)]
    # volume 50 on the speaker's dB law (clients/speaker/playout.py)
    from clients.speaker.playout import volume_gain

    assert abs((levels[1] - levels[0]) - 20 * np.log10(volume_gain(50))) < 0.5, levels
    entry = call(url, "GET", "/api/v1/audit?action=command_speaker", token=token)["entries"][0]
    assert entry["target"] == spk.id and entry["user"] == "admin"


def test_loa_ctl_commands_real_speakers_over_mqtt(stack, tmp_path):
    """The operator CLI as a process: demo sign-in, a speaker command and a zone command,
    acknowledged by the real speakers through the real broker."""
    env = {**os.environ, "LOA_CTL_TOKEN_FILE": str(tmp_path / "token.json"),
           "LOA_URL": stack["streamer_url"]}
    var = Path(stack["admin_credentials"]).parent

    def ctl(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "loa", "ctl", *args], env=env,
                              cwd=var.parent, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    (tmp_path / "pw").write_text(json.loads(Path(stack["admin_credentials"]).read_text())
                                 ["password"])
    ctl("login", "--user", "admin", "--password-file", str(tmp_path / "pw"))
    spk = speakers(stack, "brvt.chau-duc.kim-long")[0]
    out = ctl("speaker", spk.id, "volume", "80")
    assert f"speaker {spk.id}: set_volume ok (volume 80" in out
    out = ctl("zone-command", "brvt.chau-duc.kim-long", "set_volume", "volume=100")
    assert "2 acks, 2 ok" in out, out
    listing = ctl("speakers", "--zone", "brvt.chau-duc.kim-long")
    assert sum(line.split()[2:3] == ["online"] for line in listing.splitlines()) == 2, listing
