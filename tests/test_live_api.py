"""Live voice end to end, with real speaker processes recording what they play:

- the browser studio: real Chromium whose microphone is a WAV file, through the /studio page,
  WebRTC into the streamer, push-to-talk in one commune over a normal bulletin;
- RTP ingest: real ffmpeg sending SRTP with an input's key, and with a wrong key;
- a relayed radio window: a local HTTP server streaming MP3, killed mid-window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import wave
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from dateutil import tz

from streamer.mixer.sources.tts import EspeakProvider
from tests.harness import browser
from tests.harness.api import call
from tests.harness.audio import peak_hz
from tests.harness.speaker import speaker_process
from tests.harness.wait import until

pytestmark = pytest.mark.realtime  # audio against the wall clock: see conftest.py

KIM_LONG = "brvt.chau-duc.kim-long"
AP_TAY = "brvt.chau-duc.kim-long.ap-tay"
ELSEWHERE = "brvt.vung-tau.thang-tam.kp-1"
RATE = 48_000
VN = tz.gettz("Asia/Ho_Chi_Minh")


def dbfs(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(x / 32768.0))) + 1e-12)


def best_correlation(recorded: np.ndarray, probe: np.ndarray) -> float:
    """Normalised cross-correlation of ``probe`` at its best position in ``recorded``."""
    n = len(probe)
    rec = recorded.astype(np.float64)
    p = (probe - probe.mean()) / (np.linalg.norm(probe - probe.mean()) + 1e-12)
    size = 1 << int(np.ceil(np.log2(len(rec) + n)))
    xc = np.fft.irfft(np.fft.rfft(rec, size) * np.conj(np.fft.rfft(p, size)), size)[: len(rec)
                                                                                     - n + 1]
    csum = np.concatenate([[0.0], np.cumsum(rec)])
    csq = np.concatenate([[0.0], np.cumsum(rec * rec)])
    win_sum = csum[n:] - csum[:-n]
    win_norm = np.sqrt(np.maximum(csq[n:] - csq[:-n] - win_sum**2 / n, 1e-12))
    return float(np.max(xc / win_norm))


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())


async def test_browser_studio_voice_reaches_only_the_chosen_commune_and_the_bulletin_resumes(
        streamer, tmp_path):
    voice = EspeakProvider().synthesize(
        "Xin chào bà con xã Kim Long. Đây là thông báo trực tiếp từ đài truyền thanh. "
        "Bà con chú ý theo dõi thời tiết và chuẩn bị phòng chống bão.").read(0, 8 * RATE)
    voice = np.concatenate([voice[: int(4.5 * RATE)], np.zeros(RATE // 2, np.float32)])
    wav = tmp_path / "mic.wav"
    write_wav(wav, voice * 0.8)
    up = streamer.media_addr
    async with speaker_process(tmp_path, "in", "--channel", AP_TAY, "--upstream", up) as inside, \
            speaker_process(tmp_path, "out", "--channel", ELSEWHERE, "--upstream", up) as outside:
        await until(inside.subscribed, 4, "inside subscribed")
        await until(outside.subscribed, 4, "outside subscribed")
        status, bulletin = await call(streamer, "POST", "/api/v1/broadcasts", json={
            "zones": [KIM_LONG], "source": {"kind": "tone", "hz": 440, "seconds": 120}})
        assert status == 201

        async def on_air() -> bool:
            _, got = await call(streamer, "GET", f"/api/v1/broadcasts/{bulletin['id']}")
            return bool(got["on_air_channels"] == 3)
        await until(on_air, 5, "the bulletin on the air")  # the voice comes over it
        user = json.loads((Path(streamer.cfg.var_dir) / "admin-credentials.json").read_text())
        async with browser.chromium_page(wav) as page:
            session = await browser.studio_talk(
                page, streamer.http_url, user=user["user"], password=user["password"],
                zones=[KIM_LONG], priority="priority", label="Trực tiếp", hold_s=7)
        await asyncio.sleep(2.0)  # the bulletin is back: let the speakers play it
        _, got = await call(streamer, "GET", f"/api/v1/broadcasts/{bulletin['id']}")
        assert got["state"] == "on_air" and got["on_air_channels"] == 3
        talks = [r for r in (await call(streamer, "GET", "/api/v1/broadcasts"))[1]["broadcasts"]
                 if r["source"].get("input") == f"studio-{session}"]
        assert len(talks) == 1 and talks[0]["state"] == "done"
        await inside.stop()
        await outside.stop()
    rec_in, rec_out = inside.pcm(), outside.pcm()
    assert dbfs(rec_out) < -60, "the voice (or anything) reached another commune"
    # The announcer's voice as the commune's speaker played it: Chromium loops the 5 s file,
    # so a 7 s hold holds every second of it (the loop's start is anywhere: a second starting
    # just before the hold comes round again 5 s later, and a second of margin); each second
    # must be found in the recording.
    corr = [best_correlation(rec_in, voice[int(t * RATE): int((t + 1) * RATE)])
            for t in (0.3, 1.3, 2.3, 3.3)]
    assert min(corr) >= 0.8, f"voice correlation per second {np.round(corr, 2)}"
    tail = rec_in[-int(1.0 * RATE):]
    assert abs(peak_hz(tail) - 440) < 5 and dbfs(tail) > -30  # the bulletin resumed


@contextlib.asynccontextmanager
async def ffmpeg_sender(addr: str, key: str, hz: float, seconds: float):
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
        "-i", f"sine=frequency={hz}:sample_rate=48000:duration={seconds}",
        "-c:a", "libopus", "-b:a", "64k", "-ac", "1", "-f", "rtp",
        "-srtp_out_suite", "AES_CM_128_HMAC_SHA1_80", "-srtp_out_params", key,
        f"srtp://{addr}", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_ffmpeg_ingest_airs_in_its_zones_and_a_wrong_key_is_refused_and_audited(
        streamer, tmp_path):
    status, created = await call(streamer, "POST", "/api/v1/inputs", json={
        "id": "encoder-1", "name": "Bộ mã hoá phòng thu", "zones": [KIM_LONG],
        "priority": "priority"})
    assert status == 201, created
    assert "AES_CM_128_HMAC_SHA1_80" in created["sdp"] and created["key"] in created["ffmpeg"]
    _, listed = await call(streamer, "GET", "/api/v1/inputs")
    assert "key" not in listed["inputs"][0]  # shown once, never listed
    up = streamer.media_addr
    async with speaker_process(tmp_path, "in", "--channel", AP_TAY, "--upstream", up) as inside:
        await until(inside.subscribed, 4, "inside subscribed")
        wrong = "A" * 40
        n_before = len((await call(streamer, "GET", "/api/v1/broadcasts"))[1]["broadcasts"])
        async with ffmpeg_sender(created["ingest"], wrong, 550, 2) as bad:
            await asyncio.wait_for(bad.wait(), 15)
        _, inp = await call(streamer, "GET", "/api/v1/inputs/encoder-1")
        assert not inp["sending"] and not inp["airing"]
        _, audit = await call(streamer, "GET", "/api/v1/audit?action=ingest_refused")
        assert audit["entries"] and audit["entries"][0]["outcome"] == "denied"
        assert "auth" in audit["entries"][0]["detail"]["reason"]
        assert len((await call(streamer, "GET", "/api/v1/broadcasts"))[1][
            "broadcasts"]) == n_before
        t0 = time.monotonic()
        async with ffmpeg_sender(created["ingest"], created["key"], 660, 4) as good:
            while not (await call(streamer, "GET", "/api/v1/inputs/encoder-1"))[1]["airing"]:
                assert time.monotonic() - t0 < 10, "the input never went on air"
                await asyncio.sleep(0.1)
            await asyncio.wait_for(good.wait(), 20)
        async def ended() -> bool:
            _, inp = await call(streamer, "GET", "/api/v1/inputs/encoder-1")
            return not inp["sending"] and not inp["airing"]
        # the idle timeout (2 s, checked every 0.5 s) ends it within the 3 s it always had
        await until(ended, 3.0, "the input ended by its idle timeout", every_s=0.1)
        await inside.stop()
    pcm = inside.pcm()
    loud = np.flatnonzero(np.abs(pcm) > 1000)
    assert len(loud) > 2.5 * RATE, "the encoder's audio did not reach the speaker"
    seg = pcm[loud[0] + RATE // 4: loud[0] + RATE // 4 + RATE]
    assert abs(peak_hz(seg) - 660) < 5
    assert abs(peak_hz(pcm[loud[0]:loud[-1]]) - 550) > 50  # never the refused sender


# -- relayed radio ----------------------------------------------------------------------------


class MockRadio:
    """An Icecast-like server: one MP3 file (ffmpeg-made 880 Hz) sent at its real-time rate."""

    def __init__(self, mp3: bytes, kbps: int = 64) -> None:
        self.mp3 = mp3
        self.rate = kbps * 1000 // 8
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg", "icy-name": "VOV1"})
        await resp.prepare(request)
        chunk = self.rate // 10
        for i in range(0, len(self.mp3), chunk):
            await resp.write(self.mp3[i: i + chunk])
            await asyncio.sleep(0.1)
        return resp

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/vov1.mp3", self.stream)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def kill(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_relay_window_airs_the_stream_and_a_dead_upstream_is_reported(streamer,
                                                                             tmp_path):
    mp3 = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
         "-i", "sine=frequency=880:sample_rate=44100:duration=120", "-c:a", "libmp3lame",
         "-b:a", "64k", "-f", "mp3", "-"], capture_output=True, check=True).stdout
    radio = MockRadio(mp3)
    await radio.start()
    streamer.plane.now = time.time
    await call(streamer, "PATCH", f"/api/v1/zones/{KIM_LONG}", json={"quiet_hours": ""})
    at = (datetime.now(VN) + timedelta(seconds=3)).replace(microsecond=0, tzinfo=None)
    status, s = await call(streamer, "POST", "/api/v1/schedules", json={
        "zones": [KIM_LONG], "at": at.isoformat(), "duration_s": 60,
        "source": {"kind": "relay", "url": f"http://127.0.0.1:{radio.port}/vov1.mp3"}})
    assert status == 201, s
    occ = at.replace(tzinfo=VN).timestamp()
    up = streamer.media_addr
    async with speaker_process(tmp_path, "in", "--channel", AP_TAY, "--upstream", up) as inside:
        await until(inside.subscribed, 4, "inside subscribed")
        while time.time() < occ + 4:
            await asyncio.sleep(0.1)
        aired = [r for r in streamer.broadcasts.live.values() if r.schedule == s["id"]]
        assert len(aired) == 1
        bid = aired[0].id
        assert streamer.mixer.on_air(bid) and aired[0].health == "playing"
        killed = time.monotonic()
        await radio.kill()
        while (await call(streamer, "GET", f"/api/v1/broadcasts/{bid}"))[1]["health"] != "down":
            assert time.monotonic() - killed < 10, "a dead upstream was not reported in 10 s"
            await asyncio.sleep(0.2)
        reported = time.monotonic() - killed
        _, rec = await call(streamer, "GET", f"/api/v1/broadcasts/{bid}")
        assert rec["state"] == "waiting" and not streamer.mixer.on_air(bid)  # not aired as silence
        _, audit = await call(streamer, "GET", "/api/v1/audit?action=relay_down")
        assert audit["entries"] and audit["entries"][0]["target"] == str(bid)
        await asyncio.sleep(1.0)
        await inside.stop()
        # shutting down stops the puller, which was reconnecting to the dead upstream
        puller = streamer.broadcasts.feeds[bid].stream.thread
        assert puller is not None and puller.is_alive()
        await streamer.broadcasts.close()
        assert not puller.is_alive() and not streamer.broadcasts.feeds
    print(f"dead upstream reported after {reported:.1f} s")
    pcm = inside.pcm()
    loud = np.flatnonzero(np.abs(pcm) > 1000)
    assert len(loud) > 2 * RATE
    assert abs(peak_hz(pcm[loud[0] + RATE // 2: loud[0] + RATE // 2 + RATE]) - 880) < 5


async def test_studio_offers_without_opus_or_too_large_get_400_and_open_nothing(streamer):
    from tests.harness.webrtc import offer_with

    pcmu = await offer_with("audio/PCMU")
    for sdp, says in [(pcmu, "Opus"), ("hello", "SDP"), ("v=0\r\n" + "a=x\r\n" * 20_000, "65536")]:
        status, body = await call(streamer, "POST", "/api/v1/studio/sessions",
                                  json={"sdp": sdp})
        assert (status, body["field"]) == (400, "sdp") and says in body["error"], body
    assert len(streamer.plane.studio) == 0 and not streamer.plane.inputs.buffers
