"""Registering a province's speakers: one bulk import against one device at a time.

The real path: a real redis-server, a real Mosquitto whose logins and ACL the streamer keeps
(``--mqtt-broker-dir``: every registration rewrites them and signals the broker), and the
streamer as a ``loa streamer`` child. In one run:

1. **one at a time, empty registry**: ``--single`` speakers through ``POST /speakers``;
2. **bulk**: ``--speakers`` more through ``POST /devices/import`` (one CSV), timed from the
   request to its answer (every password made and hashed, one transaction, one broker sync);
3. **one at a time, full registry**: ``--single`` more through ``POST /speakers``, now that
   the broker's files hold every account.

A registration one at a time rewrites every account, so its cost grows with the registry:
registering ``--speakers`` that way would take about ``--speakers`` × the mean of the two
per-device times (1 and 3, linear in between). That estimate is the baseline the bulk import
is compared with, measured on the same machine in the same minute.

    python -m loadtest.bench_import [--speakers 5000] [--single 100] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

from ._report import machine, table, today, write_section
from .stack import Stack

LEAVES_OF = "brvt.vung-tau"  # speakers spread over this district's leaf zones


async def one_at_a_time(stack: Stack, ids: list[str], leaves: list[str]) -> float:
    t = time.perf_counter()
    for i, sid in enumerate(ids):
        await stack.api("POST", "/api/v1/speakers", {"id": sid, "zone": leaves[i % len(leaves)]})
    return (time.perf_counter() - t) / len(ids)


async def run(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="loa-bench-import-") as tmp:
        async with AsyncExitStack() as exits:
            log = exits.enter_context(open(Path(tmp) / "bench.log", "wb"))  # noqa: SIM115
            stack = Stack(exits, Path(tmp), log)
            await stack.start_streamer_process(ptime_ms=20, mqtt=True)
            leaves = [c for c in await stack.channels() if c.startswith(LEAVES_OF + ".")]
            first = await one_at_a_time(stack, [f"one-a-{i}" for i in range(args.single)],
                                        leaves)
            lines = ["kind,id,zone,name,relays"] + [
                f"speaker,bulk-{i:05d},{leaves[i % len(leaves)]},Loa {i},10.0.0.1:5004"
                for i in range(args.speakers)]
            body = ("\n".join(lines) + "\n").encode()
            t = time.perf_counter()
            async with stack.http.post(
                    stack.http_url + "/api/v1/devices/import", data=body,
                    headers={**stack.auth, "Content-Type": "text/csv"}) as r:
                answer = await r.json()
                if r.status != 201:
                    raise RuntimeError(f"import: {r.status} {answer}")
            bulk = time.perf_counter() - t
            assert len(answer["credentials"]) == args.speakers
            last = await one_at_a_time(stack, [f"one-b-{i}" for i in range(args.single)],
                                       leaves)
    return {"first": first, "last": last, "bulk": bulk,
            "estimate": args.speakers * (first + last) / 2}


def report(args: argparse.Namespace, r: dict[str, float]) -> str:
    n = args.speakers
    rows = [
        [f"one at a time, registry empty ({args.single} speakers)", f"{r['first'] * 1000:.1f} ms",
         ""],
        [f"one at a time, registry of {n + args.single} ({args.single} speakers)",
         f"{r['last'] * 1000:.1f} ms", ""],
        [f"one at a time, {n} speakers (estimate: {n} × the mean of the two)", "",
         f"{r['estimate']:.0f} s"],
        [f"bulk import of {n} speakers (one CSV)", f"{r['bulk'] / n * 1000:.2f} ms",
         f"**{r['bulk']:.1f} s**"],
    ]
    return "\n".join([
        "## Bulk import (`loadtest/bench_import.py`)",
        "",
        f"Measured {today()} on {machine()}, with:",
        "",
        f"    python -m loadtest.bench_import --speakers {n} --single {args.single} --write",
        "",
        "A `loa streamer` child on a private redis-server and a private Mosquitto whose logins "
        "and ACL it keeps (each registration rewrites them and signals the broker). The bulk "
        "import is timed from the request to its answer: every row checked, every password "
        "made and hashed, one Redis transaction, one broker sync, the credentials answered.",
        "",
        table(["what", "per speaker", "in all"], rows),
        "",
        f"The bulk import took {r['bulk'] / r['estimate']:.1%} of the time registering the same "
        f"speakers one at a time would ({r['estimate'] / r['bulk']:.0f}× faster).",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_import", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speakers", type=int, default=5000)
    p.add_argument("--single", type=int, default=100,
                   help="speakers registered one at a time before and after")
    p.add_argument("--write", action="store_true", help="write docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    text = report(args, asyncio.run(run(args)))
    print(text)
    if args.write:
        write_section("bench_import", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
