"""``common.procmetrics``: the lag probe sees a blocked loop; RSS and CPU are exported."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from common.procmetrics import watch_process

LAG = "loa_event_loop_lag_seconds"


def lagged_at_least_250ms(registry: CollectorRegistry) -> float:
    count = registry.get_sample_value(f"{LAG}_count") or 0.0
    below = registry.get_sample_value(f"{LAG}_bucket", {"le": "0.25"}) or 0.0
    return count - below


@pytest.mark.realtime  # a hypervisor stall in the first half second is lag too
async def test_a_blocked_loop_is_seen_as_lag() -> None:
    registry = CollectorRegistry()
    probe = watch_process(registry, period_s=0.05)
    try:
        await asyncio.sleep(0.5)
        assert (registry.get_sample_value(f"{LAG}_count") or 0) >= 3  # the probe runs
        assert lagged_at_least_250ms(registry) == 0  # an idle loop is not late by 250 ms
        time.sleep(0.4)  # a callback holding the loop: the probe wakes ≥ 0.35 s late
        await asyncio.sleep(0.2)
        assert lagged_at_least_250ms(registry) >= 1
        assert (registry.get_sample_value(f"{LAG}_sum") or 0) >= 0.35
    finally:
        probe.cancel()


async def test_cancelled_probe_stops_observing() -> None:
    registry = CollectorRegistry()
    probe = watch_process(registry, period_s=0.02)
    await asyncio.sleep(0.2)
    probe.cancel()
    await asyncio.gather(probe, return_exceptions=True)
    assert probe.cancelled()
    count = registry.get_sample_value(f"{LAG}_count")
    await asyncio.sleep(0.1)
    assert registry.get_sample_value(f"{LAG}_count") == count


async def test_process_memory_and_cpu_are_exported() -> None:
    registry = CollectorRegistry()
    probe = watch_process(registry)
    try:
        assert (registry.get_sample_value("process_resident_memory_bytes") or 0) > 10_000_000
        assert registry.get_sample_value("process_cpu_seconds_total") is not None
        assert (registry.get_sample_value("process_open_fds") or 0) > 0
    finally:
        probe.cancel()
