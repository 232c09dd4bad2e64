"""How late the speaker's packets arrive: capture time to arrival, counted in fixed buckets,
exported at scrape time as the ``loa_speaker_latency_seconds`` histogram (``metrics.py``).

Counting a packet is a bisect and two additions: no lock, no allocation, and no metrics
library, which a speaker without HTTP or MQTT never loads (a small board's memory).
"""

from __future__ import annotations

from bisect import bisect_left

#: the histogram's upper bounds, in seconds (+Inf is implicit)
BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


class Latency:
    """Counts per bucket (``counts[i]``: at most ``BUCKETS_S[i]``, the last one above all) and
    the sum, as a Prometheus histogram keeps them."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS_S, seconds)] += 1
        self.sum_s += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """(``le``, packets at most that late) for every bucket, ``+Inf`` last."""
        out, total = [], 0
        for le, n in zip((*map(str, BUCKETS_S), "+Inf"), self.counts, strict=True):
            total += n
            out.append((le, total))
        return out
