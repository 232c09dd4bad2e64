"""The 06:00 peak: every commune of a province airs its own bulletin on the same frame.

The real path, on one machine: a private redis-server and Mosquitto, and ``loa streamer`` as a
child process on a generated province (``loadtest/province.py``: ``--communes`` communes of
3–5 hamlets each), with its API and its MQTT fleet plane live and polled (``/readyz``) all the
time. The benchmark:

1. **speech**: writes every commune's own Vietnamese bulletin (its name, today's date, numbers
   of its own), turns each into speech through the API (``POST /tts/preview``) and uploads it
   as a clip, before anything is measured;
2. **the peak**: books one schedule per commune (its clip, ``normal``) and a relayed stream
   province-wide (``relay`` source, ``background``: an Ogg/Opus file made with ffmpeg and served
   over HTTP by this process), all at the same ``at``, so they start on one frame; halfway
   through ``--window-s`` an emergency (TTS, with its chime) preempts the coastal communes;
3. **the ramp**: with the relay still on, one distinct clip broadcast per hamlet channel, in
   steps of ``--ramp`` channels (0: the relay alone, the floor this machine gives now),
   ``--step-s`` each, until two steps in a row had a frame later than 10 ms or skipped.

Figures come from the streamer's ``/metrics`` (``loadtest/lag.py``): frame lag p50/p99/max
(histogram bucket bounds), deadline misses (frames later than 10 ms), skipped frames, late
starts, and distinct programmes encoded per frame (``loa_mixer_encodes_total`` ÷ frames); CPU per
core from ``/proc/stat`` and the streamer's own CPU from ``/proc/PID/stat``. Quiet hours are
lifted on the province's root first, so it runs at any hour. The streamer inherits
``LOA_STREAMER_*`` settings (encoder settings, say) from the environment; the report's command
shows the ones that were set.

    python -m loadtest.bench_peak [--communes 82] [--window-s 60] [--step-s 10]
        [--ramp 10,20,40,60,82,120,160,200,250,300] [--quick] [--report FILE] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web

from devstack.services import free_port

from ._report import machine, table, today, write_section
from .lag import Snapshot, fmt_ms, metric, quantiles
from .province import Province, bulletin, province
from .stack import Stack

TZ = "Asia/Ho_Chi_Minh"
GOAL_LAG_S = 0.010
RAMP = (0, 5, 10, 15, 20, 30, 40, 60, 82, 120, 160, 200, 250, 300)
#: a ramp ends after this many steps in a row with a frame later than 10 ms or skipped: one
#: such step may be a neighbour's burst on this shared machine, two in a row are the load
RAMP_FAILS = 2
#: what the test runs (tests/test_bench_peak.py): every step of the full run, as small as keeps
#: it one (2 coastal communes, a ramp step of 20 channels on 10 × 3–5 hamlets)
QUICK = {"communes": 10, "window_s": 4.0, "step_s": 2.0, "ramp": "0,20"}
SETTLE_S = 1.5  # after a start, before a measurement: the fork of programmes has happened
TTS_CONCURRENCY = 2  # one synthesis per core
STORM = ("Cảnh báo khẩn cấp. Bão số 9 đang tiến vào bờ biển của tỉnh, gió mạnh cấp 12, "
         "giật cấp 14. Bà con các xã ven biển khẩn trương di dời đến nơi an toàn, tàu thuyền "
         "không ra khơi.")


@dataclass
class CpuTimes:
    """Per-core jiffies from ``/proc/stat`` at one moment: (busy, stolen, total) per
    ``cpuN``. Stolen time (the hypervisor ran another guest) is not ours, nor idle."""

    cores: list[tuple[int, int, int]] = field(default_factory=list)

    @classmethod
    def now(cls) -> CpuTimes:
        out = []
        for line in Path("/proc/stat").read_text().splitlines():
            name, *vals = line.split()
            if name.startswith("cpu") and name != "cpu":
                # user nice system idle iowait irq softirq steal
                v = [int(x) for x in vals[:8]]
                out.append((v[0] + v[1] + v[2] + v[5] + v[6], v[7], sum(v)))
        return cls(out)

    def since(self, before: CpuTimes) -> tuple[list[float], list[float]]:
        """(busy, stolen) share of each core's time since ``before``."""
        d = [tuple(x - y for x, y in zip(now, then, strict=True))
             for now, then in zip(self.cores, before.cores, strict=True)]
        return [b / max(1, t) for b, _, t in d], [s / max(1, t) for _, s, t in d]


