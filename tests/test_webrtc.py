"""The browser studio's WebRTC path, checked by what arrives in the LiveBuffer.

An aiortc client sending a 440 Hz sine, and real Chromium sending a Vietnamese TTS recording as
its (fake) microphone, must both land in the session's buffer as the same sound: FFT peak and
level for the sine, cross-correlation with the file for the voice. Offers the studio cannot take
are refused naming ``sdp`` and leave nothing open. The last test drives the studio page as an
announcer would, in Chromium, against an in-process streamer and its real API.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import subprocess
import time
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from scipy import signal

from streamer.live.webrtc import MAX_SDP_BYTES, SdpError, StudioSessions, TooManySessions
from tests.conftest import DAYTIME, NIGHT
from tests.harness.api import call
from tests.harness.audio import peak_hz, rms_dbfs
from tests.harness.browser import (
    by_testid,
    choose,
    chromium_page,
    connect_microphone,
    error_text,
    press_talk,
    release_talk,
    sign_in,
    studio_talk,
)
from tests.harness.wait import until
from tests.harness.webrtc import client_offer, offer_with

pytestmark = pytest.mark.realtime  # audio against the wall clock: see conftest.py

RATE = 48_000
FRAME = 960


class Sine(AudioStreamTrack):
    """A microphone that hears a pure tone, paced in real time like a sound card."""

    def __init__(self, hz: float, amplitude: float) -> None:
        super().__init__()
        self.hz, self.amplitude = hz, amplitude
        self.sent = 0
        self.t0: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.t0 is None:
            self.t0 = time.monotonic()
        await asyncio.sleep(max(0.0, self.t0 + self.sent / RATE - time.monotonic()))
        t = (self.sent + np.arange(FRAME)) / RATE
        pcm = np.round(self.amplitude * 32767 * np.sin(2 * np.pi * self.hz * t))
        frame = av.AudioFrame.from_ndarray(pcm.astype(np.int16)[None, :], format="s16",
                                           layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self.sent, Fraction(1, RATE)
        self.sent += FRAME
        return frame


def last_seconds(buffer, seconds: float) -> np.ndarray:
    n = int(seconds * RATE)
    out = np.zeros(n, dtype=np.float32)
    buffer.copy(buffer.written - n, n, out)
    return out


def open_peer_connections() -> list[RTCPeerConnection]:
    gc.collect()
    return [o for o in gc.get_objects()
            if isinstance(o, RTCPeerConnection) and o.connectionState != "closed"]


@pytest.fixture
async def sessions():
    closed = []

    async def on_close(session):
        closed.append(session.id)

    s = StudioSessions(on_close=on_close)
    s.closed = closed
    yield s
    await s.close_all()


async def test_aiortc_sine_lands_in_buffer_at_its_pitch_and_level(sessions) -> None:
    pc = RTCPeerConnection()
    try:
        pc.addTrack(Sine(440.0, 0.5))  # RMS of a 0.5 sine: -9.03 dBFS
        session = await sessions.open(await client_offer(pc), owner="op1")
        await pc.setRemoteDescription(RTCSessionDescription(session.answer_sdp, "answer"))
        assert session.owner == "op1" and sessions.get(session.id) is session
        assert len(session.id) >= 16 and session.id.replace("-", "").replace("_", "").isalnum()
        rtpmaps = [ln for ln in session.answer_sdp.splitlines() if ln.startswith("a=rtpmap:")]
        assert rtpmaps and all("opus/48000" in ln for ln in rtpmaps), rtpmaps

        await until(lambda: session.connected, 20, what="ICE and DTLS to connect")
        await until(lambda: session.buffer.written >= 2 * RATE, 20, what="2 s of audio")
        heard = last_seconds(session.buffer, 1.0)
        assert abs(peak_hz(heard) - 440.0) <= 2.0
        assert abs(rms_dbfs(heard) - (-9.03)) <= 1.0, rms_dbfs(heard)
        assert abs(session.level_dbfs() - (-9.03)) <= 1.0, session.level_dbfs()
    finally:
        await pc.close()
    # the client hung up (DTLS close_notify): the session closes by itself
    await until(lambda: sessions.closed == [session.id], 20, what="the session to close")
    assert sessions.get(session.id) is None and session.buffer.closed
    await asyncio.sleep(0.6)
    assert session.level_dbfs() == -120.0  # nothing arrives any more


async def test_unconnected_session_expires() -> None:
    closed = []

    async def on_close(session):
        closed.append(session.id)

    sessions = StudioSessions(connect_timeout_s=1.0, on_close=on_close)
    pc = RTCPeerConnection()
    pc.addTrack(Sine(440.0, 0.5))
    offer = await client_offer(pc)
    await pc.close()  # the browser went away before it could connect
    try:
        session = await sessions.open(offer, owner="op1")
        assert not session.connected
        await until(lambda: closed == [session.id], timeout_s=15,
                         what="the session to expire")
        assert len(sessions) == 0 and session.pc.connectionState == "closed"
    finally:
        await sessions.close_all()


async def test_sessions_are_limited_per_owner_and_in_total() -> None:
    sessions = StudioSessions(max_per_owner=2, max_total=3)
    clients = [RTCPeerConnection() for _ in range(4)]
    try:
        offers = []
        for pc in clients:
            pc.addTrack(Sine(440.0, 0.5))
            offers.append(await client_offer(pc))
        await sessions.open(offers[0], owner="op1")
        await sessions.open(offers[1], owner="op1")
        with pytest.raises(TooManySessions, match="op1 already has 2"):
            await sessions.open(offers[2], owner="op1")
        await sessions.open(offers[2], owner="op2")
        with pytest.raises(TooManySessions, match="3 sessions"):
            await sessions.open(offers[3], owner="op3")
        assert len(sessions) == 3
    finally:
        await sessions.close_all()
        for pc in clients:
            await pc.close()
    assert len(sessions) == 0


async def bad_offers() -> dict[str, tuple[object, str]]:
    """name → (offer, words the error must contain)."""
    good = await offer_with()
    pcmu = await offer_with("audio/PCMU")
    assert "PCMU" in pcmu and "opus" not in pcmu.lower()
    padding = "".join(f"a=x-padding:{i:06d}{'x' * 60}\r\n" for i in range(1100))
    return {
        "pcmu only": (pcmu, "no Opus (only PCMU)"),
        "g722 only": (await offer_with("audio/G722"), "no Opus (only G722)"),
        "video only": (await offer_with(video=True), "exactly one media section"),
        "garbage": ("hello, this is not SDP", "is not SDP"),
        "broken m-line": ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio x\r\n",
                          "is not valid SDP"),
        "no media": ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "(this offer has: none)"),
        "oversized": (good + padding, f"larger than {MAX_SDP_BYTES // 1024} KiB"),
        "not a string": ({"sdp": good}, "must be a string"),
        "no ice credentials": ("\r\n".join(ln for ln in good.split("\r\n")
                                           if not ln.startswith("a=ice-")), "ICE credentials"),
        "no rtcp-mux": (good.replace("a=rtcp-mux\r\n", ""), "was refused: RTCP mux"),
    }


async def test_bad_offers_are_refused_naming_sdp_and_leave_nothing_open(sessions) -> None:
    cases = await bad_offers()
    assert len(cases["oversized"][0]) > MAX_SDP_BYTES
    for name, (offer, words) in cases.items():
        with pytest.raises(SdpError) as e:
            await sessions.open(offer, owner="op1")  # type: ignore[arg-type]
        assert e.value.field == "sdp", name
        assert words in str(e.value), f"{name}: {e.value}"
        assert len(sessions) == 0, name
        assert open_peer_connections() == [], f"{name}: a peer connection was left open"
    assert sessions.closed == []


SPEECH = ("Xin chào bà con. Đây là bản tin thử nghiệm của đài truyền thanh xã Kim Long, "
          "phát lúc mười giờ sáng.")


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    """About 7 s of Vietnamese speech (espeak-ng), 48 kHz mono, with 0.3 s of silence at both
    ends so that Chromium's loop point falls in silence."""
    for tool in ("espeak-ng", "ffmpeg"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed to make the test voice (apt-get install {tool})")
    d = tmp_path_factory.mktemp("voice")
    subprocess.run(["espeak-ng", "-v", "vi", "-s", "150", "-w", str(d / "tts.wav"), SPEECH],
                   check=True)
    wav = d / "speech-48k.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(d / "tts.wav"), "-af",
                    "aresample=48000,adelay=300,apad=pad_dur=0.3", "-ac", "1", "-ar", "48000",
                    "-sample_fmt", "s16", str(wav)], check=True)
    return wav


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2") / 32768.0


