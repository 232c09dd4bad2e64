"""A plain speaker (no HTTP, no MQTT: what a small board runs) stays light (issue 13 item 5):
while it plays, its process has loaded none of the libraries only HTTP and MQTT need, and its
resident memory stays well under what it was (78 MB) when it loaded them all, and numpy
(which only the MQTT side's test tone uses).

The memory bound has room for other Python builds; ``docs/BENCHMARKS.md`` ("A
speaker against snapclient") has the figures, against Snapcast's client, and the CPU."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
from array import array
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clients.speaker.mqtt import TEST_TONE_PEAK, ToneOverlay
from clients.speaker.output import Samples
from tests.harness.keys import with_trust
from tests.harness.upstream import ToneUpstream, serving
from tests.harness.wait import until

REPO = Path(__file__).resolve().parents[1]
MAX_RSS_MB = 45  # 38.6 MB measured; with numpy it was 51
#: a compiled part of each library a plain speaker must not load (pure-Python ones, such as
#: prometheus_client, leave no trace in the process's memory map)
HEAVY = ("_pydantic_core", "aiohttp/_http_parser", "multidict/_multidict", "yarl/_quoting_c",
         "_multiarray_umath")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@contextlib.asynccontextmanager
async def plain_speaker(tmp_path: Path, name: str) -> AsyncIterator[tuple[Process, Path]]:
    """A plain speaker (``clients.speaker.main``, no HTTP, no MQTT) on a tone, playing it: its
    process and its play log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOA_SPEAKER_")}
    log = tmp_path / f"{name}.jsonl"
    async with serving(ToneUpstream) as up:
        args = with_trust(["--id", name, "--channel", "ch", "--upstream", up.addr,
                           "--log", str(log), "--var-dir", str(tmp_path / "var")],
                          tmp_path, name)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clients.speaker.main", *args, cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            assert json.loads(await asyncio.wait_for(proc.stdout.readline(), 15))[
                "event"] == "listening"
            await until(lambda: log.exists() and '"play_start"' in log.read_text(), 15,
                        "the speaker playing the tone")
            yield proc, log
        finally:
            proc.kill()
            await proc.wait()


async def test_a_plain_speaker_plays_without_http_or_mqtt_libraries_in_under_45_mb(
        tmp_path: Path) -> None:
    async with plain_speaker(tmp_path, "light") as (proc, _):
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert [lib for lib in HEAVY if lib in maps] == []
        assert rss_mb(proc.pid) < MAX_RSS_MB


async def test_a_speaker_paused_mid_broadcast_reads_its_backlog_and_plays_on(
        tmp_path: Path) -> None:
    """The speaker reads the socket once per datagram, not again to find it empty; a datagram
    after a stall (the process was paused) has a backlog behind it, which must reach the
    playout before its next beat, or the playout would take a second of stream as missing and
    log the broadcast as two."""
    async with plain_speaker(tmp_path, "paused") as (proc, log):
        os.kill(proc.pid, signal.SIGSTOP)
        await asyncio.sleep(1.5)  # longer than the playout's broadcast gap (1 s)
        os.kill(proc.pid, signal.SIGCONT)
        await asyncio.sleep(1.0)
        events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
        assert events == ["start", "play_start"], events


class Collect:
    def __init__(self) -> None:
        self.pcm: list[int] = []

    def write(self, pcm: Samples) -> None:
        self.pcm.extend(pcm)

    def write_silence(self, n: int) -> None:
        self.pcm.extend([0] * n)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_test_tone_is_mixed_in_without_numpy_clipped_and_metered() -> None:
    """The MQTT side's test tone and level meter (``ToneOverlay``) work on int16 buffers in
    Python, as the playout does: the tone over silence, over loud audio (clipped at full
    scale, never wrapped), then the audio alone once the tone is over."""
    sink = Collect()
    overlay = ToneOverlay(sink)
    overlay.start_tone(1000, 0.02, 1.0)  # 960 samples
    overlay.write_silence(480)
    overlay.write(array("h", [32_000] * 960))
    tone = [TEST_TONE_PEAK * 32767 * math.sin(2 * math.pi * 1000 * i / 48_000)
            for i in range(960)]
    assert len(sink.pcm) == 1440
    assert all(abs(sink.pcm[i] - tone[i]) <= 1 for i in range(480))
    assert all(abs(sink.pcm[480 + i] - min(32767, 32_000 + tone[480 + i])) <= 1
               for i in range(480))
    assert max(sink.pcm) == 32767 and sink.pcm[960:] == [32_000] * 480
    expected = 10 * math.log10(sum(x * x for x in sink.pcm) / 1440 / 32768**2)
    assert overlay.take_level_dbfs() == pytest.approx(expected, abs=0.01)