@dataclass
class Watch:
    """The control plane while it is measured: ``/readyz`` and the programmes gauge, polled."""

    polls: int = 0
    errors: int = 0
    mqtt_down: int = 0
    programmes_max: float = 0.0


def phase(a: Snapshot, b: Snapshot, cpu_a: CpuTimes, cpu_b: CpuTimes) -> dict[str, Any]:
    """What the streamer did between two snapshots."""
    frames = b.frames - a.frames
    return {"seconds": round(b.at - a.at, 2), **quantiles(a, b),
            "misses": b.misses - a.misses, "skipped": b.skipped - a.skipped,
            "late_starts": b.late_starts - a.late_starts,
            "degraded": b.degraded - a.degraded, "lead_s": b.lead_s,
            "programmes": (b.encodes - a.encodes) / frames if frames else 0.0,
            "streamer_cpu": (b.cpu_s - a.cpu_s) / (b.at - a.at),
            **dict(zip(("cpu_per_core", "steal_per_core"), cpu_b.since(cpu_a), strict=True))}


def on_time(p: dict[str, Any]) -> bool:
    """No frame later than 10 ms and none skipped."""
    return bool(p["frames"] > 0 and p["max"] <= GOAL_LAG_S and p["misses"] == 0
                and p["skipped"] == 0)


async def relay_file(path: Path, seconds: float) -> None:
    """A relayed "radio" programme: a chord with a slow tremolo, Ogg/Opus, mono 48 kHz."""
    expr = ("0.25*sin(2*PI*220*t)*(0.6+0.4*sin(2*PI*0.5*t))+0.15*sin(2*PI*277*t)"
            "+0.1*sin(2*PI*330*t)*(0.5+0.5*sin(2*PI*0.25*t))")
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
        "-i", f"aevalsrc={expr}:s=48000:d={seconds:.0f}", "-ac", "1", "-c:a", "libopus",
        "-b:a", "32k", str(path), stderr=subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg: {err.decode(errors='replace')[-500:]}")


async def serve(exits: AsyncExitStack, directory: Path) -> str:
    """Serve ``directory`` over HTTP on a free loopback port; returns its base URL."""
    app = web.Application()
    app.router.add_static("/media", directory)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    exits.push_async_callback(runner.cleanup)
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}/media"


async def speech_clips(stack: Stack, prov: Province,
                       seconds: float) -> tuple[list[str], dict[str, float]]:
    """Each commune's bulletin, synthesised by the API and uploaded as a clip; clip ids in
    commune order, and what it took."""
    day = datetime.now(ZoneInfo(TZ)).date()
    gate = asyncio.Semaphore(TTS_CONCURRENCY)
    lengths: list[float] = []

    async def one(i: int) -> str:
        text = bulletin(prov.communes[i], i, day, seconds)
        async with gate:
            async with stack.http.post(stack.http_url + "/api/v1/tts/preview",
                                       json={"text": text}, headers=stack.auth) as r:
                if r.status != 200:
                    raise RuntimeError(f"tts/preview: {r.status} {await r.text()}")
                wav = await r.read()
            form = aiohttp.FormData()
            form.add_field("name", f"bulletin-{prov.communes[i].key}")
            form.add_field("file", wav, filename="bulletin.wav", content_type="audio/wav")
            async with stack.http.post(stack.http_url + "/api/v1/clips", data=form,
                                       headers=stack.auth) as r:
                if r.status != 201:
                    raise RuntimeError(f"clips: {r.status} {await r.text()}")
                meta = await r.json()
        lengths.append(float(meta["seconds"]))
        return str(meta["id"])

    t0 = time.monotonic()
    clips = list(await asyncio.gather(*(one(i) for i in range(len(prov.communes)))))
    if len(set(clips)) != len(clips):
        raise RuntimeError("two communes got the same bulletin")
    return clips, {"bulletins": len(clips), "speech_s_min": min(lengths),
                   "speech_s_max": max(lengths), "setup_s": time.monotonic() - t0}


