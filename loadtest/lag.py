"""The streamer's frame lag as its own ``/metrics`` tells it: snapshots and their quantiles.

A benchmark reads the streamer's ``loa_frame_lag_histogram_seconds`` (how late each frame was
handed to the socket after its deadline, its tick included) and its frame counters before and
after a phase, and reports the difference. A quantile is the upper bound of the histogram
bucket it falls in (buckets from 0.25 ms to 1 s), so "≤ 2 ms" means between the next lower
bound and 2 ms. This module only parses and subtracts; the caller decides when to read.
"""

from __future__ import annotations

import re
import time

LAG = "loa_frame_lag_histogram_seconds"
TICK = "loa_mixer_tick_seconds"


def buckets(text: str, name: str) -> list[tuple[float, float]]:
    """A histogram's cumulative bucket counts in a Prometheus text page, by upper bound."""
    found = re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)
    return [(float(le), float(n)) for le, n in found]


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of a sample in a Prometheus text page (0 if absent); ``labels`` as printed
    there, e.g. ``{priority="emergency"}``."""
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


class Snapshot:
    """The streamer's lag histogram (cumulative bucket counts) and counters at one moment."""

    def __init__(self, text: str, cpu_s: float) -> None:
        self.buckets = buckets(text, LAG)
        #: how long the ticks themselves took (``Mixer.tick``: render, encode, packets)
        self.ticks = buckets(text, TICK)
        #: when ticks began ahead of their deadlines (``docs/playout.md``)
        self.lead_s = metric(text, "loa_frame_lead_seconds")
        self.degraded = metric(text, "loa_mixer_degraded_frames_total")
        self.skipped = metric(text, "loa_frames_skipped_total")
        self.misses = metric(text, "loa_frame_deadline_misses_total")
        self.frames = metric(text, "loa_mixer_frames_total")
        self.encodes = metric(text, "loa_mixer_encodes_total")
        self.late_starts = metric(text, "loa_mixer_late_starts_total")
        # emergencies' time to air: request in, first packet out (docs/metrics.md)
        emergency = '{priority="emergency"}'
        self.emergency_air_s = metric(text, "loa_time_to_air_seconds_sum", emergency)
        self.emergencies = metric(text, "loa_time_to_air_seconds_count", emergency)
        self.cpu_s = cpu_s
        self.at = time.monotonic()


def quantiles(a: Snapshot, b: Snapshot) -> dict[str, float]:
    """Frames between two snapshots, and the bucket bounds of their lag's p50, p99 and max
    and of their ticks' p50 and max (``tick_p50``, ``tick_max``)."""
    out = between(a.buckets, b.buckets)
    ticks = between(a.ticks, b.ticks)
    out.update(tick_p50=ticks["p50"], tick_max=ticks["max"])
    return out


def between(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> dict[str, float]:
    """Observations of a histogram between two readings: their count (``frames``) and the
    bucket bounds of their p50, p99 and max."""
    counts = [(le, nb - na) for (le, na), (_, nb) in zip(a, b, strict=True)]
    total = counts[-1][1] if counts else 0.0  # le="+Inf"
    out = {"frames": total}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        need = q * total
        out[name] = next((le for le, n in counts if n >= need), float("inf"))
    return out


def fmt_ms(s: float) -> str:
    """A quantile from :func:`quantiles` as the docs print it."""
    return "> 1 s" if s == float("inf") else f"≤ {s * 1000:g} ms"
