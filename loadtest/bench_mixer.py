"""Mixer CPU cost per frame, as a ratio to raw libopus encoding measured in the same run.

Three measurements, all CPU time (``time.process_time``) of this process, each repeated
``--rounds`` times in interleaved rounds, median reported:

* **raw encode** (the baseline): opuslib encoding ``--frames`` pre-generated 20 ms frames of a
  tone, with the mixer's default ``OpusSettings`` (``libopus_encoder``). Nothing the mixer
  does can be cheaper than this.
* **P distinct programs** (P = 1, 10, 50): a ``Mixer`` with P channels, each playing its own
  endless tone at a different frequency, so every frame is P mixes + P limiters + P encodes +
  P RTP headers. "Overhead" is the mixer's CPU per frame per program ÷ the raw encode's CPU
  per frame: 1.0 would mean the mixer costs nothing beyond libopus. "Real-time factor" is
  program-seconds of audio produced per CPU second: at 20 ms frames a core can carry about
  that many programs.
* **1,000 leaf channels under one broadcast** vs the same broadcast on 1 channel: the cost of
  fan-out inside the mixer (one encode, then one block of 1,000 packets and one
  ``publish_block`` call). The goal is a
  ratio ≤ 2; ``encodes per frame`` is read from ``mixer.metrics`` and must be 1.

Ratios are taken within each round (paired) and their median reported, because the machine is
a shared 2-core VM: absolute times move with the neighbours' load, ratios much less. The sink
drops the packets, so socket costs are not included (see ``bench_relay``).

    python -m loadtest.bench_mixer [--frames N] [--rounds R] [--write]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from common.opus import RATE_HZ, OpusSettings, libopus_encoder
from streamer.mixer.clock import FrameClock
from streamer.mixer.guard import DeadlineGuard
from streamer.mixer.mixer import Mixer
from streamer.mixer.program import Item
from streamer.mixer.sources.tone import Tone
from wire.priority import Priority

from ._report import machine, median, table, today, write_section

PTIME_MS = 20
FRAME = RATE_HZ * PTIME_MS // 1000
PROGRAM_COUNTS = (1, 10, 50)
LEAF_CHANNELS = 1000
FAN_OUT_GOAL = 2.0
OVERHEAD_GOAL = 1.2


def _cpu(run: Callable[[], None]) -> float:
    t0 = time.process_time()
    run()
    return time.process_time() - t0


def raw_encode(frames: int) -> Callable[[], None]:
    """The baseline: libopus alone on pre-generated float frames, OpusEncoder's settings."""
    enc = libopus_encoder(OpusSettings())
    tone = Tone(440, None)
    pcm = [tone.read(k * FRAME, FRAME).tobytes() for k in range(frames)]

    def run() -> None:
        for frame in pcm:
            enc.encode_float(frame, FRAME)

    run()  # warm up: first frames of an encoder cost more
    return run


class Discard:
    """A packet sink that drops everything: socket costs are ``bench_relay``'s."""

    def publish_block(self, channels: Sequence[str], block: np.ndarray) -> None:
        pass


def mixer_run(channels: list[str], groups: list[list[str]], frames: int) -> tuple[
        Callable[[], None], Mixer]:
    """A mixer over ``channels`` with one endless tone per group of channels."""
    clock = FrameClock(PTIME_MS, start_mono=0.0, start_wall=1_800_000_000.0)
    # One core, at the encoder's own settings: what a core costs, not what a host does with
    # its cores (``bench_parallel``) or over capacity (the deadline guard, kept out).
    mixer = Mixer(channels, clock, Discard(), wall=time.time, workers=1,
                  guard=DeadlineGuard(PTIME_MS / 1000, degrade_at=math.inf))
    for i, group in enumerate(groups):
        mixer.start(Item(i + 1, Priority.NORMAL, Tone(200.0 + 37.0 * i, None), i + 1), group)
    mixer.tick(0)  # forks settle, encoders are created
    next_k = 1

    def run() -> None:
        nonlocal next_k
        for k in range(next_k, next_k + frames):
            mixer.tick(k)
        next_k += frames

    run()  # warm up
    return run, mixer


@dataclass
class Figures:
    raw_us: float  # CPU µs per frame, libopus alone
    prog_us: dict[int, float]  # CPU µs per frame per program, by number of programs
    overhead: dict[int, float]  # prog_us / raw_us, paired per round
    one_us: float  # CPU µs per frame, 1 channel
    wide_us: float  # CPU µs per frame, LEAF_CHANNELS channels
    fan_out: float  # wide_us / one_us, paired per round
    encodes_per_frame: float


