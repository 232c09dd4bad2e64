"""The ``loa loadtest`` report: worker reports merged into one JSON document, its figures
(PNG, matplotlib's Agg backend: no display needed) and the summary table printed at the end.

Workers report per-speaker counters and mergeable summaries (a latency histogram on fixed
bins, first arrivals per broadcast id, per-packet earliest/latest play instants); this module
combines them across workers, turns them into percentiles and decides what counts as a
failure. It measures nothing itself and never asserts speed: a failure is something a
speaker would hear (silence, loss, a missed broadcast), not a slow figure. The figures are
drawn from the JSON's ``series``, so a saved report can be drawn again. ``docs/loadtest.md``
describes every field and figure.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._report import table
from .fleet import LATENCY_EDGES
from .scenario import Event, Scenario
from .simspeakers import Arrival, TimeToAir


@dataclass(frozen=True)
class Window:
    """The measurement window (wall-clock seconds) and the frames the streamer skipped in it."""

    start: float
    end: float
    frames_skipped: int = 0


@dataclass
class Aired:
    """An event as sent: when the request left, and the broadcast id the API gave it."""

    event: Event
    sent: float  # Unix s
    broadcast_id: int = 0
    error: str = ""


def quantiles_ms(seconds: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    if len(seconds) == 0:
        return {"p50": None, "p99": None, "max": None}
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3), "max": round(float(ms.max()), 3)}


def histogram_ms(counts: np.ndarray, max_s: float | None) -> dict[str, float | None]:
    """p50/p99 of the latency histogram (the upper edge of the bin holding the percentile,
    i.e. at most 2.3 % high) and the exact maximum."""
    total = int(counts.sum())
    if not total or max_s is None:
        return {"p50": None, "p99": None, "max": None}
    upper = np.append(LATENCY_EDGES, max_s)  # bin k holds values below upper[k]
    cum = np.cumsum(counts)

    def q(p: float) -> float:
        k = int(np.searchsorted(cum, p * total))
        return round(float(min(upper[k], max_s)) * 1000, 3)

    return {"p50": q(0.5), "p99": q(0.99), "max": round(max_s * 1000, 3)}


def targeted(channels: Sequence[str], zones: Sequence[str]) -> set[str]:
    return {c for c in channels if any(c == z or c.startswith(z + ".") for z in zones)}


def build(sc: Scenario, command: str, channels: list[str], relays: list[str],
          channel_of: list[int], relay_of: list[int], workers: list[dict[str, Any]],
          aired: list[Aired], window: Window, processes: dict[str, Any],
          kernel_drops: int, subscribed: int) -> dict[str, Any]:
    """The JSON report of one run (see ``docs/loadtest.md``)."""
    n = sc.speakers
    per = {key: np.zeros(n) for key in ("received", "lost", "late", "jitter_ms")}
    first: dict[int, list[Arrival | None]] = {}
    for w in workers:
        idx = np.array(w["indices"], dtype=np.int64)
        for key, arr in per.items():
            arr[idx] = w[key]
        for bid, times in w["first"].items():
            merged = first.setdefault(int(bid), [None] * n)
            for i, t in zip(w["indices"], times, strict=True):
                if t is not None:
                    merged[i] = Arrival(t, int(bid))
    start, end = window.start, window.end
    received, lost = per["received"], per["lost"]
    latency = np.sum([w["latency_counts"] for w in workers], axis=0)
    latency_max = max((w["latency_max_s"] for w in workers if w["latency_max_s"] is not None),
                      default=None)
    events = [_event(a, first, channels, channel_of, sc.deadline_s) for a in aired]
    tta = [s for e in events for s in e.pop("_seconds")]
    skews = _skews(workers)
    pps = Counter[int]()
    for w in workers:
        pps.update({int(k): v for k, v in w["per_second"].items()})
    seconds = range(math.ceil(start), math.floor(end))
    return {
        "scenario": sc.model_dump(), "command": command, "window_s": round(end - start, 3),
        "speakers": n, "subscribed": subscribed, "relays": relays, "channels": len(channels),
        "delivered_pps": round(float(received.sum()) / (end - start), 1),
        "streamer_frames_skipped": window.frames_skipped,
        "received_min": int(received.min()), "silent_speakers": int((received == 0).sum()),
        "loss_ratio": float(lost.sum() / max(1.0, lost.sum() + received.sum())),
        "latency_ms": histogram_ms(latency, latency_max),
        "jitter_ms": quantiles_ms(per["jitter_ms"] / 1000),
        "time_to_air_ms": quantiles_ms(tta), "events": events,
        "sync_skew_ms": quantiles_ms(skews),
        "late_ratio": float(per["late"].sum() / max(1.0, received.sum())),
        "priority_packets": np.sum([w["priority"] for w in workers], axis=0).tolist(),
        "rtcp_packets": sum(w["rtcp"] for w in workers),
        "unreadable_packets": sum(w["unreadable"] for w in workers),
        "receive_errors": sum(w["recv_errors"] for w in workers),
        "kernel_drops": kernel_drops,
        "per_relay": _breakdown(relays, relay_of, received, lost),
        "per_channel": _breakdown(channels, channel_of, received, lost),
        "decoded": _decoded(workers, aired),
        "processes": processes,
        "series": {"pps": [[s - start, pps.get(s, 0)] for s in seconds],
                   "latency_counts": latency.tolist(),
                   "time_to_air_ms": {str(e["broadcast_id"]): e["seconds_ms"] for e in events},
                   "sync_skew_ms": [round(s * 1000, 3) for s in skews]},
    }


def _event(a: Aired, first: dict[int, list[Arrival | None]], channels: list[str],
           channel_of: list[int], deadline_s: float) -> dict[str, Any]:
    chosen = targeted(channels, a.event.zones)
    speakers = [i for i, c in enumerate(channel_of) if channels[c] in chosen]
    tta = TimeToAir.of(first.get(a.broadcast_id, [None] * len(channel_of)), a.sent,
                       a.broadcast_id, speakers, deadline_s)
    return {"kind": a.event.kind, "at_s": a.event.at_s, "zones": a.event.zones,
            "freq_hz": a.event.content.freq_hz, "broadcast_id": a.broadcast_id,
            "error": a.error, "targeted": len(speakers), "missing": tta.missing,
            "time_to_air_ms": quantiles_ms(tta.seconds),
            "seconds_ms": [round(s * 1000, 3) for s in tta.seconds], "_seconds": tta.seconds}


def _decoded(workers: list[dict[str, Any]], aired: list[Aired]) -> list[dict[str, Any]]:
    """The decoded sample, each with the event it belongs to and the tone it should hear."""
    events = {a.broadcast_id: a.event for a in aired if a.broadcast_id}
    out = []
    for d in sorted((d for w in workers for d in w["decoded"]),
                    key=lambda d: (d["speaker"], d["broadcast_id"])):
        e = events.get(d["broadcast_id"])
        out.append({**d, "event": e.kind if e else None,
                    "expected_hz": e.content.freq_hz if e else None})
    return out


def _skews(workers: list[dict[str, Any]]) -> list[float]:
    """Latest − earliest play instant per sampled packet, over the channel's on-time speakers
    (at least two), merged across workers."""
    merged: dict[tuple[int, int], list[float]] = {}
    for w in workers:
        for ch, key, lo, hi, on_time, _late in w["skew"]:
            if on_time:
                m = merged.setdefault((ch, key), [math.inf, -math.inf, 0])
                m[0], m[1], m[2] = min(m[0], lo), max(m[1], hi), m[2] + on_time
    return sorted(hi - lo for lo, hi, count in merged.values() if count >= 2)


def _breakdown(names: list[str], of: list[int], received: np.ndarray,
               lost: np.ndarray) -> dict[str, dict[str, float]]:
    out = {}
    for k, name in enumerate(names):
        mine = np.array(of) == k
        if mine.any():
            r, lo = received[mine], lost[mine]
            out[name] = {"speakers": int(mine.sum()), "received_min": int(r.min()),
                         "loss_ratio": float(lo.sum() / max(1.0, lo.sum() + r.sum()))}
    return out


def failures(report: dict[str, Any], sc: Scenario) -> list[str]:
    """What a listener would notice: speakers not subscribed or silent, loss over the
    scenario's ``max_loss``, events refused or missed by a targeted speaker."""
    out = []
    if report["subscribed"] < report["speakers"]:
        out.append(f"only {report['subscribed']} of {report['speakers']} speakers subscribed")
    if report["silent_speakers"]:
        out.append(f"{report['silent_speakers']} speakers received nothing")
    if report["loss_ratio"] > sc.max_loss:
        out.append(f"loss {report['loss_ratio']:.2e} is above max_loss {sc.max_loss:g}")
    for e in report["events"]:
        if e["error"]:
            out.append(f"{e['kind']} at {e['at_s']:g} s was refused: {e['error']}")
        elif e["missing"]:
            out.append(f"{e['kind']} at {e['at_s']:g} s: {e['missing']} of {e['targeted']} "
                       f"targeted speakers had no packet of it within {sc.deadline_s:g} s")
    return out


