"""Streamer memory over a long run: RSS growth while broadcasts come and go for an hour.

A streamer that grows a little with every broadcast runs out of memory some weeks into storm
season, at the worst moment. This soak runs the real stack (``loadtest/stack.py``: a
redis-server, the streamer as a ``loa streamer`` child so that its memory is its own, one
relay, ``--speakers`` simulated speakers subscribed through it) and, for ``--minutes``, keeps
the operators' day going in a loop: a tone bulletin to one district, a Vietnamese TTS
bulletin to another commune, an emergency to the whole province cancelled after a few
seconds, a bulletin stopped half-way. Every ``SAMPLE_S`` it reads the streamer's and the
relay's RSS from ``/proc``.

The figure is the growth of the streamer's RSS from the end of the warm-up (``--warmup-min``:
imports, first TTS voice, caches and allocator arenas settle) to the end, as a share of the
warm-up value, and the least-squares slope over the same span in MiB per hour; the relay's is
shown beside it as the baseline of a process whose state does not change with broadcasts.
Goal: growth under 5 %. The stack runs on 127.0.0.1 and is stopped at the end.

    python -m loadtest.bench_soak [--minutes 60] [--warmup-min 5] [--speakers 300] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._report import machine, rss_bytes, table, today, write_section
from .stack import Stack

SAMPLE_S = 10.0
CYCLE_S = 30.0  # one round of the operators' day
GOAL = 0.05
DISTRICT, COMMUNE, PROVINCE = "brvt.vung-tau", "brvt.ba-ria.phuoc-hung", "brvt"
TTS_TEXT = ("Thông báo của Ủy ban nhân dân xã: lịch tiêm chủng mở rộng ngày 25 tháng 11 "
            "tại trạm y tế, từ 7 giờ 30 đến 11 giờ.")


@dataclass
class Samples:
    t: list[float] = field(default_factory=list)
    streamer: list[int] = field(default_factory=list)
    relay: list[int] = field(default_factory=list)

    def after(self, t0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = np.array(self.t)
        keep = t >= t0
        return t[keep], np.array(self.streamer)[keep], np.array(self.relay)[keep]


@dataclass
class Result:
    samples: Samples
    warmup_s: float
    cycles: int
    broadcasts: int
    speakers: int


async def operators_day(stack: Stack, k: int) -> int:
    """One cycle of broadcasts; returns how many were started."""
    started = 0
    await stack.api("POST", "/api/v1/broadcasts", {
        "zones": [DISTRICT], "source": {"kind": "tone", "hz": 440 + 10 * (k % 20), "seconds": 8},
        "label": f"soak tone {k}"})
    started += 1
    await stack.api("POST", "/api/v1/broadcasts", {
        "zones": [COMMUNE], "source": {"kind": "tts", "text": f"{TTS_TEXT} Lần {k}."},
        "label": f"soak tts {k}"})
    started += 1
    await asyncio.sleep(CYCLE_S / 3)
    await stop_after(stack, "/api/v1/emergency", 4.0, {
        "zones": [PROVINCE], "source": {"kind": "tone", "hz": 1000, "seconds": 30},
        "label": f"soak emergency {k}"})
    started += 1
    await stop_after(stack, "/api/v1/broadcasts", 3.0, {
        "zones": [DISTRICT], "source": {"kind": "tone", "hz": 660, "seconds": 60},
        "label": f"soak stopped {k}"})
    started += 1
    return started


async def stop_after(stack: Stack, path: str, seconds: float, body: dict[str, object]) -> None:
    """Air ``body`` through ``path`` and stop it (DELETE) ``seconds`` later, long before its
    end: the cancelled emergency and the bulletin an operator cuts short."""
    rec = await stack.api("POST", path, body)
    await asyncio.sleep(seconds)
    await stack.api("DELETE", f"{path}/{rec['id']}")


async def bench(minutes: float, warmup_min: float, speakers: int) -> Result:
    samples = Samples()
    with tempfile.TemporaryDirectory(prefix="loa-soak-") as tmp, \
            open(Path(tmp) / "stack.log", "wb") as log:
        async with AsyncExitStack() as exits:
            stack = Stack(exits, Path(tmp), log)
            await stack.start_streamer_process(20)
            # a private stack: no quiet hours, so an hour's soak started in the evening does
            # not have its bulletins refused at 22:00
            await stack.api("PATCH", f"/api/v1/zones/{PROVINCE}", {"quiet_hours": ""})
            await stack.start_relay(0, 20)
            await stack.start_speakers(speakers)
            streamer_pid, relay_pid = stack.pids["streamer"], stack.pids["relay-0"]
            t0 = time.monotonic()
            end = t0 + minutes * 60

            async def sample() -> None:
                while True:
                    samples.t.append(time.monotonic() - t0)
                    samples.streamer.append(rss_bytes(streamer_pid))
                    samples.relay.append(rss_bytes(relay_pid))
                    await asyncio.sleep(SAMPLE_S)

            sampler = asyncio.create_task(sample())
            cycles = broadcasts = 0
            try:
                while time.monotonic() < end:
                    cycle_end = time.monotonic() + CYCLE_S
                    broadcasts += await operators_day(stack, cycles)
                    cycles += 1
                    if stack.dead():
                        raise RuntimeError(f"{stack.dead()} exited during the soak")
                    await asyncio.sleep(max(0.0, cycle_end - time.monotonic()))
            finally:
                sampler.cancel()
    return Result(samples, warmup_min * 60, cycles, broadcasts, speakers)


def growth(t: np.ndarray, rss: np.ndarray) -> tuple[float, float]:
    """(growth from the first to the last sample as a share of the first — both as the median
    of a minute around them, so that one allocation burst does not decide —, slope MiB/h)."""
    edge = max(1, int(60 / SAMPLE_S))
    first, last = float(np.median(rss[:edge])), float(np.median(rss[-edge:]))
    slope = float(np.polyfit(t, rss, 1)[0]) * 3600 / 2**20 if len(t) > 1 else 0.0
    return (last - first) / first, slope


def render(res: Result, minutes: float, cmd: str) -> str:
    t, streamer, relay = res.samples.after(res.warmup_s)
    rows = []
    verdict = ""
    for name, rss in (("streamer", streamer), ("relay (baseline)", relay)):
        share, slope = growth(t, rss)
        rows.append([name, f"{rss[0] / 2**20:.1f}", f"{rss.max() / 2**20:.1f}",
                     f"{rss[-1] / 2**20:.1f}", f"{share:+.2%}", f"{slope:+.2f}"])
        if name == "streamer":
            verdict = (f"{share:+.2%} ({'meets' if share < GOAL else 'misses'} the goal of "
                       f"< {GOAL:.0%})")
    return f"""## Streamer memory soak (`loadtest/bench_soak.py`)