async def watch(stack: Stack, w: Watch) -> None:
    """Poll the control plane twice a second, as a console and Prometheus would."""
    while True:
        try:
            async with stack.http.get(stack.http_url + "/readyz") as r:
                ready = await r.json()
                w.errors += r.status != 200
                w.mqtt_down += not ready["checks"].get("mqtt", False)
            async with stack.http.get(stack.http_url + "/metrics") as r:
                w.programmes_max = max(w.programmes_max,
                                       metric(await r.text(), "loa_mixer_encodes_per_frame"))
        except (aiohttp.ClientError, ValueError, KeyError):
            w.errors += 1
        w.polls += 1
        await asyncio.sleep(0.5)


async def measured(stack: Stack, seconds: float,
                   midway: Callable[[], Awaitable[None]] | None = None) -> list[dict[str, Any]]:
    """Snapshots over ``seconds``: one phase, or two with ``midway`` run between them."""
    marks = [(await stack.snapshot(), CpuTimes.now())]
    if midway is None:
        await asyncio.sleep(seconds)
    else:
        await asyncio.sleep(seconds / 2)
        marks.append((await stack.snapshot(), CpuTimes.now()))
        await midway()
        await asyncio.sleep(seconds / 2 - (time.monotonic() - marks[-1][0].at))
    marks.append((await stack.snapshot(), CpuTimes.now()))
    out = [phase(a, b, ca, cb) for (a, ca), (b, cb) in zip(marks, marks[1:], strict=False)]
    if len(out) > 1:
        out.insert(0, phase(marks[0][0], marks[-1][0], marks[0][1], marks[-1][1]))
    return out


async def peak(stack: Stack, prov: Province, clips: list[str], relay_url: str,
               args: argparse.Namespace, relay_s: float) -> dict[str, Any]:
    """Every commune's bulletin and the relay booked for one ``at``; the emergency midway."""
    root, tz = prov.root, ZoneInfo(TZ)
    lead_s = 3.0 + 0.2 * len(clips)  # time to book them all: ~50 ms a schedule, or more
    at = (datetime.now(tz) + timedelta(seconds=lead_s)).replace(microsecond=0)
    at_text = at.strftime("%Y-%m-%dT%H:%M:%S")
    booked = [await stack.api("POST", "/api/v1/schedules", {
        "zones": [root], "priority": "background", "at": at_text, "tz": TZ,
        "duration_s": relay_s, "label": "tiếp sóng (bench_peak)",
        "source": {"kind": "relay", "url": relay_url}})]
    for c, clip in zip(prov.communes, clips, strict=True):
        booked.append(await stack.api("POST", "/api/v1/schedules", {
            "zones": [c.zone(root)], "priority": "normal", "at": at_text, "tz": TZ,
            "label": f"bản tin sáng {c.name}", "source": {"kind": "clip", "clip": clip}}))
    if not all(s["approved"] for s in booked):
        raise RuntimeError("a schedule waits for approval")
    spare_s = at.timestamp() - time.time()
    print(f"{len(booked)} schedules booked, {spare_s:.1f} s before {at_text}", file=sys.stderr)
    if spare_s < 2:
        raise RuntimeError(f"booking took too long: {spare_s:.1f} s left before {at_text}")
    before = await stack.snapshot()
    await asyncio.sleep(spare_s + SETTLE_S)
    emergency: dict[str, Any] = {}

    async def storm() -> None:
        t0 = time.monotonic()
        emergency.update(await stack.api("POST", "/api/v1/emergency", {
            "zones": [c.zone(root) for c in prov.communes if c.coastal],
            "source": {"kind": "tts", "text": STORM}, "label": "bão số 9 (bench_peak)"}))
        emergency["answer_s"] = time.monotonic() - t0

    whole, first, second = await measured(stack, args.window_s, storm)
    ids = {s["id"] for s in booked}
    fired = [b for b in (await stack.api("GET", "/api/v1/broadcasts?limit=1000"))["broadcasts"]
             if b["schedule"] in ids]
    relay: dict[str, Any] = next((b for b in fired if b["source"]["kind"] == "relay"), {})
    after = await stack.snapshot()
    aired = after.emergencies - before.emergencies
    await stack.api("DELETE", f"/api/v1/emergency/{emergency['id']}")
    await stack.api("POST", "/api/v1/stop", {"zones": [root], "priority": "normal"})
    return {"at": at_text, "whole": whole, "before_emergency": first,
            "after_emergency": second, "fired": len(fired), "booked": len(booked),
            "late_starts": after.late_starts - before.late_starts,
            "relay_health": relay.get("health"),
            "emergency_channels": emergency.get("channels"),
            "emergency_answer_s": round(emergency["answer_s"], 3),
            "emergency_time_to_air_s":
            (after.emergency_air_s - before.emergency_air_s) / aired if aired else None}


