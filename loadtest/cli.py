"""``loa loadtest``: run a load scenario against a stack it starts or one that is running.

Without ``--streamer`` it starts a private stack in a temporary directory (redis-server, the
streamer as a ``loa streamer`` child, ``--relays`` relay processes: ``loadtest/stack.py``) and
stops it at the end; with ``--streamer URL --relay HOST:PORT…`` it uses those, signing in with
``--token`` or ``--user``/``--password`` because the scenario's events go through the API; its
speakers' subscription tokens, which relays require by default, it signs with the streamer's
key file given as ``--signing-key``.
Speakers (``loadtest/fleet.py`` workers, at nice +10) are spread evenly over the chosen leaf
channels and relays; once all are subscribed and ``warmup_s`` has passed, the measurement window
opens, events are sent at their times, a progress line is redrawn on stderr, and CPU and memory
of every process are sampled from /proc. At the end it writes the JSON report and its figures
(``loadtest/report.py``), prints the summary, and exits 1 when a listener would have noticed
something wrong (saying what), 2 for a bad scenario or option, 0 otherwise. Speed is reported,
never judged here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._report import process_cpu_s, rss_bytes
from .bench_relay import udp_drops
from .fleet import ROUND_S, ClockSpec, FleetProcess, WorkerConfig
from .report import Aired, Window, build, failures, plot, summary
from .scenario import Event, Scenario, ScenarioError, load
from .simspeakers import host_port
from .stack import Stack

PROGRESS_S = 0.5
EVENT_CHECK = "/api/v1/emergency"


@dataclass
class ProcessSampler:
    """CPU seconds and RSS of named processes, sampled over the window (from /proc)."""

    pids: dict[str, int]
    t0: float = field(default_factory=time.monotonic)
    samples: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)

    def sample(self) -> None:
        now = time.monotonic() - self.t0
        for name, pid in self.pids.items():
            try:
                cpu, rss = process_cpu_s(pid), rss_bytes(pid)
            except (OSError, RuntimeError):
                continue  # exited: its last sample stands
            self.samples.setdefault(name, []).append((now, cpu, rss))

    def result(self) -> dict[str, Any]:
        """Per process: cores used over the window, max RSS, and cores/RSS over time."""
        out = {}
        for name, s in self.samples.items():
            span = s[-1][0] - s[0][0]
            cores = [[round(b[0], 2), round((b[1] - a[1]) / max(1e-9, b[0] - a[0]), 3), b[2]]
                     for a, b in zip(s, s[1:], strict=False)]
            out[name] = {"pid": self.pids[name],
                         "cpu": round((s[-1][1] - s[0][1]) / span, 3) if span > 0 else 0.0,
                         "cpu_s": round(s[-1][1] - s[0][1], 2),
                         "rss": max(r for _, _, r in s), "samples": cores}
        return out


def choose_channels(available: list[str], zones: list[str]) -> list[str]:
    chosen = [c for c in available if not zones
              or any(c == z or c.startswith(z + ".") for z in zones)]
    if not chosen:
        raise ScenarioError(f"channels: no leaf channel under {', '.join(zones)}")
    return chosen


async def air(stack: Stack, event: Event, at: float, override_quiet_hours: bool) -> Aired:
    """Send one event to the API at wall time ``at``."""
    await asyncio.sleep(max(0.0, at - time.time()))
    source = {"kind": "tone", "hz": event.content.freq_hz, "seconds": event.content.seconds}
    if event.kind == "emergency":
        path, body = EVENT_CHECK, {"zones": event.zones, "source": source,
                                   "label": event.label, "chime": event.chime}
    else:
        path, body = "/api/v1/broadcasts", {"zones": event.zones, "source": source,
                                            "label": event.label, "priority": "normal",
                                            "override_quiet_hours": override_quiet_hours}
    sent = time.time()
    try:
        rec = await stack.api("POST", path, body)
    except (RuntimeError, OSError) as e:
        return Aired(event, sent, error=str(e))
    return Aired(event, sent, int(rec["id"]))


def progress(elapsed: float, duration: float, subscribed: int, n: int, pps: float) -> None:
    # A hand-drawn line: a progress-bar library would be a dependency for one line of text.
    width = 30
    done = int(width * min(1.0, elapsed / duration))
    sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {elapsed:5.1f}/{duration:g} s  "
                     f"{subscribed}/{n} subscribed  {pps:9,.0f} packets/s ")
    sys.stderr.flush()


async def measure(sc: Scenario, stack: Stack, workers: list[FleetProcess],
                  sampler: ProcessSampler) -> tuple[list[dict[str, Any]], list[Aired], Window]:
    skipped = await stack.frames_skipped()
    await asyncio.gather(*(w.ask("start") for w in workers))
    start = time.time()
    sampler.sample()
    events = [asyncio.create_task(air(stack, e, start + e.at_s, sc.override_quiet_hours))
              for e in sc.events]
    before, t_before = 0, time.monotonic()
    while (elapsed := time.time() - start) < sc.duration_s:
        await asyncio.sleep(min(PROGRESS_S, sc.duration_s - elapsed))
        status = await asyncio.gather(*(w.ask("status") for w in workers))
        received, now = sum(s["received"] for s in status), time.monotonic()
        progress(time.time() - start, sc.duration_s, sum(s["subscribed"] for s in status),
                 sc.speakers, (received - before) / max(1e-9, now - t_before))
        before, t_before = received, now
        sampler.sample()
    sys.stderr.write("\n")
    await asyncio.sleep(ROUND_S)  # the last round of reads
    end = time.time()
    skipped = await stack.frames_skipped() - skipped
    reports = await asyncio.gather(*(w.ask("report", 300) for w in workers))
    return list(reports), list(await asyncio.gather(*events)), Window(start, end, skipped)


async def run(sc: Scenario, args: argparse.Namespace, command: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="loa-loadtest-") as tmp, \
            open(Path(tmp) / "children.log", "w+b") as log:
        try:
            async with AsyncExitStack() as exits:
                stack = Stack(exits, Path(tmp), log)
                if args.streamer:
                    await stack.attach(args.streamer, args.relay, token=args.token,
                                       user=args.user, password=args.password,
                                       signing_key=args.signing_key)
                else:
                    await stack.start_streamer_process(sc.ptime_ms)
                    for k in range(sc.relays):
                        await stack.start_relay(k, sc.ptime_ms)
                return await _run_fleet(sc, stack, exits, log, command)
        except Exception:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-3000:])
            raise


async def _run_fleet(sc: Scenario, stack: Stack, exits: AsyncExitStack, log: Any,
                     command: str) -> dict[str, Any]:
    channels = choose_channels(await stack.channels(), sc.channels)
    n, relays = sc.speakers, stack.relays
    channel_of = [i % len(channels) for i in range(n)]
    relay_of = [i % len(relays) for i in range(n)]
    origin = time.time()
    clock = ClockSpec(**sc.clock.model_dump())
    workers = []
    for w in range(min(sc.workers, n)):
        mine = list(range(w, n, sc.workers))
        cfg = WorkerConfig(mine, [channels[channel_of[i]] for i in mine],
                           [channel_of[i] for i in mine], [relays[relay_of[i]] for i in mine],
                           list(range(sc.decode_sample)), clock, sc.ptime_ms, sc.seed, origin,
                           sc.handshake_timeout_s + sc.warmup_s + sc.duration_s + 60,
                           sc.handshake_timeout_s, stack.signing_key)
        proc = await FleetProcess.spawn(cfg, stderr=log)
        exits.push_async_callback(proc.close)
        workers.append(proc)
    await asyncio.gather(*(w.ready(sc.handshake_timeout_s + 30) for w in workers))
    subscribed = sum(w.subscribed for w in workers)
    print(f"loa loadtest: {subscribed}/{n} speakers subscribed on {len(channels)} channels "
          f"through {len(relays)} relay(s); warming up {sc.warmup_s:g} s", file=sys.stderr)
    await asyncio.sleep(sc.warmup_s)
    pids = {**stack.pids, **{f"worker-{k}": w.proc.pid for k, w in enumerate(workers)},
            "loadtest": os.getpid()}
    sampler = ProcessSampler(pids)
    reports, aired, window = await measure(sc, stack, workers, sampler)
    drops = udp_drops(frozenset(p for r in reports for p in r["ports"]))
    if "streamer" not in stack.pids:  # not ours: leave it as it was
        await _cancel(stack, aired)
    if stack.dead():
        raise RuntimeError(f"{', '.join(stack.dead())} exited during the run")
    return build(sc, command, channels, [f"{h}:{p}" for h, p in relays], channel_of, relay_of,
                 reports, aired, window, sampler.result(), drops, subscribed)


async def _cancel(stack: Stack, aired: list[Aired]) -> None:
    """On a stack that outlives the run, take the run's emergencies off the air."""
    for a in aired:
        if a.event.kind == "emergency" and a.broadcast_id:
            try:
                await stack.api("DELETE", f"{EVENT_CHECK}/{a.broadcast_id}")
            except RuntimeError:
                pass  # already over


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loa loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="smoke",
                   help="a name in loadtest/scenarios/ or a TOML file (default smoke)")
    p.add_argument("--speakers", type=int)
    p.add_argument("--relays", type=int, help="relays to start (own stack only)")
    p.add_argument("--workers", type=int, help="speaker worker processes")
    p.add_argument("--duration", type=float, dest="duration_s", help="measurement, seconds")
    p.add_argument("--ptime", type=int, dest="ptime_ms", help="frame ms (own stack only)")
    p.add_argument("--decode-sample", type=int)
    p.add_argument("--report", default="loadtest-report.json", help="JSON report file")
    p.add_argument("--streamer", help="URL of a running streamer (else start a stack)")
    p.add_argument("--relay", type=host_port, action="append", default=[],
                   help="HOST:PORT of a running relay's media socket (with --streamer)")
    p.add_argument("--token", default="", help="API bearer token (with --streamer)")
    p.add_argument("--user", default="")
    p.add_argument("--password", default="")
    p.add_argument("--signing-key", default="",
                   help="the running streamer's signing key (PEM file): signs the simulated "
                        "speakers' subscription tokens, which its relays require by default "
                        "(with --streamer; without it the speakers present none)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.streamer and not args.relay:
        p.error("--streamer needs at least one --relay HOST:PORT")
    if args.streamer and not (args.token or (args.user and args.password)):
        p.error("--streamer needs --token, or --user and --password (events use the API)")
    try:
        sc = load(args.scenario).with_overrides(
            speakers=args.speakers, relays=len(args.relay) or args.relays,
            workers=args.workers, duration_s=args.duration_s, ptime_ms=args.ptime_ms,
            decode_sample=args.decode_sample)
        command = "loa loadtest " + shlex.join(sys.argv[1:] if argv is None else argv)
        report = asyncio.run(run(sc, args, command))
    except ScenarioError as e:
        print(f"loa loadtest: {e}", file=sys.stderr)
        return 2
    path = Path(args.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    figures = plot(report, path.with_suffix(""))
    print(summary(report))
    print(f"\nreport {path}; figures {', '.join(str(f) for f in figures)}")
    wrong = failures(report, sc)
    for w in wrong:
        print(f"loa loadtest: FAILED: {w}", file=sys.stderr)
    return 1 if wrong else 0
