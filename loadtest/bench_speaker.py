"""A speaker's own cost (issue 13 item 5): CPU and resident memory of one ``loa speaker``
against Snapcast's client on the same machine, in the same run, playing the same tone.

Loa's side: a ``loa streamer`` child (on a private redis-server), one relay, and one
``python -m clients.speaker.main`` subscribed to one channel through the relay, with no sound
card (``NullSink``), no WAV, no HTTP and no MQTT: the process a small board runs. Snapcast's
side: ``snapserver`` reading a named pipe that this process feeds (48 kHz, 16 bit, the codec
of ``--codec``, Opus by default as Loa's; stereo, the same tone both sides, since
snapserver's Opus takes nothing else), and ``snapclient --player file:filename=null``. Both
clients run side by side through the same windows:

- **playing**: the streamer airs a 1 kHz tone on the channel (``POST /api/v1/broadcasts``),
  and the same tone (at -12 dBFS) is written into snapserver's pipe in real time;
- **idle**: nothing on air (the channel is quiet: the streamer sends its heartbeat, a
  sender report every 500 ms, `docs/protocol.md` "Quiet channels"), and silence
  written into the pipe.

CPU is ``/proc/PID/stat`` utime + stime over each window (after ``--warmup-s``), RSS
``/proc/PID/status`` VmRSS at its end. The figures are a percent of one core.

Needs ``snapserver`` and ``snapclient`` (Debian: ``apt-get install snapserver snapclient``;
the run fails with that hint without them) and what ``loa streamer`` needs (redis-server).

    python -m loadtest.bench_speaker [--window-s 60] [--warmup-s 10] [--codec opus]
        [--ptime-ms 20,60] [--baseline TREE] [--write]

``--baseline TREE`` runs a second speaker from another source tree of Loa (``git worktree
add /tmp/old COMMIT``) beside the first, on the same relay, for a before/after measured in
the same windows.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import os
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from ._report import ROOT, machine, process_cpu_s, rss_bytes, table, today, write_section
from .children import stop_process
from .stack import Stack
from .tokens import load_key

RATE_HZ = 48_000
TONE_HZ = 1000
SECTION = "bench_speaker"
GOALS = "≤ 2× snapclient's CPU playing, ≤ snapclient's CPU idle, RSS ≤ 40 MB"


@dataclass
class Sample:
    cpu_pct: float
    rss_mb: float


#: the least any asyncio process receiving the same packets costs: a datagram endpoint that
#: counts them and nothing else, on the event loop the speaker runs (uvloop when installed,
#: ``clients/speaker/main.py``; the "event-loop floor" column)
FLOOR = """
import asyncio
class Count(asyncio.DatagramProtocol):
    def datagram_received(self, data, addr):
        pass
async def main():
    loop = asyncio.get_running_loop()
    t, _ = await loop.create_datagram_endpoint(Count, local_addr=("127.0.0.1", 0))
    print(t.get_extra_info("sockname")[1], flush=True)
    await loop.create_future()
try:
    from uvloop import run
except ImportError:
    run = asyncio.run
