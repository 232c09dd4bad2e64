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
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

from ._report import machine, table, today, write_section
from .flood import Abuse, abuse
from .lag import fmt_ms, quantiles
from .stack import Stack


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
                a = await stack.snapshot()
                await asyncio.sleep(flood_s)
                b = await stack.snapshot()
                seen = await abuse(stack.http_url, token, spec)
                c = await stack.snapshot()
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
             fmt_ms(r["p50"]), fmt_ms(r["p99"]), fmt_ms(r["max"]),  # type: ignore[arg-type]
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