async def ramp(stack: Stack, prov: Province, clips: list[str],
               args: argparse.Namespace) -> list[dict[str, Any]]:
    """More and more distinct programmes, one clip broadcast per hamlet channel, until
    ``RAMP_FAILS`` steps in a row had a frame later than 10 ms or skipped."""
    leaves = [f"{c.zone(prov.root)}.{h}" for c in prov.communes for h, _ in c.hamlets]
    gate = asyncio.Semaphore(4)
    rows: list[dict[str, Any]] = []
    fails = 0

    async def air(i: int) -> None:
        async with gate:
            await stack.api("POST", "/api/v1/broadcasts", {
                "zones": [leaves[i]], "priority": "normal", "label": f"ramp {i}",
                "source": {"kind": "clip", "clip": clips[i % len(clips)]}})

    steps = [n for n in args.ramp if n <= len(leaves)]
    for n in steps:
        await asyncio.gather(*(air(i) for i in range(n)))
        await asyncio.sleep(SETTLE_S)
        (row,) = await measured(stack, args.step_s)
        row["target"] = n
        rows.append(row)
        await stack.api("POST", "/api/v1/stop", {"zones": [prov.root], "priority": "normal"})
        print(f"ramp {n}: {row['programmes']:.1f} programmes, max {fmt_ms(row['max'])}, "
              f"skipped {row['skipped']:.0f}", file=sys.stderr)
        fails = 0 if on_time(row) else fails + 1
        if fails == RAMP_FAILS or n == steps[-1]:
            break
        await asyncio.sleep(1.0)
    return rows


async def run(args: argparse.Namespace) -> dict[str, Any]:
    prov = province(args.communes)
    speech_s = max(args.window_s, args.step_s) + SETTLE_S + 10
    ramp_s = len(args.ramp) * (args.step_s + SETTLE_S + 20)  # posting n broadcasts, too
    relay_s = float(round(30 + args.window_s + ramp_s + 0.2 * args.communes))
    with tempfile.TemporaryDirectory(prefix="loa-bench-peak-") as tmp:
        async with AsyncExitStack() as exits:
            tmpdir = Path(tmp)
            zones, media = tmpdir / "zones.toml", tmpdir / "media"
            zones.write_text(prov.toml())
            media.mkdir()
            log = exits.enter_context(open(tmpdir / "bench.log", "wb"))  # noqa: SIM115
            stack = Stack(exits, tmpdir, log)
            await asyncio.gather(relay_file(media / "radio.ogg", relay_s + 30),
                                 stack.start_streamer_process(20, zones=zones, mqtt=True))
            relay_url = await serve(exits, media) + "/radio.ogg"
            await stack.api("PATCH", f"/api/v1/zones/{prov.root}", {"quiet_hours": ""})
            clips, tts = await speech_clips(stack, prov, speech_s)
            print(f"{len(clips)} bulletins in {tts['setup_s']:.0f} s", file=sys.stderr)
            w = Watch()
            poller = asyncio.create_task(watch(stack, w))
            try:
                result = await peak(stack, prov, clips, relay_url, args, relay_s)
                steps = await ramp(stack, prov, clips, args)
            finally:
                poller.cancel()
            if args.logs:
                for log_file in (tmpdir / "logs").glob("*.log"):
                    shutil.copy(log_file, args.logs)
            if stack.dead():
                raise RuntimeError(f"children died: {stack.dead()}")
    ok = [r["programmes"] for r in steps if on_time(r)]
    ok99 = [r["programmes"] for r in steps if r["p99"] <= GOAL_LAG_S and r["skipped"] == 0]
    whole = result["whole"]
    return {"communes": args.communes, "channels": prov.leaves, "settings": settings(),
            "coastal": sum(c.coastal for c in prov.communes), "window_s": args.window_s,
            "step_s": args.step_s, "tts": tts, "peak": result, "ramp": steps,
            "max_programmes_on_time": max(ok, default=0.0),
            "max_programmes_p99": max(ok99, default=0.0),
            "control": {"polls": w.polls, "errors": w.errors, "mqtt_down": w.mqtt_down,
                        "programmes_max": w.programmes_max},
            "goal_met": on_time(whole) and result["late_starts"] == 0 and w.errors == 0
            and w.mqtt_down == 0}