run(main())
"""


class Datagrams:
    """Sends a 120-byte datagram (an Opus packet's size) every ``ptime_s`` to ``port``."""

    def __init__(self, port: int, ptime_s: float) -> None:
        self.port, self.ptime_s = port, ptime_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="floor-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            wake = time.monotonic()
            while not self._stop.is_set():
                s.sendto(bytes(120), ("127.0.0.1", self.port))
                wake += self.ptime_s
                time.sleep(max(0.0, wake - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


async def start_floor(exits: AsyncExitStack, ptime_ms: int) -> int:
    """The event-loop floor process, fed a datagram every packet time; returns its pid."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", FLOOR,
                                                stdout=asyncio.subprocess.PIPE)
    exits.push_async_callback(stop_process, proc)
    assert proc.stdout is not None
    feed = Datagrams(int(await asyncio.wait_for(proc.stdout.readline(), 10)), ptime_ms / 1000)
    feed.start()
    exits.callback(feed.stop)
    return proc.pid


class TonePipe:
    """Writes a 1 kHz tone into snapserver's pipe in real time while ``playing`` is set, and
    silence while it is clear: the source stays on, as a Loa channel with nothing on air
    still sends its silence."""

    def __init__(self, path: Path, chunk_s: float) -> None:
        self.path = path
        self.chunk_s = chunk_s
        self.playing = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tone-pipe", daemon=True)
        n = round(RATE_HZ * chunk_s)  # a whole number of periods of 1 kHz (ptime 20/40/60)
        amp = 0.25 * 32767
        samples = [round(amp * math.sin(2 * math.pi * TONE_HZ * i / RATE_HZ)) for i in range(n)]
        # stereo: snapserver's Opus encoder takes nothing else; both sides the same tone
        self._chunk = struct.pack(f"<{2 * n}h", *(x for x in samples for _ in range(2)))
        self._silence = bytes(len(self._chunk))

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)  # blocks until snapserver has opened it
        try:
            wake = time.monotonic()
            while not self._stop.is_set():
                os.write(fd, self._chunk if self.playing.is_set() else self._silence)
                wake += self.chunk_s
                time.sleep(max(0.0, wake - time.monotonic()))
        finally:
            os.close(fd)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_snapcast(exits: AsyncExitStack, tmp: Path, codec: str, chunk_ms: int,
                         log: object) -> tuple[int, int, TonePipe]:
    """snapserver on free ports reading ``tmp/snapfifo`` in chunks of ``chunk_ms``, and a
    snapclient playing nowhere; returns (snapserver pid, snapclient pid, the pipe's writer)."""
    for tool in ("snapserver", "snapclient"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install snapserver snapclient")
    fifo, conf = tmp / "snapfifo", tmp / "snapserver.conf"
    conf.write_text("")
    stream_port = free_port()
    source = (f"pipe://{fifo}?name=bench&sampleformat={RATE_HZ}:16:2&codec={codec}"
              f"&chunk_ms={chunk_ms}")
    server = await asyncio.create_subprocess_exec(
        "snapserver", "-c", str(conf), "--server.datadir", str(tmp), "--stream.source", source,
        "--stream.port", str(stream_port), "--tcp.port", str(free_port()),
        "--http.enabled", "0", "--logging.sink", "stderr",
        stdout=log, stderr=log)  # type: ignore[arg-type]
    exits.push_async_callback(stop_process, server)
    deadline = time.monotonic() + 10
    while not fifo.exists():  # snapserver creates it
        if time.monotonic() > deadline or server.returncode is not None:
            raise RuntimeError(f"snapserver did not create its pipe (see {tmp}/bench.log)")
        await asyncio.sleep(0.1)
    pipe = TonePipe(fifo, chunk_ms / 1000)
    pipe.start()
    exits.callback(pipe.stop)
    while True:  # listening
        try:
            socket.create_connection(("127.0.0.1", stream_port), 1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"snapserver is not listening (see {tmp}/bench.log)"
                                   ) from None
            await asyncio.sleep(0.1)
    client = await asyncio.create_subprocess_exec(
        "snapclient", "-h", "127.0.0.1", "-p", str(stream_port), "--hostID", "bench",
        "--player", "file:filename=null", "--logsink", "null",
        stdout=log, stderr=log)  # type: ignore[arg-type]
    exits.push_async_callback(stop_process, client)
    return server.pid, client.pid, pipe


async def start_loa(stack: Stack, tmp: Path, ptime_ms: int, log: object,
                    baseline: Path | None = None) -> tuple[dict[str, int], str]:
    """Streamer, relay and one speaker on the first channel, and one more from the source
    tree ``baseline`` if given; returns ({"loa": pid, "baseline": pid}, channel)."""
    await stack.start_streamer_process(ptime_ms)
    relay = await stack.start_relay(0, ptime_ms)
    channel = (await stack.channels())[0]
    pids = {"loa": await start_speaker(stack, tmp, channel, relay, "bench-speaker", ROOT, log)}
    if baseline is not None:
        pids["baseline"] = await start_speaker(stack, tmp, channel, relay, "bench-baseline",
                                               baseline, log)
    return pids, channel


async def start_speaker(stack: Stack, tmp: Path, channel: str, relay: str, name: str,
                        tree: Path, log: object) -> int:
    """``python -m clients.speaker.main`` of the source tree ``tree``, subscribed to
    ``channel`` through ``relay``; returns its pid."""
    key = load_key(stack.signing_key)
    assert key is not None
    from wire import token
    token_file = tmp / f"{name}.token"
    token_file.write_text(base64.b64encode(token.issue(
        key, name, [channel], time.time(), 86_400)).decode() + "\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.speaker.main", "--id", name,
        "--channel", channel, "--upstream", relay, "--stream-key", stack.stream_key,
        "--token-file", str(token_file), "--var-dir", str(tmp / f"{name}-var"), cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        stdout=asyncio.subprocess.PIPE, stderr=log)  # type: ignore[arg-type]
    stack.exits.push_async_callback(stop_process, proc)
    assert proc.stdout is not None
    if not await asyncio.wait_for(proc.stdout.readline(), 15):
        raise RuntimeError(f"the speaker from {tree} exited ({await proc.wait()})")
    return proc.pid


async def window(pids: dict[str, int], seconds: float) -> dict[str, Sample]:
    before = {name: process_cpu_s(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    return {name: Sample(100 * (process_cpu_s(pid) - before[name]) / elapsed,
                         rss_bytes(pid) / 1e6) for name, pid in pids.items()}


async def measure(window_s: float, warmup_s: float, codec: str, ptime_ms: int,
                  baseline: Path | None = None) -> dict[str, dict[str, Sample]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-speaker-"))
    with open(tmp / "bench.log", "wb") as log:
        async with AsyncExitStack() as exits:
            stack = Stack(exits, tmp, log)
            pids, channel = await start_loa(stack, tmp, ptime_ms, log, baseline)
            _, pids["snapclient"], pipe = await start_snapcast(exits, tmp, codec, ptime_ms, log)
            pids["floor"] = await start_floor(exits, ptime_ms)
            print(f"ptime {ptime_ms} ms, channel {channel}; idle for {warmup_s + window_s:g} s",
                  file=sys.stderr)
            await asyncio.sleep(warmup_s)
            out = {"idle": await window(pids, window_s)}
            await stack.api("POST", "/api/v1/broadcasts", {
                "zones": [channel], "source": {"kind": "tone", "hz": TONE_HZ, "seconds": 3600},
                "override_quiet_hours": True})  # a benchmark runs at any hour
            pipe.playing.set()
            print(f"playing for {warmup_s + window_s:g} s", file=sys.stderr)
            await asyncio.sleep(warmup_s)
            out["playing"] = await window(pids, window_s)
            pipe.playing.clear()
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def render(results: dict[int, dict[str, dict[str, Sample]]], args: argparse.Namespace,
           cmd: str) -> str:
    rows = []
    for ptime_ms, res in results.items():
        for phase in ("playing", "idle"):
            loa, snap, floor = (res[phase][k] for k in ("loa", "snapclient", "floor"))
            rows.append([f"{ptime_ms} ms", phase, f"{loa.cpu_pct:.2f} %",
                         f"{snap.cpu_pct:.2f} %",
                         f"**{loa.cpu_pct / snap.cpu_pct:.1f}×**" if snap.cpu_pct else "n/a",
                         f"{floor.cpu_pct:.2f} %", f"{loa.rss_mb:.1f} MB",
                         f"{snap.rss_mb:.1f} MB"])
            if args.baseline:
                base = res[phase]["baseline"]
                rows[-1] += [f"{base.cpu_pct:.2f} %", f"{base.rss_mb:.1f} MB"]
    baseline_columns = ("baseline CPU", "baseline RSS") if args.baseline else ()
    baseline_text = (f"\n**baseline**: a second speaker from the source tree `{args.baseline}`, "
                     "subscribed to the same relay and channel, in the same windows.\n"
                     if args.baseline else "")
    try:
        import uvloop
        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio's own: uvloop is not installed"
    first = next(iter(results.values()))
    p, i = first["playing"], first["idle"]
    met = [p["loa"].cpu_pct <= 2 * p["snapclient"].cpu_pct,
           i["loa"].cpu_pct <= i["snapclient"].cpu_pct,
           max(p["loa"].rss_mb, i["loa"].rss_mb) <= 40]
    verdict = ", ".join(f"{name} {'met' if ok else 'not met'}" for name, ok in
                        zip(("CPU playing", "CPU idle", "RSS"), met, strict=True))
    return f"""## A speaker against snapclient (`loadtest/bench_speaker.py`)

{today()}, {machine()}.

```
{cmd}
```

One `loa speaker` (`python -m clients.speaker.main`: no sound card, so the null sink; no
WAV, HTTP or MQTT) behind a real streamer and relay, and Snapcast's `snapclient` 0.26
(`--player file:filename=null`) behind `snapserver` reading a pipe (48 kHz, codec
`{args.codec}`, stereo as snapserver's Opus requires: the same tone on both sides), side by
side in the same {args.window_s:g} s windows after {args.warmup_s:g} s of warm-up, with a fresh
stack for each packet time (the streamer's `ptime_ms`, snapserver's `chunk_ms`).
**playing**: a 1 kHz tone on the speaker's channel and in snapserver's pipe; **idle**: nothing
on air (a quiet channel: the streamer sends its heartbeat, a sender report every 500 ms, and
the speaker beats every 100 ms) and silence in the pipe (snapserver encodes and sends it like
any audio). CPU is utime + stime from
`/proc/PID/stat` over the window, in % of one core; RSS is VmRSS at its end. The ratio is
Loa's CPU over snapclient's in the same window. "event-loop floor": a Python process on the
same machine whose asyncio datagram endpoint, on the speaker's event loop
({loop}), receives a datagram every packet time and does nothing with it, the least any
such speaker can cost.
{baseline_text}
{table(("packet time", "phase", "loa speaker CPU", "snapclient CPU", "ratio",
        "event-loop floor CPU", "loa speaker RSS", "snapclient RSS", *baseline_columns),
       rows)}

Goal (issue 13, at {next(iter(results))} ms): {GOALS}: {verdict}.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--window-s", type=float, default=60.0)
    ap.add_argument("--warmup-s", type=float, default=10.0)
    ap.add_argument("--codec", default="opus", help="snapserver's codec (opus, flac, pcm)")
    ap.add_argument("--ptime-ms", default="20",
                    help="packet times to measure, comma-separated (20, 40, 60); the goal is "
                         "judged on the first")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a Loa source tree (e.g. a git worktree of an older commit) whose "
                         "speaker runs beside this one, for a before/after in one window")
    ap.add_argument("--write", action="store_true", help="write docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    ptimes = [int(x) for x in args.ptime_ms.split(",")]
    if any(p not in (20, 40, 60) for p in ptimes):
        ap.error("--ptime-ms: 20, 40 or 60")
    res = {p: asyncio.run(measure(args.window_s, args.warmup_s, args.codec, p, args.baseline))
           for p in ptimes}
    cmd = ".venv/bin/python -m loadtest.bench_speaker " + " ".join(
        argv if argv is not None else sys.argv[1:])
    text = render(res, args, cmd.strip())
    print(text)
    if args.write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
