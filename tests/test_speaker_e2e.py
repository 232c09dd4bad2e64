"""End-to-end tests of ``loa speaker`` as a real process against an in-test upstream.

The upstream is built from the same wire code as the streamer (``SubscribeServer``, Loa RTP
headers) and sends a 1 kHz tone, gated on and off by a pseudo-random frame pattern so that two
recordings can be aligned by cross-correlation (a pure tone repeats every millisecond).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.harness.audio import peak_hz
from tests.harness.speaker import SpeakerProcess, speaker_process
from tests.harness.upstream import RtpUpstream, serving
from tests.harness.wait import until
from wire.packet import HEADER_LEN, RtpPacket, ssrc_for, unix_to_ntp64
from wire.subscribe import Subscribed, Unsubscribed, is_control

pytestmark = pytest.mark.realtime  # audio against the wall clock: see conftest.py

CHANNEL = "ba-ria-vung-tau/long-hai/cum-1"
BROADCAST = 5
RATE = 48_000
FRAME = 960
_rng = random.Random(1234)
# Which 20 ms frames carry the tone: random, except that every 10th frame is an onset after
# two silent frames, a landmark for checking where audio lands in the WAV.
GATE = [k % 10 == 0 or (k % 10 < 8 and _rng.random() < 0.75) for k in range(4000)]
TONE = (0.3 * 32767 * np.sin(2 * np.pi * 1000 * np.arange(FRAME) / RATE)).astype("<i2")
SILENCE = np.zeros(FRAME, dtype="<i2")


# --------------------------------------------------------------------------- in-test upstream


class ToneUpstream(RtpUpstream):
    """A minimal streamer of ``CHANNEL``: the tone in the frames ``GATE`` says, silence in the
    others (broadcast ``BROADCAST``), with in-band FEC."""

    def __init__(self) -> None:
        super().__init__(channel_ssrc=lambda ch: ssrc_for(ch) if ch == CHANNEL else None,
                         fec_loss_perc=10)

    @property
    def addr(self) -> tuple[str, int]:
        return self.sockname

    def frame(self, n: int) -> tuple[bytes, int, int]:
        return (TONE if GATE[n % len(GATE)] else SILENCE).tobytes(), BROADCAST, 0


@pytest.fixture
async def upstream() -> AsyncIterator[ToneUpstream]:
    async with serving(ToneUpstream) as up:
        yield up


# --------------------------------------------------------------------------- speaker process


@contextlib.asynccontextmanager
async def speaker(tmp_path: Path, name: str, upstreams: list[tuple[str, int]],
                  *extra: str) -> AsyncIterator[SpeakerProcess]:
    args = ["--channel", CHANNEL, *extra]
    for host, port in upstreams:
        args += ["--upstream", f"{host}:{port}"]
    async with speaker_process(tmp_path, name, *args, startup_s=10) as sp:
        yield sp


def last_playing(pcm: np.ndarray, seconds: float) -> np.ndarray:
    """The last ``seconds`` before the end of the audio (trailing silence cut)."""
    end = int(np.flatnonzero(np.abs(pcm) > 100)[-1])
    return pcm[max(0, end - int(seconds * RATE)) : end]


# --------------------------------------------------------------------------- tests


async def test_speaker_plays_the_tone_on_time_and_logs_the_broadcast(
    upstream: ToneUpstream, tmp_path: Path
) -> None:
    async with speaker(tmp_path, "s1", [upstream.addr]) as sp:
        await until(sp.subscribed, 4, "subscribed")
        assert await sp.ready() == 200
        await asyncio.sleep(1.2)
        await sp.stop()
    pcm = sp.pcm()
    assert abs(peak_hz(last_playing(pcm, 0.5)) - 1000) < 5
    events = sp.events()
    start = events[0]
    assert start["event"] == "start" and start["rate_hz"] == RATE
    assert (start["channel"], start["speaker"]) == (CHANNEL, "s1")
    plays = [e for e in events if e["event"] == "play"]
    assert [e["broadcast"] for e in plays] == [BROADCAST]
    first = next(iter(upstream.first_frame.values()))
    assert plays[0]["start"] == pytest.approx(upstream.capture_time(first) + 0.3, abs=1e-3)
    assert plays[0]["end"] > plays[0]["start"] + 0.8
    assert -30 < plays[0]["level_dbfs"] < -10  # 0.3 FS sine, gated: about -14 dBFS
    # The WAV is anchored at t0: a tone onset captured at c sits at (c + delay - t0) * rate.
    # Use an onset after two silent frames (the codec carries a few ms of tail over), and 200 ms
    # after the first frame: a decoder joining mid-stream needs that long to converge (CELT
    # predicts band energies from the previous frames).
    k = (first + 10) + (-(first + 10)) % 10
    onset = round((upstream.capture_time(k) + 0.3 - start["t0"]) * RATE)

    def rms(a: int, b: int) -> float:
        return float(np.sqrt(np.mean(pcm[onset + a : onset + b] ** 2)))

    assert rms(-600, -100) < 50 and rms(200, 900) > 3000
    assert any(isinstance(e, Unsubscribed) and e.why == "bye" for e in upstream.events)


async def test_two_speakers_play_in_sync(upstream: ToneUpstream, tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        a, b = await asyncio.gather(  # start both at once: the test stays short
            stack.enter_async_context(speaker(tmp_path, "a", [upstream.addr])),
            stack.enter_async_context(speaker(tmp_path, "b", [upstream.addr])))
        await asyncio.gather(until(a.subscribed, 4, "a subscribed"),
                             until(b.subscribed, 4, "b subscribed"))
        await asyncio.sleep(1.5)
        await asyncio.gather(a.stop(), b.stop())
    t0a, t0b = a.events()[0]["t0"], b.events()[0]["t0"]
    pa, pb = a.pcm(), b.pcm()
    # sample i of a plays at t0a + i / RATE; shift b onto a's index
    shift = round((t0b - t0a) * RATE)
    assert shift >= 0 or -shift < len(pb)
    if shift >= 0:
        pa = pa[shift:]
    else:
        pb = pb[-shift:]
    n = min(len(pa), len(pb))
    pa, pb = pa[:n], pb[:n]
    both = np.flatnonzero((np.abs(pa) > 100) & (np.abs(pb) > 100))
    begin, end = both[0] + RATE // 5, both[-1] - RATE // 10  # let the decoders converge
    assert end - begin > RATE // 2, "the two speakers did not play together long enough"
    window = pa[begin:end]
    maxlag = 20 * 48
    corr = np.correlate(pb[begin - maxlag : end + maxlag], window, mode="valid")
    lag = int(np.argmax(corr)) - maxlag
    assert abs(lag) <= 48, f"speakers are {lag} samples apart"
    peak = corr[lag + maxlag] / np.sqrt(np.dot(window, window)
                                        * np.dot(pb[begin + lag : end + lag],
                                                 pb[begin + lag : end + lag]))
    assert peak > 0.9


async def test_random_datagrams_are_counted_and_never_stop_playback(
    upstream: ToneUpstream, tmp_path: Path
) -> None:
    rng = random.Random(99)
    loop = asyncio.get_running_loop()
    stranger, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                      local_addr=("127.0.0.1", 0))
    async with speaker(tmp_path, "fuzzed", [upstream.addr]) as sp:
        await until(sp.subscribed, 4, "subscribed")
        target = ("127.0.0.1", sp.udp_port)

        async def foreign() -> float:
            m = await sp.metrics()
            return m.get("loa_speaker_bad_datagrams_total[reason=foreign_source]", 0)

        # In batches, each one counted before the next is sent: a burst larger than the
        # socket's receive buffer would be dropped by the kernel, not by the speaker.
        for batch in range(40):
            for _ in range(50):
                stranger.sendto(rng.randbytes(rng.randint(0, 2000)), target)

            async def counted(expected: int = 50 * (batch + 1)) -> bool:
                return await foreign() >= expected

            await until(counted, 4, "foreign datagrams counted", every_s=0.005)
        # the same from the upstream's own address, where the parsers see it
        assert upstream.transport is not None
        for i in range(600):
            if i % 3:
                junk = rng.randbytes(rng.randint(0, 2000))
            else:  # a valid Loa header with our SSRC and garbage after it
                good = RtpPacket(ssrc_for(CHANNEL), rng.randrange(65536), 0, b"\x00",
                                 capture_ntp=unix_to_ntp64(time.time()),
                                 broadcast_id=BROADCAST).build()
                junk = good[: rng.randint(0, HEADER_LEN)] + rng.randbytes(rng.randint(0, 500))
            upstream.transport.sendto(junk, target)
            if i % 25 == 24:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.8)  # keep playing after the storm
        metrics = await sp.metrics()
        assert (await sp.health())["state"] == "subscribed"
        await sp.stop()
    assert metrics["loa_speaker_bad_datagrams_total[reason=foreign_source]"] == 2000
    assert metrics["loa_speaker_bad_datagrams_total[reason=malformed]"] > 100
    assert metrics["loa_speaker_bad_datagrams_total[reason=error]"] == 0
    stranger.close()
    assert abs(peak_hz(last_playing(sp.pcm(), 0.5)) - 1000) < 5


async def test_speaker_fails_over_past_a_dead_upstream(
    upstream: ToneUpstream, tmp_path: Path
) -> None:
    heard: list[bytes] = []

    class Dead(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            heard.append(data)

    loop = asyncio.get_running_loop()
    dead, _ = await loop.create_datagram_endpoint(Dead, local_addr=("127.0.0.1", 0))
    dead_addr = dead.get_extra_info("sockname")[:2]
    async with speaker(tmp_path, "fo", [dead_addr, upstream.addr], "--failover-s", "1") as sp:
        assert await sp.ready() == 503  # still knocking at the dead upstream

        async def on_live() -> bool:
            h = await sp.health()
            return h["state"] == "subscribed" and h["upstream"].endswith(f":{upstream.addr[1]}")

        await until(on_live, 4, "on the live upstream")
        assert await sp.ready() == 200
        await asyncio.sleep(1.0)
        metrics = await sp.metrics()
        await sp.stop()
    dead.close()
    assert heard and all(is_control(d) for d in heard)  # it tried the first upstream first
    assert metrics["loa_speaker_failovers_total"] >= 1
    assert any(isinstance(e, Subscribed) for e in upstream.events)
    assert abs(peak_hz(last_playing(sp.pcm(), 0.5)) - 1000) < 5
