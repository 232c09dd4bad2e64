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
_BUCKET = re.compile(rf'^{LAG}_bucket{{le="([^"]+)"}} (\S+)$', re.M)


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of a sample in a Prometheus text page (0 if absent); ``labels`` as printed
    there, e.g. ``{priority="emergency"}``."""
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


class Snapshot:
    """The streamer's lag histogram (cumulative bucket counts) and counters at one moment."""

    def __init__(self, text: str, cpu_s: float) -> None:
        self.buckets = [(float(le), float(n)) for le, n in _BUCKET.findall(text)]
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
    """Frames between two snapshots, and the bucket bounds of their p50, p99 and max."""
    counts = [(le, nb - na) for (le, na), (_, nb) in zip(a.buckets, b.buckets, strict=True)]
    total = counts[-1][1]  # le="+Inf"
    out = {"frames": total}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        need = q * total
        out[name] = next((le for le, n in counts if n >= need), float("inf"))
    return out


def fmt_ms(s: float) -> str:
    """A quantile from :func:`quantiles` as the docs print it."""
    return "> 1 s" if s == float("inf") else f"≤ {s * 1000:g} ms"
