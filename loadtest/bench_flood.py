"""Frame lag under control-side abuse: the streamer's p50/p99/max, with and without the flood.

The real path: a real redis-server and the streamer as a ``loa streamer`` child (its own
process, as in production, so the flood's client is not on its GIL), with a distinct tone in
every district (several programs mixed and encoded per frame). Each of ``--rounds`` rounds
has two phases of equal length, so both see the same neighbours on this shared machine:

* **quiet**: nothing but playout for as long as the last flood took (the first round: 20 s);
* **flood**: ``loadtest/flood.py``: ``--logins`` wrong-password sign-ins ``--concurrency`` at a
  time (the throttle opened wide, so each is a real argon2 check), 10 TTS previews and 3 clip
  uploads of 60 s, all at once.

The figures come from the streamer's own ``loa_frame_lag_histogram_seconds`` (how late each
frame was handed to the socket after its deadline, its tick included), read before and after
each phase, and its skipped-frame and deadline-miss counters. A quantile is the upper bound of
the histogram bucket it falls in (buckets from 0.25 ms to 1 s), so "≤ 2 ms" means between the
next lower bound and 2 ms. Read flood against quiet: the machine's other tenants move both.

    python -m loadtest.bench_flood [--rounds 2] [--logins 200] [--concurrency 16] [--tts 10]
        [--uploads 3] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

from ._report import machine, process_cpu_s, table, today, write_section
from .flood import Abuse, abuse
from .stack import Stack

LAG = "loa_frame_lag_histogram_seconds"
_BUCKET = re.compile(rf'^{LAG}_bucket{{le="([^"]+)"}} (\S+)$', re.M)


def _counter(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


class Snapshot:
    """The streamer's lag histogram (cumulative bucket counts) and counters at one moment."""

    def __init__(self, text: str, cpu_s: float) -> None:
        self.buckets = [(float(le), float(n)) for le, n in _BUCKET.findall(text)]
        self.skipped = _counter(text, "loa_frames_skipped_total")
        self.misses = _counter(text, "loa_frame_deadline_misses_total")
        self.cpu_s = cpu_s
        self.at = time.monotonic()


def quantiles(a: Snapshot, b: Snapshot) -> dict[str, float]:
    """Frames between two snapshots, and the bucket bounds of their p50, p99 and max."""
    counts = [(le, nb - na) for (le, na), (_, nb) in zip(a.buckets, b.buckets, strict=True)]
    total = counts[-1][1]  # le="+Inf"
    out = {"frames": total}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        need = q * total
        out[name] = next((le for le, n in counts if n >= need), float("inf"))
    return out


def _ms(s: float) -> str:
    return "> 1 s" if s == float("inf") else f"≤ {s * 1000:g} ms"


async def snapshot(stack: Stack) -> Snapshot:
    async with stack.http.get(stack.http_url + "/metrics") as r:
        text = await r.text()
    return Snapshot(text, process_cpu_s(stack.pids["streamer"]))


async def run(args: argparse.Namespace) -> list[dict[str, object]]:
    # Every sign-in of the flood must reach the password check: no throttle for this run.
    os.environ["LOA_STREAMER_LOGIN_FAILURES_PER_ADDRESS"] = "1000000000"
    os.environ["LOA_STREAMER_LOGIN_FAILURES_PER_USER"] = "1000000000"
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="loa-bench-flood-") as tmp:
        async with AsyncExitStack() as exits:
            log = exits.enter_context(open(Path(tmp) / "bench.log", "wb"))  # noqa: SIM115
            stack = Stack(exits, Path(tmp), log)
            await stack.start_streamer_process(ptime_ms=20)
            zones = await stack.api("GET", "/api/v1/zones")
            districts = [z["id"] for root in zones["zones"] for z in root["children"]]
            for i, zone in enumerate(districts):
                await stack.api("POST", "/api/v1/broadcasts", {
                    "zones": [zone], "priority": "priority", "override_quiet_hours": True,
                    "source": {"kind": "tone", "hz": 300 + 100 * i, "seconds": 3600}})
            token = stack.auth["Authorization"].split()[1]
            spec = Abuse(logins=args.logins, login_concurrency=args.concurrency,
                         tts_previews=args.tts, uploads=args.uploads)
            flood_s = 20.0
            await asyncio.sleep(2.0)
            for k in range(args.rounds):
                a = await snapshot(stack)
                await asyncio.sleep(flood_s)
                b = await snapshot(stack)
                seen = await abuse(stack.http_url, token, spec)
                c = await snapshot(stack)
                flood_s = c.at - b.at
                for phase, x, y in (("quiet", a, b), ("flood", b, c)):
                    rows.append({"round": k + 1, "phase": phase, "seconds": y.at - x.at,
                                 **quantiles(x, y), "skipped": y.skipped - x.skipped,
                                 "misses": y.misses - x.misses,
                                 "cpu": (y.cpu_s - x.cpu_s) / (y.at - x.at),
                                 "seen": {k2: dict(v) for k2, v in seen.items()}
                                 if phase == "flood" else {}})
                print(f"round {k + 1}: flood {flood_s:.1f} s, {seen}", file=sys.stderr)
            if stack.dead():
                raise RuntimeError(f"children died: {stack.dead()}")
    return rows


def report(args: argparse.Namespace, rows: list[dict[str, object]]) -> str:
    header = ["round", "phase", "seconds", "frames", "lag p50", "lag p99", "lag max",
              "skipped", "misses > 10 ms", "streamer CPU"]
    body = [[r["round"], r["phase"], f"{r['seconds']:.1f}", f"{r['frames']:.0f}",
             _ms(r["p50"]), _ms(r["p99"]), _ms(r["max"]),  # type: ignore[arg-type]
             f"{r['skipped']:.0f}", f"{r['misses']:.0f}", f"{r['cpu']:.0%}"] for r in rows]
    seen = next(r["seen"] for r in rows if r["phase"] == "flood")
    return "\n".join([
        "## Frame lag under a control-side flood (`loadtest/bench_flood.py`)",
        "",
        f"Measured {today()} on {machine()}, with:",
        "",
        f"    python -m loadtest.bench_flood --rounds {args.rounds} --logins {args.logins} "
        f"--concurrency {args.concurrency} --tts {args.tts} --uploads {args.uploads} --write",
        "",
        "The streamer is a `loa streamer` child with a distinct tone in every district. Each "
        "round: a quiet phase, then the flood (wrong-password sign-ins with the throttle "
        "opened wide, so each is an argon2 check; 10 TTS previews; 3 uploads of 60 s WAV), "
        "the two of equal length. Lag: how late each frame reached the socket after its "
        "deadline (`loa_frame_lag_histogram_seconds`), as the bound of the histogram "
        "bucket its quantile falls in. HTTP statuses of the first flood: "
        f"`{seen}`.",
        "",
        table(header, body),
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_flood", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--logins", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--tts", type=int, default=10, help="TTS previews in each flood")
    p.add_argument("--uploads", type=int, default=3, help="60 s clip uploads in each flood")
    p.add_argument("--write", action="store_true", help="write docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    rows = asyncio.run(run(args))
    text = report(args, rows)
    print(text)
    if args.write:
        write_section("bench_flood", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
