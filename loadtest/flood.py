"""Control-side abuse of a running streamer: what must never cost a frame.

Wrong-password sign-ins (argon2 checks), Vietnamese TTS previews (``espeak-ng``) and large clip
uploads (decoding and loudness), all at once against the HTTP API. Used by the playout
protection test (``tests/test_playout_protected.py``) and its benchmark
(``loadtest/bench_flood.py``): both measure playout while this runs.
"""

from __future__ import annotations

import asyncio
import io
import wave
from collections import Counter
from dataclasses import dataclass

import aiohttp
import numpy as np

RATE_HZ = 48_000


@dataclass(frozen=True)
class Abuse:
    logins: int = 200
    login_concurrency: int = 16
    tts_previews: int = 10
    uploads: int = 3
    upload_seconds: float = 60.0


def wav_bytes(seconds: float, rate_hz: int = RATE_HZ, seed: int = 0) -> bytes:
    """A mono 16-bit WAV of band-limited noise with a slow swell: real work for a decoder and
    a loudness meter, unlike silence."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate_hz)
    x = np.cumsum(rng.standard_normal(n)) * 0.002
    x -= np.convolve(x, np.ones(64) / 64, mode="same")
    x *= 0.5 + 0.4 * np.sin(np.arange(n) * 2 * np.pi * 0.2 / rate_hz)
    pcm = (np.clip(x / (np.abs(x).max() + 1e-9), -1, 1) * 20_000).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


async def abuse(url: str, token: str, spec: Abuse = Abuse()) -> dict[str, Counter[int]]:
    """Run every kind of abuse at once against ``url`` (the streamer's base URL); returns
    the HTTP statuses seen, per kind. ``token`` signs the TTS previews and uploads."""
    auth = {"Authorization": f"Bearer {token}"}
    seen: dict[str, Counter[int]] = {"login": Counter(), "tts": Counter(), "upload": Counter()}
    gate = asyncio.Semaphore(spec.login_concurrency)
    timeout = aiohttp.ClientTimeout(total=600)

    async with aiohttp.ClientSession(timeout=timeout) as http:
        async def login(i: int) -> None:
            async with gate, http.post(f"{url}/api/v1/login", json={
                    "user": f"flood-{i}", "password": f"wrong-{i}"}) as r:
                await r.read()
                seen["login"][r.status] += 1

        async def tts(i: int) -> None:
            async with http.post(f"{url}/api/v1/tts/preview", headers=auth, json={
                    "text": f"Thông báo số {i}: hôm nay ngày mùng sáu, mời bà con "
                            "đến nhà văn hóa họp lúc bảy giờ tối."}) as r:
                await r.read()
                seen["tts"][r.status] += 1

        async def upload(i: int) -> None:
            form = aiohttp.FormData()
            form.add_field("file", wav_bytes(spec.upload_seconds, seed=i),
                           filename=f"flood-{i}.wav", content_type="audio/wav")
            async with http.post(f"{url}/api/v1/clips", headers=auth, data=form) as r:
                await r.read()
                seen["upload"][r.status] += 1

        await asyncio.gather(*(login(i) for i in range(spec.logins)),
                             *(tts(i) for i in range(spec.tts_previews)),
                             *(upload(i) for i in range(spec.uploads)))
    return seen
