"""The mixer on one core and on every core, side by side: distinct speech programmes per frame.

``--programmes`` channels (default 80: the 82-commune morning peak) each air a bulletin of their
own: Vietnamese speech from ``espeak-ng``, a few different texts at different offsets, so every
channel is a distinct programme and every frame is that many renders, limiters and Opus
encodes. Three mixers over the same input, in interleaved rounds (median reported):

* **serial**: ``workers=1``, everything on the ticking thread (the mixer before issue 15);
* **parallel**: ``workers`` = this machine's cores (the default);
* **parallel, degraded**: the same, with the deadline guard forced on: every programme at the
  cheap setting, what a host over capacity falls back to;
* **raw libopus on 1 and on every core** (the baseline): the same speech, pre-rendered, through
  one ``OpusEncoder`` per programme, on one thread and then split over one thread per core:
  how much parallelism the machine gives at that moment (its other tenants take some). The
  mixer's speedup is read against it;
* **serial, libopus stubbed**: the serial mixer with ``OpusEncoder.encode`` reduced to the
  float → bytes copy it makes before calling libopus: what the mixer does while holding the
  GIL, which no number of cores makes faster (``docs/playout.md``, "Every core").

Each mixer ticks its frames back to back, unpaced, on a thread at playout's priority and with
playout's GIL switch interval (``streamer/playout.py``), as in the streamer. Wall time per tick
is what decides whether frames leave on time; "programmes per frame" is how many distinct
programmes fit in one 20 ms frame at that rate. The ratio serial / parallel wall time is
taken within each round (paired). The serial and parallel mixers must send the same bytes,
which is checked. The deadline guard is off in the first two (it would change the settings).

    python -m loadtest.bench_parallel [--programmes 80] [--frames 100] [--rounds 5] [--write]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np

from common.opus import OpusEncoder
from streamer.mixer.clock import FrameClock
from streamer.mixer.guard import DeadlineGuard
from streamer.mixer.mixer import Mixer
from streamer.mixer.program import Item
from streamer.mixer.sources.clip import Clip
from streamer.mixer.sources.tts import EspeakProvider
from streamer.playout import PLAYOUT_NICE, SWITCH_INTERVAL_S, set_thread_nice
from wire.priority import Priority

from ._report import machine, median, table, today, write_section

PTIME_MS = 20
GOAL = 1.8
BULLETINS = (
    "Thông báo của Ủy ban nhân dân xã về lịch tiêm chủng cho trẻ em dưới năm tuổi vào sáng "
    "thứ hai tuần sau tại trạm y tế xã, đề nghị các gia đình đưa trẻ đến đúng giờ.",
    "Bản tin nông nghiệp: bà con lưu ý phòng trừ sâu cuốn lá nhỏ trên lúa hè thu, phun thuốc "
    "vào sáng sớm hoặc chiều mát, không phun khi trời sắp mưa.",
    "Từ ngày mười lăm, đường liên thôn số ba tạm ngừng lưu thông để sửa chữa mặt đường, người "
    "dân đi đường vòng qua chợ xã.",
    "Hội Liên hiệp Phụ nữ xã tổ chức lớp tập huấn kỹ năng sơ cứu đuối nước cho trẻ em vào chiều "
    "thứ bảy tại nhà văn hóa thôn hai.",
)


class Discard:
    def publish_block(self, channels: Sequence[str], block: np.ndarray) -> None:
        pass


class Keep(list[bytes]):
    """Every datagram of the first frames, to check that two mixers sent the same."""

    def publish_block(self, channels: Sequence[str], block: np.ndarray) -> None:
        self.extend(map(bytes, block))


class Degraded(DeadlineGuard):
    """A guard that says the host is over capacity, every frame."""

    def __init__(self) -> None:
        super().__init__(PTIME_MS / 1000)
        self.degraded = True

    def record(self, tick_s: float, **kw: float) -> bool:  # type: ignore[override]
        return True


def speech() -> list[np.ndarray]:
    voice = EspeakProvider()
    return [(c := voice.synthesize(text)).read(0, c.length or 0) for text in BULLETINS]


def mixer(bulletins: list[np.ndarray], programmes: int, workers: int, guard: DeadlineGuard,
          sink: Discard | Keep) -> Mixer:
    channels = [f"xa{i:03d}" for i in range(programmes)]
    clock = FrameClock(PTIME_MS, start_mono=0.0, start_wall=1_800_000_000.0)
    m = Mixer(channels, clock, sink, wall=time.time, workers=workers, guard=guard)
    for i, c in enumerate(channels):
        pcm = bulletins[i % len(bulletins)]
        # a different place in the bulletin for each commune; looped, so it never ends
        m.start(Item(i + 1, Priority.NORMAL, Clip(np.tile(np.roll(pcm, i * 4801), 20)), i + 1),
                [c])
    return m


def _no_libopus(self: OpusEncoder, pcm: np.ndarray) -> bytes:
    return pcm.tobytes()[:80]


class Run:
    def __init__(self, m: Mixer, stub: bool = False) -> None:
        self.m = m
        self.k = 0
        self.stub = stub

    def ticks(self, frames: int) -> tuple[float, float]:
        """Wall and CPU seconds of ``frames`` ticks."""
        encode = OpusEncoder.encode
        if self.stub:
            OpusEncoder.encode = _no_libopus  # type: ignore[method-assign]
        try:
            w, c = time.perf_counter(), time.process_time()
            for k in range(self.k, self.k + frames):
                self.m.tick(k)
            self.k += frames
            return time.perf_counter() - w, time.process_time() - c
        finally:
            OpusEncoder.encode = encode  # type: ignore[method-assign]


class Raw:
    """The baseline: libopus alone, one encoder per programme, on ``threads`` threads."""

    def __init__(self, bulletins: list[np.ndarray], programmes: int, frames: int) -> None:
        n = PTIME_MS * 48
        self.encoders = [OpusEncoder(n) for _ in range(programmes)]
        self.pcm = [[bulletins[i % len(bulletins)][k * n:(k + 1) * n] for k in range(frames)]
                    for i in range(programmes)]

    def _encode(self, programmes: range) -> None:
        for k in range(len(self.pcm[0])):
            for i in programmes:
                self.encoders[i].encode(self.pcm[i][k])

    def run(self, threads: int) -> float:
        """Wall seconds to encode every frame of every programme."""
        shares = [range(t, len(self.encoders), threads) for t in range(threads)]
        workers = [threading.Thread(target=self._encode, args=(share,)) for share in shares]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return time.perf_counter() - t0


def same_bytes(bulletins: list[np.ndarray], programmes: int, workers: int) -> bool:
    never = DeadlineGuard(PTIME_MS / 1000, degrade_at=math.inf)
    sent = []
    for w in (1, workers):
        keep = Keep()
        m = mixer(bulletins, programmes, w, never, keep)
        for k in range(10):
            m.tick(k)
        m.close()
        sent.append(keep)
    return sent[0] == sent[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programmes", type=int, default=80)
    ap.add_argument("--frames", type=int, default=100, help="ticks per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="repeats; the median is reported")
    ap.add_argument("--write", action="store_true", help="rewrite its docs/BENCHMARKS.md section")
    args = ap.parse_args(argv)
    if min(args.programmes, args.frames, args.rounds) < 1:
        ap.error("--programmes, --frames and --rounds must be positive")
    cmd = ".venv/bin/python -m loadtest.bench_parallel " + " ".join(
        sys.argv[1:] if argv is None else argv)
    start_machine = machine()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    niced = set_thread_nice(PLAYOUT_NICE)  # before the mixers: their encoder threads inherit it
    cores = os.cpu_count() or 1
    bulletins = speech()
    identical = same_bytes(bulletins, args.programmes, cores)
    never = DeadlineGuard(PTIME_MS / 1000, degrade_at=math.inf)
    runs = {
        "serial": Run(mixer(bulletins, args.programmes, 1, never, Discard())),
        "parallel": Run(mixer(bulletins, args.programmes, cores, never, Discard())),
        "parallel, degraded": Run(mixer(bulletins, args.programmes, cores, Degraded(),
                                        Discard())),
        "serial, libopus stubbed": Run(mixer(bulletins, args.programmes, 1, never, Discard()),
                                       stub=True),
    }
    raw = Raw(bulletins, args.programmes, args.frames)
    raw.run(cores)  # warm up
    for run in runs.values():
        run.ticks(10)  # warm up: first frames of an encoder cost more
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    speedup: list[float] = []
    raw_speedup: list[float] = []
    raw_wall: list[float] = []
    for _ in range(args.rounds):
        one = raw.run(1)
        raw_wall.append(one / args.frames)
        raw_speedup.append(one / raw.run(cores))
        for name, run in runs.items():
            w, c = run.ticks(args.frames)
            wall[name].append(w / args.frames)
            cpu[name].append(c / args.frames)
        speedup.append(wall["serial"][-1] / wall["parallel"][-1])
    for run in runs.values():
        run.m.close()
    p, frame_s = args.programmes, PTIME_MS / 1000
    rows = [["raw libopus, 1 thread (baseline)", 1, f"{median(raw_wall) * 1e3:.1f}", "",
             f"{median(raw_wall) / p * 1e6:.0f}", f"{p * frame_s / median(raw_wall):.0f}"]]
    for name in runs:
        w, c = median(wall[name]), median(cpu[name])
        rows.append([name, runs[name].m.workers, f"{w * 1e3:.1f}", f"{c * 1e3:.1f}",
                     f"{c / p * 1e6:.0f}", f"{p * frame_s / w:.0f}"])
    ratio = median(speedup)
    machine_ratio = median(raw_speedup)
    held_us = median(cpu["serial, libopus stubbed"]) / p * 1e6
    full_us = median(cpu["serial"]) / p * 1e6
    verdict = "meets" if ratio >= GOAL else "misses"
    text = f"""## Mixer on every core (`loadtest/bench_parallel.py`)