def best_match(heard: np.ndarray, looped: np.ndarray) -> tuple[int, float]:
    """Where in the looped source ``heard`` lines up best, and the normalised correlation
    there (1.0: the same waveform)."""
    source = np.concatenate([looped, looped])  # heard may straddle the loop point
    lag = int(np.argmax(signal.correlate(source, heard, mode="valid", method="fft")))
    window = source[lag:lag + len(heard)]
    return lag, float(np.dot(heard, window) / (np.linalg.norm(heard) * np.linalg.norm(window)))


CALL_PAGE = """<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,"><script>
async function call() {
  const stream = await navigator.mediaDevices.getUserMedia({audio: {
    echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) pc.addTrack(track, stream);
  await pc.setLocalDescription(await pc.createOffer());
  while (pc.iceGatheringState !== "complete") await new Promise(r => setTimeout(r, 50));
  const res = await fetch("/offer", {method: "POST", headers: {"Content-Type": "application/json"},
                                     body: JSON.stringify({sdp: pc.localDescription.sdp})});
  const answer = await res.json();
  await pc.setRemoteDescription({type: "answer", sdp: answer.sdp});
  window.pc = pc;
  return answer.id;
}
</script>"""


@pytest.fixture
async def offer_server(sessions):
    """A tiny aiohttp app: the page above, and POST /offer answered by StudioSessions."""
    from aiohttp import web

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=CALL_PAGE, content_type="text/html")

    async def offer(request: web.Request) -> web.Response:
        session = await sessions.open((await request.json())["sdp"], owner="chromium")
        return web.json_response({"id": session.id, "sdp": session.answer_sdp}, status=201)

    app = web.Application()
    app.add_routes([web.get("/", page), web.post("/offer", offer)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_chromium_microphone_reaches_buffer_as_the_same_voice(
        sessions, offer_server, speech_wav) -> None:
    voice = read_wav(speech_wav)
    async with chromium_page(speech_wav) as page:
        await page.goto(offer_server)
        session = sessions.get(await page.evaluate("call()"))
        assert session is not None and session.owner == "chromium"
        assert "opus/48000" in session.answer_sdp and "PCMU" not in session.answer_sdp
        await until(lambda: session.connected, 20, what="Chromium to connect")
        start = session.buffer.written
        await until(lambda: session.buffer.written - start >= 4 * RATE, timeout_s=30,
                         what="4 s of Chromium's microphone")
        heard = last_seconds(session.buffer, 3.0).astype(np.float64)
        # the voice, not silence (the file has pauses: wait for a word)
        await until(lambda: session.level_dbfs() > -40.0, timeout_s=5, what="speech")
        await page.evaluate("window.pc.close()")
        await until(lambda: len(sessions) == 0, timeout_s=15,
                         what="the session to close after the page hung up")
    lag, corr = best_match(heard, voice)
    assert corr >= 0.8, f"received audio correlates {corr:.2f} with the WAV (lag {lag})"
    # the same check against a different voice must fail: the measure can tell them apart
    _, other = best_match(heard, np.roll(voice[::-1], 1000))
    assert other < 0.3, other


OPERATOR = {"name": "op-thang-tam", "password": "mat-khau-thu-nghiem",
            "full_name": "Phát thanh viên Thắng Tam",
            "grants": [{"role": "operator", "zone": "brvt.vung-tau.thang-tam"}]}


async def studio_broadcast(streamer) -> dict:
    """The newest broadcast the studio aired."""
    status, body = await call(streamer, "GET", "/api/v1/broadcasts?limit=5")
    assert status < 300, body
    recent = body["broadcasts"]
    live = [b for b in recent if b["source"].get("kind") == "live"]
    assert live, recent
    return max(live, key=lambda b: b["id"])


async def test_studio_page_goes_on_air_through_the_api(streamer, speech_wav) -> None:
    status, body = await call(streamer, "POST", "/api/v1/users", json=OPERATOR)
    assert status < 300, body
    studio: StudioSessions = streamer.plane.studio
    studio_url = streamer.http_url  # the streamer serves /studio and its API at one origin
    async with chromium_page(speech_wav) as page:
        with pytest.raises(AssertionError, match=r"wrong user name or password \[password\]"):
            await sign_in(page, studio_url, OPERATOR["name"], "not-the-password")
        await sign_in(page, studio_url, OPERATOR["name"], OPERATOR["password"])
        assert "Thắng Tam" in await page.inner_text(by_testid("whoami"))
        assert not await page.locator(by_testid("login")).is_visible()
        assert await page.locator(by_testid("zone-brvt.vung-tau.thang-tam.kp-2")).count() == 1
        assert await page.locator(by_testid("zone-brvt.ba-ria")).count() == 0  # not theirs

        # a zone above the grant: the API's 403 shows in the page, naming the zone
        await choose(page, ["brvt.vung-tau"])
        kp1 = page.locator(by_testid("zone-brvt.vung-tau.thang-tam.kp-1"))
        assert await kp1.is_checked() and await kp1.is_disabled()  # covered by its ancestor
        session_id = await connect_microphone(page)
        session = studio.get(session_id)
        assert session is not None and session.owner == OPERATOR["name"]
        with pytest.raises(AssertionError, match="may not air"):
            await press_talk(page)
        assert "brvt.vung-tau" in await error_text(page) and "[zones]" in await error_text(page)
        assert await page.get_attribute(by_testid("on-air"), "data-state") == "off"

        # their own commune: on air, in every hamlet's channel, with the microphone's voice
        await page.uncheck(by_testid("zone-brvt.vung-tau"))
        await choose(page, ["brvt.vung-tau.thang-tam"], label="Thông báo thử")
        await press_talk(page)
        assert await error_text(page) == ""
        assert "ON AIR" in await page.inner_text(by_testid("on-air"))
        b = await studio_broadcast(streamer)
        assert (b["state"], b["zones"], b["priority"], b["label"]) == (
            "on_air", ["brvt.vung-tau.thang-tam"], "normal", "Thông báo thử")
        for hamlet in ("kp-1", "kp-2", "kp-3"):
            assert streamer.mixer.channels[f"brvt.vung-tau.thang-tam.{hamlet}"].program.current \
                == b["id"]
        await until(lambda: session.level_dbfs() > -40.0, timeout_s=5, what="speech")
        await release_talk(page)
        assert (await studio_broadcast(streamer))["state"] == "done"

        # the space bar holds to talk too
        await page.locator("h1").click()
        await page.keyboard.down("Space")
        await page.wait_for_selector(by_testid("on-air") + '[data-state="on_air"]')
        await page.keyboard.up("Space")
        await page.wait_for_selector(by_testid("on-air") + '[data-state="off"]')

        # latch mode: one click on, one click off; the chosen priority reaches the API
        await page.check(by_testid("mode-latch"))
        await page.select_option(by_testid("priority"), "priority")
        await page.click(by_testid("talk"))
        await page.wait_for_selector(by_testid("on-air") + '[data-state="on_air"]')
        assert (await studio_broadcast(streamer))["priority"] == "priority"
        await page.wait_for_timeout(1000)  # several status polls: it stays on air
        assert await page.get_attribute(by_testid("on-air"), "data-state") == "on_air"
        await page.click(by_testid("talk"))
        await page.wait_for_selector(by_testid("on-air") + '[data-state="off"]')
        assert (await studio_broadcast(streamer))["state"] == "done"

        # quiet hours: the API's 409 shows, and nothing airs
        streamer.plane.now = lambda: NIGHT
        await page.click(by_testid("talk"))
        await page.wait_for_selector(by_testid("error") + ":not(:empty)")
        assert "quiet hours" in await error_text(page)
        assert await page.get_attribute(by_testid("on-air"), "data-state") == "off"

        await page.click(by_testid("disconnect"))
        await page.wait_for_selector(by_testid("mic-status") + '[data-state="off"]')
        await until(lambda: studio.get(session_id) is None, 20, what="the session to close")

        # the whole path in one call, as the acceptance test drives it
        streamer.plane.now = lambda: DAYTIME
        again = await studio_talk(page, studio_url, user=OPERATOR["name"],
                                  password=OPERATOR["password"], hold_s=1.0,
                                  zones=["brvt.vung-tau.thang-tam.kp-1"], label="Lần hai")
        assert again != session_id and studio.get(again) is not None
        b = await studio_broadcast(streamer)
        assert (b["zones"], b["label"], b["state"]) == (
            ["brvt.vung-tau.thang-tam.kp-1"], "Lần hai", "done")