def measure(frames: int, rounds: int) -> Figures:
    raw = raw_encode(frames)
    programs = {}
    for p in PROGRAM_COUNTS:
        chans = [f"bench.p{i}" for i in range(p)]
        programs[p] = mixer_run(chans, [[c] for c in chans], frames)
    leaves = [f"tinh.h{i // 100}.x{i}" for i in range(LEAF_CHANNELS)]
    wide, wide_mixer = mixer_run(leaves, [leaves], frames)
    one, _ = mixer_run(["tinh.h0.x0"], [["tinh.h0.x0"]], frames)
    for p, (_, m) in programs.items():
        assert len(m.programs) == p, f"{len(m.programs)} programs, expected {p}"

    raw_s: list[float] = []
    prog_s: dict[int, list[float]] = {p: [] for p in PROGRAM_COUNTS}
    overhead: dict[int, list[float]] = {p: [] for p in PROGRAM_COUNTS}
    wide_s, one_s, fan_out = [], [], []
    for _ in range(rounds):
        r = _cpu(raw)
        raw_s.append(r)
        for p, (run, _) in programs.items():
            s = _cpu(run)
            prog_s[p].append(s)
            overhead[p].append(s / p / r)
        w, o = _cpu(wide), _cpu(one)
        wide_s.append(w)
        one_s.append(o)
        fan_out.append(w / o)
    return Figures(
        raw_us=median(raw_s) / frames * 1e6,
        prog_us={p: median(s) / frames / p * 1e6 for p, s in prog_s.items()},
        overhead={p: median(v) for p, v in overhead.items()},
        one_us=median(one_s) / frames * 1e6,
        wide_us=median(wide_s) / frames * 1e6,
        fan_out=median(fan_out),
        encodes_per_frame=wide_mixer.metrics.encodes_per_frame._value.get(),
    )


def render(res: Figures, frames: int, rounds: int, cmd: str) -> str:
    raw_us, prog_us, overhead = res.raw_us, res.prog_us, res.overhead
    frame_us = PTIME_MS * 1000
    rows: list[list[object]] = [["raw libopus encode (baseline)", f"{raw_us:.0f}",
                                 f"{frame_us / raw_us:.0f}", "1.00"]]
    for p in PROGRAM_COUNTS:
        rows.append([f"mixer, {p} distinct program{'s' if p > 1 else ''}", f"{prog_us[p]:.0f}",
                     f"{frame_us / prog_us[p]:.0f}", f"{overhead[p]:.2f}"])
    fan_out = res.fan_out
    verdict = "meets" if fan_out <= FAN_OUT_GOAL else "misses"
    worst = max(overhead.values())
    overhead_verdict = ("meets it" if worst <= OVERHEAD_GOAL else
                        f"misses it by {(worst - OVERHEAD_GOAL) * 100:.0f} points")
    wide = table(
        ["case", "CPU µs per frame", "ratio"],
        [["1 channel, 1 broadcast", f"{res.one_us:.0f}", "1.00"],
         [f"{LEAF_CHANNELS} leaf channels, 1 province-wide broadcast", f"{res.wide_us:.0f}",
          f"{fan_out:.2f}"]])
    # from the paired ratio, as the verdict: medians of separate rounds can cross
    per_leaf_us = (fan_out - 1) * res.one_us / (LEAF_CHANNELS - 1)
    return f"""## Mixer (`loadtest/bench_mixer.py`)

{today()}, {machine()}; {frames} frames of 20 ms per measurement, median of {rounds} rounds.

```
{cmd}
```

CPU per 20 ms frame per program, against libopus alone on the same number of frames:

{table(["case", "CPU µs per frame per program", "real-time factor per program",
        "overhead vs raw encode"], rows)}

Overhead goal ≤ {OVERHEAD_GOAL:.2f}× raw encode: the worst case is {worst:.2f}×, which
{overhead_verdict}. The cases differ by this machine's noise (the same code, run twice in a
row, moves them by ±0.05).

Fan-out inside the mixer, one broadcast to every leaf channel of a province
(encodes per frame: {res.encodes_per_frame:.0f}; goal ≤ {FAN_OUT_GOAL:.0f}×, {verdict} it):

{wide}

That is about {per_leaf_us:.2f} µs of CPU per leaf channel per frame.

What limits it: per program, the Opus encode plus the numpy work of rendering a source and
the limiter, all on one core; the real-time factor is roughly how many distinct programs one
core can carry. Per leaf channel there is no Python loop any more (there was one, and it cost
2.32× here): a program's channels are rows of the mixer's RTP state arrays, and its packets
one block of (channels × packet length) bytes, the packet (sequence number included: every
channel sends one packet per frame, so they share it) copied into every row, then the
timestamp and SSRC columns written by numpy, a sender report every 50 frames the same way,
all handed to the fan-out in one `publish_block` call (a no-op here). A province-wide
broadcast pays those few passes over 1,000 rows of about 110 bytes; each distinct program
pays the same handful of numpy calls on its own rows, about 10 µs or some 2 % of its encode,
inside the many-program figures above.

Where the rest of the overhead goes (`cProfile` of 2,000 frames of one program, and
`py-spy record` of the whole bench): the encode is 67 % of the mixer's samples; the remaining
~100 µs per program per frame is a dozen numpy calls of 1-10 µs each, none dominant: the
source's samples (an endless tone, `Tone.read`, about 10 µs; a clip
would be a copy), mixing into the program's buffer, the limiter's two reductions, the float
→ bytes copy libopus needs, the packet block, and the encode-time histogram. Going lower
means fewer, larger numpy calls per frame (rendering several frames ahead, or batching
programs' limiters), which would cost latency or complexity the emergency path does not
need."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=250, help="20 ms frames per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="repeats; the median is reported")
    ap.add_argument("--write", action="store_true", help="rewrite its docs/BENCHMARKS.md section")
    args = ap.parse_args(argv)
    if args.frames < 1 or args.rounds < 1:
        ap.error("--frames and --rounds must be positive")
    cmd = ".venv/bin/python -m loadtest.bench_mixer " + " ".join(
        sys.argv[1:] if argv is None else argv)
    res = measure(args.frames, args.rounds)
    text = render(res, args.frames, args.rounds, cmd.strip())
    print(text)
    if args.write:
        write_section("bench_mixer", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
