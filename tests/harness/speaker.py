"""A ``loa speaker`` process for a test: started with the test's arguments, recording to a WAV
and a JSON-lines log named after it in the test's tmp dir, read back through those files and its
HTTP endpoints, killed at the end. Which channel, upstreams and broker it gets is the test's
business: this module never chooses them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from streamer.control.broker import STREAMER_USER
from tests.harness.audio import peak_hz
from tests.harness.broker import client
from tests.harness.keys import with_trust
from tests.harness.wait import until
from wire.messages import Status, device_topic, parse

REPO = Path(__file__).resolve().parents[2]
RATE = 48_000


@dataclass
class SpeakerProcess:
    id: str  # the name its files carry
    proc: asyncio.subprocess.Process
    info: dict[str, Any]  # the line it prints once listening: its addresses
    wav: Path
    log: Path
    stderr: Path
    http: aiohttp.ClientSession = field(default_factory=aiohttp.ClientSession)

    @property
    def udp_port(self) -> int:
        return int(self.info["udp"].rpartition(":")[2])

    # ----------------------------------------------------------------------- its files

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def plays(self, broadcast: int | None = None, **match: Any) -> list[dict[str, Any]]:
        """``play`` records of ``broadcast`` (any if None) whose fields equal ``match``
        (``local`` absent counts as False)."""
        if broadcast is not None:
            match["broadcast"] = broadcast
        return [e for e in self.events() if e["event"] == "play"
                and all(e.get(k, False if k == "local" else None) == v for k, v in match.items())]

    def t0(self) -> float:
        """The wall time of the WAV's first sample (the log's first record, ``start``)."""
        return float(json.loads(self.log.read_text().splitlines()[0])["t0"])

    @property
    def channel(self) -> str:
        return str(json.loads(self.log.read_text().splitlines()[0])["channel"])

    def samples(self) -> np.ndarray:
        """The WAV so far, full scale = 1 (the header may lag the data by a flush)."""
        data = self.wav.read_bytes()[44:]
        return np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(np.float64) / 32768

    def pcm(self) -> np.ndarray:
        """The whole WAV once the process has stopped, in 16-bit units; checks its header."""
        with wave.open(str(self.wav), "rb") as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, RATE)
            return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)

    def window(self, start: float, end: float) -> np.ndarray:
        """What the speaker played between two wall times, full scale = 1; already recorded."""
        t0 = self.t0()
        pcm = self.samples()
        a, b = round((start - t0) * RATE), round((end - t0) * RATE)
        assert 0 <= a < b <= len(pcm), (a, b, len(pcm))
        return pcm[a:b]

    async def wait_window(self, start: float, end: float) -> np.ndarray:
        """``window``, once the WAV has got that far (within 5 s)."""
        t0 = self.t0()
        a, b = round((start - t0) * RATE), round((end - t0) * RATE)
        assert 0 <= a < b
        await until(lambda: len(self.samples()) >= b, 5, f"{self.id} WAV up to {end - t0:.1f} s")
        return self.window(start, end)

    # ----------------------------------------------------------------------- its HTTP side

    async def health(self) -> dict[str, Any]:
        async with self.http.get(f"http://{self.info['http']}/healthz") as r:
            assert r.status == 200
            return dict(await r.json())

    async def ready(self) -> int:
        async with self.http.get(f"http://{self.info['http']}/readyz") as r:
            return r.status

    async def metrics(self) -> dict[str, float]:
        """Samples by ``name[label=value]...`` (labels sorted by name)."""
        async with self.http.get(f"http://{self.info['http']}/metrics") as r:
            text = await r.text()
        return {s.name + "".join(f"[{k}={v}]" for k, v in sorted(s.labels.items())): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    async def subscribed(self) -> bool:
        return (await self.health())["state"] == "subscribed"

    # ----------------------------------------------------------------------- its life

    async def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM; it must exit cleanly."""
        self.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(self.proc.wait(), timeout_s)
        assert rc == 0, self.stderr.read_text()

    async def close(self) -> None:
        """Kill it if it still runs."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await self.http.close()


async def start_speaker(tmp_path: Path, name: str, *args: str, speaker_id: str | None = None,
                        startup_s: float = 15.0) -> SpeakerProcess:
    """``loa speaker --id <speaker_id or name> --wav/--log <tmp_path>/<name>.* *args``, its
    HTTP on a free port and its state under ``<tmp_path>/speaker-var`` (unless ``args`` say
    where); returns once it has said where it listens. The caller ``close()``s it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOA_SPEAKER_")}
    wav, log, stderr = (tmp_path / f"{name}.{ext}" for ext in ("wav", "jsonl", "stderr"))
    argv = ["--id", speaker_id or name, "--wav", str(wav), "--log", str(log),
            "--http", "127.0.0.1:0", *with_trust(args, tmp_path, speaker_id or name)]
    if "--var-dir" not in args and "--cache-dir" not in args:
        # the test's own: a speaker's caches and its kept move must not outlive the test
        # (the default, ./var, is the repository's and every test's)
        argv += ["--var-dir", str(tmp_path / "speaker-var")]
    with open(stderr, "ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clients.speaker.main", *argv, cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), startup_s)
        assert line, stderr.read_text()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return SpeakerProcess(name, proc, json.loads(line), wav, log, stderr)