def summary(report: dict[str, Any]) -> str:
    def row(name: str, q: dict[str, float | None]) -> list[str]:
        return [name] + ["-" if q[k] is None else f"{q[k]:.1f}" for k in ("p50", "p99", "max")]

    rows = [row("latency", report["latency_ms"]), row("jitter", report["jitter_ms"]),
            row("time-to-air (all events)", report["time_to_air_ms"]),
            *(row(f"time-to-air {e['kind']} @{e['at_s']:g}s", e["time_to_air_ms"])
              for e in report["events"]),
            row("sync skew", report["sync_skew_ms"])]
    procs = [[name, f"{p['cpu']:.2f}", f"{p['rss'] / 2**20:.0f}"]
             for name, p in report["processes"].items()]
    return (f"{report['speakers']} speakers ({report['subscribed']} subscribed), "
            f"{len(report['relays'])} relay(s), {report['window_s']:.1f} s measured: "
            f"{report['delivered_pps']:,.0f} packets/s delivered, loss "
            f"{report['loss_ratio']:.2e}, fewest packets at a speaker {report['received_min']}, "
            f"late for playout {report['late_ratio']:.2e}, frames skipped by the streamer "
            f"{report['streamer_frames_skipped']}\n\n"
            + table(["ms", "p50", "p99", "max"], rows) + "\n\n"
            + table(["process", "CPU cores", "max RSS MiB"], procs))