{today()}, {start_machine}; {p} distinct programmes of Vietnamese speech (espeak-ng, 32 kb/s),
{args.frames} ticks of {PTIME_MS} ms per measurement, median of {args.rounds} rounds; ticking
thread {"at playout's priority (nice " + str(PLAYOUT_NICE) + ")" if niced else
"at the default priority (raising it was refused)"}.

```
{cmd.strip()}
```

{table(["mixer", "encoding threads", "wall ms per tick", "CPU ms per tick",
        "CPU µs per programme", "programmes per 20 ms frame"], rows)}

Parallel against serial, wall time per tick, paired per round: **{ratio:.2f}×** on {cores}
cores (goal ≥ {GOAL}×: {verdict} it). Raw libopus on {cores} threads against one, in the same
rounds: {machine_ratio:.2f}×, the parallelism this shared machine gave at the time; the mixer
got {ratio / machine_ratio:.0%} of it. The serial and parallel mixers sent
{"the same" if identical else "DIFFERENT"} bytes over their first 10 frames.
"Programmes per 20 ms frame" is {p} × 20 ms ÷ the wall time per tick: how many distinct
programmes this host carries with every frame produced within its 20 ms. The degraded row is
the deadline guard's fallback (normal and background at Opus complexity 1, FEC kept): the
headroom a host over capacity has before frames are late.

What stays serial: the stubbed row, **{held_us:.0f} µs per programme per frame** of the
{full_us:.0f} µs the serial mixer spends ({held_us / full_us:.0%}): rendering, the limiter,
packets, the float → bytes copy and the Python around each encode, all under the GIL. That
bounds what more cores can give (`docs/playout.md`, "Every core"): at most
{full_us / held_us:.1f}× one core's programmes, about {frame_s * 1e6 / held_us:.0f} distinct
programmes per process, however many cores.
"""
    print(text)
    if args.write:
        write_section("bench_parallel", text)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