@contextlib.asynccontextmanager
async def speaker_process(tmp_path: Path, name: str, *args: str, speaker_id: str | None = None,
                          startup_s: float = 15.0) -> AsyncIterator[SpeakerProcess]:
    """``start_speaker`` for the length of a block."""
    sp = await start_speaker(tmp_path, name, *args, speaker_id=speaker_id, startup_s=startup_s)
    try:
        yield sp
    finally:
        await sp.close()


@contextlib.asynccontextmanager
async def mqtt_speakers(tmp_path: Path, broker: Any, passwords: dict[str, str], upstream: str,
                        *specs: tuple[str, str], extra: tuple[str, ...] = ()
                        ) -> AsyncIterator[list[SpeakerProcess]]:
    """Speaker processes (id, channel = leaf zone) on ``broker`` (telemetry every 0.5 s),
    started at once; killed at the end."""
    started = await asyncio.gather(*(spawn_mqtt_speaker(tmp_path, sid, zone, upstream, broker,
                                                        passwords[sid], *extra)
                                     for sid, zone in specs), return_exceptions=True)
    try:
        for s in started:
            if isinstance(s, BaseException):
                raise s
        yield cast(list[SpeakerProcess], started)
    finally:
        for s in started:
            if isinstance(s, SpeakerProcess):
                await s.close()


async def spawn_mqtt_speaker(tmp_path: Path, sid: str, channel: str, upstream: str,
                             broker: Any, password: str, *extra: str) -> SpeakerProcess:
    pw_file = tmp_path / f"{sid}.password"
    pw_file.write_text(password + "\n")
    return await start_speaker(tmp_path, sid, "--channel", channel, "--upstream", upstream,
                               "--mqtt-url", broker.url, "--mqtt-password-file", str(pw_file),
                               "--telemetry-s", "0.5", *extra)


# -- what a speaker plays and says, for tests that move it --------------------------------------

async def retained_status(broker: Any, password: str, speaker_id: str) -> Status:
    topic = device_topic("speaker", speaker_id, "status")
    async with client(broker, STREAMER_USER, password) as c:
        await c.subscribe(topic, qos=1)
        async for m in c.messages:
            assert isinstance(m.payload, bytes)
            return parse(Status, m.payload)
    raise AssertionError("no status")


def last_second(spk: SpeakerProcess) -> np.ndarray:
    pcm = spk.samples()
    assert len(pcm) >= RATE
    return pcm[-RATE:]


async def tone_on(spk: SpeakerProcess, hz: float, timeout_s: float) -> None:
    async def playing() -> bool:
        pcm = spk.samples()
        return len(pcm) >= RATE and abs(peak_hz(pcm[-RATE:]) - hz) < 10
    await until(playing, timeout_s, f"{spk.id} playing {hz:g} Hz")