def plot(report: dict[str, Any], stem: Path) -> list[Path]:
    """Two figures next to the report: ``STEM-network.png`` (latency, time-to-air, delivered
    packets per second, sync skew) and ``STEM-processes.png`` (CPU and RSS per process)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = report["series"]
    fig, ax = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    counts = np.array(series["latency_counts"], dtype=np.float64)
    if counts.sum():
        edges_ms = np.append(LATENCY_EDGES, LATENCY_EDGES[-1] * 10) * 1000
        ax[0, 0].step(edges_ms, np.cumsum(counts) / counts.sum(), where="post")
        ax[0, 0].set_xscale("log")
        lowest = edges_ms[max(0, int(np.flatnonzero(counts)[0]) - 1)]
        ax[0, 0].set_xlim(lowest / 1.5, report["latency_ms"]["max"] * 1.5)
    ax[0, 0].set(title="Network latency (capture → kernel arrival)", xlabel="ms",
                 ylabel="share of packets ≤ x")
    for e in report["events"]:
        ms = np.sort(series["time_to_air_ms"].get(str(e["broadcast_id"]), []))
        if len(ms):
            ax[0, 1].step(ms, np.arange(1, len(ms) + 1) / len(ms), where="post",
                          label=f"{e['kind']} @{e['at_s']:g} s")
    ax[0, 1].set(title="Time-to-air per event", xlabel="ms", ylabel="share of speakers ≤ x")
    if report["events"]:
        ax[0, 1].legend()
    pps = np.array(series["pps"] or [[0, 0]], dtype=np.float64)
    ax[1, 0].plot(pps[:, 0], pps[:, 1], marker=".")
    ax[1, 0].set(title="Delivered packets per second", xlabel="s into the window",
                 ylabel="packets/s")
    skew = np.sort(series["sync_skew_ms"])
    if len(skew):
        ax[1, 1].step(skew, np.arange(1, len(skew) + 1) / len(skew), where="post")
    ax[1, 1].set(title="Playout sync skew per sampled packet", xlabel="ms",
                 ylabel="share of packets ≤ x")
    network = stem.with_name(stem.name + "-network.png")
    fig.savefig(network, dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for name, p in report["processes"].items():
        s = np.array(p["samples"] or [[0, 0, 0]], dtype=np.float64)
        ax[0].plot(s[:, 0], s[:, 1], label=name)
        ax[1].plot(s[:, 0], s[:, 2] / 2**20, label=name)
    ax[0].set(title="CPU per process", xlabel="s into the window", ylabel="cores")
    ax[1].set(title="Resident memory per process", xlabel="s into the window", ylabel="MiB")
    ax[1].legend(fontsize="small")
    processes = stem.with_name(stem.name + "-processes.png")
    fig.savefig(processes, dpi=80)
    plt.close(fig)
    return [network, processes]
