"""Process health every Loa process exports: memory, CPU, open files, and event-loop lag.

Each process (streamer, relay, speaker) runs its media path on one asyncio loop, so a callback
that blocks the loop delays every frame, packet and keepalive behind it. The lag probe makes
that visible: a task asks to wake every :data:`PROBE_S` and records how late it woke, which is
how long something else held the loop. prometheus_client's ``ProcessCollector`` supplies the
``process_*`` series (RSS, CPU seconds, open fds) from ``/proc``. The probe costs one wake-up
per quarter second; it must never do more than read the clock and observe one number.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector

PROBE_S = 0.25
#: 1 ms (scheduling noise) up to 2.5 s (a loop stalled long enough to drop subscribers)
LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def watch_process(registry: CollectorRegistry, period_s: float = PROBE_S) -> asyncio.Task[None]:
    """Register the process collector and start the lag probe on the running loop. The caller
    cancels the returned task when it shuts down."""
    ProcessCollector(registry=registry)
    lag = Histogram("loa_event_loop_lag_seconds",
                    "How late the event loop woke a task that asked to sleep",
                    buckets=LAG_BUCKETS_S, registry=registry)
    return asyncio.create_task(_probe(lag, period_s), name="event-loop-lag")


async def _probe(lag: Histogram, period_s: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period_s
        await asyncio.sleep(period_s)
        lag.observe(max(0.0, loop.time() - due))