def settings() -> dict[str, str]:
    """The streamer's settings from the environment (``LOA_STREAMER_*``), which its child
    inherits: how to run the peak with other encoder settings."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("LOA_STREAMER_")}


def _cores(p: dict[str, Any]) -> str:
    busy = " / ".join(f"{x:.0%}" for x in p["cpu_per_core"])
    steal = max(p["steal_per_core"])
    return busy + (f" (stolen ≤ {steal:.0%})" if steal >= 0.005 else "")


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds * 1000:.0f} ms"


def _row(name: str, p: dict[str, Any]) -> list[object]:
    return [name, f"{p['seconds']:.1f}", f"{p['frames']:.0f}", f"{p['programmes']:.1f}",
            fmt_ms(p["p50"]), fmt_ms(p["p99"]), fmt_ms(p["max"]), f"{p['misses']:.0f}",
            f"{p['skipped']:.0f}", fmt_ms(p["tick_p50"]), fmt_ms(p["tick_max"]),
            f"{p['lead_s'] * 1000:.1f} ms", f"{p['degraded']:.0f}",
            f"{p['streamer_cpu']:.0%}", _cores(p)]


def command(args: argparse.Namespace) -> str:
    env = "".join(f"{k}={v} " for k, v in settings().items())
    if args.quick:
        return f"{env}.venv/bin/python -m loadtest.bench_peak --quick --write"
    return (f"{env}.venv/bin/python -m loadtest.bench_peak --communes {args.communes} --window-s "
            f"{args.window_s:g} --step-s {args.step_s:g} --ramp "
            f"{','.join(map(str, args.ramp))} --write")


def report(args: argparse.Namespace, r: dict[str, Any]) -> str:
    header = ["phase", "seconds", "frames", "programmes / frame", "lag p50", "lag p99",
              "lag max", "misses", "skipped", "tick p50", "tick max", "lead", "degraded",
              "streamer CPU", "CPU per core"]
    pk = r["peak"]
    peak_rows = [_row("whole window", pk["whole"]), _row("before the emergency",
                 pk["before_emergency"]), _row("after the emergency", pk["after_emergency"])]
    ramp_rows = [_row(f"{s['target']} channels" if s["target"] else "the relay alone", s)
                 for s in r["ramp"]]
    c, t = r["control"], r["tts"]
    goal = "**met**" if r["goal_met"] else "**not met**"
    return "\n".join([
        f"## The 06:00 peak, {r['communes']} communes (`loadtest/bench_peak.py`)",
        "",
        f"Measured {today()} on {machine()}, with:",
        "",
        f"    {command(args)}",
        "",
        f"A generated province (`loadtest/province.py`): {r['communes']} communes of 3–5 "
        f"hamlets, {r['channels']} channels. `loa streamer` is a child process (its settings "
        "the defaults but for any `LOA_STREAMER_*` in the command) with its API "
        "and its MQTT fleet plane on a private Mosquitto, both live: `/readyz` and `/metrics` "
        f"were polled {c['polls']} times during the run, {c['errors']} failed, MQTT was "
        f"down in {c['mqtt_down']}. Each commune has its own Vietnamese bulletin "
        f"(espeak-ng through `POST /tts/preview`, uploaded as a clip, {t['speech_s_min']:.0f}–"
        f"{t['speech_s_max']:.0f} s of speech; {t['setup_s']:.0f} s to make all "
        f"{t['bulletins']}), scheduled at `normal` for one `at` ({pk['booked']} schedules "
        f"with the relay; {pk['fired']} fired, {pk['late_starts']:.0f} started late), beside "
        "a relayed Ogg/Opus stream served over HTTP, scheduled province-wide at `background` "
        f"(health `{pk['relay_health']}`). Halfway through the window an emergency (TTS "
        f"with its chime) preempts the {r['coastal']} coastal communes "
        f"({pk['emergency_channels']} channels; the API answered in "
        f"{pk['emergency_answer_s'] * 1000:.0f} ms, speech synthesis included, and its first "
        f"packet left {_s(pk['emergency_time_to_air_s'])} after the request arrived, "
        "`loa_time_to_air_seconds`)." + (
            f" **{pk['booked'] - pk['fired']} of the {pk['booked']} schedules did not air**: "
            "the streamer's log says why (`--logs DIR` keeps it)."
            if pk["fired"] < pk["booked"] else ""),
        "",
        "Lag: how late each frame reached the socket after its deadline "
        "(`loa_frame_lag_histogram_seconds`, as the bound of the bucket its quantile falls "
        "in; a frame that left before its deadline counts as 0); misses: frames that reached "
        "it more than 10 ms late (`loa_frame_deadline_misses_total`); tick: how long the "
        "mixer took to make a frame of every programme (`loa_mixer_tick_seconds`); lead: how "
        "long before its deadline the last frame's tick began (`loa_frame_lead_seconds`, "
        "`docs/playout.md`); degraded: frames the deadline guard made with normal and "
        "background programmes at the cheap encoder setting "
        "(`loa_mixer_degraded_frames_total`); programmes: "
        "distinct programmes encoded per frame (`loa_mixer_encodes_total` ÷ frames); "
        "streamer CPU in cores; CPU per core "
        "from `/proc/stat`, every process on the machine included, and the time the "
        "hypervisor gave to other guests (stolen) if any.",
        "",
        table(header, peak_rows),
        "",
        f"Goal (0 skipped frames, none later than 10 ms, API and MQTT live): {goal}.",
        "",
        "The ramp: with the relay still on, one distinct clip broadcast per hamlet channel "
        f"(the bulletins again), {r['step_s']:g} s a step, stopped after {RAMP_FAILS} steps "
        "in a row with a frame later than 10 ms or skipped (one may be a neighbour's burst):",
        "",
        table(header, ramp_rows),
        "",
        "Most distinct programmes this host carried with no frame later than 10 ms and none "
        f"skipped: **{r['max_programmes_on_time']:.0f}**; with 99 % of frames within 10 ms: "
        f"{r['max_programmes_p99']:.0f}.",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_peak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--communes", type=int, default=82)
    p.add_argument("--window-s", type=float, default=60.0, help="the peak's measurement")
    p.add_argument("--step-s", type=float, default=10.0, help="each step of the ramp")
    p.add_argument("--ramp", default=",".join(map(str, RAMP)),
                   help="distinct programmes (hamlet channels) at each step")
    p.add_argument("--quick", action="store_true",
                   help=f"a short run: {QUICK['communes']} communes, a {QUICK['window_s']:g} s "
                   f"window, ramp {QUICK['ramp']}")
    p.add_argument("--report", type=Path, help="also write the figures as JSON here")
    p.add_argument("--logs", type=Path, help="copy the streamer's log into this directory")
    p.add_argument("--write", action="store_true", help="write docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    args.ramp = [int(x) for x in str(args.ramp).split(",")]
    result = asyncio.run(run(args))
    text = report(args, result)
    print(text)
    if args.report:
        args.report.write_text(json.dumps(result, indent=1))
    if args.write:
        write_section(f"bench_peak_{args.communes}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
