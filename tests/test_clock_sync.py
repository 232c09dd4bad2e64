"""Speakers play on the streamer's timeline whatever their own clocks say (TIME/TIMEREPLY,
``wire/timesync.py``, ``device/streamer_time.py``): two speakers of one channel behind a real
relay, one clock 400 ms fast running 80 ppm fast, the other 300 ms slow running 60 ppm slow,
play a noise clip within a millisecond of each other, measured by cross-correlation on one
timeline (each recording mapped to the system's clock with the skew the speaker was given)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from scipy.signal import butter, correlate, sosfilt

from tests.harness.api import call
from tests.harness.relay import relay_process
from tests.harness.speaker import RATE, SpeakerProcess, speaker_process
from tests.harness.wait import until
from tests.harness.zones import KP1

#: how long the speakers are followed: 35 s in `make test`, which takes them past their first
#: 40 exchanges (about 27 s) into their every-5-s ones, played by the fitted drift alone in
#: between, and by then their clocks have drifted 4.9 ms apart; LOA_SYNC_SOAK_S=300 for the
#: five-minute run whose figures docs/BENCHMARKS.md gives ("Clock sync")
FOLLOW_S = float(os.environ.get("LOA_SYNC_SOAK_S", "35"))
#: the clip `make test` has always played, whatever FOLLOW_S: with a 45 s one, under load,
#: four runs in five measured the speakers 1-4 ms apart from the first check on (not yet
#: explained; the 75 s clip measured 0.06 ms in the same hour)
CLIP_S = max(75.0, FOLLOW_S + 10)
WINDOW_S = 0.25
PIECES = 7  # windows a quarter second apart: a lost packet spoils one, not the measure
SEARCH_S = 0.02  # ±20 ms around where the other speaker's window should be


#: the band the comparison uses: Opus codes it with real bits at 32 kbit/s, where above it a
#: decoder may fill bands with noise of its own (CELT's folding), different in each speaker
BAND = butter(6, (200, 3000), btype="bandpass", fs=RATE, output="sos")


def noise_wav(seconds: float, seed: int = 3) -> bytes:
    """Band-limited noise: every lag looks different, so the correlation peak is a fraction
    of a millisecond wide."""
    x = sosfilt(BAND, np.random.default_rng(seed).standard_normal(int(seconds * RATE))) * 0.3
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


async def upload(streamer: Any, data: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="noise.wav", content_type="audio/wav")
    async with aiohttp.ClientSession() as s, s.post(
            f"{streamer.http_url}/api/v1/clips", data=form, headers=streamer.admin) as r:
        body = await r.json()
        assert r.status == 201, body
        return str(body["id"])


class Recording:
    """A speaker's WAV on the system's clock: sample i played at wall_t0 + i / rate / (1 + r),
    r its clock's drift (``clients/speaker/clock.py``: its clock and the system's)."""

    def __init__(self, spk: SpeakerProcess) -> None:
        start = json.loads(spk.log.read_text().splitlines()[0])
        self.spk = spk
        self.wall_t0 = float(start["wall_t0"])
        self.rate = 1 + float(start["clock_drift_ppm"]) * 1e-6

    def index(self, wall: float) -> float:
        return (wall - self.wall_t0) * self.rate * RATE

    async def around(self, wall: float, before_s: float, after_s: float) -> np.ndarray:
        a = round(self.index(wall - before_s))
        b = round(self.index(wall + after_s))
        await until(lambda: len(self.spk.samples()) >= b, 10, f"{self.spk.id} WAV to {b}")
        return self.spk.samples()[a:b]


async def skew_ms(a: Recording, b: Recording, wall: float,
                  search_s: float = SEARCH_S) -> tuple[float, float]:
    """How much later (ms) b plays what a plays at ``wall``, and the correlation."""
    x = sosfilt(BAND, await a.around(wall, 0.1, WINDOW_S))[round(0.1 * RATE):]
    y = sosfilt(BAND, await b.around(wall, search_s + 0.1, WINDOW_S + search_s))
    y = y[round(0.1 * RATE):]  # the filters' start-up left out
    c = correlate(y, x, mode="valid", method="fft")
    lag = int(np.argmax(c))
    seg = y[lag: lag + len(x)]
    corr = float(c[lag] / (np.linalg.norm(seg) * np.linalg.norm(x) + 1e-12))
    return (lag - search_s * RATE) / RATE * 1000, corr


@pytest.mark.realtime
async def test_two_speakers_with_bad_clocks_play_within_a_millisecond(
        streamer, tmp_path: Path) -> None:
    clip = await upload(streamer, noise_wav(CLIP_S))
    async with relay_process(tmp_path, "relay", "--upstream", streamer.media_addr) as relay, \
            speaker_process(tmp_path, "fast", "--channel", KP1, "--upstream", relay.media_addr,
                            "--clock-offset-ms", "400", "--clock-drift-ppm", "80") as fast, \
            speaker_process(tmp_path, "slow", "--channel", KP1, "--upstream", relay.media_addr,
                            "--clock-offset-ms", "-300", "--clock-drift-ppm", "-60") as slow:
        started = time.time()
        for spk in (fast, slow):
            await until(spk.subscribed, 10, f"{spk.id} subscribed")
        status, b = await call(streamer, "POST", "/api/v1/broadcasts", json={
            "zones": [KP1], "source": {"kind": "clip", "clip": clip}})
        assert status == 201, b
        a, c = Recording(fast), Recording(slow)
        # from 10 s after the speakers' start, every 5 s until FOLLOW_S (their clocks drift
        # 80 and 60 ppm apart meanwhile: 7.8 ms a minute): the same noise, at the same moment,
        # to the millisecond
        checks = {}
        for after_start in np.arange(10.0, FOLLOW_S + 0.1, 5.0):
            at = started + float(after_start)
            end = at + PIECES * WINDOW_S + SEARCH_S + 0.6
            await asyncio.sleep(max(0.0, end - time.time()))
            pieces = [await skew_ms(a, c, at + i * WINDOW_S) for i in range(PIECES)]
            skews = sorted(p[0] for p in pieces)
            corrs = sorted(p[1] for p in pieces)
            checks[float(after_start)] = (skews[PIECES // 2], corrs[PIECES // 2], pieces)
        every = np.abs([p[0] for _, _, pieces in checks.values() for p in pieces])
        summary = {"followed_s": FOLLOW_S, "checks": len(checks), "windows": len(every),
                   "p50_ms": float(np.percentile(every, 50)),
                   "p99_ms": float(np.percentile(every, 99)), "max_ms": float(every.max())}
        print("clock sync skew:", json.dumps(summary))
        for after_start, (skew, corr, pieces) in checks.items():
            # noise: anything but the same noise correlates near 0
            assert corr > 0.8, (after_start, pieces)
            assert abs(skew) <= 1.0, (after_start, pieces)
        # what each speaker's clock sync says of its own clock: 400 ms fast and 80 ppm, and
        # 300 ms slow and 60 ppm (the streamer's clock minus the speaker's)
        for spk, offset_s, ppm in ((fast, -0.4, -80), (slow, 0.3, 60)):
            m = await spk.metrics()
            assert m["loa_speaker_time_exchanges_total"] >= 20, spk.id
            assert m["loa_speaker_time_rejected_total"] == 0, spk.id
            drifted = offset_s + ppm * 1e-6 * (time.time() - started)
            assert abs(m["loa_speaker_clock_offset_seconds"] - drifted) < 0.005, (spk.id, m)
            assert abs(m["loa_speaker_clock_drift_ppm"] - ppm) < 10, (spk.id, m)