{today()}, {machine()}; {minutes:g} minutes, {res.speakers} simulated speakers through one
relay, {res.cycles} cycles of {CYCLE_S:g} s ({res.broadcasts} broadcasts: a tone to a district,
a TTS bulletin to a commune, a province-wide emergency cancelled after 4 s, a bulletin stopped
after 3 s), RSS sampled every {SAMPLE_S:g} s after a {res.warmup_s / 60:g}-minute warm-up.

```
{cmd}
```

**Streamer RSS growth after the warm-up: {verdict}.**

{table(["process", "RSS after warm-up (MiB)", "max (MiB)", "at the end (MiB)",
        "growth (median of first vs last minute)", "least-squares slope (MiB/h)"], rows)}

How to read it: growth is what an hour of ordinary operation adds and keeps; the slope says
whether it keeps adding at the end (a leak) or levelled off (caches filling up to their bound).
The relay's state does not change with broadcasts, so its line shows the allocator's own
drift on this machine."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--warmup-min", type=float, default=5.0)
    ap.add_argument("--speakers", type=int, default=300)
    ap.add_argument("--write", action="store_true", help="rewrite its docs/BENCHMARKS.md section")
    args = ap.parse_args(argv)
    if not 0 < args.warmup_min < args.minutes <= 24 * 60 or not 1 <= args.speakers <= 5000:
        ap.error("need 0 < --warmup-min < --minutes <= 1440 and 1 <= --speakers <= 5000")
    cmd = ".venv/bin/python -m loadtest.bench_soak " + " ".join(
        sys.argv[1:] if argv is None else argv)
    res = asyncio.run(bench(args.minutes, args.warmup_min, args.speakers))
    text = render(res, args.minutes, cmd.strip())
    print(text)
    if args.write:
        write_section("bench_soak", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
